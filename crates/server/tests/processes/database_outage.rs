//! A PostgreSQL outage, against the real binary: a PostgreSQL server of this test's own (so it
//! can stop and start it) and real WebSocket clients. While the database is down, requests are
//! answered `503 database_unavailable` with `Retry-After` at once, readiness says so as fast,
//! and the frames of an answered call are still relayed. When it returns, everything works
//! again without a restart.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Server, free_port};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "outage-test-secret-0123456789abcdef-0123456789";

/// A throwaway PostgreSQL cluster on a free port, made with `initdb` (as the `postgres` user
/// when the test runs as root, which `initdb` refuses to be).
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_root: bool,
}

impl Postgres {
    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's binaries under /usr/lib/postgresql (install PostgreSQL, or run .ci/run)")
            .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
            .filter(|bin| bin.join("pg_ctl").exists())
            .max()
            .expect("a PostgreSQL version with pg_ctl");
        let as_root = Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.trim_ascii() == b"0");
        let data = std::env::temp_dir().join(format!("ringline_test_pg_{}_{}", std::process::id(), free_port()));
        let postgres = Self { bin, data, port: free_port(), as_root };
        let data = postgres.data.to_str().expect("a UTF-8 path").to_owned();
        let made = postgres
            .command("initdb")
            .args(["-D", &data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(made.success(), "initdb failed");
        postgres.resume();
        postgres
    }

    /// `program` from PostgreSQL's binaries, run as `postgres` when we are root.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data.to_str().expect("a UTF-8 path");
        let status = self
            .command("pg_ctl")
            .args(["-D", data, "-w", "-t", "30"])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .expect("run pg_ctl");
        assert!(status.success(), "pg_ctl {args:?} failed");
    }

    /// Starts the server (again), listening on 127.0.0.1 only, its socket in its data directory.
    fn resume(&self) {
        let data = self.data.to_str().expect("a UTF-8 path");
        let options = format!("-p {} -c listen_addresses=127.0.0.1 -k {data} -c fsync=off", self.port);
        self.pg_ctl(&["-l", &format!("{data}/server.log"), "-o", &options, "start"]);
    }

    /// Stops the server the way an operator or a failover does: connections are cut.
    fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "stop"]);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data.to_str().unwrap_or_default().to_owned();
        let _ = self.command("pg_ctl").args(["-D", &data, "-m", "immediate", "stop"]).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Runs a `ringline` subcommand against `url` and returns its stdout.
fn cli(url: &str, args: &[&str]) -> String {
    crate::common::cli(&[("RINGLINE_DATABASE_URL", url), ("RINGLINE_JWT_SECRET", SECRET)], args)
}

async fn serve(url: &str, log: &Path) -> Server {
    let log = std::fs::File::create(log).expect("a log file");
    Server::start(&[], &[("RINGLINE_DATABASE_URL", url), ("RINGLINE_JWT_SECRET", SECRET)], log).await
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next frame of `type` on `socket`, skipping others.
async fn next_of_type(socket: &mut Socket, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} frame within 5 s"))
            .expect("the socket is open")
            .expect("a frame");
        if let Message::Text(text) = message {
            let frame: Value = serde_json::from_str(&text).expect("JSON");
            if frame["type"] == kind {
                return frame;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_fails_requests_fast_keeps_relaying_and_recovers() {
    let postgres = Postgres::start();
    let url = postgres.url();
    cli(&url, &["users", "add", "alice", "--username", "alice"]);
    cli(&url, &["users", "add", "bob", "--username", "bob"]);
    let (alice, bob) = (cli(&url, &["token", "--user", "alice"]), cli(&url, &["token", "--user", "bob"]));
    let log = postgres.data.with_extension("ringline.log");
    let server = serve(&url, &log).await;
    let base = &server.base;
    let client = reqwest::Client::new();
    let ws = base.replace("http://", "ws://");
    let (mut alice_socket, _) =
        tokio_tungstenite::connect_async(format!("{ws}/ws/notifications/?token={alice}")).await.expect("connect");
    let (mut bob_socket, _) =
        tokio_tungstenite::connect_async(format!("{ws}/ws/notifications/?token={bob}")).await.expect("connect");

    // An answered call, its frames flowing.
    let call: Value = client
        .post(format!("{base}/api/calls/initiate/"))
        .bearer_auth(&alice)
        .json(&json!({"receiver_id": "bob"}))
        .send()
        .await
        .expect("initiate")
        .json()
        .await
        .expect("json");
    let id = call["id"].as_i64().expect("an id");
    let accepted = client.post(format!("{base}/api/calls/{id}/accept/")).bearer_auth(&bob).send().await;
    assert_eq!(accepted.expect("accept").status(), 200);
    let offer = |n: u32| {
        Message::text(
            json!({"type": "call.offer", "call_id": id, "offer": {"type": "offer", "sdp": format!("v=0 {n}")}})
                .to_string(),
        )
    };
    alice_socket.send(offer(1)).await.expect("send");
    assert_eq!(next_of_type(&mut bob_socket, "call.offer").await["offer"]["sdp"], "v=0 1");

    postgres.stop();

    // REST: 503 database_unavailable with Retry-After, at once rather than after a long wait.
    for path in ["/api/calls/", &format!("/api/calls/{id}/")] {
        let started = Instant::now();
        let response = client.get(format!("{base}{path}")).bearer_auth(&alice).send().await.expect("a response");
        let elapsed = started.elapsed();
        assert_eq!(response.status(), 503, "{path}");
        let retry_after = response.headers().get("retry-after").expect("Retry-After").to_str().expect("text");
        assert!(retry_after.parse::<u32>().is_ok_and(|secs| secs > 0), "Retry-After: {retry_after}");
        let body: Value = response.json().await.expect("the error envelope");
        assert_eq!(body["code"], "database_unavailable", "{path}: {body}");
        assert!(elapsed < Duration::from_secs(4), "{path} took {elapsed:?}");
    }
    let started = Instant::now();
    let initiate = client
        .post(format!("{base}/api/calls/initiate/"))
        .bearer_auth(&bob)
        .json(&json!({"receiver_id": "alice"}))
        .send()
        .await
        .expect("a response");
    assert_eq!(initiate.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(4), "initiate took {:?}", started.elapsed());
    let started = Instant::now();
    let ready = client.get(format!("{base}/readyz")).send().await.expect("a response");
    assert_eq!(ready.status(), 503);
    assert!(ready.headers().contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(4), "readyz took {:?}", started.elapsed());

    // The relay needs no database: the answered call's frames still go through, both ways.
    alice_socket.send(offer(2)).await.expect("send");
    assert_eq!(next_of_type(&mut bob_socket, "call.offer").await["offer"]["sdp"], "v=0 2");
    let candidate =
        json!({"type": "call.ice-candidate", "call_id": id, "candidate": {"candidate": "c", "sdpMid": "0"}});
    bob_socket.send(Message::text(candidate.to_string())).await.expect("send");
    next_of_type(&mut alice_socket, "call.ice-candidate").await;
    // A frame that needs the database (a call this instance has not seen) says so, and the
    // socket stays up.
    let unknown = json!({"type": "call.offer", "call_id": 987_654, "offer": {"type": "offer", "sdp": "v=0"}});
    bob_socket.send(Message::text(unknown.to_string())).await.expect("send");
    let refused = next_of_type(&mut bob_socket, "error").await;
    assert_eq!(refused["code"], "database_unavailable", "{refused}");
    bob_socket.send(Message::text(json!({"type": "ping"}).to_string())).await.expect("send");
    next_of_type(&mut bob_socket, "pong").await;

    // The database returns: everything works again, without a restart.
    postgres.resume();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = client.get(format!("{base}/readyz")).send().await.expect("a response").status();
        let listed = client.get(format!("{base}/api/calls/")).bearer_auth(&alice).send().await.expect("a response");
        if ready == 200 && listed.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not recovered 15 s after the database returned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ended = client.post(format!("{base}/api/calls/{id}/end/")).bearer_auth(&alice).send().await.expect("end");
    assert_eq!(ended.status(), 200);
    let ended: Value = ended.json().await.expect("json");
    assert_eq!(ended["status"], "ended");

    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("the database is unavailable"), "the outage was logged as such:\n{log}");
}
