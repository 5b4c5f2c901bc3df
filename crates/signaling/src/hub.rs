//! [`Signaling`]: the calls facade every entry point uses.
//!
//! REST handlers, socket frames and the ring timer change calls through [`Signaling`] (never
//! through `CallService` directly), so every change is told to both parties' devices the same
//! way, exactly once. This file holds the hub itself and the operations that change calls; the
//! rest of its work lives beside it:
//!
//! - `announce.rs`: what the parties' devices are sent for each change;
//! - `relay.rs`: client frames (offer, answer, ICE candidates, typing), relayed without a
//!   database read;
//! - `call_cache.rs`: the calls this process knows, in memory, for the relay;
//! - `lifecycle.rs`: sessions joining and leaving, and shutdown;
//! - `settings.rs`: keepalive and frame-rate settings for new sessions.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use ringline_domain::{
    Call, CallAction, CallId, CallService, CallServiceError, DeviceId, InitiateCommand, Initiated,
    NotificationRepository, Outcome, SignalRouter, UserId, UserProfile,
};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::call_cache::CallCache;
use crate::protocol::EventIds;
use crate::replay::{InMemoryReplay, ReplayStore};
use crate::router::LocalRouter;
use crate::settings::{FrameRate, Keepalive};

/// The signaling hub: the calls facade, the relay, and the registry of live sessions. Its
/// methods are spread over the files the module documentation lists.
#[derive(Debug)]
pub struct Signaling {
    pub(crate) service: CallService,
    pub(crate) notifications: Arc<dyn NotificationRepository>,
    pub(crate) router: Arc<dyn SignalRouter>,
    pub(crate) local: Arc<LocalRouter>,
    pub(crate) cache: CallCache,
    pub(crate) ids: EventIds,
    pub(crate) replay: Arc<dyn ReplayStore>,
    /// Users who held a line at the last liveness sweep or were rung here since: the ones
    /// whose last socket closing is worth recording as their last-seen moment.
    pub(crate) on_lines: RwLock<HashSet<UserId>>,
    pub(crate) keepalive: Keepalive,
    pub(crate) frame_rate: FrameRate,
    pub(crate) sessions: TaskTracker,
    pub(crate) shutdown: CancellationToken,
}

impl Signaling {
    /// `router` publishes events (to this process only, or to every process); `local` holds
    /// this process's sessions. With a single process both are the same [`LocalRouter`].
    pub fn new(
        service: CallService,
        notifications: Arc<dyn NotificationRepository>,
        router: Arc<dyn SignalRouter>,
        local: Arc<LocalRouter>,
    ) -> Self {
        Self {
            service,
            notifications,
            router,
            local,
            cache: CallCache::default(),
            ids: EventIds::default(),
            replay: Arc::new(InMemoryReplay::default()),
            on_lines: RwLock::default(),
            keepalive: Keepalive::default(),
            frame_rate: FrameRate::default(),
            sessions: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        }
    }

    /// A hub with the in-process router.
    pub fn local(service: CallService, notifications: Arc<dyn NotificationRepository>) -> Self {
        let local = Arc::new(LocalRouter::new());
        Self::new(service, notifications, local.clone(), local)
    }

    /// Replaces the default keepalive (ping every 20 s, close after 60 s of silence) for the
    /// sessions opened from now on.
    #[must_use]
    pub fn with_keepalive(mut self, keepalive: Keepalive) -> Self {
        self.keepalive = keepalive;
        self
    }

    pub fn keepalive(&self) -> Keepalive {
        self.keepalive
    }

    /// Replaces the in-process replay window (the last 256 events or 60 s of each user's
    /// stream) with another store, for example a smaller window in tests or a shared one.
    #[must_use]
    pub fn with_replay(mut self, replay: Arc<dyn ReplayStore>) -> Self {
        self.replay = replay;
        self
    }

    /// Replaces the default per-session frame rate (50 a second, bursts of 200) for the
    /// sessions opened from now on.
    #[must_use]
    pub fn with_frame_rate(mut self, frame_rate: FrameRate) -> Self {
        self.frame_rate = frame_rate;
        self
    }

    pub fn frame_rate(&self) -> FrameRate {
        self.frame_rate
    }

    pub fn service(&self) -> &CallService {
        &self.service
    }

    pub fn notifications(&self) -> &Arc<dyn NotificationRepository> {
        &self.notifications
    }

    pub fn sessions(&self) -> &LocalRouter {
        &self.local
    }

    pub(crate) fn next_event_id(&self) -> String {
        self.ids.next()
    }

    /// One liveness pass: records that the parties of open calls connected here are alive,
    /// ends the calls whose parties have all been gone for the grace period (or that ran too
    /// long), and tells both parties. Returns how many calls it ended. Several instances may
    /// run it at once; each end is a compare-and-set.
    ///
    /// # Errors
    /// As [`CallService::end_abandoned`].
    pub async fn sweep_liveness(&self, limit: u32) -> Result<usize, CallServiceError> {
        self.replay.prune();
        let on_lines: HashSet<UserId> = self.service.users_on_lines().await?.into_iter().collect();
        let here: Vec<UserId> = on_lines.iter().filter(|user| self.local.sessions_of(user) > 0).cloned().collect();
        *self.on_lines.write().unwrap_or_else(std::sync::PoisonError::into_inner) = on_lines;
        self.service.mark_seen(&here).await?;
        let ended = self.service.end_abandoned(limit).await?;
        for transition in &ended {
            self.cache.remember(&transition.call);
            self.announce(&transition.call, &transition.event, None, None).await;
        }
        Ok(ended.len())
    }

    /// Starts a call (REST `initiate/`) and rings the receiver's devices.
    ///
    /// # Errors
    /// As [`CallService::initiate`].
    pub async fn initiate(&self, caller: &UserId, command: InitiateCommand) -> Result<Initiated, CallServiceError> {
        let (initiated, parties) = self.service.initiate_with_parties(caller, command).await?;
        let parties: Option<Arc<[UserProfile]>> = Some(parties.into());
        match &initiated {
            Initiated::Ringing(call) => {
                self.cache.remember_with(call, parties);
                self.on_lines
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend([call.caller().clone(), call.receiver().clone()]);
                self.ring(call).await;
            }
            Initiated::AnsweredCrossingCall(transition) => {
                self.cache.remember_with(&transition.call, parties);
                self.announce(&transition.call, &transition.event, None, None).await;
            }
        }
        Ok(initiated)
    }

    /// `actor` accepts, rejects or ends a call, from `origin` (a socket) or REST (`None`).
    ///
    /// # Errors
    /// As [`CallService::act`].
    pub async fn act(
        &self,
        actor: &UserId,
        id: CallId,
        action: CallAction,
        origin: Option<DeviceId>,
    ) -> Result<Outcome, CallServiceError> {
        self.act_with_answer(actor, id, action, origin, None).await
    }

    pub(crate) async fn act_with_answer(
        &self,
        actor: &UserId,
        id: CallId,
        action: CallAction,
        origin: Option<DeviceId>,
        answer: Option<&RawValue>,
    ) -> Result<Outcome, CallServiceError> {
        let known = self.cache.get(id).map(|route| Call::clone(&route));
        let outcome = self.service.act_on(actor, id, action, known).await?;
        self.cache.remember(outcome.call());
        if let Outcome::Changed(transition) = &outcome {
            self.announce(&transition.call, &transition.event, origin, answer).await;
        }
        Ok(outcome)
    }

    /// Expires calls past the ring timeout and tells both parties. Returns how many.
    ///
    /// # Errors
    /// As [`CallService::expire_due`].
    pub async fn expire_due(&self, limit: u32) -> Result<usize, CallServiceError> {
        let expired = self.service.expire_due(limit).await?;
        for transition in &expired {
            self.cache.remember(&transition.call);
            self.announce(&transition.call, &transition.event, None, None).await;
        }
        Ok(expired.len())
    }
}
