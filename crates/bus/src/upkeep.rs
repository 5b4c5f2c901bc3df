//! Every second: this instance's liveness key, the end of lingering subscriptions, resyncs
//! owed after dropped messages, and the recovery after an outage.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use ringline_domain::{Audience, Signal, SignalRouter};
use tokio_util::sync::CancellationToken;

use super::{INSTANCE_REFRESH, INSTANCE_TTL, Job, SharedBus, conversation_channel, instance_key, user_channel};
use ringline_signaling::Signaling;
use ringline_signaling::events;

impl SharedBus {
    /// Every 3 s (every second during an outage): proves this instance is alive, forgets
    /// instances that are not, and after an outage writes this instance's presence again and
    /// tells every local session to resync.
    pub(super) async fn keep_alive(self: Arc<Self>, signaling: Arc<Signaling>, stop: CancellationToken) {
        let instance = self.local.instance();
        let key = instance_key(&self.prefix, instance);
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let mut last_refresh: Option<Instant> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    let _ = self.backplane.remove(&key).await;
                    return;
                }
                _ = ticker.tick() => {}
            }
            self.subscriptions.expire(Instant::now(), &self.control);
            if self.health.connected() {
                // Told everywhere: the sessions that missed the event are on other instances.
                let lost = std::mem::take(&mut *self.lost.lock().unwrap_or_else(PoisonError::into_inner));
                for user in &lost {
                    signaling.streams().send(user, None, |id| events::resync(id, id));
                }
            }
            let recovering = self.health.outage.load(Ordering::Relaxed);
            if !recovering && last_refresh.is_some_and(|at| at.elapsed() < INSTANCE_REFRESH) {
                continue;
            }
            let alive = self.backplane.set_expiring(&key, INSTANCE_TTL).await;
            self.record(alive.as_ref().err());
            if alive.is_err() {
                continue;
            }
            last_refresh = Some(Instant::now());
            if recovering && self.health.outage.swap(false, Ordering::Relaxed) {
                self.recover(&signaling);
            }
            let mut gone = HashSet::new();
            for other in self.local.instances_elsewhere() {
                if matches!(self.instance_alive(other).await, Ok(false)) {
                    gone.insert(other);
                }
            }
            if !gone.is_empty() {
                tracing::info!(instances = gone.len(), "forgetting the sockets of instances that stopped");
                self.local.forget_instances(&gone);
            }
        }
    }

    /// After an outage: presence again (the backplane may have restarted empty), and a `resync` to
    /// every session here, whose events from other instances may have been lost.
    pub(super) fn recover(&self, signaling: &Signaling) {
        let users = self.local.users();
        tracing::warn!(sessions_users = users.len(), "the bus is back: telling local sessions to resync");
        // Subscriptions asked for during the outage may have failed; asking again is harmless.
        for channel in super::broadcast_channels(&self.prefix) {
            let _ = self.control.send(Job::Subscribe(channel));
        }
        for conversation in self.local.conversations() {
            let _ = self.control.send(Job::Subscribe(conversation_channel(&self.prefix, conversation)));
        }
        for (user, notification) in &users {
            let _ = self.control.send(Job::Subscribe(user_channel(&self.prefix, user)));
            let count = self.local.sessions_of(user);
            let _ = self.control.send(Job::Devices { user: user.clone(), count });
            if *notification {
                let _ = self.control.send(Job::Presence { user: user.clone(), present: true });
            }
            // Only the sessions here: every instance that saw the outage tells its own, so each
            // session hears one `resync`, not one per instance. (Events this instance failed to
            // publish meanwhile are resynced everywhere, as `lost`.)
            signaling.streams().send_with(user, &mut |id| events::resync(id, id), &mut |payload| {
                let audience = Audience::User(user.clone());
                self.local.route(Signal { audience, except_device: None, except_user: None, payload });
            });
        }
    }
}
