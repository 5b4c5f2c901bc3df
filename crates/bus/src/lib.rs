//! [`SharedBus`]: several instances behaving as one, over a [`Backplane`]: Redis pub/sub
//! ([`RedisBackplane`], one server or a cluster with sharded pub/sub) in production, or
//! [`MemoryHub`] for several instances in one process.
//!
//! Each instance delivers every signal to its own sessions at once (through its
//! [`LocalRouter`]) and publishes it for the others; an instance subscribes only to the
//! channels its sessions need, so a message reaches only the instances holding a recipient:
//!
//! | channel | carries | subscribed by |
//! |---|---|---|
//! | `{prefix}:u:{<user>}` | the user's events; which instances hold their notification sockets | instances with a session of the user |
//! | `{prefix}:c:{<conversation>}` | typing indicators | instances with a chat socket on the conversation |
//! | `{prefix}:calls` | "call N reached stage S", with the call as it is now (`call_copy.rs`), so cached copies follow | every instance |
//! | `{prefix}:accounts` | "`<status> <user>`": a user removed, deactivated or restored; every instance updates what it knows, and closes a refused user's sockets | every instance |
//!
//! (The braces are Redis Cluster hash tags: a user's channel and keys live on one shard.)
//!
//! Which instances hold a user's notification sockets decides whether chat sockets stand in
//! for them ([`ringline_domain::Audience::User`]): the set `{prefix}:notif:{<user>}` (read when
//! a user's first session arrives) and `presence` messages on the user's channel (for
//! changes) keep each instance's view; an instance proves it is alive with the key
//! `{prefix}:instance:{id}` (10 s, refreshed every 3 s), so the view heals when one dies.
//!
//! **The bus may lose messages**; the database stays the source of truth. Publishing never
//! blocks a request or a frame: messages wait in a bounded queue
//! ([`RedisSettings::queue_capacity`]); when it is full the message is dropped for the other
//! instances (their sessions still have the REST API) and counted, with one warning a second
//! at most. While the backplane is unreachable each instance keeps delivering to its own
//! sessions, logs the outage and reports it in `/readyz`'s detail; the connection reconnects
//! and resubscribes by itself, and once it is back every local session gets a `resync`
//! (events from other instances may have been lost meanwhile) and this instance's presence is
//! written again (a restarted Redis has forgotten it).
//!
//! The files beside this one, one job each: `backplane.rs` (what a backplane does),
//! `redis_backplane.rs` and `memory_backplane.rs` (the two there are), `publisher.rs` (the task that writes, in
//! order: batched messages, batched subscriptions and presence), `wire.rs` (the text of a
//! message), `call_copy.rs` (a call as the `calls` channel carries it), `receiver.rs` (what
//! other instances publish, delivered here), `subscriptions.rs`
//! (which channels, in step with the sessions, and what a new session waits for), `window.rs`
//! (the shared replay window), `presence.rs` (devices on every instance), `upkeep.rs` (the
//! liveness key, lingering, recovery).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ringline_domain::{AccountStatus, Audience, Call, ConversationId, Signal, SignalRouter, UserId, UserProfile};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use ringline_signaling::Signaling;
use ringline_signaling::events;
use ringline_signaling::router::LocalRouter;
use ringline_signaling::throttle::OncePerSecond;

pub mod backplane;
mod call_copy;
mod memory_backplane;
mod presence;
mod publisher;
mod receiver;
mod redis_backplane;
mod subscriptions;
mod upkeep;
mod window;
mod wire;

pub use backplane::{Backplane, BackplaneError, Incoming, KeptEvent, Outgoing, Write};
pub use memory_backplane::{MemoryBackplane, MemoryHub};
pub use redis_backplane::{RedisBackplane, RedisTopology};
use subscriptions::{Listener, Subscriptions};
use wire::Wire;

/// How long an instance's liveness key lives, and how often it is refreshed: how soon the
/// others notice that an instance died (its sockets are forgotten, and a call one of its
/// devices held is taken over by the callee's next device). One small write every 3 s.
const INSTANCE_TTL: Duration = Duration::from_secs(10);
const INSTANCE_REFRESH: Duration = Duration::from_secs(3);

/// How long an instance stays subscribed to a user after their last session here left: the
/// replay window's age, so that a session coming back here within it resumes without a gap.
const LINGER: Duration = backplane::WINDOW_AGE;

/// How long a user's device counts outlive their last change (what a dead instance leaves).
const DEVICES_KEPT: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a new session waits for its user's subscription before it is acknowledged.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);

/// The most messages published in one batch (one round trip to Redis).
const BATCH_MAX: usize = 256;

/// Where the bus connects and how much it may queue.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// One server, or a cluster's nodes (RESP3 is requested whatever the URLs say).
    pub topology: RedisTopology,
    /// The prefix of every channel and key, so several deployments can share one Redis.
    pub prefix: String,
    /// Messages waiting to be published before new ones are dropped.
    pub queue_capacity: usize,
}

impl RedisSettings {
    /// The prefix unless configured.
    pub const DEFAULT_PREFIX: &'static str = "ringline";

    /// One Redis server at `url` (`redis://host:port/db`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            topology: RedisTopology::Single(url.into()),
            prefix: Self::DEFAULT_PREFIX.into(),
            queue_capacity: 10_000,
        }
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.topology, RedisTopology::Cluster(_))
    }

    /// A Redis Cluster reached through any of `nodes`, with sharded pub/sub.
    pub fn cluster(nodes: Vec<String>) -> Self {
        Self { topology: RedisTopology::Cluster(nodes), ..Self::new(String::new()) }
    }
}

/// What the publishing task does, in order.
#[derive(Debug)]
enum Job {
    /// A message; with the user whose stream event it carries, to be told to resync if the
    /// message is lost.
    Publish(Outgoing, Option<UserId>),
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
    /// Messages the backplane took.
    published: AtomicU64,
    warnings: OncePerSecond,
}

impl ringline_signaling::BusStatus for BusHealth {
    fn connected(&self) -> bool {
        BusHealth::connected(self)
    }
}

impl BusHealth {
    /// Whether the last operation on the backplane succeeded.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Messages dropped because the queue was full or the backplane failed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// At most one warning a second, however many messages are dropped.
    /// Messages the backplane took.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    fn count_published(&self, messages: usize) {
        self.published.fetch_add(u64::try_from(messages).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn warn_dropped(&self, why: &str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if self.warnings.due() {
            tracing::warn!(dropped = self.dropped(), "cross-instance message dropped: {why}");
        }
    }
}

/// The bus: a [`SignalRouter`] for several instances (see the module documentation).
#[derive(Debug)]
pub struct SharedBus {
    local: Arc<LocalRouter>,
    backplane: Arc<dyn Backplane>,
    prefix: String,
    jobs: mpsc::Sender<Job>,
    /// Subscription changes and presence, which must not be dropped (they are few: one per
    /// user arriving or leaving), queued apart from the bounded stream of messages.
    control: mpsc::UnboundedSender<Job>,
    health: Arc<BusHealth>,
    subscriptions: Arc<Subscriptions>,
    /// Users an event of whose stream was dropped (the queue was full): told to resync.
    lost: Mutex<HashSet<UserId>>,
    parts: Mutex<Option<Parts>>,
}

/// What [`SharedBus::run`] takes over.
#[derive(Debug)]
struct Parts {
    jobs: mpsc::Receiver<Job>,
    control: mpsc::UnboundedReceiver<Job>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
}

fn user_channel(prefix: &str, user: &UserId) -> String {
    format!("{prefix}:u:{{{user}}}")
}

fn conversation_channel(prefix: &str, conversation: ConversationId) -> String {
    format!("{prefix}:c:{{{conversation}}}")
}

fn devices_key(prefix: &str, user: &UserId) -> String {
    format!("{prefix}:devices:{{{user}}}")
}

fn window_key(prefix: &str, user: &UserId) -> String {
    format!("{prefix}:w:{{{user}}}")
}

fn notification_key(prefix: &str, user: &UserId) -> String {
    format!("{prefix}:notif:{{{user}}}")
}

fn instance_key(prefix: &str, instance: u64) -> String {
    format!("{prefix}:instance:{instance}")
}

impl SharedBus {
    /// Connects to Redis and starts listening to `local`'s registry. Nothing is received until
    /// [`SharedBus::run`] runs (under [`ringline_signaling::Background`]).
    ///
    /// # Errors
    /// When a URL is invalid or Redis does not answer.
    pub async fn connect_redis(
        settings: &RedisSettings,
        local: Arc<LocalRouter>,
    ) -> Result<Arc<Self>, ::redis::RedisError> {
        let (sender, incoming) = mpsc::unbounded_channel();
        let backplane = RedisBackplane::connect(&settings.topology, sender).await?;
        Ok(Self::new(Arc::new(backplane), incoming, &settings.prefix, settings.queue_capacity, local))
    }

    /// The bus an instance needs: joined to `hub` when given (several instances in one
    /// process), else over Redis when `redis` is given, else none (one process).
    ///
    /// # Errors
    /// As [`SharedBus::connect_redis`].
    pub async fn for_instance(
        hub: Option<&Arc<MemoryHub>>,
        redis: Option<&RedisSettings>,
        local: &Arc<LocalRouter>,
    ) -> Result<Option<Arc<Self>>, ::redis::RedisError> {
        Ok(match (hub, redis) {
            (Some(hub), _) => Some(Self::join(hub, local.clone())),
            (None, Some(redis)) => {
                let bus = Self::connect_redis(redis, local.clone()).await?;
                let (instance, cluster) = (format!("{:016x}", local.instance()), redis.is_cluster());
                tracing::info!(instance, cluster, "several instances: events cross them over Redis");
                Some(bus)
            }
            (None, None) => None,
        })
    }

    /// Joins `hub`, with the others joined to it (several instances in one process).
    pub fn join(hub: &Arc<MemoryHub>, local: Arc<LocalRouter>) -> Arc<Self> {
        let (sender, incoming) = mpsc::unbounded_channel();
        let backplane = hub.join(sender);
        Self::new(Arc::new(backplane), incoming, RedisSettings::DEFAULT_PREFIX, 10_000, local)
    }

    /// A bus over any backplane, whose messages arrive on `incoming`; listens to `local`'s
    /// registry. Nothing is received until [`SharedBus::run`] runs.
    pub fn new(
        backplane: Arc<dyn Backplane>,
        incoming: mpsc::UnboundedReceiver<Incoming>,
        prefix: &str,
        queue_capacity: usize,
        local: Arc<LocalRouter>,
    ) -> Arc<Self> {
        let (jobs_sender, jobs) = mpsc::channel(queue_capacity.max(1));
        let (control_sender, control) = mpsc::unbounded_channel();
        let health = Arc::new(BusHealth::default());
        health.connected.store(true, Ordering::Relaxed);
        let subscriptions = Arc::new(Subscriptions::default());
        let bus = Arc::new(Self {
            local: local.clone(),
            backplane,
            prefix: prefix.to_owned(),
            jobs: jobs_sender,
            control: control_sender.clone(),
            health,
            subscriptions: subscriptions.clone(),
            lost: Mutex::default(),
            parts: Mutex::new(Some(Parts { jobs, control, incoming })),
        });
        // Subscribe the calls channel first, so every instance hears of every change; then
        // whatever sessions registered before (none in the server).
        for channel in broadcast_channels(prefix) {
            let _ = control_sender.send(Job::Subscribe(channel));
        }
        for (user, notification) in local.users() {
            let _ = control_sender.send(Job::Subscribe(user_channel(prefix, &user)));
            if notification {
                let _ = control_sender.send(Job::Presence { user, present: true });
            }
        }
        local.listen(Arc::new(Listener { prefix: prefix.to_owned(), control: control_sender, subscriptions }));
        bus
    }

    pub fn health(&self) -> Arc<BusHealth> {
        self.health.clone()
    }

    /// Queues a message; returns `false` when it was dropped (the queue is full).
    fn publish(&self, channel: String, message: String, kept: Option<KeptEvent>, user: Option<&UserId>) -> bool {
        if self.jobs.try_send(Job::Publish(Outgoing { channel, message, kept }, user.cloned())).is_err() {
            self.health.warn_dropped("the publishing queue is full");
            return false;
        }
        true
    }

    /// Runs the bus until `stop`: publishes what is queued, applies subscription changes, and
    /// delivers what other instances publish to `signaling`'s sessions. Call once.
    pub async fn run(self: Arc<Self>, signaling: Arc<Signaling>, stop: CancellationToken) {
        let Some(parts) = self.parts.lock().unwrap_or_else(PoisonError::into_inner).take() else {
            tracing::error!("the bus was started twice");
            return;
        };
        let Parts { jobs, control, incoming } = parts;
        let publisher = tokio::spawn(self.clone().publish_jobs(jobs, control, stop.clone()));
        let keeper = tokio::spawn(self.clone().keep_alive(signaling.clone(), stop.clone()));
        self.receive(incoming, &signaling, &stop).await;
        let _ = publisher.await;
        let _ = keeper.await;
    }

    /// Neither the other instances nor the shared window got an event of `user`'s stream: their
    /// sessions are told to resync once the bus works again (`keep_alive`).
    fn lose(&self, user: Option<&UserId>) {
        if let Some(user) = user {
            self.lost.lock().unwrap_or_else(PoisonError::into_inner).insert(user.clone());
        }
    }

    /// Logs the first failure after a success and the first success after a failure.
    fn record(&self, error: Option<&BackplaneError>) {
        if error.is_some() {
            self.health.outage.store(true, Ordering::Relaxed);
        }
        let was = self.health.connected.swap(error.is_none(), Ordering::Relaxed);
        match (was, error) {
            (true, Some(error)) => {
                tracing::error!(%error, "the bus is unreachable: events reach only this instance's sessions");
            }
            (false, None) => tracing::warn!("the bus is reachable again"),
            _ => {}
        }
    }
}

impl SignalRouter for SharedBus {
    fn route(&self, signal: Signal) {
        let (channel, kept) = match &signal.audience {
            Audience::User(user) => {
                let kept = events::stream_id(&signal.payload).map(|id| KeptEvent {
                    key: window_key(&self.prefix, user),
                    id,
                    event: Arc::clone(&signal.payload),
                });
                (user_channel(&self.prefix, user), kept)
            }
            Audience::Conversation(conversation) => (conversation_channel(&self.prefix, *conversation), None),
        };
        let message = Wire::Event {
            from: self.local.instance(),
            except_device: signal.except_device,
            except_user: signal.except_user.as_ref().map(UserId::as_str),
            stream_id: kept.as_ref().map(|kept| kept.id.as_str()),
            payload: &signal.payload,
        }
        .encode();
        let stream_user = match &signal.audience {
            Audience::User(user) if kept.is_some() => Some(user),
            _ => None,
        };
        if !self.publish(channel, message, kept, stream_user) {
            self.lose(stream_user);
        }
        self.local.route(signal);
    }

    fn participant_removed(&self, conversation: ConversationId, user: &UserId) {
        let message = Wire::Removed { from: self.local.instance(), user: user.as_str() }.encode();
        // Only instances with a chat socket on the conversation subscribe to its channel, and
        // those are the ones with something to close.
        self.publish(conversation_channel(&self.prefix, conversation), message, None, None);
        self.local.participant_removed(conversation, user);
    }

    fn account_changed(&self, user: &UserId, status: AccountStatus) {
        let message = format!("{} {user}", account_status_name(status));
        let outgoing = Outgoing { channel: format!("{}:accounts", self.prefix), message, kept: None };
        if self.jobs.try_send(Job::Publish(outgoing, None)).is_err() {
            self.health.warn_dropped("the publishing queue is full");
        }
        self.local.account_changed(user, status);
    }

    fn call_changed(&self, call: &Call, parties: Option<&[UserProfile]>) {
        let message = call_copy::encode(call, parties);
        let channel = format!("{}:calls", self.prefix);
        if self.jobs.try_send(Job::Publish(Outgoing { channel, message, kept: None }, None)).is_err() {
            self.health.warn_dropped("the publishing queue is full");
        }
    }
}

/// An account status as the `accounts` channel spells it.
pub(crate) fn account_status_name(status: AccountStatus) -> &'static str {
    match status {
        AccountStatus::Active => "active",
        AccountStatus::Inactive => "inactive",
        AccountStatus::Removed => "removed",
        AccountStatus::Unknown => "unknown",
    }
}

/// [`account_status_name`] read back.
pub(crate) fn parse_account_status(name: &str) -> Option<AccountStatus> {
    [AccountStatus::Active, AccountStatus::Inactive, AccountStatus::Removed, AccountStatus::Unknown]
        .into_iter()
        .find(|status| account_status_name(*status) == name)
}

/// The channels every instance subscribes to, whatever its sessions.
pub(crate) fn broadcast_channels(prefix: &str) -> [String; 2] {
    [format!("{prefix}:calls"), format!("{prefix}:accounts")]
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
        let bus = SharedBus::connect_redis(&settings, Arc::new(LocalRouter::new())).await.expect("connect");
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
}
