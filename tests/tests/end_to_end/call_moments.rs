//! Moments of a call that change no status: the ringing receipt (`call.ringing`, `rang_at`)
//! and video turned on (`video_at`, and `screen` in `call.media-state`). `docs/protocol.md`,
//! "Ringing…" and "Turning video on, sharing a screen".

use std::time::Duration;

use futures_util::future::join_all;
use ringline_tests::{DatabaseBackend, TestApp, WsClient, on_both_databases};
use serde_json::{Value, json};

fn sdp(kind: &str) -> Value {
    json!({"type": kind, "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"})
}

/// Every event `socket` gets until it stays quiet for a moment.
async fn drain(socket: &mut WsClient) -> Vec<Value> {
    let mut events = Vec::new();
    while let Some(event) = socket.next_event_within(Duration::from_millis(300)).await {
        events.push(event);
    }
    events
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|event| event["type"] == kind).collect()
}

/// A voice call from alice to bob, ringing; its id.
async fn ring_voice(app: &TestApp, alice: &str) -> i64 {
    let body = json!({"receiver_id": "bob", "call_type": "voice"});
    app.post("/api/calls/initiate/", alice, body).await.expect(201)["id"].as_i64().expect("an id")
}

/// The callee's three devices each say the call rings, at once: the caller's two devices get
/// `call.ringing` once each (once per call, not per device), the record has `rang_at`, and no
/// device of the callee is told anything.
async fn ringing_from_three_devices_reaches_the_caller_once(backend: DatabaseBackend, instances: usize) {
    let apps = if instances == 1 {
        vec![TestApp::spawn(backend).await]
    } else {
        TestApp::spawn_joined(backend, instances, |_| {}).await
    };
    let app = &apps[0];
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let mut callers =
        vec![app.notifications_socket(&alice).await, apps[apps.len() - 1].notifications_socket(&alice).await];
    let mut devices = Vec::new();
    for n in 0..3 {
        devices.push(apps[n % apps.len()].notifications_socket(&bob).await);
    }
    let id = ring_voice(app, &alice).await;
    for device in &mut devices {
        device.expect("call.incoming").await;
        drain(device).await;
    }
    join_all(callers.iter_mut().map(drain)).await;
    let before = app.get(&format!("/api/calls/{id}/"), &alice).await.expect(200);
    assert!(before["rang_at"].is_null(), "nobody said it rings yet: {before}");

    join_all(devices.iter_mut().map(|device| device.send_json(json!({"type": "call.ringing", "call_id": id})))).await;
    for caller in &mut callers {
        let events = drain(caller).await;
        let ringing = of_type(&events, "call.ringing");
        assert_eq!(ringing.len(), 1, "once per call: {events:?}");
        assert_eq!(ringing[0]["call_id"], id.to_string());
        assert_eq!(ringing[0]["receiver_id"], "bob");
        assert!(ringing[0]["rang_at"].is_string(), "{}", ringing[0]);
    }
    for device in &mut devices {
        assert_eq!(drain(device).await, Vec::<Value>::new(), "the callee's devices are told nothing");
    }
    let after = app.get(&format!("/api/calls/{id}/"), &bob).await.expect(200);
    assert!(after["rang_at"].is_string(), "{after}");
    assert_eq!(after["status"], "ringing", "a moment, not a change of status");

    // Said again later (a reloaded tab): nothing new.
    devices[0].send_json(json!({"type": "call.ringing", "call_id": id})).await;
    callers[0].expect_silence().await;
    let again = app.get(&format!("/api/calls/{id}/"), &bob).await.expect(200);
    assert_eq!(again["rang_at"], after["rang_at"], "the first device's moment stays");
    for app in apps {
        app.stop().await;
    }
}

async fn ringing_from_three_devices_reaches_the_caller_once_on_one_instance(backend: DatabaseBackend) {
    ringing_from_three_devices_reaches_the_caller_once(backend, 1).await;
}

async fn ringing_from_three_devices_on_three_instances_reaches_the_caller_once(backend: DatabaseBackend) {
    ringing_from_three_devices_reaches_the_caller_once(backend, 3).await;
}

/// Only the callee, only while the call rings, only a party: anything else is an error frame
/// with a stable code, and the socket stays up.
async fn ringing_is_the_callees_while_the_call_rings(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob, carol) = (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    let (mut caller, mut callee, mut stranger) = (
        app.notifications_socket(&alice).await,
        app.notifications_socket(&bob).await,
        app.notifications_socket(&carol).await,
    );
    let id = ring_voice(&app, &alice).await;
    callee.expect("call.incoming").await;
    drain(&mut callee).await;
    drain(&mut caller).await;

    caller.send_json(json!({"type": "call.ringing", "call_id": id})).await;
    let refused = caller.expect("error").await;
    assert_eq!(refused["code"], "receiver_only", "{refused}");
    assert_eq!(refused["call_id"], id.to_string());
    stranger.send_json(json!({"type": "call.ringing", "call_id": id})).await;
    assert_eq!(stranger.expect("error").await["code"], "call_not_found", "nobody learns the call exists");
    callee.send_json(json!({"type": "call.ringing"})).await;
    assert_eq!(callee.expect("error").await["code"], "missing_field");

    app.post(&format!("/api/calls/{id}/accept/"), &bob, json!({})).await.expect(200);
    drain(&mut caller).await;
    drain(&mut callee).await;
    callee.send_json(json!({"type": "call.ringing", "call_id": id})).await;
    let late = callee.expect("error").await;
    assert_eq!(late["code"], "invalid_call_state", "{late}");
    caller.expect_silence().await;
    for socket in [&mut caller, &mut callee, &mut stranger] {
        socket.send_json(json!({"type": "ping"})).await;
        socket.expect("pong").await;
    }
    let call = app.get(&format!("/api/calls/{id}/"), &bob).await.expect(200);
    assert!(call["rang_at"].is_null(), "no report was taken: {call}");
    app.stop().await;
}

/// A phone woken by a push says so over REST: the same receipt, once per call; the caller may
/// not, nor anyone once the call stopped ringing.
async fn a_woken_phone_says_it_rings_over_rest(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob, carol) = (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    let mut caller = app.notifications_socket(&alice).await;
    let id = ring_voice(&app, &alice).await;
    drain(&mut caller).await;
    let path = format!("/api/calls/{id}/ringing/");

    let first = app.post(&path, &bob, json!({})).await.expect(200);
    assert!(first["rang_at"].is_string(), "{first}");
    assert_eq!(first["status"], "ringing");
    let ringing = caller.expect("call.ringing").await;
    assert_eq!(ringing["call_id"], id.to_string());
    let second = app.post(&path, &bob, json!({})).await.expect(200);
    assert_eq!(second["rang_at"], first["rang_at"], "the first report's moment");
    caller.expect_silence().await;

    app.post(&path, &alice, json!({})).await.expect_error(403, "receiver_only");
    app.send(reqwest::Method::POST, &path, None, Some(json!({}))).await.expect_error(401, "not_authenticated");
    app.post(&path, &carol, json!({})).await.expect_error(404, "call_not_found");
    app.post("/api/calls/999999/ringing/", &bob, json!({})).await.expect_error(404, "call_not_found");
    app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
    app.post(&path, &bob, json!({})).await.expect_error(400, "invalid_call_state");
    app.stop().await;
}

/// Voice to video and back: a party's report of video is the call's `video_at` (the first
/// one), the call keeps its `call_type`, and `screen` says what the video shows.
async fn video_turned_on_in_a_voice_call_is_recorded_once(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let (mut caller, mut callee) = (app.notifications_socket(&alice).await, app.notifications_socket(&bob).await);
    let id = ring_voice(&app, &alice).await;
    callee.expect("call.incoming").await;
    callee.send_json(json!({"type": "call.answer", "call_id": id, "answer": sdp("answer")})).await;
    drain(&mut caller).await;
    drain(&mut callee).await;
    let state = |video: bool, screen: Option<bool>| {
        let mut frame = json!({"type": "call.media-state", "call_id": id, "audio": true, "video": video});
        if let Some(screen) = screen {
            frame["screen"] = screen.into();
        }
        frame
    };

    caller.send_json(state(false, None)).await;
    let relayed = callee.expect("call.media-state").await;
    assert_eq!((relayed["video"].clone(), relayed["screen"].clone()), (json!(false), json!(false)), "{relayed}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let voice = app.get(&format!("/api/calls/{id}/"), &alice).await.expect(200);
    assert!(voice["video_at"].is_null(), "{voice}");

    // A screen shared from a voice call is labelled as such, and is not the camera.
    caller.send_json(state(true, Some(true))).await;
    let shared = callee.expect("call.media-state").await;
    assert_eq!((shared["video"].clone(), shared["screen"].clone()), (json!(true), json!(true)), "{shared}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sharing = app.get(&format!("/api/calls/{id}/"), &alice).await.expect(200);
    assert!(sharing["video_at"].is_null(), "a screen share is not the camera: {sharing}");

    callee.send_json(state(true, Some(false))).await;
    caller.expect("call.media-state").await;
    // Relayed first, recorded right after (the relay does not wait on the database).
    let mut upgraded = Value::Null;
    for _ in 0..50 {
        upgraded = app.get(&format!("/api/calls/{id}/"), &alice).await.expect(200);
        if upgraded["video_at"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(upgraded["video_at"].is_string(), "{upgraded}");
    assert_eq!(upgraded["call_type"], "voice", "placed as a voice call, and stays one");
    assert!(upgraded["video_at"].as_str() >= upgraded["answered_at"].as_str());

    // Off and on again: the first moment stays.
    callee.send_json(state(false, None)).await;
    caller.expect("call.media-state").await;
    caller.send_json(state(true, None)).await;
    callee.expect("call.media-state").await;
    let later = app.get(&format!("/api/calls/{id}/"), &bob).await.expect(200);
    assert_eq!(later["video_at"], upgraded["video_at"]);
    app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
    let ended = app.get(&format!("/api/calls/{id}/"), &bob).await.expect(200);
    assert_eq!(ended["video_at"], upgraded["video_at"], "kept in the history");
    app.stop().await;
}

on_both_databases!(
    ringing_from_three_devices_reaches_the_caller_once_on_one_instance,
    ringing_from_three_devices_on_three_instances_reaches_the_caller_once,
    ringing_is_the_callees_while_the_call_rings,
    a_woken_phone_says_it_rings_over_rest,
    video_turned_on_in_a_voice_call_is_recorded_once,
);
