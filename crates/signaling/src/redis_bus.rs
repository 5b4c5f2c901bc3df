//! [`RedisBus`]: several instances behaving as one, over Redis pub/sub.
//!
//! Each instance delivers every signal to its own sessions at once (through its
//! [`LocalRouter`]) and publishes it for the others; an instance subscribes only to the
//! channels its sessions need, so a message reaches only the instances holding a recipient:
//!
//! | channel | carries | subscribed by |
//! |---|---|---|
//! | `{prefix}:u:{user}` | the user's events; which instances hold their notification sockets | instances with a session of the user |
//! | `{prefix}:c:{conversation}` | typing indicators | instances with a chat socket on the conversation |
//! | `{prefix}:calls` | "call N reached stage S", so cached copies follow | every instance |
//!
//! Which instances hold a user's notification sockets decides whether chat sockets stand in
//! for them ([`ringline_domain::Audience::User`]): the set `{prefix}:notif:{user}` in Redis
//! (read when a user's first session arrives) and `presence` messages on the user's channel
//! (for changes) keep each instance's view; an instance proves it is alive with the key
//! `{prefix}:instance:{id}` (30 s, refreshed every 10 s), so the view heals when one dies.
//!
//! **The bus may lose messages**; the database stays the source of truth. Publishing never
//! blocks a request or a frame: messages wait in a bounded queue
//! ([`RedisSettings::queue_capacity`]); when it is full the message is dropped for the other
//! instances (their sessions still have the REST API) and counted, with one warning a second
//! at most. While Redis is unreachable each instance keeps delivering to its own sessions,
//! logs the outage and reports it in `/readyz`'s detail; the connection manager reconnects and
//! resubscribes by itself, and once it is back every local session gets a `resync` (events
//! from other instances may have been lost meanwhile) and this instance's presence is written
//! again (a restarted Redis has forgotten it).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use ringline_domain::{Audience, Call, ConversationId, DeviceId, Signal, SignalRouter, UserId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::events;
use crate::hub::Signaling;
use crate::router::{IdentifiedEvent, LocalRouter, Presence, RegistryChange, RegistryListener, SubscriptionGate};

/// How long an instance's liveness key lives, and how often it is refreshed.
const INSTANCE_TTL: Duration = Duration::from_secs(30);
const INSTANCE_REFRESH: Duration = Duration::from_secs(10);

/// How long an instance stays subscribed to a user after their last session here left: the
/// replay window's age, so that a session coming back here within it resumes without a gap.
const LINGER: Duration = Duration::from_secs(60);

/// How long a user's device counts outlive their last change (what a dead instance leaves).
const DEVICES_KEPT: Duration = Duration::from_secs(24 * 60 * 60);

/// A user's shared window (a capped Redis stream): as many events and as old as an instance's.
const SHARED_WINDOW_EVENTS: usize = 256;
const SHARED_WINDOW_AGE: Duration = Duration::from_secs(60);

/// How long a new session waits for its user's subscription before it is acknowledged.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);

/// The most messages published in one pipeline (one round trip to Redis).
const PIPELINE_MAX: usize = 256;

/// Where the bus connects and how much it may queue.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host:port/db` (RESP3 is requested whatever the URL says).
    pub url: String,
    /// The prefix of every channel and key, so several deployments can share one Redis.
    pub prefix: String,
    /// Messages waiting to be published before new ones are dropped.
    pub queue_capacity: usize,
}

impl RedisSettings {
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), prefix: "ringline".into(), queue_capacity: 10_000 }
    }
}

/// One message on a user's or conversation's channel.
#[derive(Debug, Serialize, Deserialize)]
struct Wire<'a> {
    /// The publishing instance (it ignores its own messages: it delivered them already).
    from: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    except_device: Option<(u64, u64)>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    except_user: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    payload: Option<std::borrow::Cow<'a, str>>,
    /// A presence change instead of an event: `from` holds (or no longer holds) a
    /// notification socket of the channel's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    notification_sockets: Option<bool>,
}

/// An event kept in a user's shared window: the stream `key`, its `event_id` and the event.
#[derive(Debug)]
struct Kept {
    key: String,
    id: String,
    event: Arc<str>,
}

/// What the publishing task does, in order.
#[derive(Debug)]
enum Job {
    Publish {
        channel: String,
        message: String,
        /// An event of a user's stream, also kept in the user's shared window.
        kept: Option<Kept>,
    },
    Subscribe(String),
    Unsubscribe(String),
    /// This instance holds (or stopped holding) a notification socket of `user`.
    Presence {
        user: UserId,
        present: bool,
    },
    /// A user's first session arrived here: learn where their notification sockets are.
    LearnPresence(UserId),
    /// The user has `count` sessions here now.
    Devices {
        user: UserId,
        count: usize,
    },
}

/// How the bus is doing, for `/readyz` and the logs.
#[derive(Debug, Default)]
pub struct BusHealth {
    connected: AtomicBool,
    /// Set by any failure, cleared once the instance has recovered from it (resync sent).
    outage: AtomicBool,
    dropped: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

impl BusHealth {
    /// Whether the last command to Redis succeeded.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Messages dropped because the queue was full or Redis failed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// At most one warning a second, however many messages are dropped.
    fn warn_dropped(&self, why: &str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_warning.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::warn!(dropped = self.dropped(), "cross-instance message dropped: {why}");
        }
    }
}

/// The Redis bus: a [`SignalRouter`] for several instances (see the module documentation).
#[derive(Debug)]
pub struct RedisBus {
    local: Arc<LocalRouter>,
    prefix: String,
    jobs: mpsc::Sender<Job>,
    /// Subscription changes and presence, which must not be dropped (they are few: one per
    /// user arriving or leaving), queued apart from the bounded stream of messages.
    control: mpsc::UnboundedSender<Job>,
    health: Arc<BusHealth>,
    subscriptions: Arc<Subscriptions>,
    /// For reading shared windows (a clone shares the connection).
    reader: ConnectionManager,
    /// Users an event of whose stream was dropped (the queue was full): told to resync.
    lost: Mutex<HashSet<UserId>>,
    parts: Mutex<Option<Parts>>,
}

/// What [`RedisBus::run`] takes over.
struct Parts {
    manager: ConnectionManager,
    jobs: mpsc::Receiver<Job>,
    control: mpsc::UnboundedReceiver<Job>,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Parts")
    }
}

/// The user channels this instance subscribes to, and who waits for a subscription to be made.
#[derive(Debug, Default)]
struct Subscriptions {
    channels: Mutex<HashMap<String, Subscription>>,
}

#[derive(Debug)]
enum Subscription {
    /// Asked for; these wait until Redis confirms it.
    Pending(Vec<oneshot::Sender<()>>),
    Active,
    /// The user's last session here left; kept until then, so that a session coming back
    /// within the replay window finds a window that missed nothing.
    Lingering(Instant),
}

impl Subscriptions {
    /// The user's first session arrived: subscribes to the channel (on `control`) unless it is
    /// subscribed already; returns whether it asked. Queued under the lock, so a subscription
    /// and an unsubscription of one channel reach Redis in the order they were decided.
    fn arrive(&self, channel: &str, control: &mpsc::UnboundedSender<Job>) -> bool {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        match channels.get_mut(channel) {
            Some(subscription @ Subscription::Lingering(_)) => {
                *subscription = Subscription::Active;
                false
            }
            Some(_) => false,
            None => {
                channels.insert(channel.to_owned(), Subscription::Pending(Vec::new()));
                let _ = control.send(Job::Subscribe(channel.to_owned()));
                true
            }
        }
    }

    /// The user's last session left: the channel lingers until `until`.
    fn leave(&self, channel: &str, until: Instant) {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(subscription) = channels.get_mut(channel) {
            *subscription = Subscription::Lingering(until);
        }
    }

    /// Unsubscribes (on `control`, under the lock) from the channels that lingered until
    /// before `now`, and returns them.
    fn expire(&self, now: Instant, control: &mpsc::UnboundedSender<Job>) -> Vec<String> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let expired: Vec<String> = channels
            .iter()
            .filter(|(_, subscription)| matches!(subscription, Subscription::Lingering(until) if *until <= now))
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in &expired {
            channels.remove(channel);
            let _ = control.send(Job::Unsubscribe(channel.clone()));
        }
        expired
    }

    /// Whether the channel was subscribed to already (not only asked for).
    fn following(&self, channel: &str) -> bool {
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        matches!(channels.get(channel), Some(Subscription::Active | Subscription::Lingering(_)))
    }

    fn active(&self, channel: &str) {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(subscription) = channels.get_mut(channel)
            && let Subscription::Pending(waiters) = std::mem::replace(subscription, Subscription::Active)
        {
            for waiter in waiters {
                let _ = waiter.send(());
            }
        }
    }

    /// Resolves once `channel` is subscribed (at once if it is, or if nobody asked for it).
    fn wait(&self, channel: &str) -> Option<oneshot::Receiver<()>> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        match channels.get_mut(channel) {
            Some(Subscription::Pending(waiters)) => {
                let (done, wait) = oneshot::channel();
                waiters.push(done);
                Some(wait)
            }
            _ => None,
        }
    }
}

/// Forwards the local registry's changes to the bus's control queue.
#[derive(Debug)]
struct Listener {
    prefix: String,
    control: mpsc::UnboundedSender<Job>,
    subscriptions: Arc<Subscriptions>,
}

impl RegistryListener for Listener {
    fn changed(&self, change: RegistryChange) {
        let jobs = match change {
            RegistryChange::UserArrived(user) => {
                let channel = user_channel(&self.prefix, &user);
                self.subscriptions.arrive(&channel, &self.control);
                vec![Job::LearnPresence(user)]
            }
            RegistryChange::UserLeft(user) => {
                // Unsubscribed by `keep_alive` once the lingering is over.
                self.subscriptions.leave(&user_channel(&self.prefix, &user), Instant::now() + LINGER);
                vec![]
            }
            RegistryChange::ConversationArrived(id) => vec![Job::Subscribe(conversation_channel(&self.prefix, id))],
            RegistryChange::ConversationLeft(id) => vec![Job::Unsubscribe(conversation_channel(&self.prefix, id))],
            RegistryChange::NotificationSockets { user, present } => vec![Job::Presence { user, present }],
            RegistryChange::Devices { user, count } => vec![Job::Devices { user, count }],
        };
        for job in jobs {
            // Closed only when the bus stopped; nothing is left to subscribe for.
            let _ = self.control.send(job);
        }
    }
}

fn user_channel(prefix: &str, user: &UserId) -> String {
    format!("{prefix}:u:{user}")
}

fn conversation_channel(prefix: &str, conversation: ConversationId) -> String {
    format!("{prefix}:c:{conversation}")
}

impl RedisBus {
    /// Connects to Redis and starts listening to `local`'s registry. Nothing is received until
    /// [`RedisBus::run`] runs (under [`crate::Background`]).
    ///
    /// # Errors
    /// When the URL is invalid or Redis does not answer.
    pub async fn connect(settings: &RedisSettings, local: Arc<LocalRouter>) -> Result<Arc<Self>, redis::RedisError> {
        let info = settings.url.as_str().into_connection_info()?;
        let redis_settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(redis_settings))?;
        let (push_sender, pushes) = mpsc::unbounded_channel();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(push_sender)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(Duration::from_secs(2));
        let manager = ConnectionManager::new_with_config(client, config).await?;
        let (jobs_sender, jobs) = mpsc::channel(settings.queue_capacity.max(1));
        let (control_sender, control) = mpsc::unbounded_channel();
        let health = Arc::new(BusHealth::default());
        health.connected.store(true, Ordering::Relaxed);
        let subscriptions = Arc::new(Subscriptions::default());
        let bus = Arc::new(Self {
            local: local.clone(),
            prefix: settings.prefix.clone(),
            jobs: jobs_sender,
            control: control_sender.clone(),
            health,
            subscriptions: subscriptions.clone(),
            reader: manager.clone(),
            lost: Mutex::default(),
            parts: Mutex::new(Some(Parts { manager, jobs, control, pushes })),
        });
        // Sessions that registered before (none in the server) would be missed; subscribe the
        // calls channel first so every instance hears of every change.
        let _ = control_sender.send(Job::Subscribe(format!("{}:calls", settings.prefix)));
        for (user, notification) in local.users() {
            let _ = control_sender.send(Job::Subscribe(user_channel(&settings.prefix, &user)));
            if notification {
                let _ = control_sender.send(Job::Presence { user, present: true });
            }
        }
        local.listen(Arc::new(Listener { prefix: settings.prefix.clone(), control: control_sender, subscriptions }));
        Ok(bus)
    }

    pub fn health(&self) -> Arc<BusHealth> {
        self.health.clone()
    }

    /// Queues a message; returns `false` when it was dropped (the queue is full).
    fn publish(&self, channel: String, wire: &Wire<'_>, kept: Option<Kept>) -> bool {
        let message = match serde_json::to_string(wire) {
            Ok(message) => message,
            Err(error) => {
                tracing::error!(%error, "cannot encode a cross-instance message");
                return false;
            }
        };
        if self.jobs.try_send(Job::Publish { channel, message, kept }).is_err() {
            self.health.warn_dropped("the publishing queue is full");
            return false;
        }
        true
    }

    /// Runs the bus until `stop`: publishes what is queued, applies subscription changes, and
    /// delivers what other instances publish to `signaling`'s sessions. Call once.
    pub async fn run(self: Arc<Self>, signaling: Arc<Signaling>, stop: CancellationToken) {
        let Some(parts) = self.parts.lock().unwrap_or_else(PoisonError::into_inner).take() else {
            tracing::error!("the Redis bus was started twice");
            return;
        };
        let Parts { manager, jobs, control, pushes } = parts;
        let publisher = tokio::spawn(self.clone().publish_jobs(manager.clone(), jobs, control, stop.clone()));
        let keeper = tokio::spawn(self.clone().keep_alive(manager, signaling.clone(), stop.clone()));
        self.receive(pushes, &signaling, &stop).await;
        let _ = publisher.await;
        let _ = keeper.await;
    }

    /// Publishes queued messages and applies subscription and presence changes, in order.
    async fn publish_jobs(
        self: Arc<Self>,
        mut manager: ConnectionManager,
        mut jobs: mpsc::Receiver<Job>,
        mut control: mpsc::UnboundedReceiver<Job>,
        stop: CancellationToken,
    ) {
        let instance = self.local.instance();
        loop {
            // Control first: a subscription must not wait behind a flood of messages.
            let job = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                Some(job) = control.recv() => job,
                Some(job) = jobs.recv() => job,
                else => return,
            };
            let done: Result<(), redis::RedisError> = match job {
                Job::Publish { channel, message, kept } => {
                    // Everything already waiting goes in one pipeline: one round trip to Redis
                    // for a burst of ICE candidates instead of one each.
                    let mut pipeline = redis::pipe();
                    add_publish(&mut pipeline, channel, message, kept);
                    let mut count = 1;
                    while count < PIPELINE_MAX {
                        match jobs.try_recv() {
                            Ok(Job::Publish { channel, message, kept }) => {
                                add_publish(&mut pipeline, channel, message, kept);
                                count += 1;
                            }
                            Ok(other) => {
                                // Only messages are queued here; anything else goes first.
                                let _ = self.control.send(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let sent = pipeline.query_async::<()>(&mut manager).await;
                    if sent.is_err() {
                        for _ in 0..count {
                            self.health.warn_dropped("Redis did not take it");
                        }
                    }
                    sent
                }
                Job::Subscribe(channel) => {
                    let subscribed = manager.subscribe(&channel).await;
                    if subscribed.is_ok() {
                        self.subscriptions.active(&channel);
                    }
                    subscribed
                }
                Job::Unsubscribe(channel) => manager.unsubscribe(channel).await,
                Job::Presence { user, present } => self.write_presence(&mut manager, instance, &user, present).await,
                Job::LearnPresence(user) => self.learn_presence(&mut manager, &user).await,
                Job::Devices { user, count } => self.write_devices(&mut manager, instance, &user, count).await,
            };
            self.record(done.as_ref().err());
        }
    }

    async fn write_presence(
        &self,
        manager: &mut ConnectionManager,
        instance: u64,
        user: &UserId,
        present: bool,
    ) -> Result<(), redis::RedisError> {
        let key = format!("{}:notif:{user}", self.prefix);
        if present {
            manager.sadd::<_, _, ()>(&key, instance).await?;
        } else {
            manager.srem::<_, _, ()>(&key, instance).await?;
        }
        let wire = Wire {
            from: instance,
            except_device: None,
            except_user: None,
            payload: None,
            notification_sockets: Some(present),
        };
        let message = serde_json::to_string(&wire).unwrap_or_default();
        manager.publish::<_, _, ()>(user_channel(&self.prefix, user), message).await
    }

    /// Records how many sessions `user` has here, in the hash of their devices per instance.
    async fn write_devices(
        &self,
        manager: &mut ConnectionManager,
        instance: u64,
        user: &UserId,
        count: usize,
    ) -> Result<(), redis::RedisError> {
        let key = devices_key(&self.prefix, user);
        if count == 0 {
            return manager.hdel(&key, instance).await;
        }
        let mut pipeline = redis::pipe();
        pipeline.hset(&key, instance, count).ignore();
        // Counts of an instance that died are skipped by readers (its liveness key is gone);
        // the expiry only bounds what such counts leave behind.
        pipeline.pexpire(&key, i64::try_from(DEVICES_KEPT.as_millis()).unwrap_or(i64::MAX)).ignore();
        pipeline.query_async(manager).await
    }

    /// How many sessions `user` has on every live instance: this one's counted here, the
    /// others' read from Redis (`None` when Redis cannot be read).
    async fn devices_everywhere(&self, user: &UserId) -> Option<usize> {
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

    /// Reads which live instances hold notification sockets of `user`.
    async fn learn_presence(&self, manager: &mut ConnectionManager, user: &UserId) -> Result<(), redis::RedisError> {
        let members: Vec<u64> = manager.smembers(format!("{}:notif:{user}", self.prefix)).await?;
        for instance in members {
            if instance != self.local.instance() && self.instance_alive(manager, instance).await? {
                self.local.set_elsewhere(user, instance, true);
            }
        }
        Ok(())
    }

    async fn instance_alive(&self, manager: &mut ConnectionManager, instance: u64) -> Result<bool, redis::RedisError> {
        manager.exists(format!("{}:instance:{instance}", self.prefix)).await
    }

    /// Logs the first failure after a success and the first success after a failure.
    fn record(&self, error: Option<&redis::RedisError>) {
        if error.is_some() {
            self.health.outage.store(true, Ordering::Relaxed);
        }
        let was = self.health.connected.swap(error.is_none(), Ordering::Relaxed);
        match (was, error) {
            (true, Some(error)) => {
                tracing::error!(%error, "Redis is unreachable: events reach only this instance's sessions");
            }
            (false, None) => tracing::warn!("Redis is reachable again"),
            _ => {}
        }
    }

    /// Every 10 s (every second during an outage): proves this instance is alive, forgets
    /// instances that are not, and after an outage writes this instance's presence again and
    /// tells every local session to resync.
    async fn keep_alive(
        self: Arc<Self>,
        mut manager: ConnectionManager,
        signaling: Arc<Signaling>,
        stop: CancellationToken,
    ) {
        let instance = self.local.instance();
        let key = format!("{}:instance:{instance}", self.prefix);
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let mut last_refresh: Option<Instant> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    let _ = manager.del::<_, ()>(&key).await;
                    return;
                }
                _ = ticker.tick() => {}
            }
            self.subscriptions.expire(Instant::now(), &self.control);
            let lost = std::mem::take(&mut *self.lost.lock().unwrap_or_else(PoisonError::into_inner));
            for user in &lost {
                signaling.announcer.to_user(user, None, |id| events::resync(id, id));
            }
            let recovering = self.health.outage.load(Ordering::Relaxed);
            if !recovering && last_refresh.is_some_and(|at| at.elapsed() < INSTANCE_REFRESH) {
                continue;
            }
            let alive = manager.set_ex::<_, _, ()>(&key, 1, INSTANCE_TTL.as_secs()).await;
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
                if matches!(self.instance_alive(&mut manager, other).await, Ok(false)) {
                    gone.insert(other);
                }
            }
            if !gone.is_empty() {
                tracing::info!(instances = gone.len(), "forgetting the sockets of instances that stopped");
                self.local.forget_instances(&gone);
            }
        }
    }

    /// After an outage: presence again (Redis may have restarted empty), and a `resync` to
    /// every session here, whose events from other instances may have been lost.
    fn recover(&self, signaling: &Signaling) {
        let users = self.local.users();
        tracing::warn!(sessions_users = users.len(), "Redis is back: telling local sessions to resync");
        // Subscriptions asked for during the outage may have failed; asking again is harmless.
        let _ = self.control.send(Job::Subscribe(format!("{}:calls", self.prefix)));
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
            signaling.announcer.to_user(user, None, |id| events::resync(id, id));
        }
    }

    /// Delivers what other instances publish.
    async fn receive(
        &self,
        mut pushes: mpsc::UnboundedReceiver<PushInfo>,
        signaling: &Signaling,
        stop: &CancellationToken,
    ) {
        loop {
            let push = tokio::select! {
                () = stop.cancelled() => return,
                push = pushes.recv() => match push {
                    Some(push) => push,
                    None => return,
                },
            };
            match push.kind {
                PushKind::Message => self.deliver(&push.data, signaling),
                PushKind::Disconnection => {
                    self.record(Some(&redis::RedisError::from((redis::ErrorKind::Io, "connection to Redis lost"))));
                }
                _ => {}
            }
        }
    }

    fn deliver(&self, data: &[Value], signaling: &Signaling) {
        let [Value::BulkString(channel), Value::BulkString(message), ..] = data else { return };
        let (Ok(channel), Ok(message)) = (std::str::from_utf8(channel), std::str::from_utf8(message)) else { return };
        let Some(rest) = channel.strip_prefix(self.prefix.as_str()).and_then(|rest| rest.strip_prefix(':')) else {
            return;
        };
        if rest == "calls" {
            if let Some((id, stage)) = message.split_once(' ')
                && let (Ok(id), Ok(stage)) = (id.parse::<i64>(), stage.parse::<u8>())
                && let Ok(id) = ringline_domain::CallId::new(id)
            {
                signaling.announcer.cache.forget_older(id, stage);
            }
            return;
        }
        let Ok(wire) = serde_json::from_str::<Wire<'_>>(message) else {
            tracing::warn!("ignoring an unreadable cross-instance message");
            return;
        };
        if wire.from == self.local.instance() {
            return; // Delivered here when it was published.
        }
        let audience = if let Some(user) = rest.strip_prefix("u:") {
            let Ok(user) = UserId::parse(user) else { return };
            if let Some(present) = wire.notification_sockets {
                self.local.set_elsewhere(&user, wire.from, present);
                return;
            }
            Audience::User(user)
        } else if let Some(conversation) = rest.strip_prefix("c:") {
            let Some(conversation) = conversation.parse::<i64>().ok().and_then(|id| ConversationId::new(id).ok())
            else {
                return;
            };
            Audience::Conversation(conversation)
        } else {
            return;
        };
        let Some(payload) = wire.payload else { return };
        let except_device = wire.except_device.map(|(instance, serial)| DeviceId::new(instance, serial));
        let except_user = wire.except_user.and_then(|user| UserId::parse(user.as_ref()).ok());
        let payload: Arc<str> = Arc::from(payload.as_ref());
        // A user's event is kept in this instance's window too, so a session here that
        // resumes gets it, in the order it was delivered here.
        if let Audience::User(user) = &audience
            && let Some(id) = events::stream_id(&payload)
        {
            signaling.announcer.replay.record(user, &id, Arc::clone(&payload), &mut |payload| {
                self.local.route(Signal {
                    audience: audience.clone(),
                    except_device,
                    except_user: except_user.clone(),
                    payload,
                });
            });
            return;
        }
        self.local.route(Signal { audience, except_device, except_user, payload });
    }
}

/// Adds one message to `pipeline`: first into the user's shared window (if it is an event of
/// a user's stream), then to the channel, so that an instance that hears it live and reads the
/// window at once finds it in both (and the session skips the copy).
fn add_publish(pipeline: &mut redis::Pipeline, channel: String, message: String, kept: Option<Kept>) {
    if let Some(Kept { key, id, event }) = kept {
        pipeline
            .cmd("XADD")
            .arg(&key)
            .arg("MAXLEN")
            .arg("~")
            .arg(SHARED_WINDOW_EVENTS)
            .arg("*")
            .arg("i")
            .arg(id)
            .arg("e")
            .arg(event.as_ref())
            .ignore();
        pipeline.pexpire(key, i64::try_from(SHARED_WINDOW_AGE.as_millis()).unwrap_or(i64::MAX)).ignore();
    }
    pipeline.publish(channel, message).ignore();
}

fn devices_key(prefix: &str, user: &UserId) -> String {
    format!("{prefix}:devices:{user}")
}

fn window_key(prefix: &str, user: &UserId) -> String {
    format!("{prefix}:w:{user}")
}

impl RedisBus {
    /// The events of `user`'s shared window after `resume`, oldest first, with their ids; `None`
    /// when `resume` is not in it (too old, or never kept) or Redis cannot be read.
    async fn window_after(&self, user: &UserId, resume: &str) -> Option<Vec<IdentifiedEvent>> {
        let since = SystemTime::now().checked_sub(SHARED_WINDOW_AGE)?.duration_since(UNIX_EPOCH).ok()?.as_millis();
        let mut reader = self.reader.clone();
        let reply: Value = redis::cmd("XRANGE")
            .arg(window_key(&self.prefix, user))
            .arg(since.to_string())
            .arg("+")
            .query_async(&mut reader)
            .await
            .map_err(|error| tracing::warn!(%error, "cannot read a shared replay window"))
            .ok()?;
        let Value::Array(entries) = reply else { return None };
        let mut events = Vec::with_capacity(entries.len());
        for entry in entries {
            // [entry id, [field, value, field, value]]
            let Value::Array(parts) = entry else { continue };
            let Some(Value::Array(fields)) = parts.get(1) else { continue };
            let (mut id, mut event) = (None, None);
            for pair in fields.chunks(2) {
                if let [Value::BulkString(field), Value::BulkString(value)] = pair {
                    match field.as_slice() {
                        b"i" => id = String::from_utf8(value.clone()).ok(),
                        b"e" => event = std::str::from_utf8(value).ok().map(Arc::<str>::from),
                        _ => {}
                    }
                }
            }
            if let (Some(id), Some(event)) = (id, event) {
                events.push((id, event));
            }
        }
        let from = events.iter().position(|(id, _)| id == resume)?;
        Some(events.split_off(from + 1))
    }
}

impl Presence for RedisBus {
    fn devices<'a>(&'a self, user: &'a UserId) -> BoxFuture<'a, usize> {
        // Redis unreadable: what this instance knows is the best answer there is.
        Box::pin(async move { self.devices_everywhere(user).await.unwrap_or_else(|| self.local.sessions_of(user)) })
    }
}

impl SubscriptionGate for RedisBus {
    fn missed<'a>(&'a self, user: &'a UserId, resume: &'a str) -> BoxFuture<'a, Option<Vec<IdentifiedEvent>>> {
        Box::pin(self.window_after(user, resume))
    }

    fn following(&self, user: &UserId) -> bool {
        self.subscriptions.following(&user_channel(&self.prefix, user))
    }

    fn subscribed<'a>(&'a self, user: &'a UserId) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(wait) = self.subscriptions.wait(&user_channel(&self.prefix, user)) else { return };
            // Redis down: the session goes on without live events from other instances (it
            // gets a `resync` once Redis is back) rather than hang.
            if tokio::time::timeout(SUBSCRIBE_WAIT, wait).await.is_err() {
                tracing::debug!("a session went on before its subscription was confirmed");
            }
        })
    }
}

impl SignalRouter for RedisBus {
    fn route(&self, signal: Signal) {
        let (channel, kept) = match &signal.audience {
            Audience::User(user) => {
                let kept = events::stream_id(&signal.payload).map(|id| Kept {
                    key: window_key(&self.prefix, user),
                    id,
                    event: Arc::clone(&signal.payload),
                });
                (user_channel(&self.prefix, user), kept)
            }
            Audience::Conversation(conversation) => (conversation_channel(&self.prefix, *conversation), None),
        };
        let wire = Wire {
            from: self.local.instance(),
            except_device: signal.except_device.map(|device| (device.instance(), device.serial())),
            except_user: signal.except_user.as_ref().map(|user| user.as_str().into()),
            payload: Some(signal.payload.as_ref().into()),
            notification_sockets: None,
        };
        let stream_event = kept.is_some();
        if !self.publish(channel, &wire, kept)
            && stream_event
            && let Audience::User(user) = &signal.audience
        {
            // Neither the other instances nor the shared window got it: the user's sessions are
            // told to resync once the queue has room (`keep_alive`).
            self.lost.lock().unwrap_or_else(PoisonError::into_inner).insert(user.clone());
        }
        self.local.route(signal);
    }

    fn call_changed(&self, call: &Call) {
        let message = format!("{} {}", call.id().get(), call.status().stage());
        let channel = format!("{}:calls", self.prefix);
        if self.jobs.try_send(Job::Publish { channel, message, kept: None }).is_err() {
            self.health.warn_dropped("the publishing queue is full");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `redis-server` of the test's own on a free port, stopped when dropped.
    struct OwnRedis(std::process::Child, u16);

    impl OwnRedis {
        fn start() -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port").port();
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server (run .ci/run to install it)");
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                std::thread::sleep(Duration::from_millis(20));
            }
            Self(child, port)
        }
    }

    impl Drop for OwnRedis {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// When the publishing queue is full, the event is dropped for the other instances, and
    /// its user is remembered, to be told to resync.
    #[tokio::test]
    async fn an_event_the_full_queue_drops_is_remembered_for_a_resync() {
        let redis = OwnRedis::start();
        let settings =
            RedisSettings { queue_capacity: 1, ..RedisSettings::new(format!("redis://127.0.0.1:{}", redis.1)) };
        let bus = RedisBus::connect(&settings, Arc::new(LocalRouter::new())).await.expect("connect");
        let bob = UserId::parse("bob").expect("an id");
        let event = |n: u32| Signal {
            audience: Audience::User(bob.clone()),
            except_device: None,
            except_user: None,
            payload: Arc::from(format!(r#"{{"type":"call.ice-candidate","event_id":"run-{n}"}}"#)),
        };
        bus.route(event(1)); // queued (nothing publishes: the bus is not running)
        assert!(bus.lost.lock().expect("lock").is_empty());
        bus.route(event(2)); // the queue is full
        assert!(bus.lost.lock().expect("lock").contains(&bob));
        assert_eq!(bus.health().dropped(), 1);
    }

    #[tokio::test]
    async fn a_session_waits_until_its_users_subscription_is_made() {
        let subscriptions = Subscriptions::default();
        let (control, mut asked) = mpsc::unbounded_channel();
        assert!(subscriptions.wait("ringline:u:bob").is_none(), "nothing asked for: no wait");
        assert!(subscriptions.arrive("ringline:u:bob", &control), "the first arrival subscribes");
        assert!(matches!(asked.try_recv(), Ok(Job::Subscribe(channel)) if channel == "ringline:u:bob"));
        assert!(!subscriptions.following("ringline:u:bob"), "not before Redis confirms");
        let mut first = subscriptions.wait("ringline:u:bob").expect("waits while pending");
        let second = subscriptions.wait("ringline:u:bob").expect("every session waits");
        assert!(first.try_recv().is_err(), "not before Redis confirms");
        subscriptions.active("ringline:u:bob");
        first.await.expect("released");
        second.await.expect("released");
        assert!(subscriptions.wait("ringline:u:bob").is_none(), "made: no wait");
        assert!(subscriptions.following("ringline:u:bob"));

        // The last session leaves: the channel lingers, and a return within it needs nothing.
        let now = Instant::now();
        subscriptions.leave("ringline:u:bob", now + LINGER);
        assert!(subscriptions.expire(now, &control).is_empty());
        assert!(!subscriptions.arrive("ringline:u:bob", &control), "still subscribed");
        assert!(asked.try_recv().is_err(), "nothing asked of Redis");
        assert!(subscriptions.following("ringline:u:bob"), "its window missed nothing");
        // Gone for longer: unsubscribed, and a return starts over.
        subscriptions.leave("ringline:u:bob", now);
        assert_eq!(subscriptions.expire(now + Duration::from_millis(1), &control), ["ringline:u:bob"]);
        assert!(matches!(asked.try_recv(), Ok(Job::Unsubscribe(_))));
        assert!(!subscriptions.following("ringline:u:bob"));
        assert!(subscriptions.arrive("ringline:u:bob", &control), "subscribes again");
        assert!(matches!(asked.try_recv(), Ok(Job::Subscribe(_))), "after the unsubscription, in order");
    }
}
