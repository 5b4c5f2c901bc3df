//! The rest of the HTTP surface: ICE servers and TURN credentials, the admin API, token
//! handling, CORS, errors raised outside handlers, and crossing call attempts racing.

use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::Method;
use ringline_tests::{DatabaseBackend, TEST_JWT_SECRET, TestApp, on_both_databases};
use secrecy::SecretString;
use serde_json::{Value, json};

on_both_databases!(
    ice_servers_carry_turn_credentials_in_coturns_scheme,
    the_admin_api_provisions_users_and_conversations,
    a_token_with_a_username_makes_its_user_known,
    a_removed_or_deactivated_user_is_refused_and_disconnected,
    unknown_users_are_refused_when_registration_is_off,
    the_user_claim_is_configurable,
    crossing_call_attempts_at_once_leave_one_answered_call,
);

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

async fn ice_servers_carry_turn_credentials_in_coturns_scheme(backend: DatabaseBackend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.ice_servers.stun_urls = vec!["stun:stun.example.test:3478".into()];
        settings.ice_servers.turn_urls =
            vec!["turn:turn.example.test:3478?transport=udp".into(), "turns:turn.example.test:5349".into()];
        settings.ice_servers.turn_secret = Some(SecretString::from("coturn-static-auth-secret"));
        settings.ice_servers.turn_ttl_secs = 600;
    })
    .await;
    let alice = app.user("alice").await;
    let body = app.get("/api/turn/ice-servers/", &alice).await.expect(200);
    let servers = body["ice_servers"].as_array().expect("a list");
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0], json!({"urls": ["stun:stun.example.test:3478"]}));
    let turn = &servers[1];
    assert_eq!(turn["urls"], json!(["turn:turn.example.test:3478?transport=udp", "turns:turn.example.test:5349"]));

    // username = "<expiry>:<user>", credential = base64(HMAC-SHA1(secret, username)).
    let username = turn["username"].as_str().expect("username");
    let (expiry, user) = username.split_once(':').expect("expiry:user");
    assert_eq!(user, "alice");
    let expiry: i64 = expiry.parse().expect("unix seconds");
    assert!((expiry - (unix_now() + 600)).abs() <= 5, "expiry {expiry} is about now + ttl");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"coturn-static-auth-secret").expect("any key length");
    mac.update(username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(turn["credential"], expected);
    app.stop().await;

    // Without a secret, no TURN entry is handed out; without STUN, none either.
    let bare =
        TestApp::spawn_with(backend, |settings| settings.ice_servers.turn_urls = vec!["turn:t:3478".into()]).await;
    let token = bare.user("alice").await;
    assert_eq!(
        bare.get("/api/turn/ice-servers/", &token).await.expect(200),
        json!({"ice_servers": [], "ice_transport_policy": "all", "expires_at": null})
    );
    bare.stop().await;
}

async fn the_admin_api_provisions_users_and_conversations(backend: DatabaseBackend) {
    let disabled = TestApp::spawn(backend).await;
    let reply =
        disabled.send(Method::PUT, "/api/admin/users/x/", Some("anything"), Some(json!({"username": "x"}))).await;
    reply.expect_error(403, "admin_disabled");
    disabled.stop().await;

    let app =
        TestApp::spawn_with(backend, |settings| settings.auth.admin_token = Some(SecretString::from("operator-token")))
            .await;
    app.send(Method::GET, "/api/admin/users/alice/", Some("wrong"), None)
        .await
        .expect_error(401, "admin_token_invalid");
    app.send(Method::GET, "/api/admin/users/alice/", None, None).await.expect_error(401, "not_authenticated");

    let alice =
        admin(&app, Method::PUT, "/api/admin/users/alice/", Some(json!({"username": "alice", "first_name": "Alice"})))
            .await;
    assert_eq!(alice.expect(200)["first_name"], "Alice");
    admin(&app, Method::PUT, "/api/admin/users/bob/", Some(json!({"username": "bob"}))).await.expect(200);
    admin(&app, Method::PUT, "/api/admin/users/carol/", Some(json!({"username": "carol"}))).await.expect(200);
    admin(&app, Method::PUT, "/api/admin/users/bad id/", Some(json!({"username": "x"})))
        .await
        .expect_error(400, "invalid_user_id");
    admin(&app, Method::PUT, "/api/admin/users/x/", Some(json!({"username": "  "})))
        .await
        .expect_error(400, "invalid_username");
    let renamed =
        admin(&app, Method::PUT, "/api/admin/users/alice/", Some(json!({"username": "alice2"}))).await.expect(200);
    assert_eq!(renamed["username"], "alice2");
    assert_eq!(admin(&app, Method::GET, "/api/admin/users/alice/", None).await.expect(200)["username"], "alice2");

    let conversation =
        admin(&app, Method::PUT, "/api/admin/conversations/7/", Some(json!({"participants": ["alice", "bob"]})))
            .await
            .expect(200);
    assert_eq!(conversation, json!({"id": 7, "participants": ["alice", "bob"]}));
    let unknown =
        admin(&app, Method::PUT, "/api/admin/conversations/7/", Some(json!({"participants": ["nobody"]}))).await;
    unknown.expect_error(409, "unknown_user");
    let added =
        admin(&app, Method::POST, "/api/admin/conversations/7/participants/", Some(json!({"user_ids": ["carol"]})))
            .await
            .expect(200);
    assert_eq!(added["participants"], json!(["alice", "bob", "carol"]));
    admin(&app, Method::DELETE, "/api/admin/conversations/7/participants/carol/", None).await.expect(204);
    admin(&app, Method::DELETE, "/api/admin/conversations/7/participants/carol/", None)
        .await
        .expect_error(404, "participant_not_found");
    admin(&app, Method::GET, "/api/admin/conversations/8/", None).await.expect_error(404, "conversation_not_found");

    // What the admin API set up is what the call API checks against.
    let carol = app.token("carol");
    let outsider = app.post("/api/calls/initiate/", &carol, json!({"receiver_id": "bob", "conversation_id": 7})).await;
    outsider.expect_error(403, "not_conversation_participant");
    let alice_token = app.token("alice");
    app.post("/api/calls/initiate/", &alice_token, json!({"receiver_id": "bob", "conversation_id": 7}))
        .await
        .expect(201);

    // Where a user is connected: counted over their open sockets.
    let presence = || admin(&app, Method::GET, "/api/admin/users/bob/presence/", None);
    assert_eq!(presence().await.expect(200), json!({"online": false, "devices": 0}));
    let bob_token = app.token("bob");
    let phone = app.notifications_socket(&bob_token).await;
    let tab = app.chat_socket(&bob_token, 7).await;
    assert_eq!(presence().await.expect(200), json!({"online": true, "devices": 2}));
    drop((phone, tab));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while presence().await.expect(200)["devices"] != 0 {
        assert!(std::time::Instant::now() < deadline, "closed sockets are no longer counted");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    admin(&app, Method::GET, "/api/admin/users/bad id/presence/", None).await.expect_error(400, "invalid_user_id");

    admin(&app, Method::DELETE, "/api/admin/users/carol/", None).await.expect(204);
    admin(&app, Method::DELETE, "/api/admin/users/carol/", None).await.expect_error(404, "user_not_found");
    let gone = app.post("/api/calls/initiate/", &app.token("bob"), json!({"receiver_id": "carol"})).await;
    gone.expect_error(404, "receiver_not_found");
    app.stop().await;
}

async fn admin(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> ringline_tests::Reply {
    app.send(method, path, Some("operator-token"), body).await
}

fn token_with(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

async fn a_token_with_a_username_makes_its_user_known(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice").await;
    // Unknown until their token is first used.
    app.post("/api/calls/initiate/", &alice, json!({"receiver_id": "5001"}))
        .await
        .expect_error(404, "receiver_not_found");
    // A simplejwt token for a numeric user id, carrying the username as Django apps often add.
    let newcomer = token_with(
        json!({"user_id": 5001, "username": "newcomer", "first_name": "New", "token_type": "access", "jti": "j", "exp": unix_now() + 60}),
        TEST_JWT_SECRET,
    );
    assert_eq!(app.get("/api/calls/", &newcomer).await.expect(200)["count"], 0);
    let call = app.post("/api/calls/initiate/", &alice, json!({"receiver_id": 5001})).await.expect(201);
    assert_eq!(call["receiver"]["username"], "newcomer");
    assert_eq!(call["receiver"]["first_name"], "New");
    app.stop().await;
}

/// A deleted user's still-valid token placed calls and opened sockets, and its `username`
/// claim registered them again; simplejwt refuses the tokens of users that are gone or
/// inactive, and the original app relies on that. Now: 401 with simplejwt's codes, 4401 on
/// sockets, their open sockets closed, their call ended, and no registering them again.
async fn a_removed_or_deactivated_user_is_refused_and_disconnected(backend: DatabaseBackend) {
    let app =
        TestApp::spawn_with(backend, |settings| settings.auth.admin_token = Some(SecretString::from("operator-token")))
            .await;
    let (alice, bob, carol) = (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    let mut bob_phone = app.notifications_socket(&bob).await;
    let mut alice_tab = app.notifications_socket(&alice).await;
    let call = app.ring(&alice, "bob").await;
    bob_phone.expect("call.incoming").await;

    admin(&app, Method::DELETE, "/api/admin/users/bob/", None).await.expect(204);
    assert_eq!(bob_phone.closed_with().await, Some(4401), "the removed user's socket is closed");
    let ended = app.get(&format!("/api/calls/{call}/"), &alice).await.expect(200);
    assert_ne!(ended["status"], "ringing", "their ringing call ended: {ended}");
    assert!(alice_tab.next_event_within(std::time::Duration::from_secs(5)).await.is_some(), "the caller is told");
    app.get("/api/calls/", &bob).await.expect_error(401, "user_not_found");
    app.post("/api/calls/initiate/", &bob, json!({"receiver_id": "alice"})).await.expect_error(401, "user_not_found");
    let mut refused = ringline_tests::WsClient::connect(&app.ws_url(&format!("/ws/notifications/?token={bob}"))).await;
    assert_eq!(refused.closed_with().await, Some(4401));
    // A token that carries a username would register a new user: not a removed one.
    let reregistering = token_with(
        json!({"user_id": "bob", "username": "bob", "token_type": "access", "jti": "j", "exp": unix_now() + 60}),
        TEST_JWT_SECRET,
    );
    app.get("/api/calls/", &reregistering).await.expect_error(401, "user_not_found");
    admin(&app, Method::GET, "/api/admin/users/bob/", None).await.expect_error(404, "user_not_found");
    app.post("/api/calls/initiate/", &alice, json!({"receiver_id": "bob"}))
        .await
        .expect_error(404, "receiver_not_found");

    // Deactivated: refused and disconnected the same way, and let back in when reactivated.
    let mut carol_tab = app.notifications_socket(&carol).await;
    let off =
        admin(&app, Method::PUT, "/api/admin/users/carol/", Some(json!({"username": "carol", "is_active": false})));
    assert_eq!(off.await.expect(200)["is_active"], false);
    assert_eq!(carol_tab.closed_with().await, Some(4401));
    app.get("/api/calls/", &carol).await.expect_error(401, "user_inactive");
    assert_eq!(admin(&app, Method::GET, "/api/admin/users/carol/", None).await.expect(200)["is_active"], false);
    admin(&app, Method::PUT, "/api/admin/users/carol/", Some(json!({"username": "carol"}))).await.expect(200);
    app.get("/api/calls/", &carol).await.expect(200);
    // And a removed user comes back only through the operator.
    admin(&app, Method::PUT, "/api/admin/users/bob/", Some(json!({"username": "bob"}))).await.expect(200);
    app.get("/api/calls/", &bob).await.expect(200);
    app.stop().await;
}

/// A user turned off in the database itself, not through Ringline (another tool, a SQL
/// console), is refused too, once the server reads the refused users again (every 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_deactivated_outside_ringline_is_refused_within_the_reload_period() {
    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let dave = app.user("dave").await;
    app.get("/api/calls/", &dave).await.expect(200);
    let user = ringline_domain::UserId::parse("dave").expect("an id");
    assert!(
        app.storage()
            .directory()
            .set_active(&user, false, ringline_domain::Clock::now(&ringline_domain::SystemClock))
            .await
            .expect("write")
    );
    let changed = std::time::Instant::now();
    loop {
        let reply = app.get("/api/calls/", &dave).await;
        if reply.status.as_u16() == 401 {
            reply.expect_error(401, "user_inactive");
            break;
        }
        assert!(changed.elapsed() < std::time::Duration::from_secs(15), "still let in after {:?}", changed.elapsed());
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    app.stop().await;
}

/// For apps that sync their users: a token naming a user the directory never had is refused
/// (`user_not_found`), whatever its claims; by default it registers them.
async fn unknown_users_are_refused_when_registration_is_off(backend: DatabaseBackend) {
    let app = TestApp::spawn_with(backend, |settings| settings.auth.register_on_first_use = false).await;
    let known = app.user("alice").await;
    app.get("/api/calls/", &known).await.expect(200);
    let newcomer = token_with(
        json!({"user_id": "5002", "username": "newcomer", "token_type": "access", "jti": "j", "exp": unix_now() + 60}),
        TEST_JWT_SECRET,
    );
    app.get("/api/calls/", &newcomer).await.expect_error(401, "user_not_found");
    app.get("/api/calls/", &app.token("5003")).await.expect_error(401, "user_not_found");
    let mut socket =
        ringline_tests::WsClient::connect(&app.ws_url(&format!("/ws/notifications/?token={newcomer}"))).await;
    assert_eq!(socket.closed_with().await, Some(4401));
    app.post("/api/calls/initiate/", &known, json!({"receiver_id": "5002"}))
        .await
        .expect_error(404, "receiver_not_found");
    app.stop().await;
}

async fn the_user_claim_is_configurable(backend: DatabaseBackend) {
    let app = TestApp::spawn_with(backend, |settings| settings.auth.jwt_user_claim = "sub".into()).await;
    app.user("alice").await;
    let by_sub = token_with(json!({"sub": "alice", "token_type": "access", "exp": unix_now() + 60}), TEST_JWT_SECRET);
    app.get("/api/calls/", &by_sub).await.expect(200);
    let by_user_id =
        token_with(json!({"user_id": "alice", "token_type": "access", "exp": unix_now() + 60}), TEST_JWT_SECRET);
    app.get("/api/calls/", &by_user_id).await.expect_error(401, "token_not_valid");
    app.stop().await;
}

async fn crossing_call_attempts_at_once_leave_one_answered_call(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    for round in 0..5 {
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        let (token_a, token_b) = (app.user(&a).await, app.user(&b).await);
        let forward = app.post("/api/calls/initiate/", &token_a, json!({"receiver_id": b}));
        let backward = app.post("/api/calls/initiate/", &token_b, json!({"receiver_id": a}));
        let (forward, backward) = tokio::join!(forward, backward);
        let mut statuses = [forward.status.as_u16(), backward.status.as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 201], "one rings, the other answers it: {:?} {:?}", forward.body, backward.body);
        assert_eq!(forward.body["id"], backward.body["id"], "one call");
        let history = app.get("/api/calls/", &token_a).await.expect(200);
        assert_eq!(history["count"], 1);
        assert_eq!(history["results"][0]["status"], "active");
    }
    app.stop().await;
}

#[tokio::test]
async fn errors_outside_handlers_use_the_same_envelope() {
    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let alice = app.user("alice").await;
    app.send(Method::GET, "/no/such/route", None, None).await.expect_error(404, "not_found");
    app.send(Method::DELETE, "/api/calls/", Some(&alice), None).await.expect_error(405, "method_not_allowed");
    let huge = json!({"receiver_id": "x".repeat(70 * 1024)});
    app.post("/api/calls/initiate/", &alice, huge).await.expect_error(413, "payload_too_large");
    let plain = app
        .http
        .post(format!("{}/api/calls/initiate/", app.base))
        .bearer_auth(&alice)
        .header("content-type", "text/plain")
        .body("receiver_id=bob")
        .send()
        .await
        .expect("answer");
    assert_eq!(plain.status(), 415);
    assert_eq!(plain.json::<Value>().await.expect("json")["code"], "unsupported_media_type");
    // Paths without the trailing slash reach the same operations.
    app.get("/api/calls", &alice).await.expect(200);
    app.stop().await;
}

#[tokio::test]
async fn browsers_may_call_from_configured_origins_only() {
    let app = TestApp::spawn_with(DatabaseBackend::Sqlite, |settings| {
        settings.http.cors_allowed_origins = vec!["https://app.example.test".into()];
    })
    .await;
    let preflight = |origin: &'static str| {
        app.http
            .request(Method::OPTIONS, format!("{}/api/calls/initiate/", app.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    let allowed = preflight("https://app.example.test").await.expect("answer");
    assert_eq!(
        allowed.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()),
        Some("https://app.example.test")
    );
    let denied = preflight("https://evil.example.test").await.expect("answer");
    assert!(denied.headers().get("access-control-allow-origin").is_none());
    assert_eq!(denied.status().as_u16(), 403);
    let body: Value = denied.json().await.expect("the error envelope");
    assert_eq!(body["code"], "origin_not_allowed", "{body}");

    // The web client the server itself serves at `/` is not a cross-origin caller: REST and
    // WebSocket from the server's own origin work whatever the allowed list says.
    let alice = app.user("alice").await;
    let own = app
        .http
        .get(format!("{}/api/calls/", app.base))
        .header("origin", app.base.as_str())
        .bearer_auth(&alice)
        .send()
        .await
        .expect("answer");
    assert_eq!(own.status().as_u16(), 200, "{:?}", own.text().await);
    let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        app.ws_url(&format!("/ws/notifications/?token={alice}")),
    )
    .expect("request");
    request.headers_mut().insert("origin", app.base.parse().expect("header"));
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("the handshake from our own origin");
    use futures_util::StreamExt;
    let first = socket.next().await.expect("a frame").expect("ok");
    assert!(first.to_text().expect("text").contains("connection.ack"));
    app.stop().await;
}

#[tokio::test]
async fn the_docs_and_the_document_are_served() {
    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let docs = app.http.get(format!("{}/api/docs", app.base)).send().await.expect("docs");
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.expect("html");
    assert!(
        html.contains("swagger") && html.contains("/api/calls/initiate/"),
        "the Swagger page shows the contract's paths"
    );
    let served = app.send(Method::GET, "/api/openapi.json", None, None).await.expect(200);
    let generated: Value =
        serde_json::from_str(&ringline_server::openapi_document().await.expect("document")).expect("json");
    assert_eq!(served, generated);
    app.stop().await;
}

/// A database that refuses a statement (here: its table is gone) is a server fault: 500, with
/// nothing of the cause in the answer.
#[tokio::test]
async fn a_failing_database_gives_a_500_that_reveals_nothing() {
    let app = TestApp::spawn(DatabaseBackend::Postgres).await;
    let alice = app.user("alice").await;
    app.get("/api/calls/", &alice).await.expect(200);
    app.database().execute("DROP TABLE calls CASCADE").await;
    let body = app.get("/api/calls/", &alice).await.expect_error(500, "internal_error");
    assert_eq!(body["detail"], "A server error occurred.");
    assert_eq!(body.as_object().map(|o| o.len()), Some(2), "nothing but detail and code: {body}");
    app.stop().await;
}

/// A database that cannot be reached (here: dropped under the server) is an outage, not a
/// fault: 503 `database_unavailable` with `Retry-After`, revealing nothing of the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_gives_a_503_that_reveals_nothing() {
    let app = TestApp::spawn(DatabaseBackend::Postgres).await;
    let alice = app.user("alice").await;
    app.get("/api/calls/", &alice).await.expect(200);
    app.database().drop_while_in_use().await;
    let failed = app.get("/api/calls/", &alice).await;
    let body = failed.expect_error(503, "database_unavailable");
    assert_eq!(body["detail"], "The database is not reachable; try again shortly.");
    assert_eq!(body.as_object().map(|o| o.len()), Some(2), "nothing but detail and code: {body}");
    app.send(Method::GET, "/readyz", None, None).await.expect_error(503, "database_unavailable");

    // A socket still connects, but its ack does not claim the user is idle: `open_calls` is
    // left out because it could not be read.
    let (mut socket, ack) = app.notifications_socket_resuming(&alice, None).await;
    assert!(ack.get("open_calls").is_none(), "unknown, not empty: {ack}");
    assert!(ack["resume_from"].as_str().is_some());
    socket.send_json(serde_json::json!({"type": "ping"})).await;
    socket.expect("pong").await;
    app.stop().await;
}

/// A request refused before its body was read (no token) leaves the keep-alive connection
/// usable: the next request on it is answered.
#[tokio::test]
async fn an_early_refusal_keeps_the_connection_alive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let address = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.expect("connect");
    let body = r#"{"receiver_id": "bob", "call_type": "video"}"#;
    let head = format!(
        "POST /api/calls/initiate/ HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // The body comes a moment after the head, as it does from a client that writes them apart.
    stream.write_all(head.as_bytes()).await.expect("send");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stream.write_all(body.as_bytes()).await.expect("send the body");
    let mut first = vec![0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut first))
        .await
        .expect("answered")
        .expect("read");
    let first = String::from_utf8_lossy(&first[..read]).into_owned();
    assert!(first.starts_with("HTTP/1.1 401"), "{first}");
    let closing = first.to_ascii_lowercase().contains("connection: close");
    let sent = stream.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes()).await;
    let mut second = vec![0u8; 4096];
    let read = match sent {
        Ok(()) => tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut second))
            .await
            .expect("answered")
            .unwrap_or(0),
        Err(_) => 0,
    };
    let second = String::from_utf8_lossy(&second[..read]).into_owned();
    assert!(
        second.starts_with("HTTP/1.1 200") || closing,
        "the connection was dropped without `Connection: close`: first {first:?}, then {second:?}"
    );
    assert!(second.starts_with("HTTP/1.1 200"), "the connection stays usable: {second:?}");
    app.stop().await;
}

/// A participant removed from a conversation loses its chat sockets on it at once (4403): no
/// more typing indicators either way. The others' stay.
#[tokio::test]
async fn a_removed_participant_loses_the_conversations_chat_sockets() {
    let app = TestApp::spawn_with(DatabaseBackend::Sqlite, |settings| {
        settings.auth.admin_token = Some("operator-token".into());
    })
    .await;
    let (alice, bob, carol) = (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    app.conversation(7, &["alice", "bob", "carol"]).await;
    let mut alice_chat = app.chat_socket(&alice, 7).await;
    let mut bob_chat = app.chat_socket(&bob, 7).await;
    let mut carol_chat = app.chat_socket(&carol, 7).await;

    admin(&app, Method::DELETE, "/api/admin/conversations/7/participants/bob/", None).await.expect(204);
    assert_eq!(bob_chat.closed_with().await, Some(4403), "removed: closed as not a participant");
    // Setting the members to alice alone removes carol the same way.
    admin(&app, Method::PUT, "/api/admin/conversations/7/", Some(json!({"participants": ["alice"]}))).await.expect(200);
    assert_eq!(carol_chat.closed_with().await, Some(4403));
    alice_chat.send_json(json!({"type": "ping"})).await;
    alice_chat.expect("pong").await;
    app.stop().await;
}

/// A connection that stalls halfway through its request is closed after the idle timeout
/// instead of being held for ever; a WebSocket answering pings is not idle and stays.
#[tokio::test]
async fn a_stalled_connection_is_closed_and_a_live_socket_is_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(DatabaseBackend::Sqlite, |settings| {
        settings.sockets.ws_ping_interval_secs = 1;
        settings.sockets.ws_idle_timeout_secs = 5;
        settings.http.http_idle_timeout_secs = 2;
    })
    .await;
    let alice = app.user("alice").await;
    let mut socket = app.notifications_socket(&alice).await;
    let address = app.base.trim_start_matches("http://").to_owned();
    let mut stalled = tokio::net::TcpStream::connect(&address).await.expect("connect");
    stalled.write_all(b"GET /healthz HTTP/1.1\r\nHost: ").await.expect("half a request");
    let started = std::time::Instant::now();
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stalled.read(&mut buffer))
        .await
        .expect("closed before 10 s");
    assert!(matches!(read, Ok(0) | Err(_)), "closed, not answered: {read:?}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(1500), "after the idle timeout, not at once");
    // Longer than the idle timeout: the socket, pinged every second, is still up.
    socket.send_json(json!({"type": "ping"})).await;
    socket.expect("pong").await;
    app.stop().await;
}
