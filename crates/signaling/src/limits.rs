//! Token buckets: the per-socket frame limit, the fan-in limits that bound what reaches one
//! user from others, and the limit on the database reads one user's frames may cause
//! (`relay.rs`).
//!
//! Each socket may send [`FrameRate`] frames, but a user may hold many sockets (up to the
//! per-user cap) and a conversation has many members. Five sockets, each within its own limit,
//! bursting ICE candidates at one callee once filled the callee's queue and got it closed as a
//! slow consumer: the receiving side paid for the sending side's sockets. So what is relayed
//! *towards* someone is limited as well, by what it is relayed through:
//!
//! - a call's frames from one party to the other (offer, answer, ICE, media state) share one
//!   bucket per direction, whichever of the sender's devices they come from: the sender gets no
//!   more than one socket's worth towards the other party;
//! - a conversation's typing indicators share one bucket, whoever types.
//!
//! A frame over the limit is dropped and its sender told (`rate_limited`). A client that
//! signals from one device never meets these limits, since its socket's own limit is the same.
//! The buckets live in this process: several instances each allow this much.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

use ringline_domain::{CallId, ConversationId, UserId};

use crate::settings::FrameRate;

/// Database reads that one user's frames may cause on this instance (a frame naming a call
/// that is neither cached nor known to be missing). A client's frames name its own calls, and
/// each is read once, so this is far above what any client needs; it stops a client that
/// names ever new ids from making the server read the database at its full frame rate from
/// each of its sockets.
pub(crate) const DATABASE_READS_PER_USER: FrameRate = FrameRate { per_second: 10.0, burst: 20.0 };

/// Which way a call's frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Direction {
    FromCaller,
    FromReceiver,
}

/// Everything the relay limits, in one place: each socket's [`FrameRate`], the fan-in limits
/// (a call party's frames towards the other party, a conversation's typing indicators, each
/// one socket's rate), and the database reads a user's frames may cause.
#[derive(Debug, Default)]
pub(crate) struct RelayLimits {
    frame_rate: FrameRate,
    per_call: KeyedLimit<(CallId, Direction)>,
    typing: KeyedLimit<ConversationId>,
    database_reads: KeyedLimit<UserId>,
}

impl RelayLimits {
    pub(crate) fn new(frame_rate: FrameRate) -> Self {
        Self { frame_rate, ..Self::default() }
    }

    /// One socket's rate.
    pub(crate) fn frame_rate(&self) -> FrameRate {
        self.frame_rate
    }

    /// Whether one more frame of call `call` may go `direction`.
    pub(crate) fn allow_relay(&self, call: CallId, direction: Direction) -> bool {
        self.per_call.allow((call, direction), self.frame_rate)
    }

    /// Whether one more typing indicator may go to `conversation`.
    pub(crate) fn allow_typing(&self, conversation: ConversationId) -> bool {
        self.typing.allow(conversation, self.frame_rate)
    }

    /// Whether a frame of `user`'s may make the server read the database once more.
    pub(crate) fn allow_database_read(&self, user: &UserId) -> bool {
        self.database_reads.allow(user.clone(), DATABASE_READS_PER_USER)
    }
}

/// `rate.burst` frames at once, then `rate.per_second`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    pub(crate) fn full(rate: FrameRate) -> Self {
        Self { tokens: rate.burst, refilled: Instant::now() }
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self, rate: FrameRate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, rate: FrameRate, now: Instant) {
        let refill = now.saturating_duration_since(self.refilled).as_secs_f64() * rate.per_second;
        self.tokens = (self.tokens + refill).min(rate.burst);
        self.refilled = now;
    }

    /// Whether the bucket would be full at `now`: such a bucket is the same as none.
    fn is_full_at(&self, rate: FrameRate, now: Instant) -> bool {
        let mut refilled = *self;
        refilled.refill(rate, now);
        refilled.tokens >= rate.burst
    }
}

/// Buckets kept before the full ones are forgotten (a full bucket is the same as none, so
/// forgetting one only bounds memory, never loosens a limit in force).
const PRUNE_ABOVE: usize = 4096;

/// One [`TokenBucket`] per key (a call's direction, a conversation, a user), made on first use.
#[derive(Debug)]
pub(crate) struct KeyedLimit<K> {
    inner: Mutex<Buckets<K>>,
}

#[derive(Debug)]
struct Buckets<K> {
    by_key: HashMap<K, TokenBucket>,
    /// The size at which full buckets are next swept out: twice what a sweep left, so that
    /// sweeping stays a small share of the work however many keys are in use.
    prune_at: usize,
}

impl<K> Default for KeyedLimit<K> {
    fn default() -> Self {
        Self { inner: Mutex::new(Buckets { by_key: HashMap::new(), prune_at: PRUNE_ABOVE }) }
    }
}

impl<K: Hash + Eq> KeyedLimit<K> {
    /// Whether one more frame may pass through `key` at `rate`.
    pub(crate) fn allow(&self, key: K, rate: FrameRate) -> bool {
        self.allow_at(key, rate, Instant::now())
    }

    fn allow_at(&self, key: K, rate: FrameRate, now: Instant) -> bool {
        let mut buckets = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.by_key.len() >= buckets.prune_at {
            buckets.by_key.retain(|_, bucket| !bucket.is_full_at(rate, now));
            buckets.prune_at = (buckets.by_key.len() * 2).max(PRUNE_ABOVE);
        }
        buckets.by_key.entry(key).or_insert_with(|| TokenBucket::full(rate)).take(rate, now)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().map(|buckets| buckets.by_key.len()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const RATE: FrameRate = FrameRate { per_second: 50.0, burst: 200.0 };

    #[test]
    fn a_bucket_gives_its_burst_then_refills_at_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::full(RATE);
        assert_eq!((0..1000).filter(|_| bucket.take(RATE, start)).count(), 200);
        let later = start + Duration::from_millis(100);
        assert_eq!((0..1000).filter(|_| bucket.take(RATE, later)).count(), 5);
    }

    #[test]
    fn keys_are_limited_separately_and_only_full_buckets_are_forgotten() {
        let limit = KeyedLimit::default();
        let start = Instant::now();
        let emptied = u64::MAX;
        assert_eq!((0..1000).filter(|_| limit.allow_at(emptied, RATE, start)).count(), 200);
        assert!(limit.allow_at(0, RATE, start), "another key has its own bucket");
        // Past the sweep size with buckets still in use: none is forgotten.
        for key in 1..=PRUNE_ABOVE as u64 {
            assert!(limit.allow_at(key, RATE, start));
        }
        assert_eq!(limit.len(), PRUNE_ABOVE + 2);
        assert!(!limit.allow_at(emptied, RATE, start), "an emptied bucket is kept");
        // Later every one of those has refilled: the next sweep forgets them all, and keeps
        // the buckets taken from since.
        let later = start + Duration::from_secs(5);
        let mut taken_later = 0;
        loop {
            let before = limit.len();
            assert!(limit.allow_at(PRUNE_ABOVE as u64 + 1 + taken_later, RATE, later));
            taken_later += 1;
            if limit.len() < before {
                break;
            }
            assert!(taken_later < 3 * PRUNE_ABOVE as u64, "no sweep by the time the map doubled");
        }
        assert_eq!(limit.len() as u64, taken_later);
    }
}
