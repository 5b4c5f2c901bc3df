//! Relay benchmark: ICE candidates relayed between the parties of many active calls, through
//! the real server over real WebSockets on 127.0.0.1. Reports relayed frames a second and the
//! send-to-receive latency of each frame.
//!
//! ```text
//! cargo bench -p ringline-tests --bench relay -- [--calls N] [--rate FRAMES_PER_SEC] [--seconds S]
//! ```
//!
//! `--rate 0` (the default) saturates: each party keeps up to 64 frames in flight, so the
//! figure is the most the relay delivers. A positive `--rate` offers that many frames a second
//! in total, spread evenly over the senders and paced in batches every 5 ms, which is how
//! latency is meant to be read. `--threads` sets each runtime's worker threads (2).
//!
//! The server runs on its own two-thread tokio runtime and the load generator on another, in
//! one process on the same cores: every client frame's masking, writing, reading and parsing
//! competes with the server for CPU, so the figures are a floor for the server alone. The
//! report splits the CPU time between the two runtimes' threads. Results and the machine they
//! came from are in `docs/benchmarks.md`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ringline_tests::{DatabaseBackend, TestApp};
use serde_json::json;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

/// Frames a saturating sender keeps in flight.
const WINDOW: u64 = 64;
const WARM_UP: Duration = Duration::from_secs(2);
const BATCH_EVERY: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy)]
struct Options {
    calls: usize,
    /// Worker threads of each runtime, the server's and the load generator's.
    threads: usize,
    rate: u64,
    seconds: u64,
}

fn options() -> Options {
    let mut options = Options { calls: 100, threads: 2, rate: 0, seconds: 10 };
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let mut iter = arguments.iter();
    while let Some(flag) = iter.next() {
        let mut value = || iter.next().and_then(|value| value.parse::<u64>().ok());
        match flag.as_str() {
            "--calls" => options.calls = value().and_then(|v| usize::try_from(v).ok()).unwrap_or(options.calls),
            "--threads" => options.threads = value().and_then(|v| usize::try_from(v).ok()).unwrap_or(options.threads),
            "--rate" => options.rate = value().unwrap_or(options.rate),
            "--seconds" => options.seconds = value().unwrap_or(options.seconds),
            _ => {} // cargo bench passes --bench
        }
    }
    options
}

/// One direction of one call: what the receiver got, which paces a saturating sender.
#[derive(Debug, Default)]
struct Direction {
    delivered: AtomicU64,
    delivered_notify: Notify,
}

#[derive(Debug)]
struct Shared {
    started: Instant,
    measuring: AtomicBool,
    errors: AtomicU64,
}

/// Thread-name prefix of the server's runtime (a thread's name is cut at 15 bytes).
const SERVER_THREADS: &str = "ringline-server";

/// A call in progress: its id and its parties' tokens.
#[derive(Debug)]
struct ActiveCall {
    id: i64,
    caller_token: String,
    receiver_token: String,
}

fn main() {
    let options = options();
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.threads)
            .thread_name(name)
            .enable_all()
            .build()
            .expect("a runtime")
    };
    let server = runtime(SERVER_THREADS);
    let load = runtime("load");
    let (app, calls) = server.block_on(async {
        let app = TestApp::spawn_with(DatabaseBackend::Sqlite, |settings| {
            // Measure the relay, not the per-socket limiter.
            settings.sockets.ws_frames_per_sec = 1_000_000;
            settings.sockets.ws_frame_burst = 10_000_000;
        })
        .await;
        let calls = set_up_calls(&app, options.calls).await;
        (app, calls)
    });
    load.block_on(run(options, &app, calls));
    server.block_on(app.stop());
}

/// `count` calls, each rung and accepted over REST (sixteen set up at a time).
async fn set_up_calls(app: &TestApp, count: usize) -> Vec<ActiveCall> {
    let set_up = |index: usize| async move {
        let (caller, receiver) = (format!("caller{index}"), format!("callee{index}"));
        let (caller_token, receiver_token) = (app.user(&caller).await, app.user(&receiver).await);
        let id = app.ring(&caller_token, &receiver).await;
        app.post(&format!("/api/calls/{id}/accept/"), &receiver_token, json!({})).await.expect(200);
        ActiveCall { id, caller_token, receiver_token }
    };
    futures_util::stream::iter(0..count).map(set_up).buffer_unordered(16).collect().await
}

async fn run(options: Options, app: &TestApp, calls: Vec<ActiveCall>) {
    let shared =
        Arc::new(Shared { started: Instant::now(), measuring: AtomicBool::new(false), errors: AtomicU64::new(0) });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let per_sender_rate = options.rate as f64 / (2 * options.calls) as f64;

    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for ActiveCall { id: call, caller_token, receiver_token } in calls {
        let caller_socket = connect(app, &caller_token).await;
        let receiver_socket = connect(app, &receiver_token).await;
        let (caller_sink, caller_stream) = caller_socket.split();
        let (receiver_sink, receiver_stream) = receiver_socket.split();
        let forward = Arc::new(Direction::default()); // caller -> callee
        let backward = Arc::new(Direction::default()); // callee -> caller
        receivers.push(tokio::spawn(receive(receiver_stream, forward.clone(), shared.clone(), stopped.clone())));
        receivers.push(tokio::spawn(receive(caller_stream, backward.clone(), shared.clone(), stopped.clone())));
        senders.push(tokio::spawn(send(caller_sink, call, forward, per_sender_rate, shared.clone())));
        senders.push(tokio::spawn(send(receiver_sink, call, backward, per_sender_rate, shared.clone())));
    }

    tokio::time::sleep(WARM_UP).await;
    let cpu_before = cpu_by_runtime();
    let measured_from = Instant::now();
    shared.measuring.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(options.seconds)).await;
    shared.measuring.store(false, Ordering::SeqCst);
    let elapsed = measured_from.elapsed();
    let cpu_after = cpu_by_runtime();
    let cpu = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    let _ = stop.send(true);
    for sender in senders {
        sender.abort();
    }
    let mut latencies = Vec::new();
    for receiver in receivers {
        latencies.append(&mut receiver.await.expect("a receiver task"));
    }
    report(options, elapsed, cpu, &mut latencies, shared.errors.load(Ordering::SeqCst));
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &TestApp, token: &str) -> Socket {
    let url = app.ws_url(&format!("/ws/notifications/?token={token}"));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    let ack = socket.next().await.expect("an ack").expect("an ack");
    assert!(matches!(ack, Message::Text(ref text) if text.contains("connection.ack")), "{ack:?}");
    socket
}

/// Sends candidates stamped with their send time (µs since start, in `usernameFragment`).
async fn send(
    mut sink: futures_util::stream::SplitSink<Socket, Message>,
    call: i64,
    direction: Arc<Direction>,
    rate: f64,
    shared: Arc<Shared>,
) {
    let frame = |micros: u128| {
        Message::text(format!(
            r#"{{"type":"call.ice-candidate","call_id":{call},"candidate":{{"candidate":"candidate:842163049 1 udp 1677729535 203.0.113.7 54321 typ srflx raddr 192.168.1.20 rport 54321 generation 0","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"{micros}"}}}}"#
        ))
    };
    let begun = Instant::now();
    let mut ticker = tokio::time::interval(BATCH_EVERY);
    let mut sent = 0u64;
    loop {
        // How many frames may have been sent by now.
        let allowed = if rate > 0.0 {
            // Paced: every 5 ms, the frames due by then.
            ticker.tick().await;
            (begun.elapsed().as_secs_f64() * rate) as u64
        } else {
            // Saturating: keep WINDOW frames in flight.
            let notified = direction.delivered_notify.notified();
            if sent - direction.delivered.load(Ordering::Acquire) >= WINDOW {
                notified.await;
            }
            direction.delivered.load(Ordering::Acquire) + WINDOW
        };
        while sent < allowed {
            if sink.feed(frame(shared.started.elapsed().as_micros())).await.is_err() {
                return;
            }
            sent += 1;
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// Counts relayed candidates and, while measuring, records each one's latency in µs.
async fn receive(
    mut stream: futures_util::stream::SplitStream<Socket>,
    direction: Arc<Direction>,
    shared: Arc<Shared>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Vec<u32> {
    let mut latencies = Vec::new();
    loop {
        let message = tokio::select! {
            message = stream.next() => message,
            _ = stopped.changed() => break,
        };
        let Some(Ok(Message::Text(text))) = message else {
            if matches!(message, None | Some(Err(_))) {
                break;
            }
            continue;
        };
        let Some(sent_at) = sent_micros(text.as_str()) else {
            if !text.contains("\"pong\"") {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        };
        if shared.measuring.load(Ordering::Relaxed) {
            let now = shared.started.elapsed().as_micros();
            latencies.push(u32::try_from(now.saturating_sub(sent_at)).unwrap_or(u32::MAX));
        }
        direction.delivered.fetch_add(1, Ordering::Release);
        direction.delivered_notify.notify_one();
    }
    latencies
}

/// The send stamp of a relayed candidate, found without parsing the whole event.
fn sent_micros(text: &str) -> Option<u128> {
    if !text.contains("call.ice-candidate") {
        return None;
    }
    let start = text.find("\"usernameFragment\":\"")? + "\"usernameFragment\":\"".len();
    let digits = &text[start..];
    digits[..digits.find('"')?].parse().ok()
}

/// User plus system CPU time of the server's threads and of all the others, from /proc (Linux).
fn cpu_by_runtime() -> (Duration, Duration) {
    let (mut server, mut rest) = (Duration::ZERO, Duration::ZERO);
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        // After the command name: utime and stime are fields 14 and 15 (1-based, man 5 proc).
        let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
        let time = Duration::from_millis(ticks * 10); // USER_HZ is 100 on Linux
        if name.trim_end().starts_with(SERVER_THREADS) { server += time } else { rest += time }
    }
    (server, rest)
}

fn report(options: Options, elapsed: Duration, cpu: (Duration, Duration), latencies: &mut [u32], errors: u64) {
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * (latencies.len() - 1) as f64).round() as usize;
        f64::from(latencies[rank]) / 1000.0
    };
    let relayed = latencies.len() as f64 / elapsed.as_secs_f64();
    let mode = if options.rate == 0 { "saturating".to_owned() } else { format!("offered {} frames/s", options.rate) };
    println!(
        "relay benchmark: {} calls ({} sockets), {mode}, {:.1} s measured",
        options.calls,
        options.calls * 2,
        elapsed.as_secs_f64()
    );
    println!("  relayed:  {relayed:.0} frames/s ({} frames)", latencies.len());
    println!(
        "  latency:  p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        percentile(50.0),
        percentile(90.0),
        percentile(99.0),
        percentile(99.9),
        percentile(100.0)
    );
    let cores = |time: Duration| time.as_secs_f64() / elapsed.as_secs_f64();
    println!(
        "  cpu:      server {:.2} cores, load generator {:.2} cores (of {})",
        cores(cpu.0),
        cores(cpu.1),
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    if cpu.0 > Duration::ZERO {
        println!("  server:   {:.0} frames/s per busy core", relayed / cores(cpu.0));
    }
    println!("  unexpected events: {errors}");
}
