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
    let mut ticker = tokio::time::interval(sweep_interval(signaling.service().ring_timeout()));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        match signaling.expire_due(BATCH).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "expired unanswered calls as missed"),
            // A database hiccup: log it and try again on the next tick.
            Err(error) => tracing::warn!(%error, "ring timeout sweep failed"),
        }
    }
}
