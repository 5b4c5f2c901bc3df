//! [`Wiring`]: what an application is built with besides its settings and storage.

use std::sync::Arc;

use ringline_bus::MemoryHub;
use ringline_domain::{Clock, SystemClock};

/// How an application is wired besides its settings and storage.
#[derive(Debug, Clone)]
pub struct Wiring {
    /// Joined to the other instances in this process by this hub instead of Redis (tests of
    /// several instances; trying them out).
    pub hub: Option<Arc<MemoryHub>>,
    /// Every decision in time (ring timeout, liveness, token expiry, retries) follows this
    /// clock: the system's, or one a test drives.
    pub clock: Arc<dyn Clock>,
}

impl Default for Wiring {
    fn default() -> Self {
        Self { hub: None, clock: Arc::new(SystemClock) }
    }
}
