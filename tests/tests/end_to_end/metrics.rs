//! `/metrics`: scraped over HTTP from the metrics listener and read with an exposition-format
//! parser, after calls of every outcome, sockets, relayed frames and requests. Time is driven
//! (a [`ManualClock`]), so answer times and durations are exact.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringline_tests::{DatabaseBackend, ManualClock, Scraped, TestApp, WsClient, on_both_databases};
use serde_json::{Value, json};

fn with_metrics(settings: &mut ringline_server::Settings) {
    settings.metrics.metrics_bind = Some("127.0.0.1:0".parse().expect("an address"));
}

async fn app_on_clock(backend: DatabaseBackend, clock: &Arc<ManualClock>) -> TestApp {
    TestApp::spawn_on_clock(backend, clock, with_metrics).await
}

/// Reads `socket`'s events up to the first of type `kind`.
async fn until(socket: &mut WsClient, kind: &str) -> Value {
    loop {
        let event = socket.next_event_within(ringline_tests::EVENT_WAIT).await.unwrap_or_else(|| panic!("no {kind}"));
        if event["type"] == kind {
            return event;
        }
    }
}

/// What a scrape says about the call funnel, for deltas.
fn finished(scrape: &Scraped, call_type: &str, status: &str, end_reason: &str) -> f64 {
    scrape.value(
        "ringline_calls_finished_total",
        &[("call_type", call_type), ("status", status), ("end_reason", end_reason)],
    )
}

async fn every_outcome_of_a_call_is_counted_once(backend: DatabaseBackend) {
    let clock = Arc::new(ManualClock::new());
    let app = app_on_clock(backend, &clock).await;
    let (alice, bob, carol) = (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    let dave = app.user("dave").await;
    // Alice and Bob stay connected, so the liveness sweep keeps their calls up while the
    // clock jumps; Carol and Dave never connect.
    let _alice_socket = app.notifications_socket(&alice).await;
    let _bob_socket = app.notifications_socket(&bob).await;
    let before = app.scrape().await;
    assert_eq!(before.value("ringline_calls_started_total", &[("call_type", "video")]), 0.0, "present, at zero");

    // Answered after 3 s, hung up 65 s later.
    let answered = app.ring(&alice, "bob").await;
    let ringing = app.scrape().await;
    assert_eq!(ringing.value("ringline_calls_open", &[("status", "ringing")]), 1.0);
    clock.advance(Duration::from_secs(3));
    app.post(&format!("/api/calls/{answered}/accept/"), &bob, json!({})).await.expect(200);
    let active = app.scrape().await;
    assert_eq!(
        (
            active.value("ringline_calls_open", &[("status", "ringing")]),
            active.value("ringline_calls_open", &[("status", "active")])
        ),
        (0.0, 1.0)
    );
    // Busy: carol cannot call alice now.
    let busy = app.post("/api/calls/initiate/", &carol, json!({"receiver_id": "alice"})).await;
    busy.expect_error(409, "user_busy");
    clock.advance(Duration::from_secs(65));
    app.post(&format!("/api/calls/{answered}/end/"), &alice, json!({})).await.expect(200);

    // Declined, cancelled, missed (voice), and dropped (both parties gone past the grace).
    // The background timers may settle the last two first: the counts below say what ended.
    let declined = app.ring(&alice, "bob").await;
    app.post(&format!("/api/calls/{declined}/reject/"), &bob, json!({})).await.expect(200);
    let cancelled = app.ring(&alice, "bob").await;
    app.post(&format!("/api/calls/{cancelled}/end/"), &alice, json!({})).await.expect(200);
    app.post("/api/calls/initiate/", &alice, json!({"receiver_id": "bob", "call_type": "voice"})).await.expect(201);
    clock.advance(Duration::from_secs(60));
    app.signaling().expire_due(100).await.expect("expire");
    let dropped = app.ring(&carol, "dave").await;
    app.post(&format!("/api/calls/{dropped}/accept/"), &dave, json!({})).await.expect(200);
    clock.advance(Duration::from_secs(600));
    app.signaling().sweep_liveness(100).await.expect("sweep");

    let after = app.scrape().await;
    assert_eq!(after.value("ringline_calls_started_total", &[("call_type", "video")]), 4.0);
    assert_eq!(after.value("ringline_calls_started_total", &[("call_type", "voice")]), 1.0);
    assert_eq!(finished(&after, "video", "ended", "user_hangup"), 1.0);
    assert_eq!(finished(&after, "video", "rejected", "declined"), 1.0);
    assert_eq!(finished(&after, "video", "cancelled", "caller_cancelled"), 1.0);
    assert_eq!(finished(&after, "voice", "missed", "invite_timeout"), 1.0);
    assert_eq!(finished(&after, "video", "ended", "connection_lost"), 1.0);
    assert_eq!(after.value("ringline_calls_finished_total", &[]), 5.0, "each call once");
    // Two answered: after 3 s and at once; durations 65 s and the dropped call's.
    assert_eq!(after.observations("ringline_call_answer_seconds", &[]), 2.0);
    assert!((after.value("ringline_call_answer_seconds_sum", &[]) - 3.0).abs() < 1e-6);
    assert_eq!(after.observations("ringline_call_duration_seconds", &[]), 2.0);
    assert_eq!(after.value("ringline_call_refusals_total", &[("code", "user_busy")]), 1.0);
    assert_eq!(after.value("ringline_calls_open", &[]), 0.0, "nothing open any more");
    app.stop().await;
}

async fn sockets_frames_and_requests_are_counted(backend: DatabaseBackend) {
    let app = TestApp::spawn_with(backend, with_metrics).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let mut alice_socket = app.notifications_socket(&alice).await;
    let mut bob_socket = app.notifications_socket(&bob).await;
    let open = app.scrape().await;
    assert_eq!(open.value("ringline_sockets_open", &[("endpoint", "notifications")]), 2.0);
    assert_eq!(open.value("ringline_socket_connects_total", &[("endpoint", "notifications")]), 2.0);

    let id = app.ring(&alice, "bob").await;
    until(&mut bob_socket, "call.incoming").await;
    app.post(&format!("/api/calls/{id}/accept/"), &bob, json!({})).await.expect(200);
    until(&mut alice_socket, "call.accepted").await;
    let candidate = json!({"candidate": "candidate:1 1 udp 1 192.0.2.1 9 typ host", "sdpMid": "0"});
    alice_socket
        .send_json(json!({"type": "call.ice-candidate", "call_id": id.to_string(), "candidate": candidate}))
        .await;
    until(&mut bob_socket, "call.ice-candidate").await;
    alice_socket.send_json(json!({"type": "no.such.frame"})).await;
    until(&mut alice_socket, "error").await;
    app.get(&format!("/api/calls/{id}/"), &alice).await.expect(200);
    app.get("/api/calls/999999/", &alice).await.expect(404);
    alice_socket.close_and_read_reply(1000).await;

    // The session leaves after its close: read until it has.
    let deadline = Instant::now() + ringline_tests::EVENT_WAIT;
    let scrape = loop {
        let scrape = app.scrape().await;
        if scrape.value("ringline_sockets_open", &[("endpoint", "notifications")]) == 1.0 || Instant::now() > deadline {
            break scrape;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(scrape.value("ringline_sockets_open", &[("endpoint", "notifications")]), 1.0);
    assert_eq!(scrape.value("ringline_socket_closes_total", &[("endpoint", "notifications"), ("code", "1000")]), 1.0);
    assert_eq!(scrape.value("ringline_relayed_frames_total", &[("type", "call.ice-candidate")]), 1.0);
    assert_eq!(scrape.value("ringline_socket_refused_frames_total", &[("code", "unknown_type")]), 1.0);
    let get_call = [("method", "GET"), ("route", "/api/calls/:id/")];
    assert_eq!(scrape.value("ringline_http_requests_total", &[get_call[0], get_call[1], ("status", "200")]), 1.0);
    assert_eq!(scrape.value("ringline_http_requests_total", &[get_call[0], get_call[1], ("status", "404")]), 1.0);
    assert_eq!(scrape.observations("ringline_http_request_duration_seconds", &get_call), 2.0);
    // Route labels are templates: no id reaches a label.
    for route in scrape.label_values("ringline_http_requests_total", "route") {
        assert!(!route.split('/').any(|part| part.parse::<i64>().is_ok()), "an id in a label: {route}");
    }
    assert!(scrape.has("ringline_build_info"));
    assert!(scrape.value("ringline_uptime_seconds", &[]) >= 0.0);
    assert!(scrape.value("ringline_process_resident_memory_bytes", &[]) > 0.0);

    // Never on the public port.
    let public = app.http.get(format!("{}/metrics", app.base)).send().await.expect("a response");
    assert_eq!(public.status().as_u16(), 404);
    app.stop().await;
}

on_both_databases!(every_outcome_of_a_call_is_counted_once, sockets_frames_and_requests_are_counted);

/// Each of two instances joined by the bus counts what it did: a call placed on one and
/// accepted on the other is started on the first and answered on the second, and the two
/// sum to one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_each_count_their_own() {
    let clock = Arc::new(ManualClock::new());
    let instances = TestApp::spawn_joined_on_clock(DatabaseBackend::Postgres, 2, &clock, with_metrics).await;
    let (first, second) = (&instances[0], &instances[1]);
    let (alice, bob) = (first.user("alice").await, first.user("bob").await);
    let id = first.ring(&alice, "bob").await;
    clock.advance(Duration::from_secs(2));
    second.post(&format!("/api/calls/{id}/accept/"), &bob, json!({})).await.expect(200);
    let (one, two) = (first.scrape().await, second.scrape().await);
    let started = |scrape: &Scraped| scrape.value("ringline_calls_started_total", &[]);
    let answered = |scrape: &Scraped| scrape.observations("ringline_call_answer_seconds", &[]);
    assert_eq!((started(&one), started(&two)), (1.0, 0.0));
    assert_eq!((answered(&one), answered(&two)), (0.0, 1.0));
    // The open calls are the deployment's: both instances read the same database.
    assert_eq!(one.value("ringline_calls_open", &[("status", "active")]), 1.0);
    assert_eq!(two.value("ringline_calls_open", &[("status", "active")]), 1.0);
    for instance in instances {
        instance.stop().await;
    }
}

/// A scrape costs the same however many sockets are open: its series are per label, not per
/// session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_with_a_thousand_sockets_open_answers_at_once() {
    let app = TestApp::spawn_with(DatabaseBackend::Sqlite, with_metrics).await;
    let mut sockets = Vec::with_capacity(1_000);
    for user in 0..40 {
        let token = app.user(&format!("user{user}")).await;
        for _ in 0..25 {
            sockets.push(app.notifications_socket(&token).await);
        }
    }
    let started = Instant::now();
    let scrape = app.scrape().await;
    let took = started.elapsed();
    assert_eq!(scrape.value("ringline_sockets_open", &[("endpoint", "notifications")]), 1_000.0);
    assert!(took < Duration::from_secs(1), "a scrape took {took:?}");
    drop(sockets);
    app.stop().await;
}

/// Every response carries its request's id (`X-Request-Id`), the one a proxy sent when it is a
/// plain token, else a fresh one; never text that could forge a log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_its_request_id() {
    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let id_of = |response: &reqwest::Response| {
        response.headers().get("x-request-id").and_then(|value| value.to_str().ok()).map(str::to_owned)
    };
    let health = format!("{}/healthz", app.base);
    let given = app.http.get(&health).header("x-request-id", "edge-7f3a.2").send().await.expect("a response");
    assert_eq!(id_of(&given).as_deref(), Some("edge-7f3a.2"));
    let first = id_of(&app.http.get(&health).send().await.expect("a response")).expect("an id");
    let second = id_of(&app.http.get(&health).send().await.expect("a response")).expect("an id");
    assert_ne!(first, second, "a fresh id each time");
    for hostile in ["a b", &"z".repeat(65), "id\"=forged", "x\ty"] {
        let response = app.http.get(&health).header("x-request-id", hostile).send().await.expect("a response");
        let id = id_of(&response).expect("an id");
        assert_ne!(id, hostile);
        assert!(id.bytes().all(|byte| byte.is_ascii_alphanumeric()), "{id}");
    }
    let refused = app.http.get(format!("{}/api/calls/", app.base)).send().await.expect("a response");
    assert_eq!(refused.status().as_u16(), 401);
    assert!(id_of(&refused).is_some(), "errors carry it too");
    app.stop().await;
}
