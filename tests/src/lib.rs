//! Helpers for Ringline's black-box tests: start the real server on 127.0.0.1:0 over a fresh
//! database, provision users, mint their tokens, and speak HTTP to it.

use std::sync::Arc;
use std::time::Duration;

use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{Endpoint, Server};
use reqwest::{Method, StatusCode};
pub use ringline_domain::ManualClock;
use ringline_domain::{Clock, SystemClock, Timestamp, UserId, UserProfile};
use ringline_server::{Application, Settings};
use ringline_storage::testing::{Backend, TestDatabase};
use serde_json::Value;

pub use ringline_storage::testing::Backend as DatabaseBackend;
pub use scrape::Scraped;

mod scrape;

/// The JWT secret every test server is configured with.
pub const TEST_JWT_SECRET: &str = "test-secret-for-ringline-black-box-tests";

/// Serves `app` on a fresh 127.0.0.1 port in the background and returns its base URL.
///
/// # Panics
/// When no port can be bound: test set-up, nothing to recover.
pub async fn spawn_http(app: impl Endpoint + 'static) -> String {
    let acceptor = TcpListener::bind("127.0.0.1:0").into_acceptor().await.expect("bind 127.0.0.1:0");
    let address = acceptor
        .local_addr()
        .first()
        .and_then(|addr| addr.as_socket_addr().copied())
        .expect("a TCP listener has a socket address");
    tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
    format!("http://{address}")
}

/// A running `ringline` server on its own database.
#[derive(Debug)]
pub struct TestApp {
    pub base: String,
    /// `http://…` of the metrics listener, when the settings asked for one.
    pub metrics_base: Option<String>,
    pub http: reqwest::Client,
    /// Shared by instances joined in one process ([`TestApp::spawn_joined`]).
    database: std::sync::Arc<TestDatabase>,
    signaling: std::sync::Arc<ringline_signaling::Signaling>,
    authenticator: std::sync::Arc<ringline_api::JwtAuthenticator>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A response: status and JSON body (`Value::Null` when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    /// Asserts the status and returns the body, with the body in the failure message.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        self.body
    }

    /// Asserts an error status and its stable code, and that `detail` is present.
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str) -> Value {
        let body = self.expect(status);
        assert_eq!(body["code"], code, "body: {body}");
        assert!(body["detail"].as_str().is_some_and(|detail| !detail.is_empty()), "no detail: {body}");
        body
    }
}

impl TestApp {
    /// Reads this instance's `/metrics` (the settings must have asked for a metrics listener).
    ///
    /// # Panics
    /// When there is no metrics listener or it does not answer 200.
    pub async fn scrape(&self) -> Scraped {
        let base = self.metrics_base.as_ref().expect("a metrics listener (settings.metrics.metrics_bind)");
        let response = self.http.get(format!("{base}/metrics")).send().await.expect("scrape");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers().get("content-type").and_then(|value| value.to_str().ok());
        assert!(content_type.is_some_and(|kind| kind.starts_with("application/openmetrics-text")), "{content_type:?}");
        Scraped::parse(&response.text().await.expect("a body"))
    }

    /// Starts a server with default test settings on `backend`.
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Starts a server after letting `configure` adjust the settings.
    pub async fn spawn_with(backend: Backend, configure: impl FnOnce(&mut Settings)) -> Self {
        Self::spawn_on(TestDatabase::new(backend).await, configure).await
    }

    /// Starts a server whose clock moves only when the test says ([`ManualClock::advance`]):
    /// ring timeouts, liveness and token expiry follow it, so a test drives them instead of
    /// waiting them out.
    pub async fn spawn_on_clock(
        backend: Backend,
        clock: &Arc<ManualClock>,
        configure: impl FnOnce(&mut Settings),
    ) -> Self {
        let database = TestDatabase::new(backend).await;
        Self::spawn_on_database_and_clock(database, clock, configure).await
    }

    /// [`TestApp::spawn_on_clock`] on an existing test database (for restarts).
    pub async fn spawn_on_database_and_clock(
        database: TestDatabase,
        clock: &Arc<ManualClock>,
        configure: impl FnOnce(&mut Settings),
    ) -> Self {
        let storage = ringline_storage::Storage::connect(database.url()).await.expect("connect");
        let wiring = ringline_server::Wiring { hub: None, clock: clock.clone() };
        Self::spawn_wired(Arc::new(database), storage, true, wiring, configure).await
    }

    /// Starts a server on an existing test database (for restarts).
    pub async fn spawn_on(database: TestDatabase, configure: impl FnOnce(&mut Settings)) -> Self {
        // A pool of its own: stopping a server closes its pool, and the database outlives it.
        let storage = ringline_storage::Storage::connect(database.url()).await.expect("connect");
        Self::spawn_on_storage(Arc::new(database), storage, true, None, configure).await
    }

    /// Starts `count` instances on one database, joined by an in-memory bus: several
    /// instances in this process, as Redis joins them in production, without Redis. Stop
    /// each; the last one stopped removes the database.
    pub async fn spawn_joined(backend: Backend, count: usize, configure: impl Fn(&mut Settings)) -> Vec<Self> {
        Self::spawn_joined_to(backend, count, &ringline_bus::MemoryHub::new(), configure).await
    }

    /// [`TestApp::spawn_joined`] on a hub the test keeps, e.g. to play an outage of the bus.
    pub async fn spawn_joined_to(
        backend: Backend,
        count: usize,
        hub: &Arc<ringline_bus::MemoryHub>,
        configure: impl Fn(&mut Settings),
    ) -> Vec<Self> {
        let wiring = ringline_server::Wiring { hub: Some(hub.clone()), ..Default::default() };
        Self::spawn_joined_wired(backend, count, wiring, configure).await
    }

    /// [`TestApp::spawn_joined`], every instance on `clock` (see [`TestApp::spawn_on_clock`]).
    pub async fn spawn_joined_on_clock(
        backend: Backend,
        count: usize,
        clock: &Arc<ManualClock>,
        configure: impl Fn(&mut Settings),
    ) -> Vec<Self> {
        let wiring = ringline_server::Wiring { hub: Some(ringline_bus::MemoryHub::new()), clock: clock.clone() };
        Self::spawn_joined_wired(backend, count, wiring, configure).await
    }

    async fn spawn_joined_wired(
        backend: Backend,
        count: usize,
        wiring: ringline_server::Wiring,
        configure: impl Fn(&mut Settings),
    ) -> Vec<Self> {
        let database = Arc::new(TestDatabase::new(backend).await);
        let mut instances = Vec::with_capacity(count);
        for _ in 0..count {
            let storage = ringline_storage::Storage::connect(database.url()).await.expect("connect");
            let database = Arc::clone(&database);
            instances.push(Self::spawn_wired(database, storage, true, wiring.clone(), &configure).await);
        }
        instances
    }

    /// Starts a server on `backend` that counts the SQL statements it runs, without the
    /// background sweeps (which run on their own clock); the counter is shared with the
    /// caller, who may reset it.
    pub async fn spawn_counting_statements(backend: Backend) -> (Self, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let database = TestDatabase::new(backend).await;
        let counter = std::sync::Arc::new(AtomicUsize::new(0));
        let mut storage = ringline_storage::Storage::connect(database.url()).await.expect("connect");
        let counted = std::sync::Arc::clone(&counter);
        storage.on_statement(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        (Self::spawn_on_storage(std::sync::Arc::new(database), storage, false, None, |_| {}).await, counter)
    }

    /// [`TestApp::spawn_counting_statements`] for `count` instances joined in memory on one
    /// database, all counting into the one counter.
    pub async fn spawn_joined_counting_statements(
        backend: Backend,
        count: usize,
    ) -> (Vec<Self>, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let database = Arc::new(TestDatabase::new(backend).await);
        let counter = Arc::new(AtomicUsize::new(0));
        let hub = ringline_bus::MemoryHub::new();
        let mut instances = Vec::with_capacity(count);
        for _ in 0..count {
            let mut storage = ringline_storage::Storage::connect(database.url()).await.expect("connect");
            let counted = Arc::clone(&counter);
            storage.on_statement(move || {
                counted.fetch_add(1, Ordering::Relaxed);
            });
            instances.push(Self::spawn_on_storage(Arc::clone(&database), storage, false, Some(&hub), |_| {}).await);
        }
        (instances, counter)
    }

    async fn spawn_on_storage(
        database: Arc<TestDatabase>,
        storage: ringline_storage::Storage,
        sweeps: bool,
        hub: Option<&Arc<ringline_bus::MemoryHub>>,
        configure: impl FnOnce(&mut Settings),
    ) -> Self {
        let wiring = ringline_server::Wiring { hub: hub.cloned(), ..Default::default() };
        Self::spawn_wired(database, storage, sweeps, wiring, configure).await
    }

    async fn spawn_wired(
        database: Arc<TestDatabase>,
        storage: ringline_storage::Storage,
        sweeps: bool,
        wiring: ringline_server::Wiring,
        configure: impl FnOnce(&mut Settings),
    ) -> Self {
        let mut settings = Settings::for_tests(database.url(), TEST_JWT_SECRET);
        // Tests call the same people many times a second; the rate caps are tested where they
        // are the subject (`call_policy.rs`), which sets them.
        settings.call_policy.calls_per_minute = 0;
        settings.call_policy.unanswered_calls_per_callee = 0;
        configure(&mut settings);
        let application = Application::build_with(settings, storage, wiring).await;
        let application = application.expect("build the application");
        let mut application = if sweeps { application } else { application.without_sweeps() };
        let metrics_address = application.bind_metrics().await.expect("bind the metrics listener");
        let metrics_base = metrics_address.map(|address| format!("http://{address}"));
        let listener = application.listen().await.expect("bind 127.0.0.1:0");
        let base = format!("http://{}", listener.local_socket_addr().expect("a socket address"));
        let authenticator = application.authenticator();
        let signaling = application.signaling();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            application
                .run(listener, async {
                    // A dropped sender also stops the server.
                    let _ = stopped.await;
                })
                .await
                .expect("the server runs");
        });
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        Self { base, metrics_base, http, database, signaling, authenticator, stop: Some(stop), task: Some(task) }
    }

    /// Stops the server gracefully and removes its database (unless other instances joined
    /// to it still run).
    pub async fn stop(mut self) {
        self.halt().await;
        if let Ok(database) = std::sync::Arc::try_unwrap(self.database) {
            database.cleanup().await;
        }
    }

    /// Stops the server gracefully and hands back its database, e.g. to start another on it.
    ///
    /// # Panics
    /// When other instances share the database.
    pub async fn stop_keeping_database(mut self) -> TestDatabase {
        self.halt().await;
        std::sync::Arc::try_unwrap(self.database).expect("no other instance shares the database")
    }

    async fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("the server task ends cleanly");
        }
    }

    /// The server's signaling hub, to observe its sessions.
    pub fn signaling(&self) -> &ringline_signaling::Signaling {
        &self.signaling
    }

    /// The WebSocket URL of `path` (e.g. `/ws/notifications/?token=…`).
    pub fn ws_url(&self, path: &str) -> String {
        format!("{}{path}", self.base.replacen("http://", "ws://", 1))
    }

    /// Opens `ws/notifications/` for `token` and reads its `connection.ack`.
    pub async fn notifications_socket(&self, token: &str) -> WsClient {
        self.notifications_socket_resuming(token, None).await.0
    }

    /// Opens `ws/notifications/` for `token`, resuming from `resume` if given; returns the
    /// socket and its `connection.ack`.
    pub async fn notifications_socket_resuming(&self, token: &str, resume: Option<&str>) -> (WsClient, Value) {
        let mut path = format!("/ws/notifications/?token={token}");
        if let Some(resume) = resume {
            path.push_str(&format!("&resume={resume}"));
        }
        let mut client = WsClient::connect(&self.ws_url(&path)).await;
        let ack = client.expect("connection.ack").await;
        (client, ack)
    }

    /// Opens `ws/chat/<conversation>/` for `token` and reads its `connection.ack`.
    pub async fn chat_socket(&self, token: &str, conversation: i64) -> WsClient {
        let mut client = WsClient::connect(&self.ws_url(&format!("/ws/chat/{conversation}/?token={token}"))).await;
        let ack = client.expect("connection.ack").await;
        assert_eq!(ack["conversation"], conversation.to_string());
        client
    }

    /// The test database, e.g. to take it away under the running server.
    pub fn database(&self) -> &TestDatabase {
        &self.database
    }

    pub fn storage(&self) -> &ringline_storage::Storage {
        self.database.storage()
    }

    /// Registers `id` (username = id) in the directory and returns an access token for them.
    pub async fn user(&self, id: &str) -> String {
        let profile = UserProfile {
            id: UserId::parse(id).expect("valid id"),
            username: id.to_owned(),
            first_name: format!("{id} first"),
            last_name: format!("{id} last"),
            profile_image_url: Some(format!("https://img.example/{id}.png")),
        };
        let now = SystemClock.now();
        self.storage().directory().upsert_user(&profile, now).await.expect("register the user");
        self.token(id)
    }

    /// An access token for `id`, signed with the server's secret.
    pub fn token(&self, id: &str) -> String {
        self.authenticator.mint(&UserId::parse(id).expect("valid id"), Duration::from_secs(3600)).expect("sign")
    }

    /// Creates conversation `id` with `participants` directly in the directory.
    pub async fn conversation(&self, id: i64, participants: &[&str]) {
        let participants: Vec<UserId> = participants.iter().map(|p| UserId::parse(*p).expect("valid")).collect();
        let now = Timestamp::from_unix_micros(0).expect("epoch");
        self.storage()
            .directory()
            .set_conversation(ringline_domain::ConversationId::new(id).expect("positive"), &participants, now)
            .await
            .expect("create the conversation");
    }

    /// Sends a request; `token` becomes a bearer token, `body` a JSON body.
    pub async fn send(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let text = response.text().await.expect("a body");
        Reply { status, body: serde_json::from_str(&text).unwrap_or(Value::Null) }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(token), Some(body)).await
    }

    /// `caller` rings `receiver`; returns the new call's id.
    pub async fn ring(&self, caller_token: &str, receiver: &str) -> i64 {
        let body = serde_json::json!({"receiver_id": receiver, "call_type": "video"});
        let call = self.post("/api/calls/initiate/", caller_token, body).await.expect(201);
        call["id"].as_i64().expect("a numeric id")
    }
}

/// Declares each listed `async fn name(Backend)` as two tests, `sqlite::name` and
/// `postgres::name`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::DatabaseBackend::Sqlite).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::DatabaseBackend::Postgres).await;
                }
            )+
        }
    };
}

/// How long a test waits for an event before failing, and how long "nothing arrives" lasts.
pub const EVENT_WAIT: Duration = Duration::from_secs(5);
pub const SILENCE: Duration = Duration::from_millis(300);

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A real WebSocket client.
#[derive(Debug)]
pub struct WsClient {
    socket: Socket,
}

impl WsClient {
    /// Connects (the server may still refuse with a close code: see [`WsClient::closed_with`]).
    pub async fn connect(url: &str) -> Self {
        let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("the WebSocket handshake succeeds");
        Self { socket }
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        use futures_util::SinkExt;
        self.socket.send(tokio_tungstenite::tungstenite::Message::text(text)).await.expect("send a frame");
    }

    /// Sends a frame the server may refuse by closing the connection mid-send.
    pub async fn try_send_text(&mut self, text: String) -> bool {
        use futures_util::SinkExt;
        self.socket.send(tokio_tungstenite::tungstenite::Message::text(text)).await.is_ok()
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        use futures_util::SinkExt;
        self.socket.send(tokio_tungstenite::tungstenite::Message::binary(bytes)).await.expect("send a frame");
    }

    /// The next JSON event, skipping WebSocket control frames; `None` if the socket closed.
    pub async fn next_event_within(&mut self, wait: Duration) -> Option<Value> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next()).await.ok()??.ok()?;
            match message {
                Message::Text(text) => return Some(serde_json::from_str(text.as_str()).expect("events are JSON")),
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }

    /// The next event, which must be of type `kind`; returns it.
    #[track_caller]
    pub fn expect<'a>(&'a mut self, kind: &'a str) -> impl std::future::Future<Output = Value> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let event =
                self.next_event_within(EVENT_WAIT).await.unwrap_or_else(|| panic!("no {kind} event ({caller})"));
            assert_eq!(event["type"], kind, "expected {kind} at {caller}, got {event}");
            assert!(
                event["event_id"].as_str().is_some_and(|id| !id.is_empty()),
                "every event has an event_id: {event}"
            );
            event
        }
    }

    /// Asserts that no event arrives for a short while.
    #[track_caller]
    pub fn expect_silence(&mut self) -> impl std::future::Future<Output = ()> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            if let Some(event) = self.next_event_within(SILENCE).await {
                panic!("expected no event at {caller}, got {event}");
            }
        }
    }

    /// Closes from the client's side with `code`, as a browser's `socket.close(code)` does, and
    /// returns the code of the server's answering Close frame: `None` when the server dropped
    /// the connection without one (a browser then reports 1006).
    pub async fn close_and_read_reply(&mut self, code: u16) -> Option<u16> {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        let frame = CloseFrame { code: code.into(), reason: "leaving".into() };
        self.socket.send(Message::Close(Some(frame))).await.ok()?;
        self.closed_with().await
    }

    /// Writes one frame of `opcode` (1: text) carrying `payload`, whatever it holds, straight
    /// onto the connection in one write, as a hostile client would: a frame too large to take,
    /// or text that is not UTF-8. `false` when the server closed before it was all written.
    pub async fn send_raw_frame(&mut self, opcode: u8, payload: &[u8]) -> bool {
        use tokio::io::AsyncWriteExt;
        let mut frame = vec![0x80 | opcode];
        // Masked (as a client must), with the zero key: the payload goes as it is.
        match payload.len() {
            len if len < 126 => frame.push(0x80 | u8::try_from(len).expect("small")),
            len if len <= usize::from(u16::MAX) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&u16::try_from(len).expect("fits").to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(payload);
        let tokio_tungstenite::MaybeTlsStream::Plain(stream) = self.socket.get_mut() else {
            panic!("tests speak plain TCP")
        };
        stream.write_all(&frame).await.is_ok()
    }

    /// Waits for the server's Close frame and returns its code; `None` when the connection ended
    /// without one.
    pub async fn closed_with(&mut self) -> Option<u16> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + EVENT_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|frame| u16::from(frame.code)),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) | Err(_) => return None,
            }
        }
    }
}

/// A WebSocket peer that reads but never answers: no pongs, no close reply, like a phone that
/// lost its network. Raw TCP, because tungstenite always answers pings.
#[derive(Debug)]
pub struct UnresponsivePeer {
    stream: tokio::net::TcpStream,
    received: Vec<u8>,
}

/// What an [`UnresponsivePeer`] saw before the connection ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Dropped {
    /// The code of the server's close frame, if one came before EOF or the wait ran out.
    pub close_code: Option<u16>,
    /// Pings the server sent first.
    pub pings: usize,
}

impl UnresponsivePeer {
    /// Performs the opening handshake on `ws://host:port/path` and expects `101`.
    pub async fn connect(url: &str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rest = url.strip_prefix("ws://").expect("a ws:// URL");
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("send the handshake");
        let mut received = Vec::new();
        let head_end = loop {
            if let Some(end) = received.windows(4).position(|window| window == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await.expect("read the handshake");
            assert!(read > 0, "the server closed during the handshake");
            received.extend_from_slice(&chunk[..read]);
        };
        let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        received.drain(..head_end);
        Self { stream, received }
    }

    /// Reads frames, answering none, until the server's close frame, EOF, or `wait`.
    pub async fn read_until_dropped(&mut self, wait: Duration) -> Dropped {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + wait;
        let mut pings = 0;
        loop {
            while let Some((opcode, payload)) = self.next_frame() {
                match opcode {
                    0x9 => pings += 1,
                    0x8 => {
                        let close_code = payload.get(..2).map(|code| u16::from_be_bytes([code[0], code[1]]));
                        return Dropped { close_code, pings };
                    }
                    _ => {}
                }
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(read)) if read > 0 => self.received.extend_from_slice(&chunk[..read]),
                _ => return Dropped { close_code: None, pings },
            }
        }
    }

    /// Takes one complete frame (server frames are unmasked) off the front of the buffer.
    fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let bytes = &self.received;
        let (&first, &second) = (bytes.first()?, bytes.get(1)?);
        let (length, header) = match second & 0x7f {
            126 => (usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])), 4),
            127 => {
                let length: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
                (usize::try_from(u64::from_be_bytes(length)).ok()?, 10)
            }
            short => (usize::from(short), 2),
        };
        let payload = bytes.get(header..header + length)?.to_vec();
        self.received.drain(..header + length);
        Some((first & 0x0f, payload))
    }
}
