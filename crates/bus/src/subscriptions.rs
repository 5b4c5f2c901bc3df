//! Which user and conversation channels this instance subscribes to, in step with its
//! sessions, and what a new session waits for before its snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use futures_util::future::BoxFuture;
use ringline_domain::UserId;
use tokio::sync::{mpsc, oneshot};

use super::{Job, LINGER, SUBSCRIBE_WAIT, SharedBus, conversation_channel, user_channel};
use ringline_signaling::router::{IdentifiedEvent, RegistryChange, RegistryListener, SubscriptionGate};

/// The user channels this instance subscribes to, and who waits for a subscription to be made.
#[derive(Debug, Default)]
pub(super) struct Subscriptions {
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
    pub(super) fn arrive(&self, channel: &str, control: &mpsc::UnboundedSender<Job>) -> bool {
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
    pub(super) fn leave(&self, channel: &str, until: Instant) {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(subscription) = channels.get_mut(channel) {
            *subscription = Subscription::Lingering(until);
        }
    }

    /// Unsubscribes (on `control`, under the lock) from the channels that lingered until
    /// before `now`, and returns them.
    pub(super) fn expire(&self, now: Instant, control: &mpsc::UnboundedSender<Job>) -> Vec<String> {
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
    pub(super) fn following(&self, channel: &str) -> bool {
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        matches!(channels.get(channel), Some(Subscription::Active | Subscription::Lingering(_)))
    }

    pub(super) fn active(&self, channel: &str) {
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
    pub(super) fn wait(&self, channel: &str) -> Option<oneshot::Receiver<()>> {
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
pub(super) struct Listener {
    pub(super) prefix: String,
    pub(super) control: mpsc::UnboundedSender<Job>,
    pub(super) subscriptions: Arc<Subscriptions>,
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

impl SubscriptionGate for SharedBus {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
