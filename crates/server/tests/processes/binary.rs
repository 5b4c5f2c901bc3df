//! The `ringline` binary as a newcomer runs it: no configuration but a database URL and an
//! address, so that the test does not touch the working directory or a fixed port.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::free_port;

struct Running {
    child: Child,
    base: String,
    database: std::path::PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Best effort if a test failed before stopping the server itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
        ringline_storage::testing::remove_sqlite_files(&self.database);
    }
}

/// Runs a `ringline` subcommand on `database_url` with `secret` and returns its stdout.
fn cli(database_url: &str, secret: &str, args: &[&str]) -> String {
    crate::common::cli(&[("RINGLINE_DATABASE_URL", database_url), ("RINGLINE_JWT_SECRET", secret)], args)
}

/// Starts `ringline serve` with its log on a pipe, and waits until it answers.
async fn start_logging(database_url: &str, secret: &str, rust_log: &str) -> (std::process::Child, String) {
    serve_with(&[("RINGLINE_DATABASE_URL", database_url), ("RINGLINE_JWT_SECRET", secret), ("RUST_LOG", rust_log)])
        .await
}

/// Starts `ringline serve` on a free port (unless `settings` names `RINGLINE_BIND`) with
/// `settings` in its environment and its log on a pipe, and waits until it answers.
async fn serve_with(settings: &[(&str, &str)]) -> (std::process::Child, String) {
    crate::common::serve(&[], settings, Stdio::piped()).await
}

/// Stops a server started by [`start_logging`] and returns everything it logged.
fn stop_and_read_log(child: std::process::Child) -> String {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let output = child.wait_with_output().expect("wait");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn start(args: &[&str]) -> Running {
    start_with(args, &[]).await
}

/// [`start`] with `settings` in the server's environment too.
async fn start_with(args: &[&str], settings: &[(&str, &str)]) -> Running {
    let database = std::env::temp_dir().join(format!("ringline_bin_{}.db", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite://{}?mode=rwc", database.display());
    let mut env = vec![("RINGLINE_DATABASE_URL", url.as_str())];
    env.extend_from_slice(settings);
    let (child, base) = crate::common::serve(args, &env, Stdio::inherit()).await;
    Running { child, base, database }
}

/// Sends SIGTERM to the server.
fn terminate(server: &Running) {
    crate::common::terminate(&server.child);
}

/// Waits up to `within` for the server to exit, asserts it exited 0, and returns how long it
/// took.
async fn exited_cleanly(server: &mut Running, within: Duration) -> Duration {
    crate::common::exited_cleanly(&mut server.child, within).await
}

#[tokio::test]
async fn serves_health_probes_on_a_fresh_sqlite_file_and_stops_cleanly_on_sigterm() {
    let mut server = start(&[]).await;
    let health: serde_json::Value =
        reqwest::get(format!("{}/healthz", server.base)).await.expect("healthz").json().await.expect("json");
    assert_eq!(health["status"], "ok");
    let ready = reqwest::get(format!("{}/readyz", server.base)).await.expect("readyz");
    assert_eq!(ready.status(), 200);
    assert!(server.database.exists(), "the SQLite file was created");

    terminate(&server);
    exited_cleanly(&mut server, Duration::from_secs(15)).await;
}

/// A client stalled in the middle of its request headers held the exit for the whole 10 s
/// grace period; the wait now ends once no request is in progress.
#[tokio::test]
async fn a_connection_stalled_mid_request_does_not_hold_up_sigterm() {
    use tokio::io::AsyncWriteExt;
    let mut server = start(&[]).await;
    let mut stalled = tokio::net::TcpStream::connect(server.base.trim_start_matches("http://")).await.expect("connect");
    stalled.write_all(b"GET /healthz HTTP/1.1\r\nHost: ringline\r\nX-Slow: ").await.expect("half a request");
    // The child process reads the half request from its socket before the signal.
    tokio::time::sleep(Duration::from_millis(200)).await;

    terminate(&server);
    let took = exited_cleanly(&mut server, Duration::from_secs(15)).await;
    assert!(took < Duration::from_secs(3), "the stalled connection held the exit for {took:?}");
    drop(stalled);
}

/// A request in progress when SIGTERM arrives is still served (within the 10 s grace period):
/// here a call started with its body still on its way, finished a second after the signal.
#[tokio::test]
async fn a_request_in_progress_at_sigterm_is_still_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = start(&[]).await;
    let url = format!("sqlite://{}?mode=rwc", server.database.display());
    let env = [("RINGLINE_DATABASE_URL", url.as_str())];
    crate::common::cli(&env, &["users", "add", "alice", "--username", "alice"]);
    crate::common::cli(&env, &["users", "add", "bob", "--username", "bob"]);
    let token = crate::common::cli(&env, &["token", "--user", "alice"]);
    let body = br#"{"receiver_id": "bob", "call_type": "voice"}"#;
    let (first, rest) = body.split_at(10);
    let mut request = tokio::net::TcpStream::connect(server.base.trim_start_matches("http://")).await.expect("connect");
    let head = format!(
        "POST /api/calls/initiate/ HTTP/1.1\r\nHost: ringline\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    request.write_all(head.as_bytes()).await.expect("the head");
    request.write_all(first).await.expect("part of the body");
    // The child process starts on the request (reads its head) before the signal.
    tokio::time::sleep(Duration::from_millis(200)).await;

    terminate(&server);
    // A second of the process's own time with the signal: it must still be waiting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(server.child.try_wait().expect("wait").is_none(), "it waits for the request in progress");
    request.write_all(rest).await.expect("the rest of the body");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), request.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "the call was started: {answer}");
    exited_cleanly(&mut server, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn migrate_applies_the_schema_and_exits() {
    let database = std::env::temp_dir().join(format!("ringline_migrate_{}.db", uuid::Uuid::new_v4().simple()));
    let status = Command::new(env!("CARGO_BIN_EXE_ringline"))
        .arg("migrate")
        .env("RINGLINE_DATABASE_URL", format!("sqlite://{}?mode=rwc", database.display()))
        .env("RUST_LOG", "warn")
        .status()
        .expect("run ringline migrate");
    assert!(status.success());
    let storage = ringline_storage::Storage::connect(&format!("sqlite://{}", database.display())).await.expect("open");
    // The schema is there: a repository query runs against it.
    use ringline_domain::CallRepository;
    let cutoff = ringline_domain::Timestamp::from_unix_micros(0).expect("epoch");
    assert!(storage.calls().unanswered_started_before(cutoff, 1).await.expect("query").is_empty());
    storage.close().await.expect("close");
    ringline_storage::testing::remove_sqlite_files(&database);
}

/// Runs `ringline migrate` with `settings` in its environment.
fn migrate_with(settings: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringline"))
        .arg("migrate")
        .envs(settings.iter().copied())
        .output()
        .expect("run ringline migrate")
}

#[tokio::test]
async fn refuses_an_unsupported_database_url_with_a_clear_error() {
    let output = migrate_with(&[("RINGLINE_DATABASE_URL", "mysql://root@127.0.0.1/ringline")]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("only sqlite:// and postgres://"), "{stderr}");
}

#[tokio::test]
async fn logs_one_line_per_request_with_the_user_and_never_the_token() {
    let database = std::env::temp_dir().join(format!("ringline_bin_{}.db", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite://{}?mode=rwc", database.display());
    cli(&url, "log-test-secret", &["users", "add", "alice", "--username", "alice"]);
    let token = cli(&url, "log-test-secret", &["token", "--user", "alice"]);
    assert_eq!(token.split('.').count(), 3, "a JWT");

    let (child, base) = start_logging(&url, "log-test-secret", "info").await;
    let client = reqwest::Client::new();
    let listed = client.get(format!("{base}/api/calls/")).bearer_auth(&token).send().await.expect("list");
    assert_eq!(listed.status(), 200);
    let in_query = client.get(format!("{base}/api/calls/?token={token}")).send().await.expect("list");
    assert_eq!(in_query.status(), 401);
    let log = stop_and_read_log(child);
    assert!(!log.contains(&token), "the token leaked into the log:\n{log}");
    let lines: Vec<&str> = log.lines().filter(|line| line.contains("ringline::http")).collect();
    assert_eq!(lines.len(), 3, "one line per request:\n{log}");
    assert!(lines[1].contains("/api/calls/") && lines[1].contains("200") && lines[1].contains("alice"), "{}", lines[1]);
    for line in &lines {
        // Rounded to a tenth of a millisecond: `latency_ms=0.3`, not `latency_ms=0.287413`.
        let latency = line.split("latency_ms=").nth(1).and_then(|rest| rest.split_whitespace().next());
        let decimals = latency.map(|value| value.split('.').nth(1).map_or(0, str::len));
        assert!(decimals.is_some_and(|decimals| decimals <= 1), "{line}");
    }
    ringline_storage::testing::remove_sqlite_files(&database);
}

#[test]
fn cli_prints_the_published_openapi_document() {
    let output = Command::new(env!("CARGO_BIN_EXE_ringline")).arg("openapi").output().expect("run ringline openapi");
    assert!(output.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let snapshot =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json")).expect("snapshot");
    let snapshot: serde_json::Value = serde_json::from_str(&snapshot).expect("JSON");
    assert_eq!(printed, snapshot);
    // Printing the document serves nothing: no warning meant for a serving server.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("STUN"), "{stderr}");
}

#[tokio::test]
async fn cli_provisions_users_and_conversations() {
    let database = std::env::temp_dir().join(format!("ringline_bin_{}.db", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite://{}?mode=rwc", database.display());
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ringline"))
            .args(args)
            .env("RINGLINE_DATABASE_URL", &url)
            .output()
            .expect("run")
    };
    assert!(run(&["users", "add", "u1", "--username", "one", "--first-name", "Uno"]).status.success());
    assert!(run(&["users", "add", "u2", "--username", "two"]).status.success());
    assert!(run(&["conversations", "add", "5", "--participants", "u1"]).status.success());
    assert!(run(&["conversations", "add", "5", "--participants", "u2"]).status.success(), "adds to an existing one");
    let unknown = run(&["conversations", "add", "6", "--participants", "u1,ghost"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("ghost"));

    use ringline_domain::Directory;
    let storage = ringline_storage::Storage::connect(&url).await.expect("open");
    let directory = storage.directory();
    let one =
        directory.user(&ringline_domain::UserId::parse("u1").expect("id")).await.expect("lookup").expect("exists");
    assert_eq!((one.username.as_str(), one.first_name.as_str()), ("one", "Uno"));
    let mut members = directory
        .conversation_participants(ringline_domain::ConversationId::new(5).expect("id"))
        .await
        .expect("lookup")
        .expect("exists");
    members.sort();
    assert_eq!(members.iter().map(|m| m.as_str()).collect::<Vec<_>>(), ["u1", "u2"]);
    storage.close().await.expect("close");
    ringline_storage::testing::remove_sqlite_files(&database);
}

#[tokio::test]
async fn sdp_candidates_and_tokens_never_reach_the_logs_even_at_trace_level() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let database = std::env::temp_dir().join(format!("ringline_bin_{}.db", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite://{}?mode=rwc", database.display());
    let secret = "log-test-secret";
    cli(&url, secret, &["users", "add", "alice", "--username", "alice"]);
    cli(&url, secret, &["users", "add", "bob", "--username", "bob"]);
    let (alice, bob) =
        (cli(&url, secret, &["token", "--user", "alice"]), cli(&url, secret, &["token", "--user", "bob"]));
    // Every target at its most verbose: the WebSocket library's own frame dumps included.
    let (child, base) = start_logging(&url, secret, "trace,tungstenite::protocol=trace").await;
    let port = base.rsplit(':').next().expect("a port").to_owned();
    let client = reqwest::Client::new();
    let socket = |token: &str| {
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws/notifications/?token={token}"))
    };
    let (mut alice_socket, _) = socket(&alice).await.expect("connect");
    let (mut bob_socket, _) = socket(&bob).await.expect("connect");
    let call: serde_json::Value = client
        .post(format!("{base}/api/calls/initiate/"))
        .bearer_auth(&alice)
        .json(&serde_json::json!({"receiver_id": "bob"}))
        .send()
        .await
        .expect("initiate")
        .json()
        .await
        .expect("json");
    let id = call["id"].to_string();
    let frames = [
        serde_json::json!({"type": "call.offer", "call_id": id, "offer": {"type": "offer", "sdp": "v=0 SDP-OFFER-MARKER"}}),
        serde_json::json!({"type": "call.ice-candidate", "call_id": id, "candidate": {"candidate": "CANDIDATE-MARKER 10.1.2.3"}}),
        serde_json::json!({"type": "call.offer", "call_id": "999", "offer": {"sdp": "REFUSED-SDP-MARKER"}}),
        serde_json::json!({"type": "call.bogus", "offer": "UNKNOWN-FRAME-MARKER"}),
    ];
    for frame in frames {
        alice_socket.send(Message::text(frame.to_string())).await.expect("send");
    }
    alice_socket.send(Message::text("{broken SDP-BROKEN-MARKER".to_owned())).await.expect("send");
    // Bob really received the offer, so the server did handle the SDP.
    let mut saw_offer = false;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(2), bob_socket.next()).await {
        if message.to_text().is_ok_and(|text| text.contains("SDP-OFFER-MARKER")) {
            saw_offer = true;
            break;
        }
    }
    assert!(saw_offer);
    // The child process handles (and would log) the broken frame sent after the offer.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log = stop_and_read_log(child);
    for secret in [
        "SDP-OFFER-MARKER",
        "CANDIDATE-MARKER",
        "10.1.2.3",
        "REFUSED-SDP-MARKER",
        "UNKNOWN-FRAME-MARKER",
        "SDP-BROKEN-MARKER",
        &alice,
        &bob,
    ] {
        assert!(!log.contains(secret), "{secret} leaked into the debug log");
    }
    assert!(log.contains("session opened"), "the sessions were logged (without payloads)");
    ringline_storage::testing::remove_sqlite_files(&database);
}

/// `ringline` is killed (SIGKILL) right after a call change, while its webhook receiver is
/// down: the event was stored with the change, and after a restart it reaches the receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_event_survives_a_kill_between_the_change_and_its_delivery() {
    let database = std::env::temp_dir().join(format!("ringline_bin_{}.db", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite://{}?mode=rwc", database.display());
    let secret = "kill-test-secret-0123456789abcdef-0123456789abcdef";
    cli(&url, secret, &["users", "add", "alice", "--username", "alice"]);
    cli(&url, secret, &["users", "add", "bob", "--username", "bob"]);
    let alice = cli(&url, secret, &["token", "--user", "alice"]);
    let receiver_port = free_port(); // nobody listens there yet
    // The same port each time, as a restarted deployment has.
    let bind = format!("127.0.0.1:{}", free_port());
    let hooks_url = format!("http://127.0.0.1:{receiver_port}/hooks");
    let settings = [
        ("RINGLINE_DATABASE_URL", url.as_str()),
        ("RINGLINE_BIND", bind.as_str()),
        ("RINGLINE_JWT_SECRET", secret),
        ("RINGLINE_WEBHOOK_URLS", hooks_url.as_str()),
        ("RINGLINE_WEBHOOK_SECRET", "whsec_kill-test"),
        ("RUST_LOG", "error"),
    ];
    let (mut first, base) = serve_with(&settings).await;
    let call: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/api/calls/initiate/"))
        .bearer_auth(&alice)
        .json(&serde_json::json!({"receiver_id": "bob"}))
        .send()
        .await
        .expect("initiate")
        .json()
        .await
        .expect("json");
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");

    // The receiver comes up, then the server again.
    let received: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> = std::sync::Arc::default();
    let log = std::sync::Arc::clone(&received);
    let hooks = poem::endpoint::make(move |mut request: poem::Request| {
        let log = std::sync::Arc::clone(&log);
        async move {
            let body = request.take_body().into_bytes().await.expect("a body");
            log.lock().expect("lock").push(serde_json::from_slice(&body).expect("JSON"));
            poem::http::StatusCode::NO_CONTENT
        }
    });
    let listener = poem::listener::TcpListener::bind(format!("127.0.0.1:{receiver_port}"));
    tokio::spawn(poem::Server::new(listener).run(poem::Route::new().at("/hooks", hooks)));
    let (mut second, _) = serve_with(&settings).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = received.lock().expect("lock").clone();
        if let Some(event) = events.iter().find(|event| event["type"] == "call.ringing") {
            assert_eq!(event["data"]["call"]["id"], call["id"]);
            break;
        }
        assert!(Instant::now() < deadline, "the event never arrived: {events:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = Command::new("kill").args(["-TERM", &second.id().to_string()]).status();
    second.wait().expect("stopped");
    ringline_storage::testing::remove_sqlite_files(&database);
}

/// A server without STUN or TURN says at start that calls across NATs will fail; with one, not.
#[tokio::test]
async fn warns_at_start_when_no_stun_or_turn_server_is_configured() {
    let database = std::env::temp_dir().join(format!("ringline_bin_{}.db", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite://{}?mode=rwc", database.display());
    let secret = "stun-test-secret-0123456789abcdef-0123456789abcdef";
    let (child, _) = start_logging(&url, secret, "warn").await;
    let log = stop_and_read_log(child);
    assert!(log.contains("no STUN or TURN server is configured"), "{log}");
    assert!(!log.contains('\u{1b}'), "no colour codes in a log that is not a terminal: {log:?}");
    let (child, _) = serve_with(&[
        ("RINGLINE_DATABASE_URL", url.as_str()),
        ("RINGLINE_JWT_SECRET", secret),
        ("RINGLINE_STUN_URLS", "stun:stun.example.org:3478"),
        ("RUST_LOG", "warn"),
    ])
    .await;
    let log = stop_and_read_log(child);
    assert!(!log.contains("no STUN or TURN server"), "{log}");
    ringline_storage::testing::remove_sqlite_files(&database);
}

/// A misspelt setting stops the server at start and names the setting it probably meant, in
/// the environment and in the configuration file alike.
#[tokio::test]
async fn a_misspelt_setting_is_refused_with_the_closest_name() {
    let output = migrate_with(&[("RINGLINE_DATABASE_URL", "sqlite::memory:"), ("RINGLINE_RING_TIMOUT_SECS", "30")]);
    assert!(!output.status.success(), "an unknown variable is not ignored");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("RINGLINE_RING_TIMOUT_SECS"), "{stderr}");
    assert!(stderr.contains("RINGLINE_RING_TIMEOUT_SECS"), "the closest name: {stderr}");
    // The test tools' own variables are not settings, and not refused.
    let output = migrate_with(&[
        ("RINGLINE_DATABASE_URL", "sqlite::memory:"),
        ("RINGLINE_TEST_SOMETHING_ELSE", "postgres://127.0.0.1/x"),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let file = std::env::temp_dir().join(format!("ringline_{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, "database_url = \"sqlite::memory:\"\nwebhook_url = \"https://a.example/\"\n").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_ringline"))
        .args(["--config", file.to_str().expect("a path"), "migrate"])
        .output()
        .expect("run ringline");
    let _ = std::fs::remove_file(&file);
    assert!(!output.status.success(), "an unknown key is not ignored");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("webhook_url") && stderr.contains("webhook_urls"), "{stderr}");
}

/// `ringline demo` on an address in use says so, names the setting that picks another, and
/// never tells anyone to open a URL it does not serve.
#[tokio::test]
async fn demo_on_an_address_in_use_names_the_setting_that_picks_another() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_ringline"))
        .arg("demo")
        .env("RINGLINE_DATABASE_URL", "sqlite::memory:")
        .env("RINGLINE_BIND", &address)
        .env("RUST_LOG", "info")
        .output()
        .expect("run ringline demo");
    assert!(!output.status.success(), "an address in use is an error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("cannot listen on {address}")), "{stderr}");
    assert!(stderr.contains("RINGLINE_BIND") && stderr.contains("--bind"), "how to choose another: {stderr}");
    assert!(!stderr.contains("open the URL"), "no invitation to a URL that is not served: {stderr}");
}

/// Opens a connection to `address` from the loopback address `from` (127.0.0.0/8 is all this
/// machine's, so each such address is another client to the server).
async fn connect_from(from: [u8; 4], address: &str) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from((from, 0)))?;
    socket.connect(address.parse().expect("a socket address")).await
}

/// Sends `head` a byte every `pause` until the server closes the connection; returns how long
/// the connection lived.
async fn trickle(mut connection: tokio::net::TcpStream, head: &'static [u8], pause: Duration) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let opened = Instant::now();
    let mut answer = [0u8; 512];
    for byte in head.iter().cycle() {
        if connection.write_all(&[*byte]).await.is_err() {
            break;
        }
        match tokio::time::timeout(pause, connection.read(&mut answer)).await {
            Err(_elapsed) => {}
            Ok(Ok(0) | Err(_)) => break,
            // A refusal's answer; the server closes after it.
            Ok(Ok(_)) => {}
        }
    }
    opened.elapsed()
}

/// Slowloris from one address, against the real binary with the issue's cap of 100: headers
/// trickled a byte at a time are cut off at their deadline, however steady the trickle, and the
/// attacking address holds no more than its share meanwhile, so that health probes and a call
/// from other addresses are answered at once. Before: 100 of 110 trickling connections held
/// every place for as long as they trickled, and everyone else was answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_from_one_address_is_cut_off_and_starves_nobody() {
    let server = start_with(
        &[],
        &[
            ("RINGLINE_MAX_CONNECTIONS", "100"),
            ("RINGLINE_HTTP_HEADER_TIMEOUT_SECS", "2"),
            ("RINGLINE_JWT_SECRET", "a-secret-for-the-slowloris-test"),
        ],
    )
    .await;
    let url = format!("sqlite://{}?mode=rwc", server.database.display());
    let env = [("RINGLINE_DATABASE_URL", url.as_str()), ("RINGLINE_JWT_SECRET", "a-secret-for-the-slowloris-test")];
    crate::common::cli(&env, &["users", "add", "alice", "--username", "alice"]);
    crate::common::cli(&env, &["users", "add", "bob", "--username", "bob"]);
    let token = crate::common::cli(&env, &["token", "--user", "alice"]);
    let address = server.base.trim_start_matches("http://").to_owned();

    let mut attack = tokio::task::JoinSet::new();
    for _ in 0..110 {
        let connection = connect_from([127, 0, 0, 2], &address).await.expect("connect");
        attack.spawn(trickle(connection, b"GET /healthz HTTP/1.1\r\nX-Slow: abcdefghij", Duration::from_millis(300)));
    }
    // The attack's connections reach the child process and take their places first.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The probes, from the machine itself, and a call from yet another address.
    let probe = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    for path in ["/healthz", "/readyz"] {
        let asked = Instant::now();
        let answer = probe.get(format!("{}{path}", server.base)).send().await.expect("an answer");
        assert_eq!(answer.status(), 200, "{path} during the attack");
        assert!(asked.elapsed() < Duration::from_secs(1), "{path} took {:?}", asked.elapsed());
    }
    let caller =
        reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 3])).build().expect("client");
    let asked = Instant::now();
    let call = caller
        .post(format!("{}/api/calls/initiate/", server.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({"receiver_id": "bob", "call_type": "voice"}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(call.status(), 201, "a call during the attack");
    assert!(asked.elapsed() < Duration::from_secs(1), "the call took {:?}", asked.elapsed());

    // Every attacking connection is closed within the header deadline (2 s), with a margin for
    // this busy machine; refused ones sooner.
    let mut lived = Vec::new();
    while let Some(life) = attack.join_next().await {
        lived.push(life.expect("the trickling task"));
    }
    let longest = lived.iter().max().copied().unwrap_or_default();
    assert!(longest < Duration::from_secs(4), "an attacking connection lived {longest:?}");
    assert!(
        lived.iter().filter(|life| **life >= Duration::from_millis(1500)).count() <= 25,
        "at most the address's share (a quarter of 100) got as far as the header deadline"
    );
}
