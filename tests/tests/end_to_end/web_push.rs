//! Web Push against a push-service stand-in in the test: it checks each request's VAPID JWT
//! against the server's public key, decrypts the payload with the subscription's private key
//! (real RFC 8291), and answers as a push service would; expired subscriptions are removed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use poem::Request;
use poem::http::StatusCode;
use ringline_domain::{PushSubscriptions, UserId};
use ringline_tests::{DatabaseBackend, TestApp, on_both_databases, spawn_http};
use serde_json::{Value, json};
use web_push_native::p256;

/// One browser: its keys, as `pushManager.subscribe` makes them.
struct Browser {
    secret: p256::SecretKey,
    auth: [u8; 16],
}

impl Browser {
    fn new() -> Self {
        use p256::elliptic_curve::rand_core::{OsRng, RngCore};
        let mut auth = [0u8; 16];
        OsRng.fill_bytes(&mut auth);
        Self { secret: p256::SecretKey::random(&mut OsRng), auth }
    }

    /// `PushSubscription.toJSON()` for `endpoint`.
    fn subscription(&self, endpoint: &str) -> Value {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let public = self.secret.public_key().to_encoded_point(false);
        json!({
            "endpoint": endpoint,
            "expirationTime": null,
            "keys": {"p256dh": URL_SAFE_NO_PAD.encode(public.as_bytes()), "auth": URL_SAFE_NO_PAD.encode(self.auth)},
        })
    }
}

/// A message the stand-in took, decrypted.
#[derive(Debug, Clone)]
struct Pushed {
    path: String,
    ttl: u64,
    topic: String,
    urgency: String,
    message: Value,
}

/// A push service on a local port: `/gone/…` answers 410, the rest 201.
struct PushService {
    base: String,
    pushed: Arc<Mutex<Vec<Pushed>>>,
}

impl PushService {
    async fn start(vapid_public_key: String, browser: Arc<Browser>) -> Self {
        let pushed: Arc<Mutex<Vec<Pushed>>> = Arc::default();
        let log = Arc::clone(&pushed);
        let base_cell: Arc<Mutex<String>> = Arc::default();
        let origin = Arc::clone(&base_cell);
        let endpoint = poem::endpoint::make(move |mut request: Request| {
            let (log, browser, key, origin) =
                (Arc::clone(&log), Arc::clone(&browser), vapid_public_key.clone(), Arc::clone(&origin));
            async move {
                let headers = request.headers().clone();
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
                // RFC 8292: `vapid t=<JWT>, k=<the server's public key>`.
                let authorization = header("authorization").expect("VAPID authorization");
                let rest = authorization.strip_prefix("vapid t=").expect("vapid scheme");
                let (token, k) = rest.split_once(", k=").expect("t and k");
                assert_eq!(k, key, "signed with the key /api/push/config/ serves");
                let point = URL_SAFE_NO_PAD.decode(&key).expect("base64url");
                let decoding = jsonwebtoken::DecodingKey::from_ec_components(
                    &URL_SAFE_NO_PAD.encode(&point[1..33]),
                    &URL_SAFE_NO_PAD.encode(&point[33..65]),
                )
                .expect("a P-256 key");
                let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
                validation.set_audience(&[origin.lock().expect("lock").clone()]);
                validation.set_required_spec_claims(&["exp", "aud", "sub"]);
                let claims = jsonwebtoken::decode::<Value>(token, &decoding, &validation).expect("a valid VAPID JWT");
                assert!(claims.claims["sub"].as_str().is_some_and(|sub| sub.starts_with("mailto:")));
                assert_eq!(header("content-encoding").as_deref(), Some("aes128gcm"));
                let body = request.take_body().into_bytes().await.expect("a body").to_vec();
                let auth = web_push_native::Auth::clone_from_slice(&browser.auth);
                let plain = web_push_native::decrypt(body, &browser.secret, &auth).expect("decrypts (RFC 8291)");
                let path = request.uri().path().to_owned();
                log.lock().expect("lock").push(Pushed {
                    path: path.clone(),
                    ttl: header("ttl").and_then(|ttl| ttl.parse().ok()).expect("a TTL"),
                    topic: header("topic").unwrap_or_default(),
                    urgency: header("urgency").unwrap_or_default(),
                    message: serde_json::from_slice(&plain).expect("JSON inside"),
                });
                let status = if path.starts_with("/gone/") { StatusCode::GONE } else { StatusCode::CREATED };
                poem::Response::builder().status(status).finish()
            }
        });
        let base = spawn_http(poem::Route::new().at("/*path", endpoint)).await;
        *base_cell.lock().expect("lock") = base.clone();
        Self { base, pushed }
    }

    async fn wait_for(&self, count: usize) -> Vec<Pushed> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pushed = self.pushed.lock().expect("lock").clone();
            if pushed.len() >= count {
                return pushed;
            }
            assert!(Instant::now() < deadline, "{} pushes, not {count}: {pushed:?}", pushed.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn vapid_key(app: &TestApp) -> String {
    let config = app.send(reqwest::Method::GET, "/api/push/config/", None, None).await.expect(200);
    let key = config["vapid_public_key"].as_str().expect("a key").to_owned();
    let point = URL_SAFE_NO_PAD.decode(&key).expect("base64url");
    assert!(point.len() == 65 && p256::PublicKey::from_sec1_bytes(&point).is_ok(), "a P-256 point");
    key
}

/// A server ringing for `ring_timeout_secs`, alice and bob, and a push service where bob's
/// browser is subscribed (`/push/bob-laptop`).
async fn bob_with_a_browser(
    backend: DatabaseBackend,
    ring_timeout_secs: u64,
) -> (TestApp, String, String, PushService) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.calls.ring_timeout_secs = ring_timeout_secs;
        settings.push.web_push_allow_loopback = true;
    })
    .await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let browser = Arc::new(Browser::new());
    let service = PushService::start(vapid_key(&app).await, Arc::clone(&browser)).await;
    let subscription = browser.subscription(&format!("{}/push/bob-laptop", service.base));
    app.post("/api/push/subscriptions/", &bob, subscription).await.expect(201);
    (app, alice, bob, service)
}

/// A ring reaches the callee's browser, encrypted and signed, and the end of the ring follows
/// under the same topic.
async fn a_ring_reaches_the_browser_and_its_end_follows(backend: DatabaseBackend) {
    let (app, alice, _bob, service) = bob_with_a_browser(backend, 30).await;

    let id = app.ring(&alice, "bob").await;
    let pushed = service.wait_for(1).await;
    let ring = &pushed[0];
    assert_eq!(ring.path, "/push/bob-laptop");
    assert_eq!(ring.message["type"], "call.ringing");
    assert_eq!(ring.message["call"]["id"], id);
    assert_eq!(ring.message["call"]["caller"]["username"], "alice");
    assert!((1..=30).contains(&ring.ttl), "no longer than the ring: {}", ring.ttl);
    assert_eq!((ring.topic.as_str(), ring.urgency.as_str()), (format!("call-{id}").as_str(), "high"));

    app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
    let pushed = service.wait_for(2).await;
    let end = &pushed[1];
    // Cancelled by the caller: a missed call to the receiver, with who to call back.
    assert_eq!(
        end.message,
        json!({
            "type": "call.cancelled", "call_id": id.to_string(), "missed": true, "call_type": "video",
            "caller": ring.message["call"]["caller"], "receiver_id": "bob",
        })
    );
    assert_eq!(end.topic, ring.topic, "the same topic replaces an undelivered ring");
    // Alice's browser is not rung (she has none), and a call alice is rung in is not bob's:
    // something not sent can only be seen by waiting a moment for it (real HTTP).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(service.pushed.lock().expect("lock").len(), 2);
    app.stop().await;
}

/// A call nobody answered is pushed as missed, saying who called and how (the service worker
/// shows it with "Call back"); an answered one only takes the ring down.
async fn a_missed_call_says_who_to_call_back(backend: DatabaseBackend) {
    let (app, alice, bob, service) = bob_with_a_browser(backend, 1).await;

    let body = json!({"receiver_id": "bob", "call_type": "voice"});
    let missed = app.post("/api/calls/initiate/", &alice, body.clone()).await.expect(201)["id"].as_i64().expect("id");
    let pushed = service.wait_for(2).await;
    let end = &pushed[1].message;
    assert_eq!(end["type"], "call.missed");
    assert_eq!(end["call_id"], missed.to_string());
    assert_eq!((end["missed"].clone(), end["call_type"].clone()), (json!(true), json!("voice")));
    assert_eq!(end["caller"]["id"], "alice");
    assert_eq!(end["caller"]["username"], "alice");
    assert_eq!(end["receiver_id"], "bob");

    let answered = app.post("/api/calls/initiate/", &alice, body).await.expect(201)["id"].as_i64().expect("id");
    service.wait_for(3).await;
    app.post(&format!("/api/calls/{answered}/accept/"), &bob, json!({})).await.expect(200);
    let pushed = service.wait_for(4).await;
    assert_eq!(pushed[3].message, json!({"type": "call.accepted", "call_id": answered.to_string()}));
    app.post(&format!("/api/calls/{answered}/end/"), &bob, json!({})).await.expect(200);
    app.stop().await;
}

/// A push service that answers 410 has dropped the subscription: it is removed.
async fn an_expired_subscription_is_removed(backend: DatabaseBackend) {
    let app = TestApp::spawn_with(backend, |settings| settings.push.web_push_allow_loopback = true).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let browser = Arc::new(Browser::new());
    let service = PushService::start(vapid_key(&app).await, Arc::clone(&browser)).await;
    for endpoint in ["/gone/old-phone", "/push/laptop"] {
        let subscription = browser.subscription(&format!("{}{endpoint}", service.base));
        app.post("/api/push/subscriptions/", &bob, subscription).await.expect(201);
    }
    let id = app.ring(&alice, "bob").await;
    service.wait_for(2).await;
    let store = app.storage().push_subscriptions();
    let bob_id = UserId::parse("bob").expect("an id");
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.of_user(&bob_id).await.expect("read").len() != 1 {
        assert!(Instant::now() < deadline, "the expired subscription stayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(store.of_user(&bob_id).await.expect("read")[0].endpoint.ends_with("/push/laptop"));
    app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
    app.stop().await;
}

/// Subscriptions are checked, private, and removable; the key survives a restart.
async fn subscriptions_are_checked_and_the_key_is_kept(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let (_alice, bob) = (app.user("alice").await, app.user("bob").await);
    let eve = app.user("eve").await;
    let key = vapid_key(&app).await;
    let browser = Browser::new();
    let good = browser.subscription("https://fcm.googleapis.com/fcm/send/abc");
    for (bad, why) in [
        (json!({"endpoint": "not a url", "keys": good["keys"]}), "endpoint"),
        (json!({"endpoint": "http://fcm.googleapis.com/fcm/send/abc", "keys": good["keys"]}), "plain http"),
        (
            json!({"endpoint": good["endpoint"], "keys": {"p256dh": "A".repeat(5000), "auth": good["keys"]["auth"]}}),
            "size",
        ),
        (
            json!({"endpoint": format!("https://fcm.googleapis.com/{}", "a".repeat(3000)), "keys": good["keys"]}),
            "length",
        ),
        (json!({"endpoint": good["endpoint"], "keys": {"p256dh": "AAAA", "auth": good["keys"]["auth"]}}), "p256dh"),
        (json!({"endpoint": good["endpoint"], "keys": {"p256dh": good["keys"]["p256dh"], "auth": "AAAA"}}), "auth"),
    ] {
        let reply = app.post("/api/push/subscriptions/", &bob, bad).await;
        assert_eq!(reply.status.as_u16(), 400, "{why}: {}", reply.body);
        assert_eq!(reply.body["code"], "invalid_push_subscription");
    }
    app.send(reqwest::Method::POST, "/api/push/subscriptions/", None, Some(good.clone())).await.expect(401);
    app.post("/api/push/subscriptions/", &bob, good.clone()).await.expect(201);
    let endpoint = json!({"endpoint": "https://fcm.googleapis.com/fcm/send/abc"});
    app.send(reqwest::Method::DELETE, "/api/push/subscriptions/", Some(&eve), Some(endpoint.clone()))
        .await
        .expect_error(404, "push_subscription_not_found");
    app.send(reqwest::Method::DELETE, "/api/push/subscriptions/", Some(&bob), Some(endpoint.clone())).await.expect(204);
    app.send(reqwest::Method::DELETE, "/api/push/subscriptions/", Some(&bob), Some(endpoint))
        .await
        .expect_error(404, "push_subscription_not_found");

    let database = app.stop_keeping_database().await;
    let app = TestApp::spawn_on(database, |_| {}).await;
    assert_eq!(vapid_key(&app).await, key, "generated once, kept in the database");
    app.stop().await;
}

/// Any signed-in user could store an endpoint inside the server's network, and the server
/// POSTed to it at every ring: loopback, private, link-local and metadata addresses, in every
/// spelling, and hosts that are no browser's push service, are refused with 400.
async fn endpoints_inside_the_network_are_refused(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let bob = app.user("bob").await;
    let browser = Browser::new();
    for endpoint in [
        "http://127.0.0.1:6379/",
        "http://localhost/admin",
        "http://[::1]/x",
        "https://127.0.0.1/x",
        "https://localhost/x",
        "https://localhost./x",
        "https://api.localhost/x",
        "https://[::1]/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://[::ffff:a9fe:a9fe]/latest/meta-data/",
        "https://2130706433/x",
        "https://0x7f000001/x",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.1/x",
        "https://192.168.1.1/x",
        "https://[fd00::1]/x",
        "https://[fe80::1]/x",
        "https://0.0.0.0/x",
        "https://metadata.google.internal/computeMetadata/v1/",
        "https://push.example/x",
        "https://fcm.googleapis.com.attacker.example/x",
        "https://user:secret@fcm.googleapis.com/fcm/send/x",
    ] {
        let reply = app.post("/api/push/subscriptions/", &bob, browser.subscription(endpoint)).await;
        assert_eq!(reply.status.as_u16(), 400, "{endpoint}: {}", reply.body);
        assert_eq!(reply.body["code"], "invalid_push_subscription", "{endpoint}");
        assert!(reply.body["detail"].as_str().is_some_and(|detail| detail.starts_with("endpoint ")), "{}", reply.body);
    }
    let store = app.storage().push_subscriptions();
    assert!(store.of_user(&UserId::parse("bob").expect("an id")).await.expect("read").is_empty(), "none stored");
    for endpoint in ["https://fcm.googleapis.com/fcm/send/x", "https://updates.push.services.mozilla.com/wpush/v2/x"] {
        app.post("/api/push/subscriptions/", &bob, browser.subscription(endpoint)).await.expect(201);
    }
    app.stop().await;
}

/// A name is checked as it resolves when the message is sent (the classic bypass: a name that
/// passes when stored and leads to 127.0.0.1). This machine's own name resolves to loopback,
/// as /etc/hosts has it on Debian and in containers: with every host allowed, the endpoint is
/// stored, and yet the listener behind it is never contacted.
async fn a_name_that_resolves_to_loopback_is_never_contacted(backend: DatabaseBackend) {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("the machine's name").trim().to_owned();
    let resolved: Vec<_> = tokio::net::lookup_host((name.as_str(), 0)).await.expect("the name resolves").collect();
    assert!(
        !resolved.is_empty() && resolved.iter().all(|address| address.ip().is_loopback()),
        "this test needs the machine's name ({name}) to resolve to loopback: {resolved:?}"
    );
    let app =
        TestApp::spawn_with(backend, |settings| settings.push.web_push_allowed_hosts = vec!["*".to_owned()]).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let subscription = Browser::new().subscription(&format!("https://{name}:{port}/push/bob"));
    app.post("/api/push/subscriptions/", &bob, subscription).await.expect(201);

    let id = app.ring(&alice, "bob").await;
    let contacted = tokio::time::timeout(Duration::from_secs(2), listener.accept()).await;
    assert!(contacted.is_err(), "the server connected to a loopback listener through {name}");
    app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
    app.stop().await;
}

/// A push service's redirect is never followed: the server would go wherever it says.
async fn a_redirect_is_not_followed(backend: DatabaseBackend) {
    let app = TestApp::spawn_with(backend, |settings| settings.push.web_push_allow_loopback = true).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let location = format!("http://{}/internal", target.local_addr().expect("address"));
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&asked);
    let redirecting = spawn_http(poem::endpoint::make(move |_: Request| {
        let (location, count) = (location.clone(), Arc::clone(&count));
        async move {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            poem::Response::builder().status(StatusCode::TEMPORARY_REDIRECT).header("location", location).finish()
        }
    }))
    .await;
    let subscription = Browser::new().subscription(&format!("{redirecting}/push/bob"));
    app.post("/api/push/subscriptions/", &bob, subscription).await.expect(201);

    let id = app.ring(&alice, "bob").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while asked.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the push service was not asked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let followed = tokio::time::timeout(Duration::from_secs(1), target.accept()).await;
    assert!(followed.is_err(), "the redirect was followed");
    app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
    app.stop().await;
}

/// One user stored 300 subscriptions and made one call send 600 requests: a user's newest
/// five browsers are rung, no more.
async fn a_ring_reaches_at_most_five_browsers(backend: DatabaseBackend) {
    let app = TestApp::spawn_with(backend, |settings| settings.push.web_push_allow_loopback = true).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let browser = Arc::new(Browser::new());
    let service = PushService::start(vapid_key(&app).await, Arc::clone(&browser)).await;
    for n in 0..30 {
        let subscription = browser.subscription(&format!("{}/push/{n}", service.base));
        app.post("/api/push/subscriptions/", &bob, subscription).await.expect(201);
    }
    let _id = app.ring(&alice, "bob").await;
    service.wait_for(5).await;
    // A sixth push could only show up later: give the sender's other requests (real HTTP) a
    // moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut paths: Vec<String> =
        service.pushed.lock().expect("lock").iter().map(|pushed| pushed.path.clone()).collect();
    paths.sort();
    assert_eq!(paths, ["/push/25", "/push/26", "/push/27", "/push/28", "/push/29"], "the five newest, once each");
    app.stop().await;
}

on_both_databases!(
    a_missed_call_says_who_to_call_back,
    a_ring_reaches_the_browser_and_its_end_follows,
    an_expired_subscription_is_removed,
    subscriptions_are_checked_and_the_key_is_kept,
    endpoints_inside_the_network_are_refused,
    a_name_that_resolves_to_loopback_is_never_contacted,
    a_redirect_is_not_followed,
    a_ring_reaches_at_most_five_browsers,
);
