//! [`MemoryHub`]: a backplane in memory, for several instances in one process: tests that
//! start N instances side by side (fast, no Redis), and embedding applications that want to
//! see several instances behave as one before they deploy Redis.
//!
//! It keeps Redis's promises that the bus relies on (in-order delivery per channel, expiring
//! keys, a capped window) and can be switched off and on ([`MemoryHub::set_reachable`]) to
//! play an outage.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::backplane::{Backplane, BackplaneError, Incoming, Outgoing, WINDOW_AGE, WINDOW_EVENTS, Write};

/// What every instance joined to one hub shares.
#[derive(Debug, Default)]
pub struct MemoryHub {
    state: Mutex<State>,
    unreachable: AtomicBool,
    next_member: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    members: HashMap<u64, mpsc::UnboundedSender<Incoming>>,
    /// Which members subscribe to each channel.
    subscribers: HashMap<String, HashSet<u64>>,
    sets: HashMap<String, HashSet<u64>>,
    counts: HashMap<String, (HashMap<u64, usize>, Instant)>,
    expiring: HashMap<String, Instant>,
    windows: HashMap<String, VecDeque<(Instant, String, Arc<str>)>>,
}

impl State {
    fn publish(&mut self, outgoing: Outgoing, now: Instant) {
        if let Some(kept) = outgoing.kept {
            let window = self.windows.entry(kept.key).or_default();
            window.push_back((now, kept.id, kept.event));
            while window.len() > WINDOW_EVENTS {
                window.pop_front();
            }
        }
        for member in self.subscribers.get(&outgoing.channel).into_iter().flatten() {
            if let Some(sender) = self.members.get(member) {
                let _ = sender
                    .send(Incoming::Message { channel: outgoing.channel.clone(), message: outgoing.message.clone() });
            }
        }
    }
}

impl MemoryHub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A backplane for one more instance; what it subscribes to arrives on `incoming`.
    pub fn join(self: &Arc<Self>, incoming: mpsc::UnboundedSender<Incoming>) -> MemoryBackplane {
        let member = self.next_member.fetch_add(1, Ordering::Relaxed);
        self.lock().members.insert(member, incoming);
        MemoryBackplane { hub: Arc::clone(self), member }
    }

    /// Plays an outage: while unreachable every operation fails, and each instance is told
    /// its connection was lost (as Redis's client tells it); subscriptions survive, as the
    /// client's automatic resubscription makes them.
    pub fn set_reachable(&self, reachable: bool) {
        let was_reachable = !self.unreachable.swap(!reachable, Ordering::SeqCst);
        if was_reachable && !reachable {
            for member in self.lock().members.values() {
                let _ = member.send(Incoming::Disconnected);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reachable(&self) -> Result<MutexGuard<'_, State>, BackplaneError> {
        if self.unreachable.load(Ordering::SeqCst) {
            return Err(BackplaneError("the in-memory hub is unreachable".into()));
        }
        Ok(self.lock())
    }
}

/// One instance's place on a [`MemoryHub`].
#[derive(Debug)]
pub struct MemoryBackplane {
    hub: Arc<MemoryHub>,
    member: u64,
}

impl Drop for MemoryBackplane {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        state.members.remove(&self.member);
        for subscribers in state.subscribers.values_mut() {
            subscribers.remove(&self.member);
        }
    }
}

#[async_trait]
impl Backplane for MemoryBackplane {
    async fn write(&self, batch: Vec<Write>) -> Result<(), BackplaneError> {
        let mut state = self.hub.reachable()?;
        let now = Instant::now();
        for write in batch {
            match write {
                Write::Publish(outgoing) => state.publish(outgoing, now),
                Write::Member { key, member, present } => {
                    let set = state.sets.entry(key).or_default();
                    if present {
                        set.insert(member);
                    } else {
                        set.remove(&member);
                    }
                }
                Write::Count { key, field, count, ttl } => {
                    let (counts, expires) = state.counts.entry(key).or_insert_with(|| (HashMap::new(), now));
                    if count == 0 {
                        counts.remove(&field);
                    } else {
                        counts.insert(field, count);
                        *expires = now + ttl;
                    }
                }
            }
        }
        Ok(())
    }

    async fn subscribe(&self, channels: &[String]) -> Result<(), BackplaneError> {
        let mut state = self.hub.reachable()?;
        for channel in channels {
            state.subscribers.entry(channel.clone()).or_default().insert(self.member);
        }
        Ok(())
    }

    async fn unsubscribe(&self, channels: &[String]) -> Result<(), BackplaneError> {
        let mut state = self.hub.reachable()?;
        for channel in channels {
            if let Some(subscribers) = state.subscribers.get_mut(channel) {
                subscribers.remove(&self.member);
            }
        }
        Ok(())
    }

    async fn members(&self, keys: &[String]) -> Result<Vec<Vec<u64>>, BackplaneError> {
        let state = self.hub.reachable()?;
        Ok(keys
            .iter()
            .map(|key| state.sets.get(key).map(|set| set.iter().copied().collect()).unwrap_or_default())
            .collect())
    }

    async fn counts(&self, key: &str) -> Result<HashMap<u64, usize>, BackplaneError> {
        let state = self.hub.reachable()?;
        Ok(match state.counts.get(key) {
            Some((counts, expires)) if *expires > Instant::now() => counts.clone(),
            _ => HashMap::new(),
        })
    }

    async fn set_expiring(&self, key: &str, ttl: Duration) -> Result<(), BackplaneError> {
        self.hub.reachable()?.expiring.insert(key.to_owned(), Instant::now() + ttl);
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<(), BackplaneError> {
        self.hub.reachable()?.expiring.remove(key);
        Ok(())
    }

    async fn exists(&self, key: &str) -> Result<bool, BackplaneError> {
        Ok(self.hub.reachable()?.expiring.get(key).is_some_and(|expires| *expires > Instant::now()))
    }

    async fn window(&self, key: &str) -> Result<Vec<(String, Arc<str>)>, BackplaneError> {
        let state = self.hub.reachable()?;
        let now = Instant::now();
        Ok(state
            .windows
            .get(key)
            .into_iter()
            .flatten()
            .filter(|(at, _, _)| now.duration_since(*at) < WINDOW_AGE)
            .map(|(_, id, event)| (id.clone(), Arc::clone(event)))
            .collect())
    }
}
