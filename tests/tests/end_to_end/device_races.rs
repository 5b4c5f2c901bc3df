//! Races between one callee's devices, on one instance and spread over three joined ones: once
//! a call is answered it belongs to the device that answered (the first to send SDP), and the
//! callee's other devices are refused with `answered_elsewhere`, never relayed. The caller gets
//! exactly one SDP answer, and it is the winning device's.

use std::time::Duration;

use futures_util::future::join_all;
use ringline_tests::{DatabaseBackend, TestApp, WsClient, on_both_databases};
use serde_json::{Value, json};

const DEVICES: usize = 5;
const TRIES: usize = 50;

fn sdp(kind: &str, tag: &str) -> Value {
    json!({"type": kind, "sdp": format!("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns={tag}\r\nt=0 0\r\n")})
}

/// Every event `socket` gets until it stays quiet for a moment.
async fn drain(socket: &mut WsClient) -> Vec<Value> {
    let mut events = Vec::new();
    while let Some(event) = socket.next_event_within(Duration::from_millis(150)).await {
        events.push(event);
    }
    events
}

/// What one round left: the SDP answers the caller got, and which devices were refused.
async fn outcome(caller: &mut WsClient, devices: &mut [WsClient]) -> (Vec<String>, Vec<bool>) {
    let answers: Vec<String> = drain(caller)
        .await
        .into_iter()
        .filter(|event| event["type"] == "call.answer" && !event["answer"].is_null())
        .map(|event| event["answer"]["sdp"].as_str().unwrap_or_default().to_owned())
        .collect();
    let refused = join_all(devices.iter_mut().map(drain))
        .await
        .iter()
        .map(|events| events.iter().any(|event| event["type"] == "error" && event["code"] == "answered_elsewhere"))
        .collect();
    (answers, refused)
}

/// The instances the callee's devices are spread over, round robin; the caller and the REST
/// requests use the first.
struct Deployment {
    instances: Vec<TestApp>,
}

impl std::ops::Deref for Deployment {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.instances[0]
    }
}

impl Deployment {
    async fn stop(self) {
        for instance in self.instances {
            instance.stop().await;
        }
    }
}

async fn setup(backend: DatabaseBackend, instances: usize) -> (Deployment, String, String, WsClient, Vec<WsClient>) {
    let instances = if instances == 1 {
        vec![TestApp::spawn(backend).await]
    } else {
        TestApp::spawn_joined(backend, instances, |_| {}).await
    };
    let app = Deployment { instances };
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let caller = app.notifications_socket(&alice).await;
    let mut devices = Vec::new();
    for n in 0..DEVICES {
        devices.push(app.instances[n % app.instances.len()].notifications_socket(&bob).await);
    }
    (app, alice, bob, caller, devices)
}

/// Rings, sends the caller's offer, and waits until every device has it.
async fn ring_with_offer<'a>(
    app: &TestApp,
    alice: &str,
    caller: &mut WsClient,
    devices: impl IntoIterator<Item = &'a mut WsClient>,
) -> i64 {
    let id = app.ring(alice, "bob").await;
    caller.send_json(json!({"type": "call.offer", "call_id": id, "offer": sdp("offer", "caller")})).await;
    for device in devices {
        while let Some(event) = device.next_event_within(Duration::from_secs(5)).await {
            if event["type"] == "call.offer" {
                break;
            }
        }
    }
    id
}

async fn five_devices_answering_at_once_leave_one_answer(backend: DatabaseBackend) {
    answering_at_once_leaves_one_answer(backend, 1).await;
}

async fn five_devices_on_three_instances_answering_at_once_leave_one_answer(backend: DatabaseBackend) {
    answering_at_once_leaves_one_answer(backend, 3).await;
}

async fn answering_at_once_leaves_one_answer(backend: DatabaseBackend, instances: usize) {
    let (app, alice, _bob, mut caller, mut devices) = setup(backend, instances).await;
    for _ in 0..TRIES {
        let id = ring_with_offer(&app, &alice, &mut caller, devices.iter_mut()).await;
        join_all(devices.iter_mut().enumerate().map(|(n, device)| {
            device.send_json(
                json!({"type": "call.answer", "call_id": id, "answer": sdp("answer", &format!("device-{n}"))}),
            )
        }))
        .await;
        // Each device's candidates too: only the winner's may reach the caller.
        join_all(devices.iter_mut().enumerate().map(|(n, device)| {
            let candidate = json!({"candidate": format!("candidate:{n} 1 udp 1 10.0.0.{n} 9 typ host"), "sdpMid": "0"});
            device.send_json(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate}))
        }))
        .await;
        let (answers, refused) = outcome(&mut caller, &mut devices).await;
        assert_eq!(answers.len(), 1, "one SDP answer reaches the caller: {answers:?}");
        let winners: Vec<usize> = (0..DEVICES).filter(|n| !refused[*n]).collect();
        assert_eq!(winners.len(), 1, "every other device is told answered_elsewhere: {refused:?}");
        assert!(answers[0].contains(&format!("s=device-{}", winners[0])), "the winner's answer: {answers:?}");
        app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
        drain(&mut caller).await;
        join_all(devices.iter_mut().map(drain)).await;
    }
    app.stop().await;
}

async fn an_accept_over_rest_racing_socket_answers_leaves_one_answer(backend: DatabaseBackend) {
    rest_accept_racing_answers_leaves_one_answer(backend, 1).await;
}

async fn an_accept_over_rest_racing_socket_answers_on_three_instances_leaves_one_answer(backend: DatabaseBackend) {
    rest_accept_racing_answers_leaves_one_answer(backend, 3).await;
}

async fn rest_accept_racing_answers_leaves_one_answer(backend: DatabaseBackend, instances: usize) {
    let (app, alice, bob, mut caller, mut devices) = setup(backend, instances).await;
    for _ in 0..TRIES {
        let id = ring_with_offer(&app, &alice, &mut caller, devices.iter_mut()).await;
        let path = format!("/api/calls/{id}/accept/");
        let rest = app.post(&path, &bob, json!({}));
        let sockets = join_all(devices.iter_mut().enumerate().map(|(n, device)| {
            device.send_json(
                json!({"type": "call.answer", "call_id": id, "answer": sdp("answer", &format!("device-{n}"))}),
            )
        }));
        let (accepted, _) = tokio::join!(rest, sockets);
        // The REST accept either wins, or finds the call answered by a device already.
        assert!(
            accepted.status.as_u16() == 200 || accepted.body["code"] == "invalid_call_state",
            "{:?}",
            accepted.body
        );
        let (answers, refused) = outcome(&mut caller, &mut devices).await;
        assert_eq!(answers.len(), 1, "one SDP answer reaches the caller: {answers:?}");
        let winners: Vec<usize> = (0..DEVICES).filter(|n| !refused[*n]).collect();
        assert_eq!(winners.len(), 1, "every other device is told answered_elsewhere: {refused:?}");
        assert!(answers[0].contains(&format!("s=device-{}", winners[0])), "the winner's answer: {answers:?}");
        app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
        drain(&mut caller).await;
        join_all(devices.iter_mut().map(drain)).await;
    }
    app.stop().await;
}

fn candidate(n: usize) -> Value {
    json!({"candidate": format!("candidate:{n} 1 udp 1 10.0.0.{n} 9 typ host"), "sdpMid": "0"})
}

/// Sends a candidate from `device` and says whether it reached the caller (else the device
/// was refused with `answered_elsewhere`).
async fn candidate_reaches_caller(id: i64, n: usize, device: &mut WsClient, caller: &mut WsClient) -> bool {
    device.send_json(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(n)})).await;
    let relayed = drain(caller).await.iter().any(|event| {
        event["type"] == "call.ice-candidate" && event["candidate"]["candidate"] == candidate(n)["candidate"]
    });
    let refused = drain(device).await.iter().any(|event| event["code"] == "answered_elsewhere");
    assert_ne!(relayed, refused, "either relayed or refused");
    relayed
}

/// The device holding an answered call keeps it while connected; when its socket closes it
/// lets go, and the callee's next device to signal (here, with three instances, on another
/// one) takes the call over; then that one holds it.
async fn a_device_that_closes_hands_the_call_over(backend: DatabaseBackend, instances: usize) {
    let (app, alice, _bob, mut caller, devices) = setup(backend, instances).await;
    let mut devices = devices.into_iter();
    let (_first, mut phone, mut laptop, mut tablet) = (
        devices.next().expect("five"),
        devices.next().expect("five"),
        devices.next().expect("five"),
        devices.next().expect("five"),
    );
    let id = ring_with_offer(&app, &alice, &mut caller, [&mut phone, &mut laptop, &mut tablet]).await;
    phone.send_json(json!({"type": "call.answer", "call_id": id, "answer": sdp("answer", "phone")})).await;
    caller.expect("call.answer").await;
    drain(&mut caller).await;
    assert!(candidate_reaches_caller(id, 1, &mut phone, &mut caller).await, "the holder signals");
    assert!(!candidate_reaches_caller(id, 2, &mut laptop, &mut caller).await, "the holder is connected");

    drop(phone);
    // A refusal is repeated from memory for a second (the relay's own in-memory window, on the
    // monotonic clock, not a decision the injected clock drives) before the database is asked
    // again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(candidate_reaches_caller(id, 3, &mut laptop, &mut caller).await, "the next device takes over");
    assert!(!candidate_reaches_caller(id, 4, &mut tablet, &mut caller).await, "and holds the call");
    app.stop().await;
}

async fn a_device_that_closes_hands_the_call_over_on_one_instance(backend: DatabaseBackend) {
    a_device_that_closes_hands_the_call_over(backend, 1).await;
}

async fn a_device_that_closes_hands_the_call_over_to_another_instance(backend: DatabaseBackend) {
    a_device_that_closes_hands_the_call_over(backend, 3).await;
}

/// A call held by a device of an instance that stopped without letting go (killed: nothing
/// ran at its end) is taken over by the callee's next device: with one instance, the holder
/// is from an earlier run; with several, its instance no longer proves it is alive.
async fn a_call_held_on_a_stopped_instance_is_taken_over(backend: DatabaseBackend, instances: usize) {
    let (app, alice, _bob, mut caller, mut devices) = setup(backend, instances).await;
    let id = ring_with_offer(&app, &alice, &mut caller, devices.iter_mut()).await;
    let killed = ringline_domain::DeviceId::new(0xdead, 1);
    let origin = ringline_domain::ChangeOrigin { device: Some(killed), answer: None };
    let bob_id = ringline_domain::UserId::parse("bob").expect("id");
    let call = ringline_domain::CallId::new(id).expect("id");
    app.signaling()
        .service()
        .act_on(&bob_id, call, ringline_domain::CallAction::Accept, None, origin)
        .await
        .expect("accepted on the instance that then stopped");
    // A device acts on what it was told: each waits for the accept before it signals. (Sent at
    // once, a candidate may reach an instance before the accept's copy does; that instance
    // still has the call ringing and relays it, as it does for any callee device then.)
    for device in &mut devices {
        device.expect("call.accepted").await;
    }
    let device = devices.last_mut().expect("five");
    assert!(candidate_reaches_caller(id, 1, device, &mut caller).await, "the holder's instance is gone");
    assert!(!candidate_reaches_caller(id, 2, &mut devices[0], &mut caller).await, "and the new holder holds it");
    app.stop().await;
}

async fn a_call_held_on_a_stopped_instance_is_taken_over_on_one_instance(backend: DatabaseBackend) {
    a_call_held_on_a_stopped_instance_is_taken_over(backend, 1).await;
}

async fn a_call_held_on_a_stopped_instance_is_taken_over_with_three(backend: DatabaseBackend) {
    a_call_held_on_a_stopped_instance_is_taken_over(backend, 3).await;
}

on_both_databases!(
    five_devices_answering_at_once_leave_one_answer,
    five_devices_on_three_instances_answering_at_once_leave_one_answer,
    an_accept_over_rest_racing_socket_answers_leaves_one_answer,
    an_accept_over_rest_racing_socket_answers_on_three_instances_leaves_one_answer,
    a_device_that_closes_hands_the_call_over_on_one_instance,
    a_device_that_closes_hands_the_call_over_to_another_instance,
    a_call_held_on_a_stopped_instance_is_taken_over_on_one_instance,
    a_call_held_on_a_stopped_instance_is_taken_over_with_three,
);
