//! How many devices a user has on every instance.

use futures_util::future::BoxFuture;
use ringline_domain::UserId;

use super::{SharedBus, devices_key};
use ringline_signaling::router::Presence;

impl SharedBus {
    /// How many sessions `user` has on every live instance: this one's counted here, the
    /// others' read from the backplane (`None` when it cannot be read).
    pub(super) async fn devices_everywhere(&self, user: &UserId) -> Option<usize> {
        let counts = self
            .backplane
            .counts(&devices_key(&self.prefix, user))
            .await
            .map_err(|error| tracing::warn!(%error, "cannot read where a user is connected"))
            .ok()?;
        let mut devices = self.local.sessions_of(user);
        for (instance, count) in counts {
            if instance != self.local.instance() && self.instance_alive(instance).await.ok()? {
                devices += count;
            }
        }
        Some(devices)
    }
}

impl Presence for SharedBus {
    fn devices<'a>(&'a self, user: &'a UserId) -> BoxFuture<'a, usize> {
        // The backplane unreadable: what this instance knows is the best answer there is.
        Box::pin(async move { self.devices_everywhere(user).await.unwrap_or_else(|| self.local.sessions_of(user)) })
    }

    fn instance_alive(&self, instance: u64) -> BoxFuture<'_, Option<bool>> {
        Box::pin(async move {
            if instance == self.local.instance() {
                return Some(true);
            }
            SharedBus::instance_alive(self, instance)
                .await
                .map_err(|error| tracing::warn!(%error, "cannot tell whether an instance is alive"))
                .ok()
        })
    }
}
