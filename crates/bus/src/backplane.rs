//! [`Backplane`]: what instances share, and nothing more. The bus ([`super::SharedBus`])
//! decides what to publish, subscribe and keep; a backplane only carries it. Three carry it:
//! Redis ([`super::RedisBackplane`], one server or a cluster with sharded pub/sub) and, for
//! several instances in one process (tests, embedding apps that want to try it),
//! [`super::MemoryHub`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

/// A user's shared replay window: a capped stream of the newest events, as many and as old
/// as an instance keeps of its own.
pub const WINDOW_EVENTS: usize = 256;
pub const WINDOW_AGE: Duration = Duration::from_secs(60);

/// A failed backplane operation (the backplane is unreachable or refused it).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BackplaneError(pub String);

impl From<redis::RedisError> for BackplaneError {
    fn from(error: redis::RedisError) -> Self {
        Self(error.to_string())
    }
}

/// One message to publish.
#[derive(Debug)]
pub struct Outgoing {
    pub channel: String,
    pub message: String,
    /// An event of a user's stream, appended to their window before it is published (so an
    /// instance that hears it live and reads the window at once finds it in both).
    pub kept: Option<KeptEvent>,
}

/// An event for a user's shared window ([`WINDOW_EVENTS`], [`WINDOW_AGE`]).
#[derive(Debug)]
pub struct KeptEvent {
    /// The window's key.
    pub key: String,
    /// The event's `event_id`.
    pub id: String,
    pub event: Arc<str>,
}

/// One change to what instances share. A batch of them is one round trip to Redis, however
/// many sessions arrived at once.
#[derive(Debug)]
pub enum Write {
    /// A message to publish (a stream event is kept in its user's window first).
    Publish(Outgoing),
    /// Adds `member` to the set `key`, or removes it.
    Member { key: String, member: u64, present: bool },
    /// Sets `field` of the hash `key` to `count` (removes it when `count` is 0); the hash
    /// expires `ttl` after its last change.
    Count { key: String, field: u64, count: usize, ttl: Duration },
}

/// What a backplane hands the bus: messages of the channels this instance subscribed to, and
/// notice that its connection was lost (messages may have been missed meanwhile).
#[derive(Debug)]
pub enum Incoming {
    Message { channel: String, message: String },
    Disconnected,
}

/// The channels and the little expiring state that instances share. Messages are delivered
/// in the order they were published on a channel, at most once; everything may fail while
/// the backplane is unreachable, and subscriptions made before come back by themselves when
/// it returns (the bus then tells sessions to resync).
#[async_trait]
pub trait Backplane: Send + Sync + std::fmt::Debug + 'static {
    /// Applies `batch` in order (one round trip where the backplane can).
    async fn write(&self, batch: Vec<Write>) -> Result<(), BackplaneError>;

    /// Subscribes to every channel of `channels` (one round trip where the backplane can).
    async fn subscribe(&self, channels: &[String]) -> Result<(), BackplaneError>;

    async fn unsubscribe(&self, channels: &[String]) -> Result<(), BackplaneError>;

    /// The members of each set of `keys`, in their order.
    async fn members(&self, keys: &[String]) -> Result<Vec<Vec<u64>>, BackplaneError>;

    async fn counts(&self, key: &str) -> Result<HashMap<u64, usize>, BackplaneError>;

    /// Sets `key`, to expire after `ttl`.
    async fn set_expiring(&self, key: &str, ttl: Duration) -> Result<(), BackplaneError>;

    async fn remove(&self, key: &str) -> Result<(), BackplaneError>;

    async fn exists(&self, key: &str) -> Result<bool, BackplaneError>;

    /// The window `key`'s events of the last [`WINDOW_AGE`], oldest first: `(event_id, event)`.
    async fn window(&self, key: &str) -> Result<Vec<(String, Arc<str>)>, BackplaneError>;
}
