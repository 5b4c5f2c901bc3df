//! Per-user event streams: every event delivered to a user gets an id that orders it within
//! that user's stream, and a bounded window of recent events lets a socket that comes back
//! (`?resume=<event_id>`) receive exactly what it missed, in order, none twice.
//!
//! The store numbers an event and hands it to the router in one step under the user's lock,
//! and a resuming session registers with the router and reads the window under that same
//! lock. So every event of the user is either in the replay or in the new session's queue,
//! never in both and never in neither.
//!
//! [`ReplayStore`] is the seam for a shared store (a capped Redis stream per user, so a socket
//! may come back on another instance); [`InMemoryReplay`] serves one process.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringline_domain::{Clock, SystemClock, Timestamp, UserId};

/// How much of a user's stream is kept for resuming sockets: the last `max_events` events,
/// and none older than `max_age`, whichever is fewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayLimits {
    pub max_events: usize,
    pub max_age: Duration,
}

impl Default for ReplayLimits {
    fn default() -> Self {
        Self { max_events: 256, max_age: Duration::from_secs(60) }
    }
}

/// What a session that (re)connects gets before live events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// No resume was asked for, or nothing was missed.
    Nothing,
    /// The missed events, oldest first.
    Events(Vec<Arc<str>>),
    /// The gap cannot be filled (too old, from another server run, or not an id of this
    /// user's stream): the client must re-read its calls.
    Gap,
}

/// The result of attaching a session to its user's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The position to resume from if the session gets no event before it drops: every later
    /// event of the user reaches the session's queue.
    pub resume_from: String,
    pub replay: Replay,
}

/// A store of per-user streams.
pub trait ReplayStore: Send + Sync + std::fmt::Debug {
    /// Gives the next event of `user` its id, builds it with `encode(id)`, keeps it in the
    /// window and hands it to `deliver`, before any later event of `user` is numbered.
    fn append(&self, user: &UserId, encode: &mut dyn FnMut(&str) -> String, deliver: &mut dyn FnMut(Arc<str>));

    /// Keeps `event`, an event of `user`'s stream that another instance numbered (its id is
    /// `id`), in the window after the events kept so far, and hands it to `deliver`, as
    /// [`ReplayStore::append`] does. A session that resumes here from `id`, or from any later
    /// event, gets exactly what followed, wherever it was numbered.
    fn record(&self, user: &UserId, id: &str, event: Arc<str>, deliver: &mut dyn FnMut(Arc<str>));

    /// Runs `register` (which makes the session receive `user`'s live events) and, in the same
    /// step, collects the events after `resume` (an id of this user's stream), if given.
    fn attach(&self, user: &UserId, resume: Option<&str>, register: &mut dyn FnMut()) -> Attached;

    /// Forgets events and users older than the window. Cheap to call often.
    fn prune(&self);
}

const SHARDS: usize = 16;

/// Appends between opportunistic prunes of a shard, so memory stays bounded even where no
/// background task calls [`ReplayStore::prune`].
const PRUNE_EVERY: u32 = 4096;

/// One kept event: its position here, when it was kept, the event, and its id when another
/// instance numbered it.
type Kept = (u64, Timestamp, Arc<str>, Option<Box<str>>);

#[derive(Debug, Default)]
struct Window {
    /// Oldest first.
    events: VecDeque<Kept>,
    /// The newest position dropped from `events`: a resume from before it has a gap.
    dropped_through: u64,
}

impl Window {
    /// Drops the oldest events beyond the count and, when `now` is given, beyond the age limit.
    /// Appends only enforce the count (one comparison): ages are enforced where they matter,
    /// before a replay and when pruning, which keeps the relay path free of clock reads.
    fn trim(&mut self, limits: ReplayLimits, now: Option<Timestamp>) {
        while let Some(&(position, at, ..)) = self.events.front() {
            let too_old = now.is_some_and(|now| at.plus(limits.max_age) <= now);
            if self.events.len() <= limits.max_events && !too_old {
                break;
            }
            self.dropped_through = position;
            self.events.pop_front();
        }
    }
}

#[derive(Debug, Default)]
struct Shard {
    windows: HashMap<UserId, Window>,
    /// The newest position of any window forgotten whole: a user without a window has had no
    /// event after it.
    forgotten_through: u64,
    appends_since_prune: u32,
}

impl Shard {
    fn prune(&mut self, limits: ReplayLimits, now: Timestamp) {
        let mut forgotten = self.forgotten_through;
        self.windows.retain(|_, window| {
            window.trim(limits, Some(now));
            if window.events.is_empty() {
                forgotten = forgotten.max(window.dropped_through);
                false
            } else {
                true
            }
        });
        self.forgotten_through = forgotten;
        self.appends_since_prune = 0;
    }
}

/// The in-process [`ReplayStore`]. Positions are one counter for the process, so each user's
/// are increasing; ids are `<run>-<position in hex>`, where `<run>` is random per process, so
/// an id from before a restart is recognised as a gap. Ages are measured on the injected
/// [`Clock`], so a test drives the window's age as it drives the ring timeout.
#[derive(Debug)]
pub struct InMemoryReplay {
    run: String,
    next: AtomicU64,
    limits: ReplayLimits,
    clock: Arc<dyn Clock>,
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
}

impl Default for InMemoryReplay {
    fn default() -> Self {
        Self::new(ReplayLimits::default())
    }
}

impl InMemoryReplay {
    pub fn new(limits: ReplayLimits) -> Self {
        Self::on_clock(limits, Arc::new(SystemClock))
    }

    /// A window whose events age on `clock`.
    pub fn on_clock(limits: ReplayLimits, clock: Arc<dyn Clock>) -> Self {
        let random = uuid::Uuid::new_v4().simple().to_string();
        Self {
            run: random[..12].to_owned(),
            next: AtomicU64::new(1),
            limits,
            clock,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    fn shard(&self, user: &UserId) -> std::sync::MutexGuard<'_, Shard> {
        let index = usize::try_from(self.hasher.hash_one(user) % SHARDS as u64).unwrap_or(0);
        // A poisoned shard is still a valid map (every change is a push, pop or retain).
        self.shards[index].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn id(&self, position: u64) -> String {
        format!("{}-{position:x}", self.run)
    }

    /// The position an id names, if it is one of this run's.
    fn position(&self, id: &str) -> Option<u64> {
        let (run, position) = id.split_once('-')?;
        if run != self.run {
            return None;
        }
        u64::from_str_radix(position, 16).ok()
    }
}

impl ReplayStore for InMemoryReplay {
    fn append(&self, user: &UserId, encode: &mut dyn FnMut(&str) -> String, deliver: &mut dyn FnMut(Arc<str>)) {
        let now = self.clock.now();
        let mut shard = self.shard(user);
        let position = self.next.fetch_add(1, Ordering::Relaxed);
        let event: Arc<str> = encode(&self.id(position)).into();
        // Look up before inserting: `entry` would clone the user id (an allocation) for every
        // event, and a user with events in flight nearly always has a window already.
        let window = match shard.windows.get_mut(user) {
            Some(window) => window,
            None => shard.windows.entry(user.clone()).or_default(),
        };
        window.events.push_back((position, now, Arc::clone(&event), None));
        window.trim(self.limits, None);
        deliver(event);
        shard.appends_since_prune += 1;
        if shard.appends_since_prune >= PRUNE_EVERY {
            shard.prune(self.limits, now);
        }
    }

    fn record(&self, user: &UserId, id: &str, event: Arc<str>, deliver: &mut dyn FnMut(Arc<str>)) {
        let now = self.clock.now();
        let mut shard = self.shard(user);
        // A position of this process too, so that trimming and resuming treat it like the rest.
        let position = self.next.fetch_add(1, Ordering::Relaxed);
        let window = match shard.windows.get_mut(user) {
            Some(window) => window,
            None => shard.windows.entry(user.clone()).or_default(),
        };
        window.events.push_back((position, now, Arc::clone(&event), Some(id.into())));
        window.trim(self.limits, None);
        deliver(event);
        shard.appends_since_prune += 1;
        if shard.appends_since_prune >= PRUNE_EVERY {
            shard.prune(self.limits, now);
        }
    }

    fn attach(&self, user: &UserId, resume: Option<&str>, register: &mut dyn FnMut()) -> Attached {
        let now = self.clock.now();
        let mut shard = self.shard(user);
        register();
        // Every later event of this user is numbered after this, under the same lock.
        let head = self.next.load(Ordering::Relaxed) - 1;
        let resume_from = self.id(head);
        let Some(resume) = resume else {
            return Attached { resume_from, replay: Replay::Nothing };
        };
        // An id numbered here, or one another instance numbered and this one kept.
        let foreign = || {
            let window = shard.windows.get(user)?;
            window.events.iter().find(|(.., id)| id.as_deref() == Some(resume)).map(|&(position, ..)| position)
        };
        let Some(after) = self.position(resume).or_else(foreign).filter(|&after| after <= head) else {
            return Attached { resume_from, replay: Replay::Gap };
        };
        let forgotten_through = shard.forgotten_through;
        let replay = match shard.windows.get_mut(user) {
            Some(window) => {
                window.trim(self.limits, Some(now));
                if after < window.dropped_through {
                    Replay::Gap
                } else {
                    let missed: Vec<_> = window
                        .events
                        .iter()
                        .filter(|(position, ..)| *position > after)
                        .map(|(_, _, event, _)| Arc::clone(event))
                        .collect();
                    if missed.is_empty() { Replay::Nothing } else { Replay::Events(missed) }
                }
            }
            None if after < forgotten_through => Replay::Gap,
            None => Replay::Nothing,
        };
        Attached { resume_from, replay }
    }

    fn prune(&self) {
        let now = self.clock.now();
        for shard in &self.shards {
            shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner).prune(self.limits, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::parse(id).expect("valid")
    }

    fn append(store: &InMemoryReplay, to: &str, text: &str) -> String {
        let mut id = String::new();
        store.append(
            &user(to),
            &mut |event_id| {
                id = event_id.to_owned();
                format!("{text}@{event_id}")
            },
            &mut |_| {},
        );
        id
    }

    fn replayed(store: &InMemoryReplay, who: &str, resume: &str) -> Replay {
        store.attach(&user(who), Some(resume), &mut || {}).replay
    }

    /// With several instances, a user's stream here mixes events numbered here and events
    /// another instance numbered; a resume from either kind gets exactly what followed.
    #[test]
    fn events_numbered_elsewhere_are_kept_in_order_and_can_be_resumed_from() {
        let store = InMemoryReplay::default();
        let bob = user("bob");
        let mut delivered = Vec::new();
        store.record(&bob, "elsewhere-1", Arc::from("first"), &mut |event| delivered.push(event));
        let here = append(&store, "bob", "second");
        store.record(&bob, "elsewhere-2", Arc::from("third"), &mut |event| delivered.push(event));
        assert_eq!(delivered, [Arc::from("first"), Arc::from("third")], "recorded events are delivered");
        let after_first = replayed(&store, "bob", "elsewhere-1");
        assert_eq!(after_first, Replay::Events(vec![Arc::from(format!("second@{here}").as_str()), Arc::from("third")]));
        assert_eq!(replayed(&store, "bob", &here), Replay::Events(vec![Arc::from("third")]));
        assert_eq!(replayed(&store, "bob", "elsewhere-2"), Replay::Nothing);
        assert_eq!(replayed(&store, "bob", "elsewhere-9"), Replay::Gap, "an id nobody kept here");
        assert_eq!(replayed(&store, "alice", "elsewhere-1"), Replay::Gap, "not alice's stream");
    }

    #[test]
    fn a_resume_gets_exactly_the_later_events_of_that_user_in_order() {
        let store = InMemoryReplay::default();
        let seen = append(&store, "bob", "a");
        append(&store, "alice", "not bob's");
        let (b, c) = (append(&store, "bob", "b"), append(&store, "bob", "c"));
        assert_eq!(
            replayed(&store, "bob", &seen),
            Replay::Events(vec![format!("b@{b}").into(), format!("c@{c}").into()])
        );
        assert_eq!(replayed(&store, "bob", &c), Replay::Nothing);
    }

    #[test]
    fn the_attach_position_covers_a_session_that_saw_no_event() {
        let store = InMemoryReplay::default();
        append(&store, "bob", "old");
        let attached = store.attach(&user("bob"), None, &mut || {});
        assert_eq!(attached.replay, Replay::Nothing);
        let new = append(&store, "bob", "new");
        assert_eq!(replayed(&store, "bob", &attached.resume_from), Replay::Events(vec![format!("new@{new}").into()]));
    }

    #[test]
    fn gaps_that_cannot_be_filled_say_so() {
        let store = InMemoryReplay::new(ReplayLimits { max_events: 2, max_age: Duration::from_secs(60) });
        let first = append(&store, "bob", "1");
        for text in ["2", "3", "4"] {
            append(&store, "bob", text);
        }
        assert_eq!(replayed(&store, "bob", &first), Replay::Gap, "two events were dropped from the window");
        assert_eq!(replayed(&store, "bob", "0123456789ab-1"), Replay::Gap, "another server run");
        assert_eq!(replayed(&store, "bob", "nonsense"), Replay::Gap);
        let future = format!("{}-ffff", store.run);
        assert_eq!(replayed(&store, "bob", &future), Replay::Gap, "a position not reached yet");
    }

    #[test]
    fn events_age_on_the_injected_clock() {
        let clock = Arc::new(ringline_domain::ManualClock::new());
        let limits = ReplayLimits { max_events: 256, max_age: Duration::from_secs(60) };
        let store = InMemoryReplay::on_clock(limits, clock.clone());
        let first = append(&store, "bob", "1");
        let second = append(&store, "bob", "2");
        clock.advance(Duration::from_secs(59));
        assert_eq!(replayed(&store, "bob", &first), Replay::Events(vec![format!("2@{second}").into()]));
        clock.advance(Duration::from_secs(1));
        assert_eq!(replayed(&store, "bob", &first), Replay::Gap, "a minute old: out of the window");
    }

    #[test]
    fn old_events_and_idle_users_are_forgotten_and_a_resume_from_before_them_is_a_gap() {
        let store = InMemoryReplay::new(ReplayLimits { max_events: 256, max_age: Duration::ZERO });
        let before = store.attach(&user("bob"), None, &mut || {}).resume_from;
        append(&store, "bob", "expired at once");
        store.prune();
        assert!(store.shards.iter().all(|shard| shard.lock().expect("lock").windows.is_empty()));
        assert_eq!(replayed(&store, "bob", &before), Replay::Gap);
    }
}
