//! WebRTC signaling over real WebSockets against the real server: connection rules, the seed
//! document's page scenarios for voice and video, both original clients' sequences, several
//! devices, refusals, limits, the ring timeout, slow consumers and shutdown.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use ringline_tests::{DatabaseBackend, ManualClock, TestApp, UnresponsivePeer, WsClient};
use serde_json::{Value, json};

fn offer_sdp() -> Value {
    json!({"type": "offer", "sdp": "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"})
}

fn answer_sdp() -> Value {
    json!({"type": "answer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"})
}

fn candidate(n: u32) -> Value {
    json!({"candidate": format!("candidate:{n} 1 udp 2122260223 127.0.0.1 5{n:04} typ host"), "sdpMid": "0", "sdpMLineIndex": 0})
}

/// Alice, Bob (both in conversation 7) and their tokens.
async fn two_users(app: &TestApp) -> (String, String) {
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.conversation(7, &["alice", "bob"]).await;
    (alice, bob)
}

#[tokio::test]
async fn connections_are_acknowledged_answered_and_refused_with_the_contracts_codes() {
    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let (alice, _bob) = two_users(&app).await;
    app.user("eve").await;
    let eve = app.token("eve");

    let mut socket = WsClient::connect(&app.ws_url(&format!("/ws/notifications/?token={alice}"))).await;
    let ack = socket.expect("connection.ack").await;
    assert_eq!(ack["user_id"], "alice");
    socket.send_json(json!({"type": "ping"})).await;
    socket.expect("pong").await;

    let chat = app.chat_socket(&alice, 7).await;
    drop(chat);

    for (path, code) in [
        ("/ws/notifications/".to_owned(), 4401),
        ("/ws/notifications/?token=garbage".to_owned(), 4401),
        (format!("/ws/chat/7/?token={eve}"), 4403),
        (format!("/ws/chat/99/?token={alice}"), 4403),
        (format!("/ws/chat/seven/?token={alice}"), 4400),
        ("/ws/chat/7/".to_owned(), 4401),
    ] {
        let mut refused = WsClient::connect(&app.ws_url(&path)).await;
        assert_eq!(refused.closed_with().await, Some(code), "{path}");
    }
    // The Authorization header works as well as ?token=.
    let request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        app.ws_url("/ws/notifications/"),
    )
    .map(|mut request| {
        request.headers_mut().insert("authorization", format!("Bearer {alice}").parse().expect("header"));
        request
    })
    .expect("request");
    let (mut by_header, _) = tokio_tungstenite::connect_async(request).await.expect("connect");
    use futures_util::StreamExt;
    let first = by_header.next().await.expect("a frame").expect("ok");
    assert!(first.to_text().expect("text").contains("connection.ack"));
    app.stop().await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    /// The conversation is on screen: notification socket and chat socket open.
    Chat,
    /// Anywhere else: the notification socket only.
    Elsewhere,
}

/// A user's open sockets on a page; the first is the one they send from, the last is the
/// notification socket.
async fn sockets_on(app: &TestApp, token: &str, page: Page) -> Vec<WsClient> {
    let mut sockets = Vec::new();
    if page == Page::Chat {
        sockets.push(app.chat_socket(token, 7).await);
    }
    sockets.push(app.notifications_socket(token).await);
    sockets
}

/// Every socket gets an event of `kind`; returns them, after checking they are one event (the
/// same `event_id`) delivered on each socket.
async fn all_get(sockets: &mut [WsClient], kind: &str) -> Vec<Value> {
    let mut events = Vec::new();
    for socket in sockets.iter_mut() {
        events.push(socket.expect(kind).await);
    }
    assert!(
        events.windows(2).all(|pair| pair[0]["event_id"] == pair[1]["event_id"]),
        "one event, many sockets: {events:?}"
    );
    events
}

/// One copy per tab: the tab's notification socket (the last) gets `kind`. Whether a chat
/// socket beside it stayed silent is checked once, at the end, by [`chat_heard_nothing`].
async fn tab_gets(sockets: &mut [WsClient], kind: &str) -> Value {
    sockets.last_mut().expect("a notification socket").expect(kind).await
}

/// A chat socket beside a notification socket got none of the user's call events.
async fn chat_heard_nothing(sockets: &mut [WsClient]) {
    if let Some((_notifications, chats)) = sockets.split_last_mut() {
        for chat in chats {
            chat.expect_silence().await;
        }
    }
}

async fn all_silent(sockets: &mut [WsClient]) {
    for socket in sockets.iter_mut() {
        socket.expect_silence().await;
    }
}

/// The web client's sequence, with ICE candidates both ways as the mobile client trickles them.
/// On the chat page a party sends from its chat socket (the original accepts call frames on
/// both); every event reaches each tab once, on its notification socket.
async fn web_call(backend: DatabaseBackend, caller_page: Page, callee_page: Page, call_type: &str) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob) = two_users(&app).await;
    let mut alice_sockets = sockets_on(&app, &alice, caller_page).await;
    let mut bob_sockets = sockets_on(&app, &bob, callee_page).await;

    let call = app
        .post(
            "/api/calls/initiate/",
            &alice,
            json!({"receiver_id": "bob", "call_type": call_type, "conversation_id": 7}),
        )
        .await
        .expect(201);
    let id = call["id"].as_i64().expect("id").to_string();

    let incoming = tab_gets(&mut bob_sockets, "call.incoming").await;
    assert_eq!(incoming["call_id"], id);
    assert_eq!(incoming["caller_id"], "alice");
    assert_eq!(incoming["caller_username"], "alice");
    assert_eq!(incoming["call_type"], call_type);
    assert_eq!(incoming["conversation_id"], "7");
    let created = tab_gets(&mut bob_sockets, "notification.created").await;
    let payload = &created["payload"];
    assert_eq!(payload["verb"], format!("incoming_{call_type}_call"));
    assert_eq!(payload["object_id"].to_string(), id);
    assert_eq!(payload["actor"]["id"], "alice");
    assert_eq!(payload["data"]["conversation_id"], "7");
    assert!(payload["actor"].get("email").is_none());
    all_silent(&mut alice_sockets).await;

    // The offer, with a sender the client tried to choose itself: the server stamps the truth.
    alice_sockets[0]
        .send_json(json!({"type": "call.offer", "call_id": id, "call_type": call_type, "caller_id": "mallory", "offer": offer_sdp(), "conversation_id": "7"}))
        .await;
    let offer = tab_gets(&mut bob_sockets, "call.offer").await;
    assert_eq!(offer["offer"], offer_sdp(), "the SDP arrives untouched");
    assert_eq!(offer["caller_id"], "alice");
    assert_eq!(offer["sender_id"], "alice");
    assert_eq!(offer["call_type"], call_type);
    all_silent(&mut alice_sockets).await;

    // The callee answers over the socket: that accepts the call.
    bob_sockets[0].send_json(json!({"type": "call.answer", "call_id": id, "answer": answer_sdp()})).await;
    let answer = tab_gets(&mut alice_sockets, "call.answer").await;
    assert_eq!(answer["answer"], answer_sdp());
    assert_eq!(answer["receiver_id"], "bob");
    tab_gets(&mut alice_sockets, "call.accepted").await;
    if callee_page == Page::Chat {
        // Answered on the chat socket: Bob's notification socket is "another device" to the
        // server. It is told the call was answered, and that this is no hang-up.
        tab_gets(&mut bob_sockets, "call.accepted").await;
        let elsewhere = tab_gets(&mut bob_sockets, "call.end").await;
        assert_eq!(elsewhere["end_reason"], "answered_elsewhere");
        assert_eq!(elsewhere["status"], "active");
    }
    all_silent(&mut bob_sockets).await;
    assert_eq!(app.get(&format!("/api/calls/{id}/"), &bob).await.expect(200)["status"], "active");

    // Trickled candidates both ways, stamped with their sender.
    alice_sockets[0].send_json(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(1)})).await;
    let ice = tab_gets(&mut bob_sockets, "call.ice-candidate").await;
    assert_eq!(ice["candidate"], candidate(1));
    assert_eq!(ice["user_id"], "alice");
    bob_sockets[0]
        .send_json(
            json!({"type": "call.ice-candidate", "call_id": id.parse::<i64>().expect("n"), "candidate": candidate(2)}),
        )
        .await;
    let ice = tab_gets(&mut alice_sockets, "call.ice-candidate").await;
    assert_eq!(ice["candidate"], candidate(2));
    assert_eq!(ice["user_id"], "bob");

    // Hang-up: a socket call.end, then POST end/ (idempotent).
    alice_sockets[0].send_json(json!({"type": "call.end", "call_id": id})).await;
    let end = tab_gets(&mut bob_sockets, "call.end").await;
    assert_eq!(end["user_id"], "alice");
    assert_eq!(end["status"], "ended");
    if caller_page == Page::Chat {
        // Sent from the chat socket, so the notification socket is another session of Alice's.
        tab_gets(&mut alice_sockets, "call.end").await;
    }
    let ended = app.post(&format!("/api/calls/{id}/end/"), &alice, json!({"duration_seconds": 1})).await.expect(200);
    assert_eq!(ended["status"], "ended");
    assert!(ended["duration_seconds"].is_u64());
    assert!(ended["ended_at"].as_str().is_some_and(|at| at.ends_with('Z')), "DRF's Z form: {ended}");
    chat_heard_nothing(&mut alice_sockets).await;
    chat_heard_nothing(&mut bob_sockets).await;
    all_silent(&mut bob_sockets).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_on_the_chat_page_voice_and_video() {
    for call_type in ["voice", "video"] {
        web_call(DatabaseBackend::Sqlite, Page::Chat, Page::Chat, call_type).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_on_the_chat_page_voice_and_video() {
    for call_type in ["voice", "video"] {
        web_call(DatabaseBackend::Sqlite, Page::Elsewhere, Page::Elsewhere, call_type).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_on_each_page_voice_and_video() {
    web_call(DatabaseBackend::Sqlite, Page::Chat, Page::Elsewhere, "voice").await;
    web_call(DatabaseBackend::Sqlite, Page::Elsewhere, Page::Chat, "video").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_call_on_postgres() {
    web_call(DatabaseBackend::Postgres, Page::Chat, Page::Elsewhere, "video").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mobile_clients_sequence_works_step_by_step() {
    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let (alice, bob) = two_users(&app).await;
    let mut caller = app.notifications_socket(&alice).await;
    let mut callee = app.notifications_socket(&bob).await;

    let id = app.ring(&alice, "bob").await;
    callee.expect("call.incoming").await;
    callee.expect("notification.created").await;
    // Mobile sends numeric call ids.
    caller.send_json(json!({"type": "call.offer", "call_id": id, "call_type": "video", "offer": offer_sdp()})).await;
    callee.expect("call.offer").await;
    // Candidates trickle before the answer; the callee queues them.
    caller.send_json(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(1)})).await;
    callee.expect("call.ice-candidate").await;

    // The callee accepts over REST first: the caller hears call.answer with no SDP yet.
    app.post(&format!("/api/calls/{id}/accept/"), &bob, json!({})).await.expect(200);
    let accepted = caller.expect("call.answer").await;
    assert_eq!(accepted["answer"], Value::Null);
    caller.expect("call.accepted").await;
    callee.expect("call.accepted").await;
    // Then sends its SDP answer, relayed as is; the answering device gets no call.end (the
    // mobile client would hang up on one).
    callee.send_json(json!({"type": "call.answer", "call_id": id, "answer": answer_sdp()})).await;
    let answer = caller.expect("call.answer").await;
    assert_eq!(answer["answer"], answer_sdp());
    callee.expect_silence().await;
    callee.send_json(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(2)})).await;
    caller.expect("call.ice-candidate").await;

    // The caller polls the call, then hangs up with call.end and POST end/ (retried).
    assert_eq!(app.get(&format!("/api/calls/{id}/"), &alice).await.expect(200)["status"], "active");
    caller.send_json(json!({"type": "call.end", "call_id": id})).await;
    callee.expect("call.end").await;
    for _ in 0..2 {
        app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
    }
    callee.expect_silence().await;

    // Decline: a socket call.end from the callee, then POST reject/.
    let second = app.ring(&alice, "bob").await;
    callee.expect("call.incoming").await;
    callee.expect("notification.created").await;
    callee.send_json(json!({"type": "call.end", "call_id": second})).await;
    let rejected = caller.expect("call.rejected").await;
    assert_eq!(rejected["rejected_by"], "bob");
    assert_eq!(rejected["rejected_by_username"], "bob");
    // No call.end after it: the web client's "Call Declined" screen would not survive one.
    caller.expect_silence().await;
    let after = app.post(&format!("/api/calls/{second}/reject/"), &bob, json!({})).await.expect(200);
    assert_eq!(after["status"], "rejected");
    caller.expect_silence().await;

    // The caller gives up after ringing: call.end then POST end/ → cancelled.
    let third = app.ring(&alice, "bob").await;
    callee.expect("call.incoming").await;
    callee.expect("notification.created").await;
    caller.send_json(json!({"type": "call.end", "call_id": third})).await;
    let end = callee.expect("call.end").await;
    assert_eq!(end["status"], "cancelled");
    callee.expect("call.cancelled").await;
    app.post(&format!("/api/calls/{third}/end/"), &alice, json!({})).await.expect(200);
    assert_eq!(app.get(&format!("/api/calls/{third}/"), &bob).await.expect(200)["status"], "cancelled");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callee_with_three_devices_rings_on_all_and_stops_on_the_others() {
    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let (alice, bob) = two_users(&app).await;
    let mut caller = app.notifications_socket(&alice).await;
    let mut devices = vec![
        app.notifications_socket(&bob).await,
        app.notifications_socket(&bob).await,
        app.notifications_socket(&bob).await,
    ];
    assert_eq!(app.signaling().sessions().sessions_of(&ringline_domain::UserId::parse("bob").expect("id")), 3);

    // Accepting on one device.
    let id = app.ring(&alice, "bob").await;
    all_get(&mut devices, "call.incoming").await;
    all_get(&mut devices, "notification.created").await;
    devices[1].send_json(json!({"type": "call.answer", "call_id": id, "answer": answer_sdp()})).await;
    caller.expect("call.answer").await;
    caller.expect("call.accepted").await;
    for (index, device) in devices.iter_mut().enumerate() {
        if index == 1 {
            device.expect_silence().await;
        } else {
            assert_eq!(device.expect("call.accepted").await["receiver_id"], "bob");
            // The original web client stops ringing only on call.end; its end_reason says the
            // call goes on elsewhere.
            let elsewhere = device.expect("call.end").await;
            assert_eq!(elsewhere["end_reason"], "answered_elsewhere");
            assert_eq!(elsewhere["user_id"], "bob");
        }
    }
    // A hang-up over REST comes from no known device: every device of both parties is told.
    app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
    all_get(&mut devices, "call.end").await;
    caller.expect("call.end").await;

    // Declining on one device.
    let id = app.ring(&alice, "bob").await;
    all_get(&mut devices, "call.incoming").await;
    all_get(&mut devices, "notification.created").await;
    devices[2].send_json(json!({"type": "call.end", "call_id": id})).await;
    caller.expect("call.rejected").await;
    caller.expect_silence().await;
    for (index, device) in devices.iter_mut().enumerate() {
        if index == 2 {
            device.expect_silence().await;
        } else {
            assert_eq!(device.expect("call.rejected").await["rejected_by"], "bob");
            // The original web client stops ringing only on call.end.
            assert_eq!(device.expect("call.end").await["status"], "rejected");
        }
    }

    // Declining over REST (no device known): every device is told.
    let id = app.ring(&alice, "bob").await;
    all_get(&mut devices, "call.incoming").await;
    all_get(&mut devices, "notification.created").await;
    app.post(&format!("/api/calls/{id}/reject/"), &bob, json!({})).await.expect(200);
    all_get(&mut devices, "call.rejected").await;
    all_get(&mut devices, "call.end").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_signal_for_a_call_and_nothing_is_delivered() {
    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let (alice, bob) = two_users(&app).await;
    let carol = app.user("carol").await;
    let dave = app.user("dave").await;
    let erin = app.user("erin").await;
    app.conversation(8, &["carol", "dave"]).await;
    // Erin shares conversation 7 with Alice and Bob and has it on screen: she is in the
    // conversation, not in the call, and must see none of its signaling.
    app.conversation(7, &["alice", "bob", "erin"]).await;
    let mut erin_chat = app.chat_socket(&erin, 7).await;
    let mut alice_socket = app.notifications_socket(&alice).await;
    let mut bob_socket = app.notifications_socket(&bob).await;
    let mut carol_socket = app.notifications_socket(&carol).await;
    let mut dave_socket = app.notifications_socket(&dave).await;

    let id =
        app.post("/api/calls/initiate/", &alice, json!({"receiver_id": "bob", "conversation_id": 7})).await.expect(201)
            ["id"]
            .as_i64()
            .expect("id");
    alice_socket.send_json(json!({"type": "call.offer", "call_id": id, "offer": offer_sdp()})).await;
    bob_socket.expect("call.incoming").await;
    bob_socket.expect("notification.created").await;
    bob_socket.expect("call.offer").await;
    bob_socket.send_json(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(4)})).await;
    alice_socket.expect("call.ice-candidate").await;
    erin_chat.expect_silence().await;
    // Carol and Dave are in a call of their own: a party of *another* call is still a stranger here.
    let other = app.ring(&carol, "dave").await;
    dave_socket.expect("call.incoming").await;
    dave_socket.expect("notification.created").await;

    for frame in [
        json!({"type": "call.offer", "call_id": id, "offer": offer_sdp()}),
        json!({"type": "call.answer", "call_id": id, "answer": answer_sdp()}),
        json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(9)}),
        json!({"type": "call.end", "call_id": id}),
        json!({"type": "call.offer", "call_id": 999_999, "offer": offer_sdp()}),
    ] {
        carol_socket.send_json(frame).await;
        let error = carol_socket.expect("error").await;
        assert_eq!(error["code"], "call_not_found", "{error}");
    }
    // Only the callee may answer, and only the caller offers before the call is up.
    alice_socket.send_json(json!({"type": "call.answer", "call_id": id, "answer": answer_sdp()})).await;
    assert_eq!(alice_socket.expect("error").await["code"], "invalid_call_state");
    bob_socket.send_json(json!({"type": "call.offer", "call_id": id, "offer": offer_sdp()})).await;
    assert_eq!(bob_socket.expect("error").await["code"], "invalid_call_state");
    alice_socket.expect_silence().await;
    bob_socket.expect_silence().await;
    dave_socket.expect_silence().await;
    erin_chat.expect_silence().await;
    assert_eq!(app.get(&format!("/api/calls/{id}/"), &alice).await.expect(200)["status"], "ringing", "nothing changed");

    // Once the call is over, offers and candidates for it are refused.
    alice_socket.send_json(json!({"type": "call.end", "call_id": id})).await;
    bob_socket.expect("call.end").await;
    bob_socket.expect("call.cancelled").await;
    alice_socket.send_json(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(3)})).await;
    let error = alice_socket.expect("error").await;
    assert_eq!(error["code"], "invalid_call_state");
    assert_eq!(error["call_id"], id.to_string());
    alice_socket.send_json(json!({"type": "call.offer", "call_id": id, "offer": offer_sdp()})).await;
    assert_eq!(alice_socket.expect("error").await["code"], "invalid_call_state");
    bob_socket.expect_silence().await;
    let _ = other;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_frames_and_the_session_stays_up() {
    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let (alice, _bob) = two_users(&app).await;
    let mut socket = app.notifications_socket(&alice).await;
    for (frame, code) in [
        ("{not json".to_owned(), "malformed_frame"),
        ("[]".to_owned(), "malformed_frame"),
        (json!({"type": "call.hijack"}).to_string(), "unknown_type"),
        (json!({"call_id": "1"}).to_string(), "missing_field"),
        (json!({"type": "call.offer", "call_id": "1"}).to_string(), "missing_field"),
        (json!({"type": "call.end", "call_id": "abc"}).to_string(), "malformed_frame"),
        (json!({"type": "typing.start"}).to_string(), "wrong_socket"),
        (
            format!("{{\"type\":\"call.offer\",\"call_id\":\"1\",\"offer\":\"{}\"}}", "x".repeat(70 * 1024)),
            "frame_too_large",
        ),
    ] {
        socket.send_text(frame).await;
        let error = socket.expect("error").await;
        assert_eq!(error["code"], code, "{error}");
        assert!(error["detail"].as_str().is_some_and(|d| !d.is_empty()));
        still_up(&mut socket).await;
    }
    socket.send_binary(vec![0, 159, 146, 150]).await;
    assert_eq!(socket.expect("error").await["code"], "unsupported_frame");
    still_up(&mut socket).await;

    // Beyond the connection's hard limit the connection closes (1009); the server carries on.
    let mut huge = app.notifications_socket(&alice).await;
    let _ = huge.try_send_text("x".repeat(2 * 1024 * 1024)).await;
    assert_eq!(huge.closed_with().await, Some(1009), "the oversized connection is closed with 1009");
    still_up(&mut socket).await;
    app.stop().await;
}

/// A hostile client writes a frame over the connection's limit whole, in one write (its
/// write used to fail with a connection reset: the server closed with the rest of the frame
/// unread, and a client that stops at a failed write never reads the 1009 it was sent), or a
/// text frame that is not UTF-8 (the connection used to drop without a Close frame; the
/// standard says 1007). Each learns the standard's code, and its write goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_the_connection_cannot_take_are_closed_with_the_standards_codes() {
    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let (alice, _bob) = two_users(&app).await;
    let mut bystander = app.notifications_socket(&alice).await;
    for size in [1536 * 1024, 8 << 20] {
        let mut huge = app.notifications_socket(&alice).await;
        assert!(huge.send_raw_frame(1, &vec![b'x'; size]).await, "{size} bytes: the write is not reset");
        assert_eq!(huge.closed_with().await, Some(1009), "{size} bytes, sent whole");
    }
    let mut garbled = app.notifications_socket(&alice).await;
    assert!(garbled.send_raw_frame(1, &[b'{', 0xff, 0xfe, b'}']).await);
    assert_eq!(garbled.closed_with().await, Some(1007), "text that is not UTF-8");
    still_up(&mut bystander).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_rate_limited_without_dropping_the_session() {
    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let (alice, _bob) = two_users(&app).await;
    let mut socket = app.notifications_socket(&alice).await;
    for _ in 0..600 {
        socket.send_json(json!({"type": "ping"})).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    while let Some(event) = socket.next_event_within(Duration::from_millis(500)).await {
        match event["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => {
                assert_eq!(event["code"], "rate_limited");
                limited += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((200..400).contains(&pongs), "the burst and the refill are served: {pongs}");
    assert!((1..=3).contains(&limited), "one rate_limited error a second, not one per frame: {limited}");
    // The socket's bucket refills in real time (frames are rated as they arrive): a fifth of a
    // second is room for ten more at 50 a second.
    tokio::time::sleep(Duration::from_millis(200)).await;
    socket.send_json(json!({"type": "ping"})).await;
    socket.expect("pong").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frame_rate_is_configurable() {
    let app = TestApp::spawn_with(DatabaseBackend::Sqlite, |settings| {
        settings.sockets.ws_frames_per_sec = 1;
        settings.sockets.ws_frame_burst = 10;
    })
    .await;
    let (alice, _bob) = two_users(&app).await;
    let mut socket = app.notifications_socket(&alice).await;
    for _ in 0..30 {
        socket.send_json(json!({"type": "ping"})).await;
    }
    let mut pongs = 0;
    while let Some(event) = socket.next_event_within(Duration::from_millis(500)).await {
        if event["type"] == "pong" {
            pongs += 1;
        } else {
            assert_eq!(event["code"], "rate_limited", "{event}");
        }
    }
    assert!((10..=11).contains(&pongs), "the configured burst, not the default 200: {pongs}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_other_chat_participants_only() {
    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let (alice, bob) = two_users(&app).await;
    let mut alice_chat = app.chat_socket(&alice, 7).await;
    let mut bob_chat = app.chat_socket(&bob, 7).await;
    let mut bob_notifications = app.notifications_socket(&bob).await;
    alice_chat.send_json(json!({"type": "typing.start"})).await;
    let typing = bob_chat.expect("typing.started").await;
    assert_eq!(typing["user_id"], "alice");
    assert_eq!(typing["username"], "alice");
    alice_chat.send_json(json!({"type": "typing.stop"})).await;
    bob_chat.expect("typing.stopped").await;
    alice_chat.expect_silence().await;
    bob_notifications.expect_silence().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_timeout_tells_both_sides_and_notifies_the_callee() {
    let clock = Arc::new(ManualClock::new());
    let app = TestApp::spawn_on_clock(DatabaseBackend::Sqlite, &clock, |_| {}).await;
    let (alice, bob) = two_users(&app).await;
    let mut caller = app.notifications_socket(&alice).await;
    let mut callee = app.notifications_socket(&bob).await;
    let id = app.ring(&alice, "bob").await;
    callee.expect("call.incoming").await;
    callee.expect("notification.created").await;
    // The ring timer itself (it looks every second) notices, on the server's clock.
    clock.advance(ringline_domain::DEFAULT_RING_TIMEOUT + Duration::from_secs(1));

    for socket in [&mut caller, &mut callee] {
        let missed = socket.expect("call.missed").await;
        assert_eq!(missed["call_id"], id.to_string());
        let end = socket.expect("call.end").await;
        assert_eq!(end["status"], "missed");
        assert_eq!(end["user_id"], Value::Null);
    }
    let created = callee.expect("notification.created").await;
    assert_eq!(created["payload"]["verb"], "missed_video_call");
    caller.expect_silence().await;

    // The REST notifications are the same objects the events carried.
    let listed = app.get("/api/notifications/", &bob).await.expect(200);
    assert_eq!(listed["count"], 2);
    assert_eq!(listed["results"][0], created["payload"]);
    assert_eq!(listed["results"][1]["verb"], "incoming_video_call");
    let first = listed["results"][0]["id"].as_i64().expect("id");
    app.post(&format!("/api/notifications/{first}/read/"), &bob, json!({})).await.expect(200);
    app.post(&format!("/api/notifications/{first}/read/"), &alice, json!({}))
        .await
        .expect_error(404, "notification_not_found");
    assert_eq!(app.post("/api/notifications/read-all/", &bob, json!({})).await.expect(200)["updated"], 1);
    let listed = app.get("/api/notifications/", &bob).await.expect(200);
    assert!(listed["results"].as_array().expect("list").iter().all(|n| n["unread"] == false));
    assert_eq!(app.get("/api/notifications/", &alice).await.expect(200)["count"], 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_left_ringing_across_a_restart_are_expired_on_start() {
    let clock = Arc::new(ManualClock::new());
    let first = TestApp::spawn_on_clock(DatabaseBackend::Sqlite, &clock, |_| {}).await;
    let (alice, _bob) = two_users(&first).await;
    let id = first.ring(&alice, "bob").await;
    let database = first.stop_keeping_database().await;
    clock.advance(ringline_domain::DEFAULT_RING_TIMEOUT + Duration::from_secs(1));

    // Nobody is connected, and the first server is gone: the next one expires the call itself,
    // on its timer's first pass.
    let second = TestApp::spawn_on_database_and_clock(database, &clock, |_| {}).await;
    let alice = second.token("alice");
    let deadline = tokio::time::Instant::now() + ringline_tests::EVENT_WAIT;
    let mut status = Value::Null;
    while status != "missed" && tokio::time::Instant::now() < deadline {
        status = second.get(&format!("/api/calls/{id}/"), &alice).await.expect(200)["status"].clone();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, "missed");
    let notifications = second.get("/api/notifications/", &second.token("bob")).await.expect(200);
    assert_eq!(notifications["results"][0]["verb"], "missed_video_call");
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_dropped_without_delaying_anyone_else() {
    // A high frame rate, so that Bob's queue fills well before a write to him times out.
    let app = TestApp::spawn_with(DatabaseBackend::Sqlite, |settings| {
        settings.sockets.ws_frames_per_sec = 1000;
        settings.sockets.ws_frame_burst = 1000;
    })
    .await;
    let (alice, bob) = two_users(&app).await;
    app.user("carol").await;
    app.user("dave").await;
    app.conversation(8, &["carol", "dave"]).await;
    let (carol, dave) = (app.token("carol"), app.token("dave"));

    // Bob's socket is opened and then not read until it is dropped.
    let mut stalled = UnresponsivePeer::connect(&app.ws_url(&format!("/ws/notifications/?token={bob}"))).await;
    let mut caller = app.notifications_socket(&alice).await;
    let id = app.ring(&alice, "bob").await;
    caller.send_json(json!({"type": "call.offer", "call_id": id, "offer": offer_sdp()})).await;
    let bob_id = ringline_domain::UserId::parse("bob").expect("id");

    // Carol and Dave talk meanwhile; their events must keep flowing promptly.
    let mut carol_chat = app.chat_socket(&carol, 8).await;
    let mut dave_chat = app.chat_socket(&dave, 8).await;
    // Large candidates, more than the loopback's TCP buffers and Bob's queue can hold.
    let big = json!({"candidate": "x".repeat(60_000), "sdpMid": "0"});
    let mut dropped = false;
    for round in 0..100 {
        for _ in 0..30 {
            caller.send_json(json!({"type": "call.ice-candidate", "call_id": id, "candidate": big})).await;
        }
        let started = std::time::Instant::now();
        carol_chat.send_json(json!({"type": "typing.start"})).await;
        dave_chat.expect("typing.started").await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "round {round}: delivery to others took {:?}",
            started.elapsed()
        );
        if app.signaling().sessions().sessions_of(&bob_id) == 0 {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped, "the stalled session was closed and unregistered");
    // It was kicked while a write to it was pending (its socket was full): once it reads on,
    // it gets what was already on its way and then the documented close code, not a bare drop.
    let closed = stalled.read_until_dropped(Duration::from_secs(10)).await;
    assert_eq!(closed.close_code, Some(4409), "{closed:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_closed_for_idleness_and_one_that_answers_pings_is_not() {
    let app = TestApp::spawn_with(DatabaseBackend::Sqlite, |settings| {
        settings.sockets.ws_ping_interval_secs = 1;
        settings.sockets.ws_idle_timeout_secs = 2;
    })
    .await;
    let (alice, bob) = two_users(&app).await;
    // Neither sends a frame. Bob's client answers the server's pings as any WebSocket library
    // does; Alice's peer reads but never answers, like a phone that lost its network.
    let mut silent = UnresponsivePeer::connect(&app.ws_url(&format!("/ws/notifications/?token={alice}"))).await;
    let mut answering = app.notifications_socket(&bob).await;
    let (dropped, meanwhile) = tokio::join!(
        silent.read_until_dropped(Duration::from_secs(10)),
        answering.next_event_within(Duration::from_secs(4)),
    );
    assert_eq!(dropped.close_code, Some(4408), "the silent peer was closed as idle: {dropped:?}");
    assert!(dropped.pings >= 1, "after being pinged: {dropped:?}");
    assert_eq!(meanwhile, None, "nothing was sent to the answering peer meanwhile");
    still_up(&mut answering).await;
    let alice_id = ringline_domain::UserId::parse("alice").expect("id");
    // The server still waits up to CLOSE_REPLY_TIMEOUT (1 s) for the silent peer's answering
    // Close before it unregisters: allow for that, no more.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while app.signaling().sessions().sessions_of(&alice_id) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.signaling().sessions().sessions_of(&alice_id), 0, "the idle session is unregistered");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sessions_with_going_away() {
    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let (alice, _bob) = two_users(&app).await;
    let mut socket = app.notifications_socket(&alice).await;
    let mut chat = app.chat_socket(&alice, 7).await;
    let stopping = tokio::spawn(app.stop());
    assert_eq!(socket.closed_with().await, Some(1001));
    assert_eq!(chat.closed_with().await, Some(1001));
    tokio::time::timeout(Duration::from_secs(10), stopping).await.expect("stops promptly").expect("stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_need_a_token_and_paginate() {
    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let (_alice, bob) = two_users(&app).await;
    app.send(Method::GET, "/api/notifications/", None, None).await.expect_error(401, "not_authenticated");
    app.get("/api/notifications/?page=2", &bob).await.expect_error(404, "invalid_page");
    app.post("/api/notifications/abc/read/", &bob, json!({})).await.expect_error(404, "notification_not_found");
    app.stop().await;
}

/// The session still answers.
async fn still_up(socket: &mut WsClient) {
    socket.send_json(json!({"type": "ping"})).await;
    socket.expect("pong").await;
}

/// One user may hold only so many sockets on an instance: the next is refused with 4429, and a
/// place freed is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_too_many_sockets_is_refused_the_next_one() {
    let app = TestApp::spawn_with(DatabaseBackend::Sqlite, |settings| settings.sockets.ws_max_per_user = 3).await;
    let (alice, _bob) = two_users(&app).await;
    let mut open = vec![
        app.notifications_socket(&alice).await,
        app.chat_socket(&alice, 7).await,
        app.notifications_socket(&alice).await,
    ];
    let mut refused = WsClient::connect(&app.ws_url(&format!("/ws/notifications/?token={alice}"))).await;
    assert_eq!(refused.closed_with().await, Some(4429));
    // Another user is not affected.
    let bob = app.token("bob");
    app.notifications_socket(&bob).await;
    let mut gone = open.pop().expect("a socket");
    gone.close_and_read_reply(1000).await;
    let alice_id = ringline_domain::UserId::parse("alice").expect("an id");
    while app.signaling().sessions().sessions_of(&alice_id) > 2 {
        tokio::time::sleep(Duration::from_millis(10)).await; // the server unregistering the socket
    }
    still_up(&mut app.notifications_socket(&alice).await).await;
    app.stop().await;
}

/// Counts the events of each type that arrive before `quiet` passes without one.
async fn drain(socket: &mut WsClient, quiet: Duration) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    while let Some(event) = socket.next_event_within(quiet).await {
        let kind = match event["type"].as_str() {
            Some("error") => format!("error:{}", event["code"].as_str().unwrap_or_default()),
            other => other.unwrap_or_default().to_owned(),
        };
        *counts.entry(kind).or_insert(0) += 1;
    }
    counts
}

/// Six of the caller's devices, each within its own frame limit, burst large ICE candidates at
/// a callee who is not reading for the moment: together they once filled its queue and got it
/// closed as a slow consumer. What one party relays to the other is limited as one socket's
/// worth, the rest refused to the senders, so the callee keeps its socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_devices_together_cannot_flood_the_callee() {
    const DEVICES: usize = 6;
    const EACH: usize = 200; // a socket's whole burst
    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let (alice, bob) = two_users(&app).await;
    let mut callee = app.notifications_socket(&bob).await;
    let mut devices = Vec::new();
    for _ in 0..DEVICES {
        devices.push(app.notifications_socket(&alice).await);
    }
    let id = app.ring(&alice, "bob").await;
    callee.expect("call.incoming").await;
    for device in &mut devices {
        drain(device, Duration::from_millis(200)).await;
    }

    let big = json!({"candidate": "x".repeat(60_000), "sdpMid": "0"});
    let frame = json!({"type": "call.ice-candidate", "call_id": id, "candidate": big}).to_string();
    let started = std::time::Instant::now();
    for device in &mut devices {
        for _ in 0..EACH {
            device.send_text(frame.clone()).await;
        }
    }
    let mut refused = 0;
    for device in &mut devices {
        let counts = drain(device, Duration::from_millis(300)).await;
        refused += counts.get("error:rate_limited").copied().unwrap_or_default();
        assert_eq!(counts.len(), usize::from(counts.contains_key("error:rate_limited")), "only refusals: {counts:?}");
    }
    let burst_took = started.elapsed().as_secs_f64();

    // Only now does the callee read.
    let counts = drain(&mut callee, Duration::from_millis(500)).await;
    let relayed = counts.get("call.ice-candidate").copied().unwrap_or_default();
    // The server may still be reading frames for a moment after the last was sent.
    let allowed = EACH as f64 + 50.0 * (burst_took + 0.5);
    assert!(
        relayed >= EACH && relayed as f64 <= allowed,
        "relayed {relayed}, allowed at most {allowed:.0}: {counts:?}"
    );
    assert_eq!(relayed + refused, DEVICES * EACH, "every frame was either relayed or refused");
    still_up(&mut callee).await;
    assert_eq!(app.signaling().sessions().sessions_of(&ringline_domain::UserId::parse("bob").expect("id")), 1);
    app.stop().await;
}

/// A conversation's typing indicators, from all its members together, are limited as one
/// socket's: five members bursting at once reach the sixth only that often.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversations_members_together_cannot_flood_one_member_with_typing() {
    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let members = ["m1", "m2", "m3", "m4", "m5", "m6"];
    for member in members {
        app.user(member).await;
    }
    app.conversation(9, &members).await;
    let mut reader = app.chat_socket(&app.token("m6"), 9).await;
    let mut typists = Vec::new();
    for member in &members[..5] {
        typists.push(app.chat_socket(&app.token(member), 9).await);
    }
    let started = std::time::Instant::now();
    for typist in &mut typists {
        for _ in 0..200 {
            typist.send_json(json!({"type": "typing.start"})).await;
        }
    }
    let burst_took = started.elapsed().as_secs_f64();
    let counts = drain(&mut reader, Duration::from_millis(500)).await;
    let typing = counts.get("typing.started").copied().unwrap_or_default();
    let allowed = 200.0 + 50.0 * (burst_took + 0.5);
    assert!(typing >= 200 && typing as f64 <= allowed, "{typing} typing events, allowed at most {allowed:.0}");
    let mut refused = 0;
    for typist in &mut typists {
        refused +=
            drain(typist, Duration::from_millis(100)).await.get("error:rate_limited").copied().unwrap_or_default();
    }
    assert_eq!(refused + typing, 1000, "each refused indicator was told to its typist");
    still_up(&mut reader).await;
    app.stop().await;
}
