//! The publishing task: messages (batched), subscriptions, presence and device counts, written
//! to the backplane in the order they were queued.

use std::sync::Arc;

use ringline_domain::UserId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::backplane::{BackplaneError, Write};
use super::wire::Wire;
use super::{BATCH_MAX, DEVICES_KEPT, Job, Outgoing, SharedBus};
use super::{devices_key, instance_key, notification_key, user_channel};

/// Subscription changes of one batch: runs of the same kind, in the order they were queued.
#[derive(Debug, Default)]
struct SubscriptionRuns(Vec<(bool, Vec<String>)>);

impl SubscriptionRuns {
    fn push(&mut self, subscribe: bool, channel: String) {
        match self.0.last_mut() {
            Some((kind, channels)) if *kind == subscribe => channels.push(channel),
            _ => self.0.push((subscribe, vec![channel])),
        }
    }
}

impl SharedBus {
    /// Publishes queued messages and applies subscription and presence changes, in order.
    pub(super) async fn publish_jobs(
        self: Arc<Self>,
        mut jobs: mpsc::Receiver<Job>,
        mut control: mpsc::UnboundedReceiver<Job>,
        stop: CancellationToken,
    ) {
        loop {
            // Control first: a subscription must not wait behind a flood of messages.
            let job = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                Some(job) = control.recv() => job,
                Some(job) = jobs.recv() => job,
                else => return,
            };
            if let Job::Publish(first, user) = job {
                self.publish_batch(first, user, &mut jobs).await;
                continue;
            }
            // Everything else waiting goes with it: when many sessions arrive at once (a
            // reconnect storm, a deploy), their subscriptions, presence and device counts take
            // a round trip or three in all instead of five each.
            let mut batch = vec![job];
            while batch.len() < BATCH_MAX {
                match control.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.apply_control(batch).await;
        }
    }

    /// Publishes `first` and the messages already waiting behind it, in one round trip: a burst
    /// of ICE candidates goes together instead of one by one.
    async fn publish_batch(&self, first: Outgoing, user: Option<UserId>, jobs: &mut mpsc::Receiver<Job>) {
        let mut batch = vec![Write::Publish(first)];
        let mut users = vec![user];
        while batch.len() < BATCH_MAX {
            match jobs.try_recv() {
                Ok(Job::Publish(outgoing, user)) => {
                    batch.push(Write::Publish(outgoing));
                    users.push(user);
                }
                Ok(other) => {
                    // Only messages are queued here; anything else goes first.
                    let _ = self.control.send(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let messages = batch.len();
        let sent = self.backplane.write(batch).await;
        if sent.is_ok() {
            self.health.count_published(messages);
        } else {
            for user in &users {
                self.health.warn_dropped("the backplane did not take it");
                self.lose(user.as_ref());
            }
        }
        self.record(sent.as_ref().err());
    }

    /// Applies control jobs: subscriptions first, in the order they were queued (a channel
    /// subscribed and then unsubscribed ends unsubscribed), then where users' notification
    /// sockets are is read, then presence and device counts are written, in order.
    async fn apply_control(&self, batch: Vec<Job>) {
        let instance = self.local.instance();
        let mut subscriptions = SubscriptionRuns::default();
        let mut learn = Vec::new();
        let mut writes = Vec::new();
        for job in batch {
            match job {
                Job::Subscribe(channel) => subscriptions.push(true, channel),
                Job::Unsubscribe(channel) => subscriptions.push(false, channel),
                Job::LearnPresence(user) => learn.push(user),
                Job::Presence { user, present } => {
                    writes.push(Write::Member {
                        key: notification_key(&self.prefix, &user),
                        member: instance,
                        present,
                    });
                    let message = Wire::Presence { from: instance, present }.encode();
                    let channel = user_channel(&self.prefix, &user);
                    writes.push(Write::Publish(Outgoing { channel, message, kept: None }));
                }
                Job::Devices { user, count } => writes.push(Write::Count {
                    key: devices_key(&self.prefix, &user),
                    field: instance,
                    count,
                    ttl: DEVICES_KEPT,
                }),
                // Never queued as control; published all the same.
                Job::Publish(outgoing, _) => writes.push(Write::Publish(outgoing)),
            }
        }
        for (subscribe, channels) in subscriptions.0 {
            let done = if subscribe {
                let subscribed = self.backplane.subscribe(&channels).await;
                if subscribed.is_ok() {
                    for channel in &channels {
                        self.subscriptions.active(channel);
                    }
                }
                subscribed
            } else {
                self.backplane.unsubscribe(&channels).await
            };
            self.record(done.as_ref().err());
        }
        if !learn.is_empty() {
            let learnt = self.learn_presence(&learn).await;
            self.record(learnt.as_ref().err());
        }
        if !writes.is_empty() {
            let written = self.backplane.write(writes).await;
            self.record(written.as_ref().err());
        }
    }

    /// Reads which live instances hold notification sockets of each of `users`.
    async fn learn_presence(&self, users: &[UserId]) -> Result<(), BackplaneError> {
        let keys: Vec<String> = users.iter().map(|user| notification_key(&self.prefix, user)).collect();
        let members = self.backplane.members(&keys).await?;
        // Each other instance is checked once, however many users it holds.
        let mut alive = std::collections::HashMap::new();
        for (user, instances) in users.iter().zip(members) {
            for instance in instances {
                if instance == self.local.instance() {
                    continue;
                }
                let is_alive = match alive.get(&instance) {
                    Some(known) => *known,
                    None => *alive.entry(instance).or_insert(self.instance_alive(instance).await?),
                };
                if is_alive {
                    self.local.set_elsewhere(user, instance, true);
                }
            }
        }
        Ok(())
    }

    pub(super) async fn instance_alive(&self, instance: u64) -> Result<bool, BackplaneError> {
        self.backplane.exists(&instance_key(&self.prefix, instance)).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use async_trait::async_trait;
    use ringline_signaling::router::{LocalRouter, SessionKind};

    use super::*;
    use crate::backplane::{Backplane, Incoming};
    use crate::{MemoryBackplane, MemoryHub};

    /// A backplane that counts the round trips it is asked for.
    #[derive(Debug)]
    struct Counting {
        inner: MemoryBackplane,
        subscribes: AtomicUsize,
        writes: AtomicUsize,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl Backplane for Counting {
        async fn write(&self, batch: Vec<Write>) -> Result<(), BackplaneError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.inner.write(batch).await
        }
        async fn subscribe(&self, channels: &[String]) -> Result<(), BackplaneError> {
            self.subscribes.fetch_add(1, Ordering::SeqCst);
            self.inner.subscribe(channels).await
        }
        async fn unsubscribe(&self, channels: &[String]) -> Result<(), BackplaneError> {
            self.subscribes.fetch_add(1, Ordering::SeqCst);
            self.inner.unsubscribe(channels).await
        }
        async fn members(&self, keys: &[String]) -> Result<Vec<Vec<u64>>, BackplaneError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.members(keys).await
        }
        async fn counts(&self, key: &str) -> Result<HashMap<u64, usize>, BackplaneError> {
            self.inner.counts(key).await
        }
        async fn set_expiring(&self, key: &str, ttl: Duration) -> Result<(), BackplaneError> {
            self.inner.set_expiring(key, ttl).await
        }
        async fn remove(&self, key: &str) -> Result<(), BackplaneError> {
            self.inner.remove(key).await
        }
        async fn exists(&self, key: &str) -> Result<bool, BackplaneError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.exists(key).await
        }
        async fn window(&self, key: &str) -> Result<Vec<(String, Arc<str>)>, BackplaneError> {
            self.inner.window(key).await
        }
    }

    /// A hundred sessions arriving at once (a reconnect storm) cost a few round trips, not
    /// five each, and leave every subscription, presence and device count in place.
    #[tokio::test]
    async fn sessions_arriving_together_share_their_round_trips() {
        let hub = MemoryHub::new();
        let (sender, incoming) = mpsc::unbounded_channel::<Incoming>();
        let counting = Arc::new(Counting {
            inner: hub.join(sender),
            subscribes: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
        });
        let local = Arc::new(LocalRouter::new());
        let bus = SharedBus::new(counting.clone(), incoming, "ringline", 10_000, local.clone());
        let users: Vec<UserId> = (0..100).map(|n| UserId::parse(format!("user{n}")).expect("an id")).collect();
        let _sessions: Vec<_> =
            users.iter().map(|user| local.register(user.clone(), SessionKind::Notifications)).collect();

        let parts = bus.parts.lock().expect("lock").take().expect("not started");
        let stop = CancellationToken::new();
        let publisher = tokio::spawn(bus.clone().publish_jobs(parts.jobs, parts.control, stop.clone()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !users.iter().all(|user| bus.subscriptions.following(&user_channel("ringline", user))) {
            assert!(Instant::now() < deadline, "the subscriptions were never made");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Presence and device counts are written after the subscriptions of their batch.
        let key = |user: &UserId| (notification_key("ringline", user), devices_key("ringline", user));
        loop {
            let mut written = 0;
            for user in &users {
                let (notification, devices) = key(user);
                let members = counting.inner.members(&[notification]).await.expect("members");
                let counts = counting.inner.counts(&devices).await.expect("counts");
                if members == [vec![local.instance()]] && counts.get(&local.instance()) == Some(&1) {
                    written += 1;
                }
            }
            if written == users.len() {
                break;
            }
            assert!(Instant::now() < deadline, "presence and devices written for {written} users only");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        let _ = publisher.await;

        // 402 jobs (4 a user, and the two broadcast channels) in batches of at most 256.
        let (subscribes, writes, reads) = (
            counting.subscribes.load(Ordering::SeqCst),
            counting.writes.load(Ordering::SeqCst),
            counting.reads.load(Ordering::SeqCst),
        );
        assert!(subscribes <= 3, "{subscribes} subscription round trips");
        assert!(writes <= 3, "{writes} write round trips");
        assert!(reads <= 3, "{reads} read round trips");
    }
}
