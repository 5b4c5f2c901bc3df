//! The replay window every instance shares: a capped stream per user on the backplane.

use ringline_domain::UserId;

use super::{SharedBus, window_key};
use ringline_signaling::router::IdentifiedEvent;

impl SharedBus {
    /// The events of `user`'s shared window after `resume`, oldest first, with their ids; `None`
    /// when `resume` is not in it (too old, or never kept) or the backplane cannot be read.
    pub(super) async fn window_after(&self, user: &UserId, resume: &str) -> Option<Vec<IdentifiedEvent>> {
        let mut events = self
            .backplane
            .window(&window_key(&self.prefix, user))
            .await
            .map_err(|error| tracing::warn!(%error, "cannot read a shared replay window"))
            .ok()?;
        let from = events.iter().position(|(id, _)| id == resume)?;
        Some(events.split_off(from + 1))
    }
}
