//! Races between one callee's devices (one instance): once a call is answered it belongs to the
//! device that answered (the first to send SDP), and the callee's other devices are refused with
//! `answered_elsewhere`, never relayed. The caller gets exactly one SDP answer, and it is the
//! winning device's.

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

async fn setup(backend: DatabaseBackend) -> (TestApp, String, String, WsClient, Vec<WsClient>) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let caller = app.notifications_socket(&alice).await;
    let mut devices = Vec::new();
    for _ in 0..DEVICES {
        devices.push(app.notifications_socket(&bob).await);
    }
    (app, alice, bob, caller, devices)
}

/// Rings, sends the caller's offer, and waits until every device has it.
async fn ring_with_offer(app: &TestApp, alice: &str, caller: &mut WsClient, devices: &mut [WsClient]) -> i64 {
    let id = app.ring(alice, "bob").await;
    caller.send_json(json!({"type": "call.offer", "call_id": id, "offer": sdp("offer", "caller")})).await;
    for device in devices.iter_mut() {
        while let Some(event) = device.next_event_within(Duration::from_secs(5)).await {
            if event["type"] == "call.offer" {
                break;
            }
        }
    }
    id
}

async fn five_devices_answering_at_once_leave_one_answer(backend: DatabaseBackend) {
    let (app, alice, _bob, mut caller, mut devices) = setup(backend).await;
    for _ in 0..TRIES {
        let id = ring_with_offer(&app, &alice, &mut caller, &mut devices).await;
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
    let (app, alice, bob, mut caller, mut devices) = setup(backend).await;
    for _ in 0..TRIES {
        let id = ring_with_offer(&app, &alice, &mut caller, &mut devices).await;
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

on_both_databases!(
    five_devices_answering_at_once_leave_one_answer,
    an_accept_over_rest_racing_socket_answers_leaves_one_answer,
);
