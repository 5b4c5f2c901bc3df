//! [`RedisBackplane`]: the backplane on one Redis server (pub/sub) or a Redis Cluster
//! (sharded pub/sub: `SPUBLISH`/`SSUBSCRIBE`, so a message travels only to the shard that owns
//! its channel instead of to every node).
//!
//! Every key and channel of one user carries the same hash tag (`ringline:u:{42}`,
//! `ringline:w:{42}`), so in a cluster a user's window and channel live on one shard and the
//! "keep, then publish" of one event is one pipeline to one node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::future::try_join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::backplane::{Backplane, BackplaneError, Incoming, KeptEvent, Outgoing, WINDOW_AGE, WINDOW_EVENTS, Write};

/// How long a command may wait for Redis before it fails (and the outage shows).
const TIMEOUT: Duration = Duration::from_secs(2);

/// Where Redis is: one server, or a cluster (with sharded pub/sub).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// `redis://host:port/db`.
    Single(String),
    /// Any of the cluster's nodes (`redis://host:port`); the rest are discovered.
    Cluster(Vec<String>),
}

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The backplane on Redis (see the module documentation).
#[derive(Clone)]
pub struct RedisBackplane {
    connection: Connection,
}

impl std::fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.connection {
            Connection::Single(_) => "single",
            Connection::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisBackplane").field("topology", &kind).finish()
    }
}

/// Turns what Redis pushes into what the bus reads; never blocks the connection.
fn forward(incoming: mpsc::UnboundedSender<Incoming>) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static {
    move |push: PushInfo| {
        let forwarded = match push.kind {
            PushKind::Message | PushKind::SMessage => {
                // Taken, not copied: a message's bytes become its text in place.
                let mut data = push.data.into_iter();
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(message))) = (data.next(), data.next())
                else {
                    return Ok(());
                };
                let (Ok(channel), Ok(message)) = (String::from_utf8(channel), String::from_utf8(message)) else {
                    return Ok(());
                };
                Incoming::Message { channel, message }
            }
            PushKind::Disconnection => Incoming::Disconnected,
            _ => return Ok(()),
        };
        incoming.send(forwarded).map_err(|_| ())
    }
}

impl RedisBackplane {
    /// Connects (RESP3, whatever the URL says: pushes need it) and sends what Redis pushes
    /// to `incoming`. The connection reconnects and resubscribes by itself.
    ///
    /// # Errors
    /// When a URL is invalid or Redis does not answer.
    pub async fn connect(
        topology: &RedisTopology,
        incoming: mpsc::UnboundedSender<Incoming>,
    ) -> Result<Self, redis::RedisError> {
        let connection = match topology {
            RedisTopology::Single(url) => {
                let info = url.as_str().into_connection_info()?;
                let redis_settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
                let client = redis::Client::open(info.set_redis_settings(redis_settings))?;
                let config = ConnectionManagerConfig::new()
                    .set_push_sender(forward(incoming))
                    .set_automatic_resubscription()
                    .set_connection_timeout(Some(TIMEOUT))
                    .set_response_timeout(Some(TIMEOUT))
                    .set_max_delay(TIMEOUT);
                Connection::Single(ConnectionManager::new_with_config(client, config).await?)
            }
            RedisTopology::Cluster(nodes) => {
                let client = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(forward(incoming))
                    .connection_timeout(TIMEOUT)
                    .response_timeout(TIMEOUT)
                    .build()?;
                Connection::Cluster(client.get_async_connection().await?)
            }
        };
        Ok(Self { connection })
    }

    async fn query<T: FromRedisValue>(&self, pipeline: &Pipeline) -> Result<T, BackplaneError> {
        Ok(match &self.connection {
            Connection::Single(manager) => pipeline.query_async(&mut manager.clone()).await?,
            Connection::Cluster(cluster) => pipeline.query_async(&mut cluster.clone()).await?,
        })
    }

    fn publish_command(&self) -> &'static str {
        match self.connection {
            Connection::Single(_) => "PUBLISH",
            Connection::Cluster(_) => "SPUBLISH",
        }
    }

    fn add(&self, pipeline: &mut Pipeline, write: Write) {
        match write {
            Write::Publish(Outgoing { channel, message, kept }) => {
                if let Some(KeptEvent { key, id, event }) = kept {
                    pipeline
                        .cmd("XADD")
                        .arg(&key)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(WINDOW_EVENTS)
                        .arg("*")
                        .arg("i")
                        .arg(id)
                        .arg("e")
                        .arg(event.as_ref())
                        .ignore();
                    pipeline.pexpire(key, millis(WINDOW_AGE)).ignore();
                }
                pipeline.cmd(self.publish_command()).arg(channel).arg(message).ignore();
            }
            Write::Member { key, member, present } => {
                if present {
                    pipeline.sadd(key, member).ignore();
                } else {
                    pipeline.srem(key, member).ignore();
                }
            }
            Write::Count { key, field, count, ttl } => {
                if count == 0 {
                    pipeline.hdel(key, field).ignore();
                } else {
                    pipeline.hset(&key, field, count).ignore();
                    pipeline.pexpire(key, millis(ttl)).ignore();
                }
            }
        }
    }
}

/// The part of a key or channel that decides its cluster slot: its hash tag (`{42}` of
/// `ringline:u:{42}`), so that a user's channel, window and sets go in one pipeline.
fn slot_tag(key: &str) -> &str {
    key.split_once('{').and_then(|(_, rest)| rest.split_once('}')).map_or(key, |(tag, _)| tag)
}

fn write_key(write: &Write) -> &str {
    match write {
        Write::Publish(outgoing) => &outgoing.channel,
        Write::Member { key, .. } | Write::Count { key, .. } => key,
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl Backplane for RedisBackplane {
    async fn write(&self, batch: Vec<Write>) -> Result<(), BackplaneError> {
        match &self.connection {
            Connection::Single(_) => {
                let mut pipeline = redis::pipe();
                for write in batch {
                    self.add(&mut pipeline, write);
                }
                self.query(&pipeline).await
            }
            Connection::Cluster(_) => {
                // A pipeline must stay on one slot: one per hash tag, in the order of first
                // appearance, all at once.
                let mut order: Vec<String> = Vec::new();
                let mut pipelines: HashMap<String, Pipeline> = HashMap::new();
                for write in batch {
                    let tag = slot_tag(write_key(&write)).to_owned();
                    let pipeline = pipelines.entry(tag.clone()).or_insert_with(|| {
                        order.push(tag);
                        redis::pipe()
                    });
                    self.add(pipeline, write);
                }
                let pipelines: Vec<Pipeline> = order.iter().filter_map(|tag| pipelines.remove(tag)).collect();
                try_join_all(pipelines.iter().map(|pipeline| self.query::<()>(pipeline))).await.map(|_| ())
            }
        }
    }

    async fn subscribe(&self, channels: &[String]) -> Result<(), BackplaneError> {
        match &self.connection {
            Connection::Single(manager) => manager.clone().subscribe(channels).await?,
            // One command per channel: SSUBSCRIBE takes channels of one slot only.
            Connection::Cluster(cluster) => {
                try_join_all(channels.iter().map(|channel| async move { cluster.clone().ssubscribe(channel).await }))
                    .await?;
            }
        }
        Ok(())
    }

    async fn unsubscribe(&self, channels: &[String]) -> Result<(), BackplaneError> {
        match &self.connection {
            Connection::Single(manager) => manager.clone().unsubscribe(channels).await?,
            Connection::Cluster(cluster) => {
                try_join_all(channels.iter().map(|channel| async move { cluster.clone().sunsubscribe(channel).await }))
                    .await?;
            }
        }
        Ok(())
    }

    async fn members(&self, keys: &[String]) -> Result<Vec<Vec<u64>>, BackplaneError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        match &self.connection {
            Connection::Single(_) => {
                let mut pipeline = redis::pipe();
                for key in keys {
                    pipeline.smembers(key);
                }
                self.query(&pipeline).await
            }
            Connection::Cluster(_) => {
                try_join_all(keys.iter().map(|key| async move {
                    let (members,): (Vec<u64>,) = self.query(redis::pipe().smembers(key)).await?;
                    Ok::<_, BackplaneError>(members)
                }))
                .await
            }
        }
    }

    async fn counts(&self, key: &str) -> Result<HashMap<u64, usize>, BackplaneError> {
        let (counts,): (HashMap<u64, usize>,) = self.query(redis::pipe().hgetall(key)).await?;
        Ok(counts)
    }

    async fn set_expiring(&self, key: &str, ttl: Duration) -> Result<(), BackplaneError> {
        self.query(redis::pipe().pset_ex(key, 1, u64::try_from(millis(ttl)).unwrap_or(u64::MAX)).ignore()).await
    }

    async fn remove(&self, key: &str) -> Result<(), BackplaneError> {
        self.query(redis::pipe().del(key).ignore()).await
    }

    async fn exists(&self, key: &str) -> Result<bool, BackplaneError> {
        let (exists,): (bool,) = self.query(redis::pipe().exists(key)).await?;
        Ok(exists)
    }

    async fn window(&self, key: &str) -> Result<Vec<(String, Arc<str>)>, BackplaneError> {
        let since = SystemTime::now()
            .checked_sub(WINDOW_AGE)
            .and_then(|since| since.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |since| since.as_millis());
        let (reply,): (Value,) =
            self.query(redis::pipe().cmd("XRANGE").arg(key).arg(since.to_string()).arg("+")).await?;
        let Value::Array(entries) = reply else { return Ok(Vec::new()) };
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
        Ok(events)
    }
}
