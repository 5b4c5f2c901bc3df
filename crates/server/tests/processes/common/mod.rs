//! What the binary's test files share: free ports, `ringline` subcommands, and `ringline
//! serve` started on a free port and waited for. Each test file is a crate of its own and uses
//! part of this.
#![allow(dead_code)] // not every helper is used by every test module

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().expect("address").port()
}

/// Runs a `ringline` subcommand with `env` (a database URL, a secret) and returns its stdout;
/// it must succeed.
pub fn cli(env: &[(&str, &str)], args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_ringline"))
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .expect("run ringline");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Starts `ringline` with `args` (none: `serve`) and `env`, on a free port unless `env` names
/// `RINGLINE_BIND`, with its log on `stderr`, and waits until `/healthz` answers. Returns the
/// process and its base URL.
pub async fn serve(args: &[&str], env: &[(&str, &str)], stderr: impl Into<Stdio>) -> (Child, String) {
    let bind = env
        .iter()
        .find(|(name, _)| *name == "RINGLINE_BIND")
        .map_or_else(|| format!("127.0.0.1:{}", free_port()), |(_, bind)| (*bind).to_owned());
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringline"))
        .args(args)
        .env("RINGLINE_BIND", &bind)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start ringline");
    let base = format!("http://{bind}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{base}/healthz")).await.is_err() {
        if Instant::now() >= deadline || child.try_wait().is_ok_and(|status| status.is_some()) {
            let _ = child.kill();
            panic!("ringline did not start serving within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, base)
}

/// A served `ringline`, killed when dropped (a test that failed midway leaves nothing
/// running).
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    pub async fn start(args: &[&str], env: &[(&str, &str)], stderr: impl Into<Stdio>) -> Self {
        let (child, base) = serve(args, env, stderr).await;
        Self { child, base }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM to `child`, as a deploy stops a server.
pub fn terminate(child: &Child) {
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());
}

/// Waits up to `within` for `child` to exit, asserts it exited 0, and returns how long it took.
pub async fn exited_cleanly(child: &mut Child, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "ringline did not stop within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
