//! TURN against a real coturn: the credentials `GET /api/turn/ice-servers/` hands out allocate
//! relays on Debian's `turnserver` (over UDP and over TCP), and a tampered or expired one is
//! refused by it. Each test starts its own `turnserver` on free ports (`.ci/run` installs coturn);
//! the client is coturn's own `turnutils_uclient`. And relay-only: the user's or the server's
//! choice reaches the client as `ice_transport_policy: relay`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use ringline_domain::{Clock, ManualClock, SystemClock};
use ringline_tests::{DatabaseBackend, TestApp};
use serde_json::{Value, json};

const TURN_SECRET: &str = "coturn-static-auth-secret-for-tests";

/// A `turnserver` of this test's own, on loopback.
struct Coturn {
    port: u16,
    child: Child,
    _dir: TempDir,
}

/// A folder removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 now (TURN listens on both).
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = tcp.local_addr().expect("an address").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn installed(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|out| out.status.success())
}

impl Coturn {
    fn start() -> Self {
        assert!(
            installed("turnserver") && installed("turnutils_uclient"),
            "coturn is not installed: `apt-get install coturn` (.ci/run does it)"
        );
        let dir = std::env::temp_dir().join(format!("ringline-coturn-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("a folder for coturn");
        let port = free_port();
        // Relay ports: a small range of our own, away from the listening port.
        let relay_base = 40_000 + (port % 20_000);
        let config = format!(
            "listening-ip=127.0.0.1\nrelay-ip=127.0.0.1\nlistening-port={port}\n\
             min-port={relay_base}\nmax-port={}\n\
             use-auth-secret\nstatic-auth-secret={TURN_SECRET}\nrealm=ringline.test\n\
             fingerprint\nno-tls\nno-dtls\nno-cli\nno-multicast-peers\nallow-loopback-peers\n\
             userdb={}\npidfile={}\nlog-file=stdout\nsimple-log\n",
            relay_base + 99,
            dir.join("turndb").display(),
            dir.join("turnserver.pid").display(),
        );
        let config_path = dir.join("turnserver.conf");
        std::fs::write(&config_path, config).expect("write the coturn configuration");
        let child = Command::new("turnserver")
            .args(["-c", config_path.to_str().expect("a UTF-8 path")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver");
        let coturn = Self { port, child, _dir: TempDir(dir) };
        // Up once it accepts TCP (it binds UDP first).
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return coturn;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("turnserver did not start on port {port}");
    }

    /// Whether coturn allocates a relay for `username`/`credential` and relays through it:
    /// two `turnutils_uclient` clients send each other messages through their relays.
    fn relays(&self, username: &str, credential: &str, tcp: bool) -> bool {
        let mut command = Command::new("turnutils_uclient");
        if tcp {
            command.arg("-t");
        }
        let output = command
            .args(["-y", "-n", "3", "-m", "1", "-l", "64"])
            .args(["-u", username, "-w", credential, "-p", &self.port.to_string()])
            .arg("127.0.0.1")
            .output()
            .expect("run turnutils_uclient");
        let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        // A refused credential ends with "Cannot complete Allocation" and status 255; relays
        // that carried the messages end with a total of what was sent and what came back.
        output.status.success() && relayed_everything(&text)
    }
}

/// Whether `turnutils_uclient`'s closing total ("start_mclient: tot_send_msgs=12,
/// tot_recv_msgs=12") says every message sent came back through the relays.
fn relayed_everything(output: &str) -> bool {
    let total =
        output.lines().rev().find_map(|line| line.split_once("start_mclient: tot_send_msgs=").map(|(_, rest)| rest));
    let Some((sent, received)) = total.and_then(|rest| rest.split_once(", tot_recv_msgs=")) else { return false };
    let (sent, received) = (sent.trim().parse::<u32>(), received.trim().parse::<u32>());
    matches!((sent, received), (Ok(sent), Ok(received)) if sent > 0 && sent == received)
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn with_turn(port: u16) -> impl Fn(&mut ringline_server::Settings) {
    move |settings| {
        settings.ice_servers.turn_urls =
            vec![format!("turn:127.0.0.1:{port}?transport=udp"), format!("turn:127.0.0.1:{port}?transport=tcp")];
        settings.ice_servers.turn_secret = Some(TURN_SECRET.to_owned().into());
        settings.ice_servers.turn_ttl_secs = 600;
    }
}

/// The TURN entry of `GET /api/turn/ice-servers/`: its username and credential.
fn turn_entry(body: &Value) -> (String, String) {
    let servers = body["ice_servers"].as_array().expect("a list");
    let turn = servers.iter().find(|server| server["username"].is_string()).expect("a TURN server");
    let text = |field: &str| turn[field].as_str().expect(field).to_owned();
    (text("username"), text("credential"))
}

async fn the_handed_out_credentials_relay_on_a_real_coturn(backend: DatabaseBackend) {
    let coturn = Coturn::start();
    let app = TestApp::spawn_with(backend, with_turn(coturn.port)).await;
    let alice = app.user("alice").await;
    let body = app.get("/api/turn/ice-servers/", &alice).await.expect(200);
    let (username, credential) = turn_entry(&body);
    assert!(username.ends_with(":alice"), "{username}");
    let expires_at = chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().expect("expires_at"));
    let left = expires_at.expect("RFC 3339").timestamp() - SystemClock.now().unix_micros() / 1_000_000;
    assert!((590..=600).contains(&left), "the configured lifetime, readable: {left} s");
    assert_eq!(body["ice_transport_policy"], "all");

    assert!(coturn.relays(&username, &credential, false), "a relay over UDP");
    assert!(coturn.relays(&username, &credential, true), "a relay over TCP");
    // One character changed in the credential, or the name it signs: refused.
    let mut tampered = credential.clone().into_bytes();
    tampered[0] = if tampered[0] == b'A' { b'B' } else { b'A' };
    assert!(!coturn.relays(&username, &String::from_utf8(tampered).expect("ASCII"), false));
    assert!(!coturn.relays(&username.replace(":alice", ":mallory"), &credential, false));
    app.stop().await;
}

/// Several TURN servers, each checking credentials with its own secret: each entry carries the
/// credential its own secret signs, so each is accepted where it is meant for and nowhere else.
async fn each_turn_server_gets_a_credential_its_own_secret_signs(backend: DatabaseBackend) {
    let coturn = Coturn::start();
    let ours = vec![
        format!("turn:127.0.0.1:{}?transport=udp", coturn.port),
        format!("turn:127.0.0.1:{}?transport=tcp", coturn.port),
    ];
    let configured = ours.clone();
    let app = TestApp::spawn_with(backend, move |settings| {
        // Another cluster, with another secret, listed first.
        settings.ice_servers.turn_urls = vec!["turns:turn.other.test:443?transport=tcp".to_owned()];
        settings.ice_servers.turn_secret = Some("the-other-clusters-secret".to_owned().into());
        settings.ice_servers.turn_servers = vec![ringline_server::settings::TurnServerConfig {
            urls: configured.clone(),
            secret: TURN_SECRET.to_owned().into(),
        }];
    })
    .await;
    let alice = app.user("alice").await;
    let body = app.get("/api/turn/ice-servers/", &alice).await.expect(200);
    let turn: Vec<&Value> =
        body["ice_servers"].as_array().expect("a list").iter().filter(|s| s["username"].is_string()).collect();
    assert_eq!(turn.len(), 2, "{body}");
    assert_eq!(turn[0]["urls"], json!(["turns:turn.other.test:443?transport=tcp"]));
    assert_eq!(turn[1]["urls"], json!(ours));
    let credentials = |server: &Value| {
        (
            server["username"].as_str().expect("username").to_owned(),
            server["credential"].as_str().expect("credential").to_owned(),
        )
    };
    let (username, credential) = credentials(turn[1]);
    assert!(coturn.relays(&username, &credential, false), "our coturn takes the credential our secret signs");
    let (username, credential) = credentials(turn[0]);
    assert!(!coturn.relays(&username, &credential, false), "and not the other cluster's");
    app.stop().await;
}

async fn an_expired_credential_is_refused_by_coturn(backend: DatabaseBackend) {
    let coturn = Coturn::start();
    // A server whose clock is two minutes behind hands out one-minute credentials that
    // expired a minute ago, as far as coturn (on the real clock) can tell.
    let past = SystemClock.now().minus(Duration::from_secs(120));
    let clock = Arc::new(ManualClock::starting_at(past));
    let app = TestApp::spawn_on_clock(backend, &clock, |settings| {
        with_turn(coturn.port)(settings);
        settings.ice_servers.turn_ttl_secs = 60;
    })
    .await;
    let alice = app.user("alice").await;
    let (username, credential) = turn_entry(&app.get("/api/turn/ice-servers/", &alice).await.expect(200));
    assert!(!coturn.relays(&username, &credential, false), "expired");
    app.stop().await;
}

async fn relay_only_reaches_the_client_from_the_user_or_the_server(backend: DatabaseBackend) {
    let app = TestApp::spawn_with(backend, with_turn(free_port())).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let policy = |body: Value| body["ice_transport_policy"].clone();
    assert_eq!(policy(app.get("/api/turn/ice-servers/", &alice).await.expect(200)), "all");
    let settings = app.send(Method::PATCH, "/api/call-settings/", Some(&alice), Some(json!({"relay_only": true})));
    assert_eq!(settings.await.expect(200)["relay_only"], true);
    assert_eq!(policy(app.get("/api/turn/ice-servers/", &alice).await.expect(200)), "relay");
    assert_eq!(policy(app.get("/api/turn/ice-servers/", &bob).await.expect(200)), "all", "alice's choice only");
    app.stop().await;

    let app = TestApp::spawn_with(backend, |settings| {
        with_turn(free_port())(settings);
        settings.ice_servers.ice_relay_only = true;
    })
    .await;
    let bob = app.user("bob").await;
    assert_eq!(policy(app.get("/api/turn/ice-servers/", &bob).await.expect(200)), "relay", "the server's choice");
    app.stop().await;
}

// What coturn accepts does not depend on Ringline's database (each coturn run takes seconds):
// those tests run once, on SQLite. Relay-only is a stored setting: both databases.
mod sqlite_only {
    use ringline_tests::DatabaseBackend::Sqlite;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_handed_out_credentials_relay_on_a_real_coturn() {
        super::the_handed_out_credentials_relay_on_a_real_coturn(Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_turn_server_gets_a_credential_its_own_secret_signs() {
        super::each_turn_server_gets_a_credential_its_own_secret_signs(Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_credential_is_refused_by_coturn() {
        super::an_expired_credential_is_refused_by_coturn(Sqlite).await;
    }
}

ringline_tests::on_both_databases!(relay_only_reaches_the_client_from_the_user_or_the_server);
