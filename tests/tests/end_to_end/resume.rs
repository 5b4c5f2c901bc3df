//! Reconnects that lose nothing: a socket that comes back with `?resume=<last event_id>` gets
//! exactly the events it missed, in order, none twice (the same ones a socket that stayed
//! connected got), then live ones; when the gap cannot be filled it gets one `resync`.

use ringline_tests::{DatabaseBackend, TestApp, WsClient};
use serde_json::{Value, json};

async fn connect(app: &TestApp, token: &str, resume: Option<&str>) -> (WsClient, Value) {
    app.notifications_socket_resuming(token, resume).await
}

fn candidate(n: usize) -> Value {
    json!({"candidate": format!("candidate:{n} 1 udp 2122260223 192.0.2.1 {} typ host", 50000 + n), "sdpMid": "0"})
}

async fn send_candidates(socket: &mut WsClient, call: i64, range: std::ops::Range<usize>) {
    for n in range {
        socket.send_json(json!({"type": "call.ice-candidate", "call_id": call, "candidate": candidate(n)})).await;
    }
}

fn id_of(event: &Value) -> String {
    event["event_id"].as_str().expect("an event id").to_owned()
}

#[tokio::test]
async fn a_resumed_socket_gets_exactly_what_it_missed_in_order_then_live_events() {
    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let (mut alice_socket, _) = connect(&app, &alice, None).await;
    let (mut stays, _) = connect(&app, &bob, None).await;
    let (mut drops, _) = connect(&app, &bob, None).await;
    let call = app.ring(&alice, "bob").await;
    for socket in [&mut stays, &mut drops] {
        socket.expect("call.incoming").await;
        socket.expect("notification.created").await;
    }
    let last_seen = {
        alice_socket.send_json(json!({"type": "ping"})).await;
        alice_socket.expect("pong").await;
        send_candidates(&mut alice_socket, call, 0..1).await;
        stays.expect("call.ice-candidate").await;
        id_of(&drops.expect("call.ice-candidate").await)
    };
    drops.close_and_read_reply(1000).await;

    send_candidates(&mut alice_socket, call, 1..4).await;
    let mut stayed = Vec::new();
    for _ in 1..4 {
        stayed.push(stays.expect("call.ice-candidate").await);
    }

    let (mut back, ack) = connect(&app, &bob, Some(&last_seen)).await;
    assert_eq!(ack["open_calls"][0]["id"], call, "the ack still says where the user stands");
    let mut replayed = Vec::new();
    for _ in 1..4 {
        replayed.push(back.expect("call.ice-candidate").await);
    }
    assert_eq!(replayed, stayed, "exactly what the connected socket saw, in order, ids included");
    for (n, event) in replayed.iter().enumerate() {
        assert_eq!(event["candidate"], candidate(n + 1));
    }
    back.expect_silence().await;

    send_candidates(&mut alice_socket, call, 4..5).await;
    assert_eq!(back.expect("call.ice-candidate").await["candidate"], candidate(4), "then live events");
    back.expect_silence().await;
    app.stop().await;
}

#[tokio::test]
async fn a_socket_that_saw_no_event_resumes_from_its_ack() {
    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let (mut quiet, ack) = connect(&app, &bob, None).await;
    let resume_from = ack["resume_from"].as_str().expect("the ack names a position").to_owned();
    quiet.close_and_read_reply(1000).await;

    let call = app.ring(&alice, "bob").await;
    let (mut back, _) = connect(&app, &bob, Some(&resume_from)).await;
    assert_eq!(back.expect("call.incoming").await["call_id"], call.to_string());
    back.expect("notification.created").await;
    back.expect_silence().await;
    app.stop().await;
}

#[tokio::test]
async fn a_gap_the_window_cannot_fill_gets_one_resync() {
    let app = TestApp::spawn_with(DatabaseBackend::Sqlite, |settings| {
        settings.sockets.ws_frames_per_sec = 100_000;
        settings.sockets.ws_frame_burst = 100_000;
    })
    .await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let (mut alice_socket, _) = connect(&app, &alice, None).await;
    let (mut away, _) = connect(&app, &bob, None).await;
    let call = app.ring(&alice, "bob").await;
    away.expect("call.incoming").await;
    let last_seen = id_of(&away.expect("notification.created").await);
    away.close_and_read_reply(1000).await;

    // More than the window keeps (256 events).
    send_candidates(&mut alice_socket, call, 0..300).await;
    alice_socket.send_json(json!({"type": "ping"})).await;
    alice_socket.expect("pong").await;

    let (mut back, ack) = connect(&app, &bob, Some(&last_seen)).await;
    assert_eq!(ack["open_calls"][0]["status"], "ringing", "what to re-read is in the ack");
    let resync = back.expect("resync").await;
    assert_eq!(resync["resume_from"], ack["resume_from"]);
    back.expect_silence().await;

    for nonsense in ["not-an-id", "0123456789ab-1", "x.1"] {
        let (mut socket, _) = connect(&app, &bob, Some(nonsense)).await;
        socket.expect("resync").await;
        socket.expect_silence().await;
    }
    app.stop().await;
}
