//! One warning a second while the database is unreachable. Every request and frame that needs
//! it fails during an outage; a line each (thousands a second under load) would flood the log
//! and hide everything else. The first failure is logged at once, then one a second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The second (since the epoch) of the last warning logged.
static LAST_LOGGED: AtomicU64 = AtomicU64::new(0);

/// Whether to log this "database unavailable" failure: true for the first one of each second.
pub fn database_outage_log_due() -> bool {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |since| since.as_secs().max(1));
    due(&LAST_LOGGED, now)
}

fn due(last_logged: &AtomicU64, now: u64) -> bool {
    let last = last_logged.load(Ordering::Relaxed);
    now > last && last_logged.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_of_each_second_is_logged_and_no_other() {
        let last = AtomicU64::new(0);
        assert!(due(&last, 100), "the first failure");
        assert!(!due(&last, 100), "a second one in the same second");
        assert!(!due(&last, 100));
        assert!(due(&last, 101), "the next second");
        assert!(!due(&last, 99), "a clock that stepped back logs nothing new");
    }
}
