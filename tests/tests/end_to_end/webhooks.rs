//! Call webhooks against a real receiver (a local HTTP server in the test) that checks every
//! signature: every event of every kind of call, in order; retries while the receiver is down;
//! 410 Gone; a ringing event given up at the ring deadline; nothing lost across a restart; one
//! delivery per event with two instances; calls never wait for a slow receiver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use poem::Request;
use poem::http::StatusCode;
use ringline_tests::{DatabaseBackend, ManualClock, TestApp, on_both_databases, spawn_http};
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &str = "whsec_ringline-test-webhook-secret";

/// What the receiver answers: a status, after a delay.
#[derive(Debug, Clone, Copy)]
struct Answer {
    status: u16,
    delay: Duration,
}

/// One request the receiver took, after checking its signature.
#[derive(Debug, Clone)]
struct Received {
    body: Value,
    answered: u16,
}

impl Received {
    fn kind(&self) -> &str {
        self.body["type"].as_str().unwrap_or_default()
    }

    fn id(&self) -> &str {
        self.body["id"].as_str().unwrap_or_default()
    }

    fn call_id(&self) -> i64 {
        self.body["data"]["call"]["id"].as_i64().unwrap_or_default()
    }
}

/// A webhook receiver on a local port. `answer` decides per event what it answers.
#[derive(Clone)]
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

type Decide = Arc<dyn Fn(&Value) -> Answer + Send + Sync>;

impl Receiver {
    async fn start(decide: impl Fn(&Value) -> Answer + Send + Sync + 'static) -> Self {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let decide: Decide = Arc::new(decide);
        let log = Arc::clone(&received);
        let endpoint = poem::endpoint::make(move |request: Request| {
            let (log, decide) = (Arc::clone(&log), Arc::clone(&decide));
            async move { receive(request, &log, &decide).await }
        });
        let base = spawn_http(poem::Route::new().at("/hooks/calls", endpoint)).await;
        Self { url: format!("{base}/hooks/calls?key=receiver-token"), received }
    }

    fn all(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// The events answered 2xx.
    fn delivered(&self) -> Vec<Received> {
        self.all().into_iter().filter(|r| (200..300).contains(&r.answered)).collect()
    }

    /// Waits until `done` holds of what was delivered.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        self.wait_until(what, Self::delivered, done).await
    }

    /// Waits until `done` holds of every request received, whatever it was answered.
    async fn wait_for_requests(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        self.wait_until(what, Self::all, done).await
    }

    async fn wait_until(
        &self,
        what: &str,
        seen: fn(&Self) -> Vec<Received>,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let delivered = seen(self);
            if done(&delivered) {
                return delivered;
            }
            assert!(Instant::now() < deadline, "never {what}: {:#?}", self.all());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Checks the request as a receiver following `docs/webhooks.md` would, records it, answers.
async fn receive(mut request: Request, log: &Mutex<Vec<Received>>, decide: &Decide) -> poem::Response {
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let signature = header("ringline-signature").expect("every request is signed");
    let event_id = header("ringline-event-id").expect("the event id is a header");
    let event_type = header("ringline-event-type").expect("the event type is a header");
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    let raw = request.take_body().into_bytes().await.expect("a body");
    let (t, v1) = signature
        .split_once(',')
        .and_then(|(t, v1)| Some((t.strip_prefix("t=")?, v1.strip_prefix("v1=")?)))
        .expect("t=…,v1=…");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(&raw);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v1, expected, "the signature verifies");
    let sent_at: i64 = t.parse().expect("unix seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    assert!((i64::try_from(now).expect("now") - sent_at).abs() < 300, "a fresh timestamp");
    let body: Value = serde_json::from_slice(&raw).expect("JSON");
    assert_eq!(body["id"], event_id.as_str());
    assert_eq!(body["type"], event_type.as_str());
    let answer = decide(&body);
    tokio::time::sleep(answer.delay).await;
    log.lock().expect("lock").push(Received { body, answered: answer.status });
    poem::Response::builder().status(StatusCode::from_u16(answer.status).expect("a status")).finish()
}

fn ok(_: &Value) -> Answer {
    Answer { status: 200, delay: Duration::ZERO }
}

fn with_webhooks(url: &str) -> impl Fn(&mut ringline_server::Settings) + Clone + use<> {
    let url = url.to_owned();
    move |settings| {
        settings.webhook.webhook_urls = vec![url.clone()];
        settings.webhook.webhook_secret = Some(SECRET.into());
        settings.webhook.webhook_timeout_secs = 2;
    }
}

/// Waits until no delivery is leased (in flight) or due: every attempt so far has been recorded.
async fn settled_outbox(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let unsettled = "SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending' AND leased_until > 0";
    while app.database().count(unsettled).await > 0 {
        assert!(Instant::now() < deadline, "a delivery stayed in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn people(app: &TestApp) -> (String, String) {
    (app.user("alice").await, app.user("bob").await)
}

fn kinds_of(events: &[Received], call: i64) -> Vec<String> {
    events.iter().filter(|e| e.call_id() == call).map(|e| e.kind().to_owned()).collect()
}

/// Every kind of call, every event, signed, in order, with the REST call JSON.
async fn every_change_reaches_the_receiver_signed_and_in_order(backend: DatabaseBackend) {
    let receiver = Receiver::start(ok).await;
    let clock = Arc::new(ManualClock::new());
    let app = TestApp::spawn_on_clock(backend, &clock, with_webhooks(&receiver.url)).await;
    let (alice, bob) = people(&app).await;

    // Answered and hung up, with the callee online.
    let mut socket = app.notifications_socket(&bob).await;
    let answered = app.ring(&alice, "bob").await;
    app.post(&format!("/api/calls/{answered}/accept/"), &bob, json!({})).await.expect(200);
    app.post(&format!("/api/calls/{answered}/end/"), &alice, json!({})).await.expect(200);
    socket.close_and_read_reply(1000).await;
    let bob_id = ringline_domain::UserId::parse("bob").expect("an id");
    while app.signaling().devices_online(&bob_id).await > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await; // the server unregistering the socket
    }
    // Declined, cancelled and missed, with nobody online.
    let declined = app.ring(&alice, "bob").await;
    app.post(&format!("/api/calls/{declined}/reject/"), &bob, json!({})).await.expect(200);
    let cancelled = app.ring(&alice, "bob").await;
    app.post(&format!("/api/calls/{cancelled}/end/"), &alice, json!({})).await.expect(200);
    let missed = app.ring(&alice, "bob").await;
    // Everything so far is delivered and recorded before the clock jumps: a jump past a
    // delivery's lease while it is in flight would, rightly, send it again.
    receiver.wait_for("the events before the ring timeout", |events| events.len() >= 8).await;
    settled_outbox(&app).await;
    // The ring timer (it looks every second) makes it missed, on the server's clock.
    clock.advance(ringline_domain::DEFAULT_RING_TIMEOUT + Duration::from_secs(1));

    let events = receiver.wait_for("all events", |events| events.len() >= 9).await;
    assert_eq!(kinds_of(&events, answered), ["call.ringing", "call.accepted", "call.ended"]);
    assert_eq!(kinds_of(&events, declined), ["call.ringing", "call.rejected"]);
    assert_eq!(kinds_of(&events, cancelled), ["call.ringing", "call.cancelled"]);
    assert_eq!(kinds_of(&events, missed), ["call.ringing", "call.missed"]);
    let mut ids: Vec<&str> = events.iter().map(Received::id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "each event once, with its own id");

    let of = |call: i64, kind: &str| {
        events.iter().find(|e| e.call_id() == call && e.kind() == kind).map(|e| e.body.clone()).expect("the event")
    };
    let ringing = of(answered, "call.ringing");
    assert!(ringing["id"].as_str().is_some_and(|id| id.starts_with("evt_")), "{ringing}");
    assert!(chrono::DateTime::parse_from_rfc3339(ringing["created_at"].as_str().expect("a time")).is_ok());
    assert_eq!(ringing["data"]["receiver_online"], true, "bob had a socket open");
    assert_eq!(of(declined, "call.ringing")["data"]["receiver_online"], false);
    // The call as REST shows it, as it was at the change.
    let call = &ringing["data"]["call"];
    assert_eq!(call["status"], "ringing");
    assert_eq!(call["caller"]["username"], "alice");
    assert_eq!(call["receiver"]["id"], "bob");
    let ended = of(answered, "call.ended");
    assert!(ended["data"].get("receiver_online").is_none(), "only ringing events say it");
    let rest = app.get(&format!("/api/calls/{answered}/"), &alice).await.expect(200);
    assert_eq!(ended["data"]["call"], rest, "the ended event carries the final REST call");
    assert_eq!(ended["data"]["call"]["end_reason"], "user_hangup");
    assert!(ended["data"]["call"]["duration_seconds"].is_u64());
    assert_eq!(of(missed, "call.missed")["data"]["call"]["end_reason"], "invite_timeout");
    app.stop().await;
}

/// A receiver that fails for a while gets every event once it is back, each call's in order.
async fn a_receiver_that_was_down_gets_everything_once_it_is_back(backend: DatabaseBackend) {
    let up_at = Instant::now() + Duration::from_secs(3);
    let receiver = Receiver::start(move |_| Answer {
        status: if Instant::now() < up_at { 503 } else { 200 },
        delay: Duration::ZERO,
    })
    .await;
    let app = TestApp::spawn_with(backend, with_webhooks(&receiver.url)).await;
    let (alice, bob) = people(&app).await;
    let mut calls = Vec::new();
    for _ in 0..3 {
        let id = app.ring(&alice, "bob").await;
        app.post(&format!("/api/calls/{id}/accept/"), &bob, json!({})).await.expect(200);
        app.post(&format!("/api/calls/{id}/end/"), &bob, json!({})).await.expect(200);
        calls.push(id);
    }
    let events = receiver.wait_for("every event after the outage", |events| events.len() >= 9).await;
    for id in calls {
        assert_eq!(kinds_of(&events, id), ["call.ringing", "call.accepted", "call.ended"]);
    }
    let refused = receiver.all().iter().filter(|r| r.answered == 503).count();
    assert!(refused >= 1, "the receiver was down at first");
    // Retries back off: the first event was tried at most three times in the three seconds.
    let first = receiver.all().first().map(|r| r.id().to_owned()).expect("an event");
    assert!(receiver.all().iter().filter(|r| r.id() == first).count() <= 4);
    app.stop().await;
}

/// Ends a new call and waits for its `call.cancelled`: a pass of the sender after whatever the
/// test did to the clock, which would also have retried any event that was due.
async fn one_more_pass(app: &TestApp, receiver: &Receiver, caller: &str) {
    let later = app.ring(caller, "bob").await;
    app.post(&format!("/api/calls/{later}/end/"), caller, json!({})).await.expect(200);
    let cancelled = |events: &[Received]| events.iter().any(|e| e.call_id() == later && e.kind() == "call.cancelled");
    receiver.wait_for("a later call's events", cancelled).await;
}

/// 410 Gone stops the retries of that event (and the call's next events go on).
async fn gone_stops_the_retries_of_an_event(backend: DatabaseBackend) {
    let receiver = Receiver::start(|body| Answer {
        status: if body["type"] == "call.ringing" { 410 } else { 200 },
        delay: Duration::ZERO,
    })
    .await;
    let clock = Arc::new(ManualClock::new());
    let app = TestApp::spawn_on_clock(backend, &clock, with_webhooks(&receiver.url)).await;
    let (alice, _) = people(&app).await;
    let id = app.ring(&alice, "bob").await;
    app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
    receiver.wait_for("the cancel", |events| events.iter().any(|e| e.kind() == "call.cancelled")).await;
    // Past every backoff a retry could have waited (and within the receiver's 300 s).
    settled_outbox(&app).await;
    clock.advance(Duration::from_secs(120));
    one_more_pass(&app, &receiver, &alice).await;
    let ringing = receiver.all().iter().filter(|r| r.call_id() == id && r.kind() == "call.ringing").count();
    assert_eq!(ringing, 1, "410 is final for that event");
    app.stop().await;
}

/// A ringing event that keeps failing is not retried past the ring deadline; the call's
/// next event (missed) follows.
async fn a_ringing_event_is_given_up_at_the_ring_deadline(backend: DatabaseBackend) {
    // The first call of the fresh database rings a failing receiver; later calls' events go
    // through.
    let receiver = Receiver::start(|body| Answer {
        status: if body["type"] == "call.ringing" && body["data"]["call"]["id"] == 1 { 500 } else { 200 },
        delay: Duration::ZERO,
    })
    .await;
    let clock = Arc::new(ManualClock::new());
    let app = TestApp::spawn_on_clock(backend, &clock, with_webhooks(&receiver.url)).await;
    let (alice, _) = people(&app).await;
    let id = app.ring(&alice, "bob").await;
    assert_eq!(id, 1, "the failing receiver expects the first call");
    let tries =
        |receiver: &Receiver| receiver.all().iter().filter(|r| r.kind() == "call.ringing" && r.call_id() == id).count();
    receiver.wait_for_requests("the first try", |events| events.iter().any(|e| e.kind() == "call.ringing")).await;
    // Its retry (after 2 s of backoff, and up to a fifth more) fails too.
    settled_outbox(&app).await;
    clock.advance(Duration::from_secs(3));
    let retried = |events: &[Received]| events.iter().filter(|e| e.call_id() == 1).count() >= 2;
    receiver.wait_for_requests("a retry", retried).await;
    // The ring deadline passes: the timer makes the call missed, and that event follows.
    settled_outbox(&app).await;
    clock.advance(ringline_domain::DEFAULT_RING_TIMEOUT);
    receiver.wait_for("the missed event", |events| events.iter().any(|e| e.kind() == "call.missed")).await;
    let at_the_deadline = tries(&receiver);
    settled_outbox(&app).await;
    clock.advance(Duration::from_secs(120));
    one_more_pass(&app, &receiver, &alice).await;
    assert_eq!(tries(&receiver), at_the_deadline, "not tried again past the ring deadline");
    assert!((2..=3).contains(&at_the_deadline), "tried within the ring timeout only: {at_the_deadline}");
    app.stop().await;
}

/// The server stops while its receiver is unreachable; after a restart every pending event
/// goes out at once, whatever its backoff had grown to.
async fn nothing_is_lost_across_a_restart(backend: DatabaseBackend) {
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let is_up = Arc::clone(&up);
    let receiver = Receiver::start(move |_| Answer {
        status: if is_up.load(std::sync::atomic::Ordering::SeqCst) { 200 } else { 503 },
        delay: Duration::ZERO,
    })
    .await;
    let clock = Arc::new(ManualClock::new());
    let app = TestApp::spawn_on_clock(backend, &clock, with_webhooks(&receiver.url)).await;
    let (alice, bob) = people(&app).await;
    let id = app.ring(&alice, "bob").await;
    app.post(&format!("/api/calls/{id}/reject/"), &bob, json!({})).await.expect(200);
    // Three failed attempts (backoffs of 2 s and 4 s, each up to a fifth more): the next
    // would wait 8 s more.
    for (attempts, backoff) in [(1, 3), (2, 5), (3, 0)] {
        receiver.wait_for_requests("the outbox retried", |events| events.len() >= attempts).await;
        settled_outbox(&app).await;
        clock.advance(Duration::from_secs(backoff));
    }
    let database = app.stop_keeping_database().await;
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    // The clock stands still: only a restart that sends at once gets these out.
    let app = TestApp::spawn_on_database_and_clock(database, &clock, with_webhooks(&receiver.url)).await;
    let events = receiver.wait_for("the events after the restart", |events| events.len() >= 2).await;
    assert_eq!(kinds_of(&events, id), ["call.ringing", "call.rejected"]);
    app.stop().await;
}

/// `call.ended` carries what the parties reported about the call's media, with the server's
/// MOS and tags (as the REST record shows them), and the delivery attempts are counted.
async fn the_ended_event_carries_the_reported_quality(backend: DatabaseBackend) {
    let receiver = Receiver::start(ok).await;
    let app = TestApp::spawn_with(backend, |settings| {
        with_webhooks(&receiver.url)(settings);
        settings.metrics.metrics_bind = Some("127.0.0.1:0".parse().expect("an address"));
    })
    .await;
    let (alice, bob) = people(&app).await;
    let id = app.ring(&alice, "bob").await;
    app.post(&format!("/api/calls/{id}/accept/"), &bob, json!({})).await.expect(200);
    let report = json!({"rtt_ms": 420, "jitter_ms": 12, "local_candidate_type": "relay", "protocol": "udp"});
    app.post(&format!("/api/calls/{id}/quality/"), &alice, report).await.expect(202);
    app.post(&format!("/api/calls/{id}/end/"), &bob, json!({})).await.expect(200);
    let events = receiver.wait_for("call.ended", |events| events.iter().any(|e| e.kind() == "call.ended")).await;
    let ended = events.iter().find(|e| e.kind() == "call.ended").expect("call.ended");
    let quality = &ended.body["data"]["call"]["quality"];
    assert_eq!(quality["caller"]["rtt_ms"].as_f64(), Some(420.0));
    assert_eq!(quality["tags"], json!(["high_rtt", "relayed"]));
    let record = app.get(&format!("/api/calls/{id}/"), &alice).await.expect(200);
    assert_eq!(*quality, record["quality"]);
    settled_outbox(&app).await;
    let scrape = app.scrape().await;
    assert_eq!(scrape.value("ringline_webhook_deliveries_total", &[("result", "delivered")]), 3.0);
    assert_eq!(scrape.value("ringline_webhook_oldest_pending_age_seconds", &[]), 0.0, "nothing waits");
    app.stop().await;
}

on_both_databases!(
    the_ended_event_carries_the_reported_quality,
    every_change_reaches_the_receiver_signed_and_in_order,
    a_receiver_that_was_down_gets_everything_once_it_is_back,
    gone_stops_the_retries_of_an_event,
    a_ringing_event_is_given_up_at_the_ring_deadline,
    nothing_is_lost_across_a_restart,
);

/// Two instances share the outbox: each event is delivered once, each call's in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_deliver_each_event_once() {
    let receiver = Receiver::start(|_| Answer { status: 200, delay: Duration::from_millis(20) }).await;
    let instances = TestApp::spawn_joined(DatabaseBackend::Postgres, 2, with_webhooks(&receiver.url)).await;
    let [a, b] = &instances[..] else { unreachable!() };
    let (alice, bob) = people(a).await;
    let mut calls = Vec::new();
    for n in 0..10 {
        let (here, there) = if n % 2 == 0 { (a, b) } else { (b, a) };
        let id = here.ring(&alice, "bob").await;
        there.post(&format!("/api/calls/{id}/accept/"), &bob, json!({})).await.expect(200);
        here.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
        calls.push(id);
    }
    let events = receiver.wait_for("30 events", |events| events.len() >= 30).await;
    // A second copy could only show up later: give it a moment of real time (the senders'
    // HTTP requests), as long as their one-second poll.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for event in receiver.all() {
        *seen.entry(event.id().to_owned()).or_default() += 1;
    }
    assert!(seen.values().all(|count| *count == 1), "no event twice: {seen:?}");
    for id in calls {
        assert_eq!(kinds_of(&events, id), ["call.ringing", "call.accepted", "call.ended"]);
    }
    for instance in instances {
        instance.stop().await;
    }
}

/// A receiver that takes its full timeout to answer delays no call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_never_slows_a_call() {
    let receiver = Receiver::start(|_| Answer { status: 200, delay: Duration::from_secs(5) }).await;
    let app = TestApp::spawn_with(DatabaseBackend::Sqlite, with_webhooks(&receiver.url)).await;
    let (alice, bob) = people(&app).await;
    for _ in 0..5 {
        let started = Instant::now();
        let id = app.ring(&alice, "bob").await;
        app.post(&format!("/api/calls/{id}/accept/"), &bob, json!({})).await.expect(200);
        app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
        assert!(started.elapsed() < Duration::from_secs(1), "a call took {:?}", started.elapsed());
    }
    app.stop().await;
}
