//! How many devices a user has on every instance, and whether other instances are alive.

use std::collections::HashMap;

use futures_util::future::BoxFuture;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use ringline_domain::UserId;

use super::{RedisBus, devices_key};
use crate::router::Presence;

impl RedisBus {
    /// How many sessions `user` has on every live instance: this one's counted here, the
    /// others' read from Redis (`None` when Redis cannot be read).
    pub(super) async fn devices_everywhere(&self, user: &UserId) -> Option<usize> {
        let mut reader = self.reader.clone();
        let counts: HashMap<u64, usize> = reader
            .hgetall(devices_key(&self.prefix, user))
            .await
            .map_err(|error| tracing::warn!(%error, "cannot read where a user is connected"))
            .ok()?;
        let mut devices = self.local.sessions_of(user);
        for (instance, count) in counts {
            if instance != self.local.instance() && self.instance_alive(&mut reader, instance).await.ok()? {
                devices += count;
            }
        }
        Some(devices)
    }

    pub(super) async fn instance_alive(
        &self,
        manager: &mut ConnectionManager,
        instance: u64,
    ) -> Result<bool, redis::RedisError> {
        manager.exists(format!("{}:instance:{instance}", self.prefix)).await
    }
}

impl Presence for RedisBus {
    fn devices<'a>(&'a self, user: &'a UserId) -> BoxFuture<'a, usize> {
        // Redis unreadable: what this instance knows is the best answer there is.
        Box::pin(async move { self.devices_everywhere(user).await.unwrap_or_else(|| self.local.sessions_of(user)) })
    }
}
