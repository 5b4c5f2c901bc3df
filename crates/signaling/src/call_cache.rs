//! [`CallCache`]: the calls this process knows about, in memory, so that relaying a frame
//! needs no database read. Kept in step with every change made through [`Signaling`], read
//! from the database at most once per call on a miss.
//!
//! [`Signaling`]: crate::Signaling

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ringline_domain::{Call, CallId, UserProfile};

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
}

#[derive(Debug, Default)]
pub(crate) struct CallCache {
    map: RwLock<HashMap<CallId, Cached>>,
}

impl CallCache {
    pub(crate) fn get(&self, id: CallId) -> Option<Route> {
        self.read().get(&id).map(|cached| Arc::clone(&cached.route))
    }

    pub(crate) fn parties(&self, id: CallId) -> Option<Arc<[UserProfile]>> {
        self.read().get(&id).and_then(|cached| cached.parties.clone())
    }

    pub(crate) fn remember(&self, call: &Call) -> Route {
        self.remember_with(call, None)
    }

    pub(crate) fn remember_with(&self, call: &Call, parties: Option<Arc<[UserProfile]>>) -> Route {
        let route = Arc::new(call.clone());
        let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_CACHED_ROUTES {
            map.retain(|_, cached| cached.route.status().is_open());
        }
        let parties = parties.or_else(|| map.get(&call.id()).and_then(|cached| cached.parties.clone()));
        map.insert(call.id(), Cached { route: Arc::clone(&route), parties });
        route
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<CallId, Cached>> {
        self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
