//! The ring timer: turns calls nobody answered into `missed` and tells both parties.
//!
//! It sweeps the database for unanswered calls older than the ring timeout rather than keeping
//! one timer per call, so it needs no state, expires calls left ringing across a restart on
//! its first pass, and is safe with several server instances: each expiry is a
//! compare-and-set, and an instance that loses the race skips the call.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::hub::Signaling;

/// Calls expired per sweep at most; the next sweep takes the rest.
const BATCH: u32 = 100;

/// How often to sweep: a quarter of the ring timeout, between 100 ms and 1 s, so a call is
/// marked missed at most that long after its timeout.
pub fn sweep_interval(ring_timeout: Duration) -> Duration {
    (ring_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Sweeps until `stop` is cancelled.
pub async fn run(signaling: Arc<Signaling>, stop: CancellationToken) {
    let interval = sweep_interval(signaling.service().ring_timeout());
    sweep_every(interval, stop, "ring timeout sweep failed", "expired unanswered calls as missed", || {
        signaling.expire_due(BATCH)
    })
    .await;
}

/// Runs `sweep` every `interval` until `stop` is cancelled, logging how many calls each pass
/// settled (`settled`) and its failures (`failed`): a database hiccup is retried next tick.
pub(crate) async fn sweep_every<F, Fut>(
    interval: Duration,
    stop: CancellationToken,
    failed: &'static str,
    settled: &'static str,
    mut sweep: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, ringline_domain::CallServiceError>>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        match sweep().await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "{settled}"),
            Err(error) => tracing::warn!(%error, "{failed}"),
        }
    }
}
