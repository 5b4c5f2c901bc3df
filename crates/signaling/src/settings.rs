//! A session's settings: how it keeps a quiet connection alive, and how many frames it may
//! send.

use std::time::Duration;

/// How a session keeps a quiet connection alive, and when it gives up on a silent peer.
///
/// Proxies and load balancers drop idle connections on their own timers (often 60 s), so the
/// ping interval must stay below theirs; the idle timeout frees sessions whose peer vanished
/// without closing (a phone that lost its network). The idle check runs on each ping tick, so
/// a silent peer is closed between `idle_timeout` and `idle_timeout + ping_interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// How often the server pings the peer.
    pub ping_interval: Duration,
    /// A peer silent for this long (no frame, no pong) is disconnected with 4408.
    pub idle_timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self { ping_interval: Duration::from_secs(20), idle_timeout: Duration::from_secs(60) }
    }
}

/// How many frames a session may send: `per_second` sustained, `burst` at once (a trickle of
/// ICE candidates arrives in bursts of a few dozen). Frames over it are dropped with a
/// `rate_limited` error frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameRate {
    pub per_second: f64,
    pub burst: f64,
}

impl Default for FrameRate {
    fn default() -> Self {
        Self { per_second: 50.0, burst: 200.0 }
    }
}
