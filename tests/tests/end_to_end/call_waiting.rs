//! Call waiting: a user who turned it on and is in an active call is rung for a second call
//! (`call.incoming` with `"waiting": true`) instead of its caller getting `409 user_busy`;
//! answering it ends the first call (`end_reason: switched_call`) before the second becomes
//! active, atomically, so a user is in one active call at most, under races on one instance
//! and on two. Everyone else keeps the busy rule. `docs/protocol.md`, "Call waiting".

use std::time::Duration;

use reqwest::Method;
use ringline_tests::{DatabaseBackend, TestApp, WsClient, on_both_databases};
use serde_json::{Value, json};

const RACES: usize = 12;

fn sdp(kind: &str, tag: &str) -> Value {
    json!({"type": kind, "sdp": format!("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns={tag}\r\nt=0 0\r\n")})
}

async fn drain(socket: &mut WsClient) -> Vec<Value> {
    let mut events = Vec::new();
    while let Some(event) = socket.next_event_within(Duration::from_millis(250)).await {
        events.push(event);
    }
    events
}

async fn call_waiting(app: &TestApp, token: &str, on: bool) {
    let reply = app.send(Method::PATCH, "/api/call-settings/", Some(token), Some(json!({"call_waiting": on}))).await;
    assert_eq!(reply.expect(200)["call_waiting"], on);
}

async fn ring(app: &TestApp, caller: &str, receiver: &str) -> ringline_tests::Reply {
    app.post("/api/calls/initiate/", caller, json!({"receiver_id": receiver, "call_type": "voice"})).await
}

fn id_of(call: &Value) -> i64 {
    call["id"].as_i64().expect("a call id")
}

async fn call(app: &TestApp, token: &str, id: i64) -> Value {
    app.get(&format!("/api/calls/{id}/"), token).await.expect(200)
}

/// The calls of `token`'s user that are active, as the API lists them.
async fn active_calls(app: &TestApp, token: &str) -> Vec<i64> {
    let page = app.get("/api/calls/", token).await.expect(200);
    page["results"].as_array().expect("results").iter().filter(|c| c["status"] == "active").map(id_of).collect()
}

/// Alice calls Bob and Bob answers; Bob has call waiting on. The tokens and the call's id.
async fn bob_in_a_call(app: &TestApp) -> (String, String, String, String, i64) {
    let (alice, bob, carol, dave) =
        (app.user("alice").await, app.user("bob").await, app.user("carol").await, app.user("dave").await);
    call_waiting(app, &bob, true).await;
    let first = id_of(&ring(app, &alice, "bob").await.expect(201));
    app.post(&format!("/api/calls/{first}/accept/"), &bob, json!({})).await.expect(200);
    (alice, bob, carol, dave, first)
}

async fn a_second_call_rings_a_user_in_a_call_who_turned_call_waiting_on(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob, carol, dave, first) = bob_in_a_call(&app).await;
    let settings = app.get("/api/call-settings/", &bob).await.expect(200);
    assert_eq!(settings["call_waiting"], true);
    let (mut bobs, mut alices, mut carols) = (
        app.notifications_socket(&bob).await,
        app.notifications_socket(&alice).await,
        app.notifications_socket(&carol).await,
    );

    let waiting = ring(&app, &carol, "bob").await.expect(201);
    assert_eq!(waiting["status"], "ringing", "{waiting}");
    assert_eq!(waiting["waiting"], true);
    let second = id_of(&waiting);
    let incoming = bobs.expect("call.incoming").await;
    assert_eq!((incoming["call_id"].clone(), incoming["waiting"].clone()), (json!(second.to_string()), json!(true)));
    // A second waiting call finds him busy; so does anyone calling Alice, who has it off.
    ring(&app, &dave, "bob").await.expect_error(409, "user_busy");
    ring(&app, &dave, "alice").await.expect_error(409, "user_busy");
    // And Carol, ringing Bob, is busy herself.
    ring(&app, &dave, "carol").await.expect_error(409, "user_busy");

    // Bob answers on his socket: the first call ends as switched, then the second is active.
    drain(&mut bobs).await;
    drain(&mut alices).await;
    bobs.send_json(json!({"type": "call.answer", "call_id": second, "answer": sdp("answer", "bob")})).await;
    let events = drain(&mut carols).await;
    let (first_id, second_id) = (first.to_string(), second.to_string());
    assert!(events.iter().any(|e| e["type"] == "call.answer" && e["call_id"] == second_id.as_str()), "{events:?}");
    let alice_events = drain(&mut alices).await;
    let ended = alice_events
        .iter()
        .find(|e| e["type"] == "call.end" && e["call_id"] == first_id.as_str())
        .unwrap_or_else(|| panic!("Alice is told: {alice_events:?}"));
    assert_eq!((ended["status"].clone(), ended["end_reason"].clone()), (json!("ended"), json!("switched_call")));
    let first_call = call(&app, &alice, first).await;
    assert_eq!(first_call["end_reason"], "switched_call");
    assert!(first_call["duration_seconds"].is_u64());
    assert_eq!(call(&app, &bob, second).await["status"], "active");
    assert_eq!(active_calls(&app, &bob).await, vec![second], "one active call");

    // Lines follow: Alice is free again, Bob and Carol are busy with each other.
    let alice_free = id_of(&ring(&app, &alice, "dave").await.expect(201));
    app.post(&format!("/api/calls/{alice_free}/end/"), &alice, json!({})).await.expect(200);
    call_waiting(&app, &bob, false).await;
    ring(&app, &dave, "bob").await.expect_error(409, "user_busy");
    app.stop().await;
}

async fn a_waiting_call_declined_leaves_the_first_call_as_it_was(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob, carol, dave, first) = bob_in_a_call(&app).await;
    let mut carols = app.notifications_socket(&carol).await;
    let second = id_of(&ring(&app, &carol, "bob").await.expect(201));
    app.post(&format!("/api/calls/{second}/reject/"), &bob, json!({})).await.expect(200);
    let events = drain(&mut carols).await;
    assert!(events.iter().any(|e| e["type"] == "call.rejected"), "the caller sees it declined: {events:?}");
    assert_eq!(call(&app, &alice, first).await["status"], "active");
    // Its place is free again: the next caller waits in it.
    let third = ring(&app, &dave, "bob").await.expect(201);
    assert_eq!(third["waiting"], true);
    app.post(&format!("/api/calls/{}/end/", id_of(&third)), &dave, json!({})).await.expect(200);
    app.post(&format!("/api/calls/{first}/end/"), &alice, json!({})).await.expect(200);
    assert!(active_calls(&app, &bob).await.is_empty());
    app.stop().await;
}

/// When the first call ends before the waiting one is answered, the waiting call is an
/// ordinary ringing call: it holds Bob's line (others find him busy) and answering it ends
/// nothing.
async fn a_waiting_call_outliving_the_first_rings_as_usual(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob, carol, dave, first) = bob_in_a_call(&app).await;
    let second = id_of(&ring(&app, &carol, "bob").await.expect(201));
    app.post(&format!("/api/calls/{first}/end/"), &alice, json!({})).await.expect(200);
    call_waiting(&app, &bob, false).await;
    ring(&app, &dave, "bob").await.expect_error(409, "user_busy");
    app.post(&format!("/api/calls/{second}/accept/"), &bob, json!({})).await.expect(200);
    assert_eq!(call(&app, &alice, first).await["end_reason"], "user_hangup", "ended by Alice, not switched");
    assert_eq!(active_calls(&app, &bob).await, vec![second]);
    ring(&app, &alice, "dave").await.expect(201);
    app.stop().await;
}

/// Races, `RACES` rounds each: Alice hangs up the first call while Bob answers the waiting one
/// (either may win; the first call ends once, the second is active, and every line is right
/// after); and two callers ring Bob at once (one waits, the other is told busy).
async fn call_waiting_races(backend: DatabaseBackend, instances: usize) {
    let apps = if instances == 1 {
        vec![TestApp::spawn(backend).await]
    } else {
        TestApp::spawn_joined(backend, instances, |_| {}).await
    };
    let (one, other) = (&apps[0], &apps[apps.len() - 1]);
    let (alice, bob, carol, dave) =
        (one.user("alice").await, one.user("bob").await, one.user("carol").await, one.user("dave").await);
    call_waiting(one, &bob, true).await;
    for round in 0..RACES {
        let first = id_of(&ring(one, &alice, "bob").await.expect(201));
        other.post(&format!("/api/calls/{first}/accept/"), &bob, json!({})).await.expect(200);

        // Two callers at once, on two instances.
        let (by_carol, by_dave) = tokio::join!(ring(one, &carol, "bob"), ring(other, &dave, "bob"));
        let statuses = [by_carol.status.as_u16(), by_dave.status.as_u16()];
        assert!(statuses.contains(&201) && statuses.contains(&409), "one waits, one is busy: {statuses:?}");
        let (waiting, waiting_caller) = if statuses[0] == 201 { (&by_carol, &carol) } else { (&by_dave, &dave) };
        let second = id_of(&waiting.body);

        // Alice hangs up as Bob answers the waiting call.
        let (end, accept) = (format!("/api/calls/{first}/end/"), format!("/api/calls/{second}/accept/"));
        let (hung_up, answered) = tokio::join!(one.post(&end, &alice, json!({})), other.post(&accept, &bob, json!({})));
        assert_eq!((hung_up.status.as_u16(), answered.status.as_u16()), (200, 200), "round {round}");
        let first_call = call(one, &alice, first).await;
        assert_eq!(first_call["status"], "ended");
        assert!(
            ["user_hangup", "switched_call"].contains(&first_call["end_reason"].as_str().unwrap_or_default()),
            "{first_call}"
        );
        assert_eq!(active_calls(one, &bob).await, vec![second], "round {round}: one active call");
        // Alice is free; Bob and the waiting caller are busy with each other.
        let free_callee = if waiting_caller == &carol { "dave" } else { "carol" };
        let free = id_of(&ring(one, &alice, free_callee).await.expect(201));
        one.post(&format!("/api/calls/{free}/end/"), &alice, json!({})).await.expect(200);
        one.post(&format!("/api/calls/{second}/end/"), waiting_caller, json!({})).await.expect(200);
        assert!(active_calls(one, &bob).await.is_empty());
    }
    for app in apps {
        app.stop().await;
    }
}

async fn call_waiting_races_on_one_instance(backend: DatabaseBackend) {
    call_waiting_races(backend, 1).await;
}

async fn call_waiting_races_on_two_instances(backend: DatabaseBackend) {
    call_waiting_races(backend, 2).await;
}

/// Everyone else keeps the busy rule, and a caller cannot use call waiting against a user
/// who has it off (or while that user's call only rings).
async fn without_call_waiting_a_user_in_a_call_is_busy(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob, carol) = (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    let first = id_of(&ring(&app, &alice, "bob").await.expect(201));
    ring(&app, &carol, "bob").await.expect_error(409, "user_busy"); // ringing, and waiting off
    call_waiting(&app, &bob, true).await;
    ring(&app, &carol, "bob").await.expect_error(409, "user_busy"); // still only ringing
    call_waiting(&app, &bob, false).await;
    app.post(&format!("/api/calls/{first}/accept/"), &bob, json!({})).await.expect(200);
    ring(&app, &carol, "bob").await.expect_error(409, "user_busy");
    let reply = app.send(Method::PATCH, "/api/call-settings/", Some(&bob), Some(json!({"call_waiting": "yes"}))).await;
    reply.expect_error(400, "parse_error");
    app.stop().await;
}

/// Bob calls back the caller who waits for him (glare): that answers the waiting call, which
/// switches as an answer does; he is never in two active calls.
async fn calling_the_waiting_caller_answers_the_waiting_call(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob, carol, _dave, first) = bob_in_a_call(&app).await;
    let second = id_of(&ring(&app, &carol, "bob").await.expect(201));
    let answered = ring(&app, &bob, "carol").await.expect(200);
    assert_eq!((id_of(&answered), answered["status"].clone()), (second, json!("active")));
    assert_eq!(call(&app, &alice, first).await["end_reason"], "switched_call");
    assert_eq!(active_calls(&app, &bob).await, vec![second]);
    app.stop().await;
}

/// Waiting calls, the switches they cause and the moments recorded are counted.
async fn waiting_calls_switches_and_moments_are_counted(backend: DatabaseBackend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.metrics.metrics_bind = Some("127.0.0.1:0".parse().expect("an address"));
    })
    .await;
    let (_alice, bob, carol, _dave, _first) = bob_in_a_call(&app).await;
    let before = app.scrape().await;
    assert_eq!(before.value("ringline_calls_waiting_total", &[]), 0.0);
    assert_eq!(before.value("ringline_call_moments_total", &[("moment", "rang")]), 0.0);
    let mut bobs = app.notifications_socket(&bob).await;
    let second = id_of(&ring(&app, &carol, "bob").await.expect(201));
    bobs.expect("call.incoming").await;
    bobs.send_json(json!({"type": "call.ringing", "call_id": second})).await;
    app.post(&format!("/api/calls/{second}/ringing/"), &bob, json!({})).await.expect(200);
    app.post(&format!("/api/calls/{second}/accept/"), &bob, json!({})).await.expect(200);
    let after = app.scrape().await;
    assert_eq!(after.value("ringline_calls_waiting_total", &[]), 1.0);
    assert_eq!(after.value("ringline_call_moments_total", &[("moment", "rang")]), 1.0, "once per call");
    let switched = [("status", "ended"), ("end_reason", "switched_call")];
    assert_eq!(after.value("ringline_calls_finished_total", &switched), 1.0);
    app.stop().await;
}

on_both_databases!(
    calling_the_waiting_caller_answers_the_waiting_call,
    waiting_calls_switches_and_moments_are_counted,
    a_second_call_rings_a_user_in_a_call_who_turned_call_waiting_on,
    a_waiting_call_declined_leaves_the_first_call_as_it_was,
    a_waiting_call_outliving_the_first_rings_as_usual,
    call_waiting_races_on_one_instance,
    call_waiting_races_on_two_instances,
    without_call_waiting_a_user_in_a_call_is_busy,
);
