//! The liveness sweep: keeps the last-seen moments of connected parties fresh and ends active
//! calls whose parties have all been gone for the grace period (`connection_lost`) or that
//! reached the maximum length (`max_duration`).
//!
//! Like the ring timer it decides from the database, not from this process's memory: every
//! instance records the parties connected to it, and any instance may end a call once no
//! instance has seen either party for the grace period. So it ends calls left open across a
//! restart, and with several instances exactly one of them ends each call (a compare-and-set
//! that also re-checks that nobody was seen meanwhile).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::hub::Signaling;
use crate::ring_timer::sweep_every;

/// Calls ended per sweep at most; the next sweep takes the rest.
const BATCH: u32 = 100;

/// How often to sweep: a third of the grace period, between 100 ms and 10 s. A connected
/// party's last-seen moment is then never older than a third of the grace period, and a call
/// is ended at most that long after its grace period ran out.
pub fn sweep_interval(grace: Duration) -> Duration {
    (grace / 3).clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// Sweeps until `stop` is cancelled.
pub async fn run(signaling: Arc<Signaling>, stop: CancellationToken) {
    let interval = sweep_interval(signaling.service().liveness().grace);
    let settled = "ended calls whose parties were gone or that ran too long";
    sweep_every(interval, stop, "liveness sweep failed", settled, || signaling.sweep_liveness(BATCH)).await;
}
