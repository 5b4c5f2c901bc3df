//! The publishing task: messages (pipelined), subscriptions, presence and device counts,
//! written to Redis in the order they were queued.

use std::sync::Arc;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use ringline_domain::UserId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{DEVICES_KEPT, Job, Kept, PIPELINE_MAX, RedisBus, SHARED_WINDOW_AGE, SHARED_WINDOW_EVENTS, Wire};
use super::{devices_key, user_channel};

impl RedisBus {
    /// Publishes queued messages and applies subscription and presence changes, in order.
    pub(super) async fn publish_jobs(
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

    pub(super) async fn write_presence(
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
    pub(super) async fn write_devices(
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

    /// Reads which live instances hold notification sockets of `user`.
    pub(super) async fn learn_presence(
        &self,
        manager: &mut ConnectionManager,
        user: &UserId,
    ) -> Result<(), redis::RedisError> {
        let members: Vec<u64> = manager.smembers(format!("{}:notif:{user}", self.prefix)).await?;
        for instance in members {
            if instance != self.local.instance() && self.instance_alive(manager, instance).await? {
                self.local.set_elsewhere(user, instance, true);
            }
        }
        Ok(())
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
