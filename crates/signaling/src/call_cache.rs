//! [`CallCache`]: the calls this process knows about, in memory, so that relaying a frame
//! needs no database read. Kept in step with every change made through [`Signaling`], read
//! from the database at most once per call on a miss.
//!
//! Updates are monotonic: a copy of a call at an earlier stage of its life than the cached one
//! (`CallStatus::stage`) is ignored. A miss may read `ringing` from the database while an
//! accept is being committed; written after the accept's `active`, that stale copy would make
//! the callee's `call.answer` look like an answer to an unanswered call.
//!
//! [`Signaling`]: crate::Signaling

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ringline_domain::{Call, CallId, DeviceId, UserProfile};

/// Routes kept for finished calls (late ICE candidates and retried hang-ups are answered from
/// memory); beyond this many cached routes, finished ones are forgotten.
const MAX_CACHED_ROUTES: usize = 50_000;

/// What the relay needs to know about a call. Shared, so a lookup clones a pointer only.
pub(crate) type Route = Arc<Call>;

/// A cached route, and the parties' profiles when this process started the call (so that
/// announcing it and answering REST requests about it need no directory lookup).
#[derive(Debug)]
struct Cached {
    route: Route,
    parties: Option<Arc<[UserProfile]>>,
    /// The callee's device the call belongs to once answered, as far as this process knows
    /// (`Call::callee_device`; the database decides). While the call rings, the device of this
    /// process whose answer is being accepted (so that only one of them tries).
    callee_device: Option<Holder>,
}

/// A callee's device holding a call, and when the database last said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) device: DeviceId,
    /// When a claim found this device holding the call; `None` when it was only read with the
    /// call (or reserved while ringing): a claim is then worth trying before refusing.
    pub(crate) confirmed: Option<Instant>,
}

impl Holder {
    /// Whether the database said so within `period`.
    pub(crate) fn confirmed_within(&self, period: Duration) -> bool {
        self.confirmed.is_some_and(|at| at.elapsed() < period)
    }
}

/// How long a call id found missing in the database is answered `call_not_found` from memory:
/// long enough that a client naming ids that do not exist costs one read per id, not one per
/// frame; short enough that a call another instance creates under an id probed just before is
/// found soon (a change announced on the bus clears the entry at once).
const MISSING_FOR: Duration = Duration::from_secs(10);

/// Missing ids remembered at most; beyond, expired ones are dropped, then all.
const MAX_MISSING: usize = 10_000;

#[derive(Debug, Default)]
pub(crate) struct CallCache {
    map: RwLock<HashMap<CallId, Cached>>,
    missing: RwLock<HashMap<CallId, Instant>>,
}

impl CallCache {
    pub(crate) fn get(&self, id: CallId) -> Option<Route> {
        self.read().get(&id).map(|cached| Arc::clone(&cached.route))
    }

    pub(crate) fn parties(&self, id: CallId) -> Option<Arc<[UserProfile]>> {
        self.read().get(&id).and_then(|cached| cached.parties.clone())
    }

    /// Whether call `id` was found missing in the database moments ago.
    pub(crate) fn is_missing(&self, id: CallId) -> bool {
        self.missing
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .is_some_and(|until| *until > Instant::now())
    }

    /// Remembers that call `id` is not in the database, for [`MISSING_FOR`].
    pub(crate) fn remember_missing(&self, id: CallId) {
        let mut missing = self.missing.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if missing.len() >= MAX_MISSING {
            let now = Instant::now();
            missing.retain(|_, until| *until > now);
            if missing.len() >= MAX_MISSING {
                missing.clear();
            }
        }
        missing.insert(id, Instant::now() + MISSING_FOR);
    }

    fn found(&self, id: CallId) {
        let mut missing = self.missing.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !missing.is_empty() {
            missing.remove(&id);
        }
    }

    /// Keeps `call` unless a newer copy is cached; returns the copy kept.
    pub(crate) fn remember(&self, call: &Call) -> Route {
        self.remember_with(call, None)
    }

    /// As [`CallCache::remember`], with the parties' profiles when they are known.
    pub(crate) fn remember_with(&self, call: &Call, parties: Option<Arc<[UserProfile]>>) -> Route {
        self.found(call.id());
        let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        Self::keep(&mut map, call, parties, |cached, call| cached.status().stage() > call.status().stage())
    }

    /// A copy another instance sent after changing the call: kept only if it is newer than the
    /// cached one (a later stage, or the same stage changed later), since copies from two
    /// instances may arrive in either order.
    pub(crate) fn remember_copy(&self, call: &Call, parties: Option<Arc<[UserProfile]>>) {
        self.found(call.id());
        let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        Self::keep(&mut map, call, parties, |cached, call| {
            (cached.status().stage(), cached.updated_at()) >= (call.status().stage(), call.updated_at())
        });
    }

    /// Keeps `call` unless `newer_cached(cached, call)` says the cached copy wins (its parties
    /// are then only filled in if missing); returns the copy kept.
    fn keep(
        map: &mut HashMap<CallId, Cached>,
        call: &Call,
        parties: Option<Arc<[UserProfile]>>,
        newer_cached: impl Fn(&Call, &Call) -> bool,
    ) -> Route {
        if let Some(cached) = map.get_mut(&call.id()) {
            if newer_cached(&cached.route, call) {
                if cached.parties.is_none() {
                    cached.parties = parties;
                }
                return Arc::clone(&cached.route);
            }
            cached.route = Arc::new(call.clone());
            if parties.is_some() {
                cached.parties = parties;
            }
            if let Some(device) = call.callee_device() {
                // A copy names the holder as a hint; whether the database confirmed it stays.
                let confirmed = cached.callee_device.filter(|holder| holder.device == device).and_then(|h| h.confirmed);
                cached.callee_device = Some(Holder { device, confirmed });
            }
            return Arc::clone(&cached.route);
        }
        if map.len() >= MAX_CACHED_ROUTES {
            map.retain(|_, cached| cached.route.status().is_open());
        }
        let route = Arc::new(call.clone());
        let callee_device = call.callee_device().map(|device| Holder { device, confirmed: None });
        map.insert(call.id(), Cached { route: Arc::clone(&route), parties, callee_device });
        route
    }

    /// The callee's device holding call `id`, as far as this process knows.
    pub(crate) fn callee_device(&self, id: CallId) -> Option<Holder> {
        self.read().get(&id).and_then(|cached| cached.callee_device)
    }

    /// While call `id` rings: makes `device` the one of this process's callee devices whose
    /// answer is accepted, unless another one is: `Ok` when it is (now or already), else the
    /// device that is. A call not cached is reserved once cached.
    pub(crate) fn reserve_callee_device(&self, id: CallId, device: DeviceId) -> Result<(), DeviceId> {
        let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(cached) = map.get_mut(&id) else { return Ok(()) };
        match cached.callee_device {
            Some(holder) if holder.device != device => Err(holder.device),
            _ => {
                cached.callee_device = Some(Holder { device, confirmed: None });
                Ok(())
            }
        }
    }

    /// The database says `device` holds call `id` (a claim was granted, or found it held).
    pub(crate) fn confirm_callee_device(&self, id: CallId, device: DeviceId) {
        let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cached) = map.get_mut(&id) {
            cached.callee_device = Some(Holder { device, confirmed: Some(Instant::now()) });
        }
    }

    /// Forgets that `device` holds call `id` (its answer did not accept the call, or it let
    /// go), unless another device does.
    pub(crate) fn release_callee_device(&self, id: CallId, device: DeviceId) {
        let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cached) = map.get_mut(&id)
            && cached.callee_device.is_some_and(|holder| holder.device == device)
        {
            cached.callee_device = None;
        }
    }

    /// Forgets the cached copy of call `id` if it is at an earlier stage than `stage` (another
    /// instance changed the call): the next frame reads it again.
    pub(crate) fn forget_older(&self, id: CallId, stage: u8) {
        self.found(id);
        let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.get(&id).is_some_and(|cached| cached.route.status().stage() < stage) {
            map.remove(&id);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<CallId, Cached>> {
        self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use ringline_domain::{CallStatus, CallType, NewCall, Outcome, Timestamp, UserId};

    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).expect("a valid id")
    }

    fn ringing() -> Call {
        let at = Timestamp::from_unix_micros(1_700_000_000_000_000).expect("a time");
        let new = NewCall::ring(user("ada"), user("grace"), CallType::Voice, None, at).expect("a new call");
        new.into_call(CallId::new(7).expect("an id"))
    }

    fn accepted(call: &Call) -> Call {
        match call
            .accept(call.receiver(), Timestamp::from_unix_micros(1_700_000_005_000_000).expect("a time"))
            .expect("accepts")
        {
            Outcome::Changed(transition) => transition.call,
            Outcome::AlreadyDone(call) => call,
        }
    }

    #[test]
    fn a_copy_read_before_a_change_never_replaces_the_change() {
        let cache = CallCache::default();
        let ringing = ringing();
        let active = accepted(&ringing);
        cache.remember(&active);
        let kept = cache.remember(&ringing);
        assert_eq!(kept.status(), CallStatus::Active, "the stale copy is ignored and the newer one returned");
        assert_eq!(cache.get(ringing.id()).map(|route| route.status()), Some(CallStatus::Active));
    }

    #[test]
    fn a_copy_from_another_instance_is_kept_only_when_newer() {
        let cache = CallCache::default();
        let ringing = ringing();
        let active = accepted(&ringing);
        let ada = UserProfile {
            id: user("ada"),
            username: "ada".into(),
            first_name: String::new(),
            last_name: String::new(),
            profile_image_url: None,
        };
        cache.remember_copy(&ringing, Some(Arc::from(vec![ada])));
        assert_eq!(cache.get(ringing.id()).map(|route| route.status()), Some(CallStatus::Ringing));
        assert!(cache.parties(ringing.id()).is_some(), "the profiles came with it");
        cache.remember_copy(&active, None);
        assert_eq!(cache.get(ringing.id()).map(|route| route.status()), Some(CallStatus::Active));
        assert!(cache.parties(ringing.id()).is_some(), "kept when a copy has none");
        // Copies from two instances may arrive in either order: the older one is ignored.
        cache.remember_copy(&ringing, None);
        assert_eq!(cache.get(ringing.id()).map(|route| route.status()), Some(CallStatus::Active));
    }

    #[test]
    fn one_callee_device_reserves_a_ringing_call_and_keeps_it_across_updates() {
        let cache = CallCache::default();
        let ringing = ringing();
        cache.remember(&ringing);
        let (phone, laptop) = (DeviceId::new(1, 1), DeviceId::new(1, 2));
        assert_eq!(cache.reserve_callee_device(ringing.id(), phone), Ok(()));
        assert_eq!(cache.reserve_callee_device(ringing.id(), laptop), Err(phone), "taken");
        assert_eq!(cache.reserve_callee_device(ringing.id(), phone), Ok(()), "the holder again");
        cache.remember(&accepted(&ringing));
        assert_eq!(cache.reserve_callee_device(ringing.id(), laptop), Err(phone), "kept when the call changes");
        cache.release_callee_device(ringing.id(), laptop);
        assert_eq!(cache.reserve_callee_device(ringing.id(), laptop), Err(phone), "only the holder lets go");
        cache.release_callee_device(ringing.id(), phone);
        assert_eq!(cache.reserve_callee_device(ringing.id(), laptop), Ok(()));
    }

    #[test]
    fn the_holder_a_copy_names_is_a_hint_until_the_database_confirms_it() {
        let cache = CallCache::default();
        let ringing = ringing();
        let phone = DeviceId::new(1, 1);
        let answered = match ringing.accept_on(ringing.receiver(), ringing.started_at(), Some(phone)).expect("accepts")
        {
            Outcome::Changed(transition) => transition.call,
            Outcome::AlreadyDone(call) => call,
        };
        cache.remember(&answered);
        let holder = cache.callee_device(answered.id()).expect("named by the copy");
        assert_eq!((holder.device, holder.confirmed), (phone, None));
        cache.confirm_callee_device(answered.id(), phone);
        assert!(cache.callee_device(answered.id()).expect("held").confirmed_within(Duration::from_secs(1)));
        cache.remember(&answered);
        assert!(cache.callee_device(answered.id()).expect("held").confirmed.is_some(), "a copy keeps the confirmation");
    }

    #[test]
    fn a_later_stage_replaces_an_earlier_one_and_keeps_the_profiles() {
        let cache = CallCache::default();
        let ringing = ringing();
        let profiles: Arc<[UserProfile]> = Arc::from(Vec::new());
        cache.remember_with(&ringing, Some(profiles));
        let kept = cache.remember(&accepted(&ringing));
        assert_eq!(kept.status(), CallStatus::Active);
        assert!(cache.parties(ringing.id()).is_some(), "the profiles stay with the call");
    }
}
