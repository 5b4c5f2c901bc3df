//! Several instances in one process, on one database, joined by the in-memory bus
//! (`MemoryHub`): every client sees exactly what it sees from one instance, event for event.
//! These are fast, so they test sequences strictly; `crates/server/tests/processes/instances.rs` runs
//! real binaries over a real Redis.

use std::time::Duration;

use ringline_domain::UserId;
use ringline_tests::{DatabaseBackend, ManualClock, TestApp, WsClient, on_both_databases};
use serde_json::{Value, json};

fn sdp(kind: &str) -> Value {
    json!({"type": kind, "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"})
}

fn candidate(n: u32) -> Value {
    json!({"candidate": format!("candidate:{n} 1 udp 2122260223 127.0.0.1 5{n:04} typ host"), "sdpMid": "0", "sdpMLineIndex": 0})
}

/// `count` joined instances with alice, bob and carol (alice and bob share conversation 7);
/// their tokens.
async fn joined(
    backend: DatabaseBackend,
    count: usize,
    configure: impl Fn(&mut ringline_server::Settings),
) -> (Vec<TestApp>, [String; 3]) {
    let instances = TestApp::spawn_joined(backend, count, configure).await;
    let first = &instances[0];
    let tokens = [first.user("alice").await, first.user("bob").await, first.user("carol").await];
    first.conversation(7, &["alice", "bob"]).await;
    (instances, tokens)
}

async fn stop(instances: Vec<TestApp>) {
    for instance in instances {
        instance.stop().await;
    }
}

/// The same event (one `event_id`) reached every socket.
async fn all_get(sockets: &mut [&mut WsClient], kind: &str) -> Value {
    let mut events: Vec<Value> = Vec::new();
    for socket in sockets.iter_mut() {
        events.push(socket.expect(kind).await);
    }
    assert!(events.windows(2).all(|pair| pair[0]["event_id"] == pair[1]["event_id"]), "one event: {events:?}");
    events.swap_remove(0)
}

/// Caller on A, the callee's phone on B and laptop on C: the sequence of a call on one
/// instance, event for event, with nothing twice.
async fn a_call_crosses_three_instances_exactly_as_on_one(backend: DatabaseBackend) {
    let (instances, [alice, bob, _]) = joined(backend, 3, |_| {}).await;
    let [a, b, c] = &instances[..] else { unreachable!() };
    let mut caller = a.notifications_socket(&alice).await;
    let mut phone = b.notifications_socket(&bob).await;
    let mut laptop = c.notifications_socket(&bob).await;

    let id = a.ring(&alice, "bob").await;
    assert_eq!(all_get(&mut [&mut phone, &mut laptop], "call.incoming").await["call_id"], id.to_string());
    all_get(&mut [&mut phone, &mut laptop], "notification.created").await;
    caller.send_json(json!({"type": "call.offer", "call_id": id, "offer": sdp("offer")})).await;
    assert_eq!(all_get(&mut [&mut phone, &mut laptop], "call.offer").await["offer"]["type"], "offer");

    // The phone answers: the caller gets its SDP, the laptop stops ringing.
    phone.send_json(json!({"type": "call.answer", "call_id": id, "answer": sdp("answer")})).await;
    assert_eq!(caller.expect("call.answer").await["answer"]["type"], "answer");
    caller.expect("call.accepted").await;
    assert_eq!(laptop.expect("call.accepted").await["receiver_id"], "bob");
    assert_eq!(laptop.expect("call.end").await["end_reason"], "answered_elsewhere");
    phone.expect_silence().await;

    // ICE candidates cross both ways. (Bob's other devices get the caller's too, as on one
    // instance.)
    for n in 0..3 {
        caller.send_json(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(n)})).await;
        assert_eq!(all_get(&mut [&mut phone, &mut laptop], "call.ice-candidate").await["candidate"], candidate(n));
        phone.send_json(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(10 + n)})).await;
        assert_eq!(caller.expect("call.ice-candidate").await["candidate"], candidate(10 + n));
    }

    // A hang-up over REST on C (no device of the call's) reaches every device of both.
    c.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
    assert_eq!(caller.expect("call.end").await["status"], "ended");
    assert_eq!(all_get(&mut [&mut phone, &mut laptop], "call.end").await["status"], "ended");
    for socket in [&mut caller, &mut phone, &mut laptop] {
        socket.expect_silence().await;
    }
    let call = b.get(&format!("/api/calls/{id}/"), &bob).await.expect(200);
    assert_eq!(call["status"], "ended");
    stop(instances).await;
}

/// Every instance runs a ring timer; the call is missed once: one `call.missed`, one
/// notification.
async fn the_ring_timeout_fires_once_across_instances(backend: DatabaseBackend) {
    let clock = std::sync::Arc::new(ManualClock::new());
    let instances = TestApp::spawn_joined_on_clock(backend, 3, &clock, |_| {}).await;
    let [a, b, c] = &instances[..] else { unreachable!() };
    let (alice, bob) = (a.user("alice").await, a.user("bob").await);
    let mut caller = a.notifications_socket(&alice).await;
    let mut callee = b.notifications_socket(&bob).await;
    let id = c.ring(&alice, "bob").await;
    callee.expect("call.incoming").await;
    callee.expect("notification.created").await;
    // Every instance's ring timer looks every second, on the shared clock.
    clock.advance(ringline_domain::DEFAULT_RING_TIMEOUT + Duration::from_secs(1));
    for socket in [&mut caller, &mut callee] {
        assert_eq!(socket.expect("call.missed").await["call_id"], id.to_string());
        assert_eq!(socket.expect("call.end").await["status"], "missed");
    }
    assert_eq!(callee.expect("notification.created").await["payload"]["verb"], "missed_video_call");
    // Every instance's timer looking again (the same sweep, run here) finds nothing left.
    for instance in &instances {
        assert_eq!(instance.signaling().expire_due(100).await.expect("sweep"), 0);
    }
    caller.expect_silence().await;
    callee.expect_silence().await;
    assert_eq!(a.get("/api/notifications/", &bob).await.expect(200)["count"], 2);
    stop(instances).await;
}

/// Busy lines and glare are decided by the database, whichever instance each request reaches.
async fn busy_lines_and_glare_hold_across_instances(backend: DatabaseBackend) {
    let (instances, [alice, bob, carol]) = joined(backend, 2, |_| {}).await;
    let [a, b] = &instances[..] else { unreachable!() };
    let mut caller = a.notifications_socket(&alice).await;
    let id = a.ring(&alice, "bob").await;
    b.post("/api/calls/initiate/", &carol, json!({"receiver_id": "bob"})).await.expect_error(409, "user_busy");
    // Bob calls alice back through B while her call rings him: glare answers her call.
    let answered = b.post("/api/calls/initiate/", &bob, json!({"receiver_id": "alice"})).await.expect(200);
    assert_eq!((answered["id"].as_i64(), answered["status"].as_str()), (Some(id), Some("active")));
    assert_eq!(caller.expect("call.answer").await["sender_id"], "bob");
    assert_eq!(caller.expect("call.accepted").await["call_id"], id.to_string());
    stop(instances).await;
}

/// Two of the callee's devices, on two instances, answer at once: one call, accepted once.
async fn devices_answering_at_once_on_two_instances_leave_one_winner(backend: DatabaseBackend) {
    let (instances, [alice, bob, _]) = joined(backend, 3, |_| {}).await;
    let [a, b, c] = &instances[..] else { unreachable!() };
    let mut caller = a.notifications_socket(&alice).await;
    let mut phone = b.notifications_socket(&bob).await;
    let mut laptop = c.notifications_socket(&bob).await;
    for _ in 0..10 {
        let id = a.ring(&alice, "bob").await;
        for device in [&mut phone, &mut laptop] {
            device.expect("call.incoming").await;
            device.expect("notification.created").await;
        }
        let answer = json!({"type": "call.answer", "call_id": id, "answer": sdp("answer")});
        tokio::join!(phone.send_json(answer.clone()), laptop.send_json(answer));
        let mut accepted = 0;
        while let Some(event) = caller.next_event_within(Duration::from_millis(400)).await {
            accepted += usize::from(event["type"] == "call.accepted");
        }
        assert_eq!(accepted, 1, "the caller hears of one acceptance");
        let call = a.get(&format!("/api/calls/{id}/"), &alice).await.expect(200);
        assert_eq!(call["status"], "active");
        c.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
        for device in [&mut phone, &mut laptop, &mut caller] {
            while device.next_event_within(Duration::from_millis(200)).await.is_some() {}
        }
    }
    stop(instances).await;
}

/// A socket that comes back on another instance with its last event id gets what it missed,
/// sent from a third: exactly what a socket that stayed connected got, same ids, same order,
/// and no `resync`.
async fn a_socket_resumes_on_another_instance_without_a_gap(backend: DatabaseBackend) {
    let (instances, [alice, bob, _]) = joined(backend, 3, |_| {}).await;
    let [a, b, c] = &instances[..] else { unreachable!() };
    let mut witness = a.notifications_socket(&bob).await;
    let mut callee = b.notifications_socket(&bob).await;
    let id = a.ring(&alice, "bob").await;
    let last_seen = callee.expect("call.incoming").await["event_id"].as_str().expect("an id").to_owned();
    witness.expect("call.incoming").await;
    drop(callee);
    // B sees the socket close (a real TCP close) before the call ends elsewhere.
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
    let mut stayed = Vec::new();
    while let Some(event) = witness.next_event_within(Duration::from_millis(300)).await {
        stayed.push(event);
    }
    assert!(stayed.iter().any(|event| event["type"] == "call.end"), "{stayed:?}");

    let (mut back, _) = c.notifications_socket_resuming(&bob, Some(&last_seen)).await;
    let mut replayed = Vec::new();
    while let Some(event) = back.next_event_within(Duration::from_millis(300)).await {
        replayed.push(event);
    }
    assert_eq!(replayed, stayed, "the replay on C is what the socket on A got live");
    stop(instances).await;
}

/// The bus goes away: each instance keeps delivering to its own sessions; when it returns,
/// sessions that may have missed events get `resync`, and delivery across instances resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_outage_keeps_local_delivery_and_heals_by_itself() {
    let hub = ringline_bus::MemoryHub::new();
    let instances = TestApp::spawn_joined_to(DatabaseBackend::Sqlite, 2, &hub, |_| {}).await;
    let [a, b] = &instances[..] else { unreachable!() };
    let (alice, bob) = (a.user("alice").await, a.user("bob").await);
    let mut caller = a.notifications_socket(&alice).await;
    let mut callee = a.notifications_socket(&bob).await;
    let mut elsewhere = b.notifications_socket(&bob).await;
    let id = a.ring(&alice, "bob").await;
    for device in [&mut callee, &mut elsewhere] {
        device.expect("call.incoming").await;
        device.expect("notification.created").await;
    }
    callee.send_json(json!({"type": "call.answer", "call_id": id, "answer": sdp("answer")})).await;
    caller.expect("call.answer").await;
    caller.expect("call.accepted").await;
    elsewhere.expect("call.accepted").await;
    elsewhere.expect("call.end").await;

    hub.set_reachable(false);
    for n in 0..3 {
        caller.send_json(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(n)})).await;
        assert_eq!(callee.expect("call.ice-candidate").await["candidate"], candidate(n));
    }
    let ready = a.send(reqwest::Method::GET, "/readyz", None, None).await.expect(200);
    assert_eq!(ready["bus"], "unavailable", "{ready}");

    hub.set_reachable(true);
    // B's socket may have missed events: told to resync (within a liveness tick).
    elsewhere.expect("resync").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while a.send(reqwest::Method::GET, "/readyz", None, None).await.expect(200)["bus"] != "ok" {
        assert!(tokio::time::Instant::now() < deadline, "the bus never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
    assert_eq!(elsewhere.expect("call.end").await["status"], "ended");
    stop(instances).await;
}

/// How many devices a user has is counted over every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_a_users_sockets_on_every_instance() {
    let (instances, [_, bob, _]) = joined(DatabaseBackend::Sqlite, 2, |_| {}).await;
    let [a, b] = &instances[..] else { unreachable!() };
    let user = UserId::parse("bob").expect("an id");
    let phone = a.notifications_socket(&bob).await;
    let laptop = a.notifications_socket(&bob).await;
    let tablet = b.chat_socket(&bob, 7).await;
    let counted = async |instance: &TestApp, expected: usize| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while instance.signaling().devices_online(&user).await != expected {
            assert!(tokio::time::Instant::now() < deadline, "never counted {expected}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    counted(a, 3).await;
    counted(b, 3).await;
    drop(laptop);
    counted(b, 2).await;
    drop((phone, tablet));
    counted(a, 0).await;
    stop(instances).await;
}

/// A participant removed from a conversation on one instance loses its chat sockets on it on
/// every instance (4403), not only where the removal was made; the others' stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_participant_loses_its_chat_sockets_on_every_instance() {
    let (instances, [alice, bob, _]) = joined(DatabaseBackend::Sqlite, 3, |settings| {
        settings.auth.admin_token = Some("operator-token".into());
    })
    .await;
    let [a, b, c] = &instances[..] else { unreachable!() };
    let mut bob_on_b = b.chat_socket(&bob, 7).await;
    let mut bob_on_c = c.chat_socket(&bob, 7).await;
    let mut alice_on_b = b.chat_socket(&alice, 7).await;

    a.send(reqwest::Method::DELETE, "/api/admin/conversations/7/participants/bob/", Some("operator-token"), None)
        .await
        .expect(204);
    assert_eq!(bob_on_b.closed_with().await, Some(4403), "closed on B");
    assert_eq!(bob_on_c.closed_with().await, Some(4403), "closed on C");
    alice_on_b.send_json(json!({"type": "ping"})).await;
    alice_on_b.expect("pong").await;
    stop(instances).await;
}

/// A user removed through one instance loses their sockets on the others too, and those
/// instances, which had just let the user in (and remember that for a few seconds), refuse
/// the reconnection at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_user_is_disconnected_and_refused_on_every_instance() {
    let (instances, [_alice, bob, _]) = joined(DatabaseBackend::Sqlite, 3, |settings| {
        settings.auth.admin_token = Some("operator-token".into());
    })
    .await;
    let [a, b, c] = &instances[..] else { unreachable!() };
    let mut bob_on_b = b.notifications_socket(&bob).await;
    let mut bob_on_c = c.chat_socket(&bob, 7).await;
    b.get("/api/calls/", &bob).await.expect(200);

    a.send(reqwest::Method::DELETE, "/api/admin/users/bob/", Some("operator-token"), None).await.expect(204);
    assert_eq!(bob_on_b.closed_with().await, Some(4401), "closed on B");
    assert_eq!(bob_on_c.closed_with().await, Some(4401), "closed on C");
    b.get("/api/calls/", &bob).await.expect_error(401, "user_not_found");
    let mut again = ringline_tests::WsClient::connect(&c.ws_url(&format!("/ws/notifications/?token={bob}"))).await;
    assert_eq!(again.closed_with().await, Some(4401), "refused on C");
    stop(instances).await;
}

on_both_databases!(
    a_call_crosses_three_instances_exactly_as_on_one,
    the_ring_timeout_fires_once_across_instances,
    busy_lines_and_glare_hold_across_instances,
    devices_answering_at_once_on_two_instances_leave_one_winner,
    a_socket_resumes_on_another_instance_without_a_gap,
);
