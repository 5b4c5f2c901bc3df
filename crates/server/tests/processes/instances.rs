//! Several `ringline` processes on one PostgreSQL database and one Redis behave as one: real
//! binaries, a `redis-server` this test starts on a free port (so it can stop and restart
//! it), real WebSocket clients.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::free_port;
use futures_util::{SinkExt, StreamExt};
use ringline_storage::testing::{Backend, TestDatabase};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "instances-test-secret-0123456789abcdef-0123456789";
const WAIT: Duration = Duration::from_secs(5);
/// How long a subscription made when a socket connects takes to reach Redis, with margin.
const SUBSCRIBED: Duration = Duration::from_millis(300);

/// A `redis-server` of this test's own, without persistence.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Self {
        let mut redis = Self { port: free_port(), child: None };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (install Redis, or run .ci/run)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of three masters (no replicas), each a `redis-server` of this test's own.
struct RedisCluster {
    ports: Vec<u16>,
    nodes: Vec<Child>,
    directory: std::path::PathBuf,
}

impl RedisCluster {
    fn start() -> Self {
        let directory = std::env::temp_dir().join(format!("ringline-cluster-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&directory).expect("a directory for the nodes' files");
        // A node also listens on its port + 10000 (the cluster bus): both must be free.
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let port = 20_000 + free_port() % 20_000;
            let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
            if !ports.contains(&port) && free(port) && free(port + 10_000) {
                ports.push(port);
            }
        }
        let nodes = ports
            .iter()
            .map(|port| {
                Command::new("redis-server")
                    .current_dir(&directory)
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .args(["--cluster-enabled", "yes", "--cluster-config-file", &format!("nodes-{port}.conf")])
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("start redis-server (install Redis, or run .ci/run)")
            })
            .collect();
        let cluster = Self { ports, nodes, directory };
        let deadline = Instant::now() + WAIT;
        for port in &cluster.ports {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let addresses: Vec<String> = cluster.ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("run redis-cli --cluster create");
        assert!(created.success(), "the cluster was not created");
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in &cluster.ports {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .expect("run redis-cli cluster info");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster never came up");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    /// Two of the nodes, as an operator would list them (the third is discovered).
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{},redis://127.0.0.1:{}", self.ports[0], self.ports[1])
    }

    /// How many times the nodes ran `command` (from `INFO commandstats`), all together.
    fn calls_of(&self, command: &str) -> u64 {
        let prefix = format!("cmdstat_{command}:calls=");
        self.ports
            .iter()
            .map(|port| {
                let stats = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "info", "commandstats"])
                    .output()
                    .expect("run redis-cli info");
                String::from_utf8_lossy(&stats.stdout)
                    .lines()
                    .find_map(|line| line.strip_prefix(&prefix)?.split(',').next()?.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// One `ringline serve` process.
struct Instance {
    child: Child,
    base: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Instance {
    async fn start(database_url: &str, redis: &Redis, extra: &[(&str, &str)]) -> Self {
        let redis_url = redis.url();
        let mut env = vec![
            ("RINGLINE_DATABASE_URL", database_url),
            ("RINGLINE_JWT_SECRET", SECRET),
            ("RINGLINE_REDIS_URL", redis_url.as_str()),
        ];
        env.extend_from_slice(extra);
        let (child, base) = crate::common::serve(&[], &env, Stdio::inherit()).await;
        Self { child, base }
    }

    /// Opens `path` (with its query) as a WebSocket; the caller reads the ack.
    async fn connect(&self, path_and_query: &str) -> Socket {
        let url = format!("{}{path_and_query}", self.base.replacen("http", "ws", 1));
        let (stream, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
        Socket { stream }
    }

    /// Opens `path` for `token` and reads its `connection.ack`.
    async fn socket(&self, path: &str, token: &str) -> Socket {
        let mut socket = self.connect(&format!("{path}?token={token}")).await;
        socket.expect("connection.ack").await;
        socket
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Value {
        let (status, reply) = self.post_status(path, token, body).await;
        assert!((200..300).contains(&status), "{path}: {status} {reply}");
        reply
    }

    /// A POST whose status the test checks itself.
    async fn post_status(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let reply = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request");
        (reply.status().as_u16(), reply.json().await.expect("json"))
    }

    /// Drains the instance as a deploy stops it (SIGTERM) and waits for it to exit 0, within
    /// `bound`; returns how long it took.
    async fn drain(mut self, bound: Duration) -> Duration {
        crate::common::terminate(&self.child);
        crate::common::exited_cleanly(&mut self.child, bound).await
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        let reply = reqwest::Client::new().get(format!("{}{path}", self.base)).bearer_auth(token).send().await;
        reply.expect("request").json().await.expect("json")
    }
}

struct Socket {
    stream: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

impl Socket {
    async fn send(&mut self, frame: Value) {
        self.stream.send(Message::text(frame.to_string())).await.expect("send");
    }

    /// The next event that is not a keepalive.
    async fn next(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.stream.next()).await.ok()??.ok()?;
            if let Message::Text(text) = message {
                return Some(serde_json::from_str(&text).expect("events are JSON"));
            }
        }
    }

    #[track_caller]
    fn expect<'a>(&'a mut self, kind: &'a str) -> impl Future<Output = Value> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let event = self.next(WAIT).await.unwrap_or_else(|| panic!("no {kind} ({caller})"));
            assert_eq!(event["type"], kind, "expected {kind} at {caller}, got {event}");
            event
        }
    }

    /// Skips events until one of type `kind` arrives.
    #[track_caller]
    fn find<'a>(&'a mut self, kind: &'a str) -> impl Future<Output = Value> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            loop {
                let event = self.next(WAIT).await.unwrap_or_else(|| panic!("no {kind} ({caller})"));
                if event["type"] == kind {
                    return event;
                }
            }
        }
    }

    /// Reads up to the server's Close frame; its code (`None`: the connection just ended).
    async fn closed_with(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await.ok()?? {
                Ok(Message::Close(frame)) => return frame.map(|frame| u16::from(frame.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    #[track_caller]
    fn expect_silence(&mut self) -> impl Future<Output = ()> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            if let Some(event) = self.next(Duration::from_millis(500)).await {
                panic!("expected nothing at {caller}, got {event}");
            }
        }
    }
}

/// One test's PostgreSQL database, Redis, and people (alice and bob, in conversation 7, and
/// whoever else is named), with their tokens in the order given.
struct Deployment {
    database: TestDatabase,
    redis: Redis,
    tokens: Vec<String>,
}

impl Deployment {
    async fn new(users: &[&str]) -> Self {
        let database = TestDatabase::new(Backend::Postgres).await;
        let redis = Redis::start();
        let tokens = people(database.url(), users);
        Self { database, redis, tokens }
    }

    async fn instance(&self, extra: &[(&str, &str)]) -> Instance {
        Instance::start(self.database.url(), &self.redis, extra).await
    }

    /// Stops `instances` first, so they do not log the database's going, then drops it.
    async fn finish<T>(self, instances: T) {
        drop(instances);
        self.database.cleanup().await;
    }
}

/// Creates the users (and conversation 7 of alice and bob) and returns their tokens.
fn people(database_url: &str, users: &[&str]) -> Vec<String> {
    let ringline = |args: &[&str]| {
        crate::common::cli(&[("RINGLINE_DATABASE_URL", database_url), ("RINGLINE_JWT_SECRET", SECRET)], args)
    };
    for user in users {
        ringline(&["users", "add", user, "--username", user]);
    }
    ringline(&["conversations", "add", "7", "--participants", "alice,bob"]);
    users.iter().map(|user| ringline(&["token", "--user", user])).collect()
}

fn sdp(kind: &str) -> Value {
    json!({"type": kind, "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"})
}

fn candidate(n: u32) -> Value {
    json!({"candidate": format!("candidate:{n} 1 udp 2122260223 127.0.0.1 5{n:04} typ host"), "sdpMid": "0"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_crosses_three_instances_as_if_they_were_one() {
    let deployment = Deployment::new(&["alice", "bob"]).await;
    let tokens = &deployment.tokens;
    let (alice, bob) = (&tokens[0], &tokens[1]);
    let a = deployment.instance(&[]).await;
    let b = deployment.instance(&[]).await;
    let c = deployment.instance(&[]).await;

    let mut caller = a.socket("/ws/notifications/", alice).await;
    let mut phone = b.socket("/ws/notifications/", bob).await;
    let mut laptop = c.socket("/ws/notifications/", bob).await;
    tokio::time::sleep(SUBSCRIBED).await;

    let call = a.post("/api/calls/initiate/", alice, json!({"receiver_id": "bob", "call_type": "video"})).await;
    let id = call["id"].as_i64().expect("an id");
    assert_eq!(phone.expect("call.incoming").await["call_id"], id.to_string());
    assert_eq!(laptop.expect("call.incoming").await["call_id"], id.to_string());

    caller.send(json!({"type": "call.offer", "call_id": id, "offer": sdp("offer")})).await;
    assert_eq!(phone.find("call.offer").await["offer"]["type"], "offer");
    assert_eq!(laptop.find("call.offer").await["offer"]["type"], "offer");

    // The phone answers: the caller gets the SDP, the laptop stops ringing.
    phone.send(json!({"type": "call.answer", "call_id": id, "answer": sdp("answer")})).await;
    let answer = caller.find("call.answer").await;
    assert_eq!(answer["answer"]["type"], "answer");
    let stopped = laptop.find("call.end").await;
    assert_eq!(stopped["call_id"], id.to_string());

    // ICE candidates cross both ways.
    caller.send(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(1)})).await;
    assert_eq!(phone.find("call.ice-candidate").await["candidate"]["candidate"], candidate(1)["candidate"]);
    phone.send(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(2)})).await;
    assert_eq!(caller.find("call.ice-candidate").await["candidate"]["candidate"], candidate(2)["candidate"]);

    // The hang-up on A reaches the phone on B.
    a.post(&format!("/api/calls/{id}/end/"), alice, json!({})).await;
    let ended = phone.find("call.end").await;
    assert_eq!(ended["status"], "ended");
    deployment.finish((a, b, c)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_timeout_fires_once_across_instances() {
    let deployment = Deployment::new(&["alice", "bob"]).await;
    let tokens = &deployment.tokens;
    let (alice, bob) = (&tokens[0], &tokens[1]);
    let quick = [("RINGLINE_RING_TIMEOUT_SECS", "1")];
    let a = deployment.instance(&quick).await;
    let b = deployment.instance(&quick).await;
    let mut callee = b.socket("/ws/notifications/", bob).await;
    tokio::time::sleep(SUBSCRIBED).await;

    let call = a.post("/api/calls/initiate/", alice, json!({"receiver_id": "bob"})).await;
    let id = call["id"].as_i64().expect("an id");
    callee.expect("call.incoming").await;
    callee.find("call.missed").await;
    // Both instances sweep; one expires the call, and nobody hears of it twice.
    let mut missed = 1;
    while let Some(event) = callee.next(Duration::from_secs(2)).await {
        missed += usize::from(event["type"] == "call.missed");
    }
    assert_eq!(missed, 1);
    let notifications = b.get("/api/notifications/", bob).await;
    let missed_notifications = notifications["results"]
        .as_array()
        .expect("a page")
        .iter()
        .filter(|notification| notification["verb"].as_str().is_some_and(|verb| verb.starts_with("missed")))
        .count();
    assert_eq!(missed_notifications, 1, "{notifications}");
    let stored = a.get(&format!("/api/calls/{id}/"), alice).await;
    assert_eq!(stored["status"], "missed");
    deployment.finish((a, b)).await;
}

/// A page of bob's holds its notification socket on one instance and its chat socket on
/// another: the chat socket must not stand in for the notification socket (old clients apply
/// every copy they get, and a second SDP answer breaks their call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_socket_on_another_instance_does_not_duplicate_the_notification_socket() {
    let deployment = Deployment::new(&["alice", "bob"]).await;
    let tokens = &deployment.tokens;
    let (alice, bob) = (&tokens[0], &tokens[1]);
    let a = deployment.instance(&[]).await;
    let b = deployment.instance(&[]).await;
    let mut notifications = a.socket("/ws/notifications/", bob).await;
    let mut chat = b.socket("/ws/chat/7/", bob).await;
    tokio::time::sleep(SUBSCRIBED).await;

    let call = a.post("/api/calls/initiate/", alice, json!({"receiver_id": "bob"})).await;
    let id = call["id"].as_i64().expect("an id");
    notifications.expect("call.incoming").await;
    chat.expect_silence().await;

    // Once the notification socket is gone (A tells B so), the chat socket on B stands in: it
    // gets alice's hang-up, sent from A.
    drop(notifications);
    tokio::time::sleep(SUBSCRIBED).await;
    a.post(&format!("/api/calls/{id}/end/"), alice, json!({})).await;
    assert_eq!(chat.find("call.end").await["call_id"], id.to_string());
    deployment.finish((a, b)).await;
}

/// Redis stops mid-call: each instance keeps serving its own sockets; when Redis is back,
/// delivery across instances resumes by itself and the sockets are told to resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_keeps_local_delivery_and_heals_by_itself() {
    let mut deployment = Deployment::new(&["alice", "bob", "carol"]).await;
    let tokens = &deployment.tokens;
    let (alice, bob) = (&tokens[0], &tokens[1]);
    let a = deployment.instance(&[]).await;
    let b = deployment.instance(&[]).await;
    let mut caller = a.socket("/ws/notifications/", alice).await;
    let mut callee = a.socket("/ws/notifications/", bob).await;
    let mut elsewhere = b.socket("/ws/notifications/", bob).await;
    tokio::time::sleep(SUBSCRIBED).await;
    let call = a.post("/api/calls/initiate/", alice, json!({"receiver_id": "bob"})).await;
    let id = call["id"].as_i64().expect("an id");
    callee.expect("call.incoming").await;
    elsewhere.expect("call.incoming").await;
    callee.send(json!({"type": "call.answer", "call_id": id, "answer": sdp("answer")})).await;
    caller.find("call.answer").await;
    elsewhere.find("call.end").await; // answered elsewhere

    deployment.redis.stop();
    // Same-instance delivery never stops.
    for n in 0..3 {
        caller.send(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(n)})).await;
        assert_eq!(callee.find("call.ice-candidate").await["candidate"]["candidate"], candidate(n)["candidate"]);
    }
    let ready = a.get("/readyz", alice).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut bus = ready["bus"].clone();
    while bus != "unavailable" {
        assert!(Instant::now() < deadline, "/readyz never reported the outage: {bus}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        bus = a.get("/readyz", alice).await["bus"].clone();
    }

    deployment.redis.restart();
    // The instance on B tells its socket to resync once Redis is back (within a liveness tick).
    let resync = elsewhere.find("resync").await;
    assert!(resync["event_id"].as_str().is_some_and(|id| !id.is_empty()));
    let deadline = Instant::now() + Duration::from_secs(15);
    while a.get("/readyz", alice).await["bus"] != "ok" {
        assert!(Instant::now() < deadline, "/readyz never reported the bus back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(SUBSCRIBED).await;
    // Cross-instance delivery is back: the hang-up on A reaches bob's socket on B.
    a.post(&format!("/api/calls/{id}/end/"), alice, json!({})).await;
    assert_eq!(elsewhere.find("call.end").await["status"], "ended");
    deployment.finish((a, b)).await;
}

/// Busy lines and glare are decided by the database, whichever instance each request reaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_lines_and_glare_hold_across_instances() {
    let deployment = Deployment::new(&["alice", "bob", "carol"]).await;
    let tokens = &deployment.tokens;
    let (alice, bob, carol) = (&tokens[0], &tokens[1], &tokens[2]);
    let a = deployment.instance(&[]).await;
    let b = deployment.instance(&[]).await;
    let mut caller = a.socket("/ws/notifications/", alice).await;
    tokio::time::sleep(SUBSCRIBED).await;

    let call = a.post("/api/calls/initiate/", alice, json!({"receiver_id": "bob"})).await;
    let id = call["id"].as_i64().expect("an id");
    // Carol, through the other instance, finds bob busy.
    let (status, busy) = b.post_status("/api/calls/initiate/", carol, json!({"receiver_id": "bob"})).await;
    assert_eq!((status, busy["code"].as_str()), (409, Some("user_busy")), "{busy}");
    // Bob calls alice back through B while her call rings him: glare answers her call.
    let (status, answered) = b.post_status("/api/calls/initiate/", bob, json!({"receiver_id": "alice"})).await;
    assert_eq!(status, 200, "{answered}");
    assert_eq!((answered["id"].as_i64(), answered["status"].as_str()), (Some(id), Some("active")));
    // Alice, on A, hears that the call was answered on B.
    assert_eq!(caller.find("call.accepted").await["call_id"], id.to_string());
    deployment.finish((a, b)).await;
}

/// A socket is acknowledged only once events for its user reach it from every instance: a call
/// placed on another instance right after the `connection.ack` rings it, every time. (On an
/// idle machine the subscription usually wins the race anyway; the waiting itself is tested in
/// `redis_bus/subscriptions.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_hears_other_instances_as_soon_as_it_is_acknowledged() {
    let deployment = Deployment::new(&["alice", "bob"]).await;
    let tokens = &deployment.tokens;
    let (alice, bob) = (&tokens[0], &tokens[1]);
    // Twenty calls to one user in a second, none answered: the rate caps are off here.
    let uncapped = [("RINGLINE_CALLS_PER_MINUTE", "0"), ("RINGLINE_UNANSWERED_CALLS_PER_CALLEE", "0")];
    let a = deployment.instance(&uncapped).await;
    let b = deployment.instance(&uncapped).await;
    for _ in 0..20 {
        let mut callee = b.socket("/ws/notifications/", bob).await;
        let call = a.post("/api/calls/initiate/", alice, json!({"receiver_id": "bob"})).await;
        let id = call["id"].as_i64().expect("an id");
        // (A new socket is first told of the previous call's end: it finished moments ago.)
        assert_eq!(callee.find("call.incoming").await["call_id"], id.to_string());
        a.post(&format!("/api/calls/{id}/end/"), alice, json!({})).await;
        callee.find("call.end").await;
        drop(callee); // bob's last socket on B: B unsubscribes, and subscribes again next time
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    deployment.finish((a, b)).await;
}

/// The callee's instance is killed mid-call: the callee reconnects to another instance with
/// its last event id and resumes there (no `resync`), finds its call (`open_calls`), and once
/// both parties are gone for the grace period, a surviving instance ends the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_loses_no_call() {
    let deployment = Deployment::new(&["alice", "bob"]).await;
    let tokens = &deployment.tokens;
    let (alice, bob) = (&tokens[0], &tokens[1]);
    let quick = [("RINGLINE_LIVENESS_GRACE_SECS", "1")];
    let a = deployment.instance(&quick).await;
    let mut b = deployment.instance(&quick).await;
    let c = deployment.instance(&quick).await;
    let mut caller = a.socket("/ws/notifications/", alice).await;
    let mut callee = b.socket("/ws/notifications/", bob).await;
    let call = a.post("/api/calls/initiate/", alice, json!({"receiver_id": "bob"})).await;
    let id = call["id"].as_i64().expect("an id");
    let last_seen = callee.expect("call.incoming").await["event_id"].as_str().expect("an id").to_owned();
    callee.send(json!({"type": "call.answer", "call_id": id, "answer": sdp("answer")})).await;
    caller.find("call.answer").await;

    b.child.kill().expect("kill -9 the callee's instance");
    b.child.wait().expect("reaped");
    drop(callee);
    // The callee comes back on C within the grace period: the call is still there.
    let mut back = c.connect(&format!("/ws/notifications/?token={bob}&resume={last_seen}")).await;
    let ack = back.expect("connection.ack").await;
    assert_eq!(ack["open_calls"][0]["id"], id, "{ack}");
    assert_eq!(ack["open_calls"][0]["status"], "active");
    // It resumes where it left off: no `resync`, whatever B sent before it died is replayed.
    while let Some(event) = back.next(Duration::from_millis(300)).await {
        assert_ne!(event["type"], "resync", "the resume was served from the shared window");
    }
    // Frames cross from A to the callee's new instance.
    caller.send(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(7)})).await;
    assert_eq!(back.find("call.ice-candidate").await["candidate"]["candidate"], candidate(7)["candidate"]);
    // The call belonged to the callee's socket on B, which never let go: once B's liveness key
    // expires (10 s), the callee's new socket takes the call over and signals again. Until
    // then it is refused, never relayed.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut refusals = 0;
    'takeover: loop {
        assert!(Instant::now() < deadline, "the callee never took its call over");
        back.send(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(8)})).await;
        while let Some(event) = back.next(Duration::from_millis(300)).await {
            assert!(event["type"] != "error" || event["code"] == "answered_elsewhere", "{event}");
            refusals += usize::from(event["type"] == "error");
        }
        while let Some(event) = caller.next(Duration::from_millis(200)).await {
            if event["type"] == "call.ice-candidate" {
                assert_eq!(event["candidate"]["candidate"], candidate(8)["candidate"]);
                break 'takeover;
            }
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert!(refusals > 0, "refused while B's liveness key lived");

    // Both parties leave: a surviving instance ends the call as connection_lost.
    drop((back, caller));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stored = a.get(&format!("/api/calls/{id}/"), alice).await;
        if stored["status"] == "ended" {
            assert_eq!(stored["end_reason"], "connection_lost");
            break;
        }
        assert!(Instant::now() < deadline, "the call was never ended: {stored}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    deployment.finish((a, b, c)).await;
}

/// A socket that drops and comes back with `resume` gets exactly what it missed, events another
/// instance sent included, whether it comes back to the same instance (its own window) or to
/// one that never had the user's sessions (the window every instance shares in Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_misses_nothing_sent_from_other_instances() {
    let deployment = Deployment::new(&["alice", "bob"]).await;
    let tokens = &deployment.tokens;
    let (alice, bob) = (&tokens[0], &tokens[1]);
    let a = deployment.instance(&[]).await;
    let b = deployment.instance(&[]).await;
    let c = deployment.instance(&[]).await;
    let mut callee = b.socket("/ws/notifications/", bob).await;
    let call = a.post("/api/calls/initiate/", alice, json!({"receiver_id": "bob"})).await;
    let id = call["id"].as_i64().expect("an id");
    let incoming = callee.expect("call.incoming").await;
    let last_seen = incoming["event_id"].as_str().expect("an event id").to_owned();
    drop(callee);
    tokio::time::sleep(SUBSCRIBED).await;
    // While bob is away, alice (on A) cancels.
    a.post(&format!("/api/calls/{id}/end/"), alice, json!({})).await;
    tokio::time::sleep(SUBSCRIBED).await;

    let resume = format!("/ws/notifications/?token={bob}&resume={last_seen}");
    let mut back = b.connect(&resume).await;
    back.expect("connection.ack").await;
    let mut missed = Vec::new();
    while let Some(event) = back.next(Duration::from_millis(500)).await {
        missed.push(event["type"].as_str().unwrap_or_default().to_owned());
    }
    assert!(missed.contains(&"call.end".to_owned()), "the cancel sent from A is replayed: {missed:?}");
    assert!(!missed.contains(&"resync".to_owned()), "{missed:?}");

    let mut elsewhere = c.connect(&resume).await;
    elsewhere.expect("connection.ack").await;
    let mut missed_elsewhere = Vec::new();
    while let Some(event) = elsewhere.next(Duration::from_millis(500)).await {
        missed_elsewhere.push(event["type"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(missed_elsewhere, missed, "the same replay on an instance that never had bob's sockets");
    deployment.finish((a, b, c)).await;
}

/// Where a user is connected is counted over every instance, and an instance that stops stops
/// counting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_a_users_sockets_on_every_instance() {
    let deployment = Deployment::new(&["alice", "bob"]).await;
    let bob = &deployment.tokens[1];
    let admin = [("RINGLINE_ADMIN_TOKEN", "operator-token")];
    let a = deployment.instance(&admin).await;
    let b = deployment.instance(&admin).await;
    let presence = |instance: &Instance| {
        let url = format!("{}/api/admin/users/bob/presence/", instance.base);
        async move {
            let reply = reqwest::Client::new().get(url).bearer_auth("operator-token").send().await.expect("presence");
            reply.json::<Value>().await.expect("json")["devices"].as_u64().expect("a count")
        }
    };
    let wait_for = async |instance: &Instance, expected: u64| {
        let deadline = Instant::now() + WAIT;
        loop {
            let devices = presence(instance).await;
            if devices == expected {
                return;
            }
            assert!(Instant::now() < deadline, "{} counts {devices} devices, not {expected}", instance.base);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let phone = a.socket("/ws/notifications/", bob).await;
    let laptop = a.socket("/ws/notifications/", bob).await;
    let tablet = b.socket("/ws/notifications/", bob).await;
    wait_for(&a, 3).await;
    wait_for(&b, 3).await;
    drop(laptop);
    wait_for(&b, 2).await;
    // B stops (SIGTERM): its socket closes and it leaves the count.
    let _ = Command::new("kill").args(["-TERM", &b.child.id().to_string()]).status();
    wait_for(&a, 1).await;
    drop((phone, tablet));
    wait_for(&a, 0).await;
    deployment.finish((a, b)).await;
}

/// With `RINGLINE_REDIS_CLUSTER`, the instances share a Redis Cluster over sharded pub/sub:
/// a call crosses them as over one Redis, a socket resumes on the other instance from the
/// shared window (a stream on the user's shard), and nothing is published the classic way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_crosses_instances_over_a_redis_cluster() {
    let deployment = Deployment::new(&["alice", "bob"]).await;
    let cluster = RedisCluster::start();
    let tokens = &deployment.tokens;
    let (alice, bob) = (&tokens[0], &tokens[1]);
    let url = cluster.url();
    let settings = [("RINGLINE_REDIS_URL", url.as_str()), ("RINGLINE_REDIS_CLUSTER", "true")];
    let a = deployment.instance(&settings).await;
    let b = deployment.instance(&settings).await;

    let mut caller = a.socket("/ws/notifications/", alice).await;
    let mut callee = b.socket("/ws/notifications/", bob).await;
    let call = a.post("/api/calls/initiate/", alice, json!({"receiver_id": "bob", "call_type": "video"})).await;
    let id = call["id"].as_i64().expect("an id");
    let incoming = callee.expect("call.incoming").await;
    assert_eq!(incoming["call_id"], id.to_string());
    caller.send(json!({"type": "call.offer", "call_id": id, "offer": sdp("offer")})).await;
    assert_eq!(callee.find("call.offer").await["offer"]["type"], "offer");
    callee.send(json!({"type": "call.answer", "call_id": id, "answer": sdp("answer")})).await;
    assert_eq!(caller.find("call.answer").await["answer"]["type"], "answer");
    caller.send(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(1)})).await;
    let ice = callee.find("call.ice-candidate").await;
    assert_eq!(ice["candidate"]["candidate"], candidate(1)["candidate"]);
    let last_seen = ice["event_id"].as_str().expect("an event id").to_owned();

    // Bob's socket drops; alice hangs up on A; bob comes back on an instance started since,
    // which has only the shared window to replay from, and misses nothing.
    drop(callee);
    tokio::time::sleep(SUBSCRIBED).await;
    a.post(&format!("/api/calls/{id}/end/"), alice, json!({})).await;
    let c = deployment.instance(&settings).await;
    let mut back = c.connect(&format!("/ws/notifications/?token={bob}&resume={last_seen}")).await;
    back.expect("connection.ack").await;
    let mut replayed = Vec::new();
    while let Some(event) = back.next(Duration::from_millis(500)).await {
        replayed.push(event["type"].as_str().unwrap_or_default().to_owned());
    }
    assert!(replayed.contains(&"call.end".to_owned()), "{replayed:?}");
    assert!(!replayed.contains(&"resync".to_owned()), "{replayed:?}");

    assert!(cluster.calls_of("spublish") > 0, "sharded pub/sub carries the events");
    assert_eq!(cluster.calls_of("publish"), 0, "nothing is published to every node");
    deployment.finish((a, b, c)).await;
}

/// A rolling restart, as docs/operations.md describes it: each instance in turn is drained
/// (SIGTERM) while a call is up. Its sockets are closed with 1001, reconnect to another
/// instance with their position, and find the call still active; the media signaling flows on;
/// the call ends with the hang-up, never as lost, and each instance exits in time.
#[tokio::test]
async fn a_call_survives_a_rolling_restart_of_every_instance() {
    let deployment = Deployment::new(&["alice", "bob"]).await;
    let tokens = &deployment.tokens;
    let (alice, bob) = (&tokens[0], &tokens[1]);
    let a = deployment.instance(&[]).await;
    let b = deployment.instance(&[]).await;
    let mut caller = a.socket("/ws/notifications/", alice).await;
    let mut callee = b.socket("/ws/notifications/", bob).await;
    let call = a.post("/api/calls/initiate/", alice, json!({"receiver_id": "bob"})).await;
    let id = call["id"].as_i64().expect("an id");
    let mut callee_seen = callee.expect("call.incoming").await["event_id"].as_str().expect("an id").to_owned();
    callee.send(json!({"type": "call.answer", "call_id": id, "answer": sdp("answer")})).await;
    caller.find("call.answer").await;

    // B goes first: the callee is told to go, and moves to A.
    let (drained, close) = tokio::join!(b.drain(Duration::from_secs(15)), callee.closed_with());
    assert_eq!(close, Some(1001), "told to reconnect elsewhere");
    let mut callee = a.connect(&format!("/ws/notifications/?token={bob}&resume={callee_seen}")).await;
    let ack = callee.expect("connection.ack").await;
    assert_eq!(
        (ack["open_calls"][0]["id"].as_i64(), ack["open_calls"][0]["status"].as_str()),
        (Some(id), Some("active"))
    );
    callee.send(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(1)})).await;
    let caller_seen = caller.find("call.ice-candidate").await["event_id"].as_str().expect("an id").to_owned();
    caller.send(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(2)})).await;
    callee_seen = callee.find("call.ice-candidate").await["event_id"].as_str().expect("an id").to_owned();

    // A new B, then A goes: both parties move to it.
    let b = deployment.instance(&[]).await;
    let (drained_a, closes) = tokio::join!(a.drain(Duration::from_secs(15)), async {
        (caller.closed_with().await, callee.closed_with().await)
    });
    assert_eq!(closes, (Some(1001), Some(1001)));
    let mut caller = b.connect(&format!("/ws/notifications/?token={alice}&resume={caller_seen}")).await;
    let mut callee = b.connect(&format!("/ws/notifications/?token={bob}&resume={callee_seen}")).await;
    for socket in [&mut caller, &mut callee] {
        let ack = socket.expect("connection.ack").await;
        assert_eq!(ack["open_calls"][0]["status"], "active", "{ack}");
    }
    caller.send(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(3)})).await;
    assert_eq!(callee.find("call.ice-candidate").await["candidate"], candidate(3));
    callee.send(json!({"type": "call.ice-candidate", "call_id": id, "candidate": candidate(4)})).await;
    assert_eq!(caller.find("call.ice-candidate").await["candidate"], candidate(4));

    let ended = b.post(&format!("/api/calls/{id}/end/"), alice, json!({})).await;
    assert_eq!((ended["status"].as_str(), ended["end_reason"].as_str()), (Some("ended"), Some("user_hangup")));
    assert!(drained < Duration::from_secs(10) && drained_a < Duration::from_secs(10), "{drained:?} {drained_a:?}");
    deployment.finish(b).await;
}
