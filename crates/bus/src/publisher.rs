//! The publishing task: messages (batched), subscriptions, presence and device counts, written
//! to the backplane in the order they were queued.

use std::sync::Arc;

use ringline_domain::UserId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::backplane::BackplaneError;
use super::{BATCH_MAX, DEVICES_KEPT, Job, SharedBus, Wire};
use super::{devices_key, instance_key, notification_key, user_channel};

impl SharedBus {
    /// Publishes queued messages and applies subscription and presence changes, in order.
    pub(super) async fn publish_jobs(
        self: Arc<Self>,
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
            let done: Result<(), BackplaneError> = match job {
                Job::Publish(first, user) => {
                    // Everything already waiting goes in one batch: one round trip to Redis
                    // for a burst of ICE candidates instead of one each.
                    let mut batch = vec![first];
                    let mut users = vec![user];
                    while batch.len() < BATCH_MAX {
                        match jobs.try_recv() {
                            Ok(Job::Publish(outgoing, user)) => {
                                batch.push(outgoing);
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
                    let sent = self.backplane.publish(batch).await;
                    if sent.is_ok() {
                        self.health.count_published(messages);
                    } else {
                        for user in &users {
                            self.health.warn_dropped("the backplane did not take it");
                            self.lose(user.as_ref());
                        }
                    }
                    sent
                }
                Job::Subscribe(channel) => {
                    let subscribed = self.backplane.subscribe(&channel).await;
                    if subscribed.is_ok() {
                        self.subscriptions.active(&channel);
                    }
                    subscribed
                }
                Job::Unsubscribe(channel) => self.backplane.unsubscribe(&channel).await,
                Job::Presence { user, present } => self.write_presence(instance, &user, present).await,
                Job::LearnPresence(user) => self.learn_presence(&user).await,
                Job::Devices { user, count } => {
                    self.backplane.set_count(&devices_key(&self.prefix, &user), instance, count, DEVICES_KEPT).await
                }
            };
            self.record(done.as_ref().err());
        }
    }

    pub(super) async fn write_presence(
        &self,
        instance: u64,
        user: &UserId,
        present: bool,
    ) -> Result<(), BackplaneError> {
        self.backplane.set_member(&notification_key(&self.prefix, user), instance, present).await?;
        let wire = Wire {
            from: instance,
            except_device: None,
            except_user: None,
            payload: None,
            notification_sockets: Some(present),
            removed_user: None,
        };
        let message = serde_json::to_string(&wire).unwrap_or_default();
        let channel = user_channel(&self.prefix, user);
        self.backplane.publish(vec![super::Outgoing { channel, message, kept: None }]).await
    }

    /// Reads which live instances hold notification sockets of `user`.
    pub(super) async fn learn_presence(&self, user: &UserId) -> Result<(), BackplaneError> {
        let members = self.backplane.members(&notification_key(&self.prefix, user)).await?;
        for instance in members {
            if instance != self.local.instance() && self.instance_alive(instance).await? {
                self.local.set_elsewhere(user, instance, true);
            }
        }
        Ok(())
    }

    pub(super) async fn instance_alive(&self, instance: u64) -> Result<bool, BackplaneError> {
        self.backplane.exists(&instance_key(&self.prefix, instance)).await
    }
}
