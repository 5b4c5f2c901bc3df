//! A call never gets stuck: the server ends active calls whose parties both went away
//! (`connection_lost`, measured up to the last socket), keeps calls up while one party is
//! connected or comes back within the grace period, survives restarts, and with several
//! instances ends each call exactly once. `connection.ack` carries the user's open calls.
//!
//! Time is driven, not waited for: the servers run on a [`ManualClock`] the test advances, and
//! the test runs the liveness sweep itself right after, so the moments a call ends at are
//! exact, however loaded the machine.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ringline_domain::{
    CallAction, CallService, CallType, Clock, InitiateCommand, LivenessPolicy, ManualClock, SystemClock, UserId,
};
use ringline_signaling::Signaling;
use ringline_storage::testing::TestDatabase;
use ringline_tests::{DatabaseBackend, TestApp, WsClient, on_both_databases};
use serde_json::{Value, json};

/// The default grace period: the clock is driven, so nothing is shortened for the tests.
const GRACE: Duration = Duration::from_secs(30);

/// A little more than the grace period.
const PAST_GRACE: Duration = Duration::from_secs(31);

async fn app_on(backend: DatabaseBackend, clock: &Arc<ManualClock>) -> TestApp {
    TestApp::spawn_on_clock(backend, clock, |_| {}).await
}

fn moment(value: &Value) -> DateTime<Utc> {
    value.as_str().and_then(|text| DateTime::parse_from_rfc3339(text).ok()).expect("a timestamp").with_timezone(&Utc)
}

fn at(clock: &ManualClock) -> DateTime<Utc> {
    clock.now().as_datetime()
}

/// One liveness pass now, as the background sweep would run it at this moment of the clock
/// (the background one may have run first: count what ended by the call's state, not by this).
async fn sweep(app: &TestApp) -> usize {
    app.signaling().sweep_liveness(100).await.expect("sweep")
}

/// Waits until `user` has no session left on `app` (the server has recorded when the last one
/// closed): a condition, not a fixed wait.
async fn until_gone(app: &TestApp, user: &str) {
    let user = UserId::parse(user).expect("an id");
    let deadline = tokio::time::Instant::now() + ringline_tests::EVENT_WAIT;
    while app.signaling().sessions().sessions_of(&user) > 0 {
        assert!(tokio::time::Instant::now() < deadline, "{user}'s session never left");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Alice calls Bob and Bob accepts over REST; returns the call id.
async fn active_call(app: &TestApp, alice: &str, bob: &str) -> i64 {
    let id = app.ring(alice, "bob").await;
    app.post(&format!("/api/calls/{id}/accept/"), bob, json!({})).await.expect(200);
    id
}

async fn call_json(app: &TestApp, token: &str, id: i64) -> Value {
    app.get(&format!("/api/calls/{id}/"), token).await.expect(200)
}

/// Alice and Bob, both connected, in an active call.
struct InCall {
    alice: String,
    bob: String,
    alice_socket: WsClient,
    bob_socket: WsClient,
    id: i64,
}

async fn in_call(app: &TestApp) -> InCall {
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let (alice_socket, _) = connect(app, &alice, None).await;
    let (bob_socket, _) = connect(app, &bob, None).await;
    let id = active_call(app, &alice, &bob).await;
    InCall { alice, bob, alice_socket, bob_socket, id }
}

async fn connect(app: &TestApp, token: &str, resume: Option<&str>) -> (WsClient, Value) {
    app.notifications_socket_resuming(token, resume).await
}

async fn a_call_both_parties_left_ends_with_connection_lost_measured_to_the_last_socket(backend: DatabaseBackend) {
    let clock = Arc::new(ManualClock::new());
    let app = app_on(backend, &clock).await;
    let InCall { alice, bob, mut alice_socket, mut bob_socket, id } = in_call(&app).await;
    // Connected parties keep a call up well past the grace period.
    clock.advance(GRACE * 2);
    assert_eq!(sweep(&app).await, 0);
    assert_eq!(call_json(&app, &alice, id).await["status"], "active", "both connected: the call stays up");

    alice_socket.close_and_read_reply(1000).await;
    until_gone(&app, "alice").await;
    clock.advance(GRACE * 2);
    assert_eq!(sweep(&app).await, 0);
    assert_eq!(call_json(&app, &alice, id).await["status"], "active", "one party still connected keeps it up");
    bob_socket.close_and_read_reply(1000).await;
    until_gone(&app, "bob").await;
    let last_socket_gone = at(&clock);

    clock.advance(GRACE - Duration::from_secs(1));
    assert_eq!(sweep(&app).await, 0, "not before the grace period is over");
    clock.advance(Duration::from_secs(2));
    sweep(&app).await;
    let call = call_json(&app, &alice, id).await;
    assert_eq!((call["status"].as_str(), call["end_reason"].as_str()), (Some("ended"), Some("connection_lost")));
    assert_eq!(moment(&call["ended_at"]), last_socket_gone, "ended when the last socket went, not at the sweep");
    let whole_call = (last_socket_gone - moment(&call["answered_at"])).num_seconds();
    assert_eq!((call["duration_seconds"].as_i64(), whole_call), (Some(120), 120));

    // Both lines are free at once, and a party coming back is told how the call ended.
    let (mut back, ack) = connect(&app, &alice, None).await;
    assert_eq!(ack["open_calls"], json!([]));
    let told = back.expect("call.end").await;
    assert_eq!(told["call_id"], id.to_string());
    assert_eq!(told["end_reason"], "connection_lost");
    let again = app.ring(&bob, "alice").await;
    assert_ne!(again, id);
    app.stop().await;
}

/// A ringing call needs its caller: a caller who is gone for the grace period frees both lines
/// (the ring timeout may be longer), while a callee without a socket is normal (an app asleep).
async fn a_ringing_call_whose_caller_left_is_cancelled(backend: DatabaseBackend) {
    let clock = Arc::new(ManualClock::new());
    let app = TestApp::spawn_on_clock(backend, &clock, |settings| settings.calls.ring_timeout_secs = 600).await;
    let (alice, bob, carol) = (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    let (mut alice_socket, _) = connect(&app, &alice, None).await;
    let (mut bob_socket, _) = connect(&app, &bob, None).await;
    let id = app.ring(&alice, "bob").await;
    bob_socket.expect("call.incoming").await;
    bob_socket.expect("notification.created").await;
    alice_socket.close_and_read_reply(1000).await;
    until_gone(&app, "alice").await;
    let caller_gone = at(&clock);
    clock.advance(PAST_GRACE);
    sweep(&app).await;

    let end = bob_socket.expect("call.end").await;
    assert_eq!((end["status"].as_str(), end["end_reason"].as_str()), (Some("cancelled"), Some("connection_lost")));
    assert_eq!(bob_socket.expect("call.cancelled").await["call_id"], id.to_string());
    let call = call_json(&app, &bob, id).await;
    assert_eq!(call["end_reason"], "connection_lost");
    assert_eq!(moment(&call["ended_at"]), caller_gone, "ended when the caller left: {call}");

    // A caller who stays keeps ringing a callee who has no socket at all.
    let waiting = app.ring(&bob, "carol").await;
    clock.advance(GRACE * 3);
    assert_eq!(sweep(&app).await, 0);
    assert_eq!(call_json(&app, &carol, waiting).await["status"], "ringing");
    app.stop().await;
}

async fn a_party_that_comes_back_within_the_grace_period_keeps_the_call(backend: DatabaseBackend) {
    let clock = Arc::new(ManualClock::new());
    let app = app_on(backend, &clock).await;
    let InCall { alice, bob, mut alice_socket, mut bob_socket, id } = in_call(&app).await;

    alice_socket.close_and_read_reply(1000).await;
    bob_socket.close_and_read_reply(1000).await;
    until_gone(&app, "alice").await;
    until_gone(&app, "bob").await;
    clock.advance(GRACE - Duration::from_secs(2));
    let (_bob_back, ack) = connect(&app, &bob, None).await;
    assert_eq!(ack["open_calls"][0]["id"], id);
    assert_eq!(ack["open_calls"][0]["status"], "active");
    for _ in 0..3 {
        clock.advance(PAST_GRACE);
        assert_eq!(sweep(&app).await, 0);
    }
    assert_eq!(call_json(&app, &alice, id).await["status"], "active", "Bob came back in time");
    app.stop().await;
}

async fn a_restart_in_between_changes_nothing(backend: DatabaseBackend) {
    let clock = Arc::new(ManualClock::new());
    let app = app_on(backend, &clock).await;
    let InCall { alice, mut alice_socket, mut bob_socket, id, .. } = in_call(&app).await;
    let kept = active_call_between(&app, "carol", "dave").await;
    let (mut carol_socket, _) = connect(&app, &app.token("carol"), None).await;
    let (mut dave_socket, _) = connect(&app, &app.token("dave"), None).await;

    alice_socket.close_and_read_reply(1000).await;
    bob_socket.close_and_read_reply(1000).await;
    until_gone(&app, "alice").await;
    until_gone(&app, "bob").await;
    let last_socket_gone = at(&clock);
    clock.advance(Duration::from_secs(5));
    carol_socket.close_and_read_reply(1000).await;
    dave_socket.close_and_read_reply(1000).await;
    until_gone(&app, "carol").await;
    until_gone(&app, "dave").await;
    let database = app.stop_keeping_database().await;

    clock.advance(Duration::from_secs(20));
    let app = TestApp::spawn_on_database_and_clock(database, &clock, |_| {}).await;
    // Carol is back on the new server within the grace period: her call goes on.
    let (_carol_back, ack) = connect(&app, &app.token("carol"), None).await;
    assert_eq!(ack["open_calls"][0]["id"], kept);
    clock.advance(Duration::from_secs(20));
    sweep(&app).await; // alice and bob's call, gone for 45 s; not carol's
    let call = call_json(&app, &alice, id).await;
    assert_eq!(call["end_reason"], "connection_lost", "{call}");
    assert_eq!(moment(&call["ended_at"]), last_socket_gone, "measured to the last socket before the restart");
    assert_eq!(call_json(&app, &app.token("carol"), kept).await["status"], "active");
    app.stop().await;
}

async fn active_call_between(app: &TestApp, caller: &str, receiver: &str) -> i64 {
    let (caller_token, receiver_token) = (app.user(caller).await, app.user(receiver).await);
    let body = json!({"receiver_id": receiver, "call_type": "voice"});
    let id = app.post("/api/calls/initiate/", &caller_token, body).await.expect(201)["id"].as_i64().expect("id");
    app.post(&format!("/api/calls/{id}/accept/"), &receiver_token, json!({})).await.expect(200);
    id
}

/// A phone that switched networks while ringing comes back with an old client (no `resume`):
/// it is told the call is over, so it stops ringing.
async fn a_device_that_missed_the_end_while_offline_is_told_on_reconnect(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let (mut phone, _) = connect(&app, &bob, None).await;
    let id = app.ring(&alice, "bob").await;
    phone.expect("call.incoming").await;
    phone.close_and_read_reply(1000).await;
    app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);

    let (mut phone, ack) = connect(&app, &bob, None).await;
    assert_eq!(ack["open_calls"], json!([]));
    let end = phone.expect("call.end").await;
    assert_eq!((end["call_id"].as_str(), end["status"].as_str()), (Some(id.to_string().as_str()), Some("cancelled")));
    phone.expect_silence().await;

    // In a call again: no stale `call.end` for the old one, which would hang the new one up.
    let next = app.ring(&bob, "alice").await;
    let (mut phone, ack) = connect(&app, &bob, None).await;
    assert_eq!(ack["open_calls"][0]["id"], next);
    phone.expect_silence().await;
    app.stop().await;
}

async fn connection_ack_carries_the_open_call_in_the_rest_shape(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let (_idle, ack) = connect(&app, &bob, None).await;
    assert_eq!(ack["open_calls"], json!([]), "idle");
    assert_eq!(ack["user_id"], "bob", "the original fields stay");

    let id = app.ring(&alice, "bob").await;
    let (_ringing, ack) = connect(&app, &bob, None).await;
    assert_eq!(ack["open_calls"], json!([call_json(&app, &bob, id).await]), "ringing, exactly as REST shows it");
    assert_eq!(ack["open_calls"][0]["status"], "ringing");

    app.post(&format!("/api/calls/{id}/accept/"), &bob, json!({})).await.expect(200);
    let (_active, ack) = connect(&app, &alice, None).await;
    assert_eq!(ack["open_calls"], json!([call_json(&app, &alice, id).await]));
    assert_eq!(ack["open_calls"][0]["status"], "active");
    let mut chat = WsClient::connect(&app.ws_url(&format!("/ws/chat/1/?token={alice}"))).await;
    // Not a participant of conversation 1: refused, so no ack (and nothing leaks).
    assert_eq!(chat.closed_with().await, Some(4403));
    app.stop().await;
}

async fn a_party_reports_why_media_died(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let InCall { alice, bob, mut alice_socket, mut bob_socket, id } = in_call(&app).await;
    drain(&mut alice_socket).await;
    drain(&mut bob_socket).await;

    bob_socket.send_json(json!({"type": "call.end", "call_id": id, "reason": "bored"})).await;
    assert_eq!(bob_socket.expect("error").await["code"], "invalid_reason");
    assert_eq!(call_json(&app, &bob, id).await["status"], "active", "a refused frame changes nothing");

    bob_socket.send_json(json!({"type": "call.end", "call_id": id.to_string(), "reason": "ice_failed"})).await;
    let end = alice_socket.expect("call.end").await;
    assert_eq!(end["end_reason"], "ice_failed");
    assert_eq!(end["user_id"], "bob");
    let call = call_json(&app, &alice, id).await;
    assert_eq!((call["status"].as_str(), call["end_reason"].as_str()), (Some("ended"), Some("ice_failed")));
    app.stop().await;
}

async fn media_state_reaches_the_other_party_only(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob, eve) = (app.user("alice").await, app.user("bob").await, app.user("eve").await);
    let (mut alice_socket, _) = connect(&app, &alice, None).await;
    let (mut bob_socket, _) = connect(&app, &bob, None).await;
    let (mut eve_socket, _) = connect(&app, &eve, None).await;
    let id = active_call(&app, &alice, &bob).await;
    drain(&mut alice_socket).await;
    drain(&mut bob_socket).await;

    alice_socket.send_json(json!({"type": "call.media-state", "call_id": id, "audio": false, "video": true})).await;
    let state = bob_socket.expect("call.media-state").await;
    assert_eq!(
        (state["user_id"].as_str(), state["audio"].as_bool(), state["video"].as_bool()),
        (Some("alice"), Some(false), Some(true))
    );
    assert_eq!(state["call_id"], id.to_string());
    alice_socket.expect_silence().await;
    eve_socket.expect_silence().await;

    eve_socket.send_json(json!({"type": "call.media-state", "call_id": id, "audio": false, "video": false})).await;
    assert_eq!(eve_socket.expect("error").await["code"], "call_not_found");
    bob_socket.expect_silence().await;
    app.stop().await;
}

/// A signaling hub over `database` with no background tasks: the test runs its sweeps.
fn hub_over(database: &TestDatabase, liveness: LivenessPolicy, clock: &Arc<ManualClock>) -> Signaling {
    let storage = database.storage();
    let service = CallService::new(
        Arc::new(storage.calls()),
        Arc::new(storage.directory()),
        clock.clone(),
        Duration::from_secs(45),
    )
    .with_liveness(liveness);
    Signaling::local(service, Arc::new(storage.notifications()))
}

/// Two hubs over one database, as two server instances are, with no background sweeps: the
/// test runs the sweeps itself, both at once.
async fn two_instances_end_each_abandoned_call_exactly_once(backend: DatabaseBackend) {
    let database = TestDatabase::new(backend).await;
    let clock = Arc::new(ManualClock::new());
    let liveness = LivenessPolicy { grace: GRACE, max_call: Duration::from_secs(3600) };
    let (first, second) = (hub_over(&database, liveness, &clock), hub_over(&database, liveness, &clock));
    const PAIRS: usize = 20;
    for pair in 0..PAIRS {
        let (caller, receiver) = (user(&format!("caller{pair}")), user(&format!("receiver{pair}")));
        register(&database, &caller).await;
        register(&database, &receiver).await;
        let command = InitiateCommand { receiver: receiver.clone(), call_type: CallType::Voice, conversation: None };
        let id = first.initiate(&caller, command).await.expect("ring").call().id();
        second.act(&receiver, id, CallAction::Accept, None).await.expect("accept");
    }
    assert_eq!(first.sweep_liveness(100).await.expect("sweep"), 0, "within the grace period nothing ends");
    clock.advance(PAST_GRACE);
    let (a, b) = tokio::join!(first.sweep_liveness(100), second.sweep_liveness(100));
    assert_eq!(a.expect("sweep") + b.expect("sweep"), PAIRS, "each call ended by exactly one instance");
    let busy = database.storage().calls();
    assert!(ringline_domain::CallRepository::users_on_lines(&busy).await.expect("lines").is_empty(), "lines freed");
    database.cleanup().await;
}

/// The last resort: a call nobody hung up ends at the maximum length, whoever is connected.
async fn a_forgotten_call_ends_at_the_maximum_length(backend: DatabaseBackend) {
    let database = TestDatabase::new(backend).await;
    let clock = Arc::new(ManualClock::new());
    let liveness = LivenessPolicy { grace: Duration::from_secs(3600), max_call: Duration::from_secs(60) };
    let hub = hub_over(&database, liveness, &clock);
    let (alice, bob) = (user("alice"), user("bob"));
    register(&database, &alice).await;
    register(&database, &bob).await;
    let command = InitiateCommand { receiver: bob.clone(), call_type: CallType::Video, conversation: None };
    let id = hub.initiate(&alice, command).await.expect("ring").call().id();
    hub.act(&bob, id, CallAction::Accept, None).await.expect("accept");
    clock.advance(Duration::from_secs(59));
    assert_eq!(hub.sweep_liveness(100).await.expect("sweep"), 0, "not before the maximum length");
    clock.advance(Duration::from_secs(2));
    assert_eq!(hub.sweep_liveness(100).await.expect("sweep"), 1);
    let call = hub.service().find(id).await.expect("read").expect("stored");
    assert_eq!(call.end_reason(), Some(ringline_domain::EndReason::MaxDuration));
    assert_eq!(call.duration_seconds(), Some(60), "ended exactly at the cap");
    database.cleanup().await;
}

/// Reads and drops whatever has arrived (the call's set-up events).
async fn drain(socket: &mut WsClient) {
    while socket.next_event_within(ringline_tests::SILENCE).await.is_some() {}
}

fn user(id: &str) -> UserId {
    UserId::parse(id).expect("valid id")
}

async fn register(database: &TestDatabase, id: &UserId) {
    let profile = ringline_domain::UserProfile {
        id: id.clone(),
        username: id.to_string(),
        first_name: String::new(),
        last_name: String::new(),
        profile_image_url: None,
    };
    let now = ringline_domain::Clock::now(&SystemClock);
    database.storage().directory().upsert_user(&profile, now).await.expect("register");
}

on_both_databases!(
    a_call_both_parties_left_ends_with_connection_lost_measured_to_the_last_socket,
    a_party_that_comes_back_within_the_grace_period_keeps_the_call,
    a_ringing_call_whose_caller_left_is_cancelled,
    a_restart_in_between_changes_nothing,
    connection_ack_carries_the_open_call_in_the_rest_shape,
    a_device_that_missed_the_end_while_offline_is_told_on_reconnect,
    a_party_reports_why_media_died,
    media_state_reaches_the_other_party_only,
    two_instances_end_each_abandoned_call_exactly_once,
    a_forgotten_call_ends_at_the_maximum_length,
);
