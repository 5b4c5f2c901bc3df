//! [`OncePerSecond`]: at most one of something a second (a warning, an error frame), however
//! often its cause repeats. A flood of one cause (a database outage, a peer over its frame
//! rate, connections over the cap, a full bus queue) must not become a flood in the log or
//! back to the peer, and must not hide everything else; the first occurrence is let through at
//! once.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Lets one occurrence a second through. Lock-free and 8 bytes: one per socket is cheap.
#[derive(Debug, Default)]
pub struct OncePerSecond {
    /// Milliseconds since [`epoch`] (plus one, so 0 means "never") of the last one let through.
    last: AtomicU64,
}

/// A monotonic origin for every throttle in the process (an `Instant` cannot be built in a
/// `const fn`, and a static throttle needs one).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl OncePerSecond {
    pub const fn new() -> Self {
        Self { last: AtomicU64::new(0) }
    }

    /// Whether to let this occurrence through: true for the first, then for the first at
    /// least a second after the last one let through. Of callers racing, one gets true.
    pub fn due(&self) -> bool {
        let now = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        self.due_at(now)
    }

    fn due_at(&self, now_ms: u64) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now_ms.saturating_sub(last) >= 1_000)
            && self.last.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// Whether to log this "database unavailable" failure: every request and frame that needs the
/// database fails during an outage, thousands a second under load; one line a second tells it.
pub fn database_outage_log_due() -> bool {
    static DATABASE_OUTAGE: OncePerSecond = OncePerSecond::new();
    DATABASE_OUTAGE.due()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_occurrence_and_then_one_a_second_get_through() {
        let throttle = OncePerSecond::new();
        assert!(throttle.due_at(5), "the first, at once");
        assert!(!throttle.due_at(5), "a second one at the same moment");
        assert!(!throttle.due_at(1_004));
        assert!(throttle.due_at(1_005), "a second later");
        assert!(!throttle.due_at(1_500));
        assert!(throttle.due_at(2_005));
    }

    #[test]
    fn separate_throttles_do_not_share_their_second() {
        let (a, b) = (OncePerSecond::new(), OncePerSecond::new());
        assert!(a.due());
        assert!(b.due(), "another cause is let through too");
        assert!(!a.due());
    }
}
