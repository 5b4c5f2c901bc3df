//! [`Signaling`]: the calls facade every entry point uses.
//!
//! REST handlers, socket frames and the ring timer change calls through [`Signaling`], whose
//! `CallService` tells the hub's announcer of every change it stores; so every change is told
//! to both parties' devices the same way, exactly once, even one made on
//! [`Signaling::service`] directly. This file holds the hub itself and the operations that
//! change calls; the rest of its work lives beside it:
//!
//! - `announce.rs`: the announcer (the service's observer): what the parties' devices are
//!   sent for each change;
//! - `relay.rs`: client frames (offer, answer, ICE candidates, typing), relayed without a
//!   database read;
//! - `call_cache.rs`: the calls this process knows, in memory, for the relay;
//! - `callee_device.rs`: which of the callee's devices an answered call belongs to (decided in
//!   the database, so across instances);
//! - `limits.rs`: `RelayLimits`, token buckets for what reaches one user from others' sockets,
//!   and for the database reads a user's frames may cause;
//! - `lifecycle.rs`: `Sessions`, this process's sessions: joining and leaving, and shutdown;
//! - `streams.rs`: `EventStreams`, each user's numbered, kept and routed events;
//! - `settings.rs`: keepalive and frame-rate settings for new sessions.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use ringline_domain::{
    AccountStatus, Accounts, Call, CallAction, CallId, CallService, CallServiceError, ChangeOrigin, DeviceId,
    HangupReason, InitiateCommand, Initiated, NotificationRepository, Outcome, QualityReport, QualityReported, Refusal,
    SignalRouter, UserId, UserProfile,
};
use serde_json::value::RawValue;

use ringline_metrics::Metrics;

use crate::announce::Announcer;
use crate::call_cache::CallCache;
use crate::lifecycle::Sessions;
use crate::limits::RelayLimits;
use crate::replay::{InMemoryReplay, ReplayLimits, ReplayStore};
use crate::router::{LocalRouter, Presence, SubscriptionGate};
use crate::settings::{FrameRate, Keepalive};
use crate::streams::EventStreams;

pub use crate::lifecycle::DEFAULT_MAX_SOCKETS_PER_USER;

/// The signaling hub: the calls facade over its parts, each a type of its own: the announcer
/// (what each change sends), the users' event streams, the call cache, the relay's limits, and
/// the sessions. Its methods are spread over the files the module documentation lists.
#[derive(Debug)]
pub struct Signaling {
    /// The service as it was given, before the hub observed it (`with_replay` observes it
    /// again with a new announcer).
    unobserved: CallService,
    /// The service, telling `announcer` of every change it stores.
    pub(crate) service: CallService,
    pub(crate) announcer: Arc<Announcer>,
    /// Users' event streams (shared with the announcer).
    pub(crate) streams: Arc<EventStreams>,
    /// The calls this process knows, for the relay (shared with the announcer).
    pub(crate) calls: Arc<CallCache>,
    /// What the relay lets through (`limits.rs`).
    pub(crate) limits: RelayLimits,
    /// This process's sessions (`lifecycle.rs`).
    pub(crate) sessions: Sessions,
    /// Whether the users tokens name may still use the service.
    pub(crate) accounts: Arc<Accounts>,
    /// Where sessions, frames and refusals are counted.
    pub(crate) metrics: Arc<Metrics>,
}

impl Signaling {
    /// `router` publishes events (to this process only, or to every process); `local` holds
    /// this process's sessions. With a single process both are the same [`LocalRouter`].
    /// The hub observes `service`: every change made through [`Signaling::service`] is
    /// announced, whoever makes it.
    pub fn new(
        service: CallService,
        notifications: Arc<dyn NotificationRepository>,
        router: Arc<dyn SignalRouter>,
        local: Arc<LocalRouter>,
    ) -> Self {
        let replay = InMemoryReplay::on_clock(ReplayLimits::default(), service.clock().clone());
        let streams = Arc::new(EventStreams::new(Arc::new(replay), router));
        let calls = Arc::new(CallCache::default());
        let announcer = Arc::new(Announcer {
            notifications,
            streams: streams.clone(),
            directory: service.directory().clone(),
            cache: calls.clone(),
            on_lines: RwLock::default(),
        });
        let accounts = Arc::new(Accounts::new(service.directory().clone(), service.clock().clone()));
        Self {
            accounts,
            service: service.clone().observed_by(announcer.clone()),
            unobserved: service,
            announcer,
            streams,
            calls,
            limits: RelayLimits::default(),
            sessions: Sessions::new(local),
            metrics: Metrics::unread(),
        }
    }

    /// Counts sessions, frames and refusals in `metrics` (by default, in metrics nobody reads).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
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
        self.sessions.keepalive = keepalive;
        self
    }

    pub fn keepalive(&self) -> Keepalive {
        self.sessions.keepalive
    }

    /// Replaces the in-process replay window (the last 256 events or 60 s of each user's
    /// stream) with another store, for example a smaller window in tests or a shared one.
    #[must_use]
    pub fn with_replay(mut self, replay: Arc<dyn ReplayStore>) -> Self {
        let streams = Arc::new(EventStreams::new(replay, self.streams.router().clone()));
        let calls = Arc::new(CallCache::default());
        let announcer = Arc::new(Announcer {
            notifications: self.announcer.notifications.clone(),
            streams: streams.clone(),
            directory: self.announcer.directory.clone(),
            cache: calls.clone(),
            on_lines: RwLock::default(),
        });
        self.streams = streams;
        self.calls = calls;
        self.service = self.unobserved.clone().observed_by(announcer.clone());
        self.announcer = announcer;
        self
    }

    /// Makes new sessions wait for `gate` (a bus's subscription to their user) before their
    /// `connection.ack`.
    #[must_use]
    pub fn with_gate(mut self, gate: Arc<dyn SubscriptionGate>) -> Self {
        self.sessions.gate = Some(gate);
        self
    }

    /// Counts users' devices on every instance with `presence` (a bus) instead of this one.
    #[must_use]
    pub fn with_presence(mut self, presence: Arc<dyn Presence>) -> Self {
        self.sessions.presence = Some(presence);
        self
    }

    /// How many sessions (tabs, phones) `user` has open, on every instance.
    pub async fn devices_online(&self, user: &UserId) -> usize {
        self.sessions.devices_online(user).await
    }

    /// Replaces the default per-session frame rate (50 a second, bursts of 200) for the
    /// sessions opened from now on, and the fan-in limits: a call party's frames to the other
    /// party, and a conversation's typing indicators, are limited to one socket's rate.
    #[must_use]
    pub fn with_frame_rate(mut self, frame_rate: FrameRate) -> Self {
        self.limits = RelayLimits::new(frame_rate);
        self
    }

    pub fn frame_rate(&self) -> FrameRate {
        self.limits.frame_rate()
    }

    /// `user` is no longer a participant of `conversation`: their chat sockets on it are
    /// closed (4403), here and, through the bus, on every other instance, so they neither send
    /// nor receive its typing indicators any more.
    pub fn left_conversation(&self, user: &UserId, conversation: ringline_domain::ConversationId) {
        self.streams.router().participant_removed(conversation, user);
    }

    /// Whether the users tokens name may still use the service (the authenticator asks it).
    pub fn accounts(&self) -> &Arc<Accounts> {
        &self.accounts
    }

    /// `user`'s account is now `status` in the directory (removed, deactivated or restored):
    /// every instance learns it, and a refused user's sockets are closed (4401) and their
    /// ringing and active calls end as if they hung up (a ringing call they made is cancelled,
    /// one they were rung by declined). Returns how many calls ended.
    ///
    /// # Errors
    /// As [`CallService::act`]; the sockets are closed whatever happens to the calls.
    pub async fn account_changed(&self, user: &UserId, status: AccountStatus) -> Result<usize, CallServiceError> {
        self.accounts.changed(user, status);
        self.streams.router().account_changed(user, status);
        if !status.is_refused() {
            return Ok(0);
        }
        let mut ended = 0;
        for call in self.service.open_calls_of(user).await? {
            match self.act(user, call.id(), CallAction::End(HangupReason::UserHangup), None).await {
                Ok(Outcome::Changed(_)) => ended += 1,
                // Finished meanwhile, by someone else.
                Ok(Outcome::AlreadyDone(_)) | Err(CallServiceError::CallNotFound | CallServiceError::Transition(_)) => {
                }
                Err(error) => return Err(error),
            }
        }
        Ok(ended)
    }

    /// Sets how many sockets one user may hold open on this instance (one token opened 3,000
    /// and held 391 MB before there was a limit); the next is closed with 4429.
    #[must_use]
    pub fn with_max_sockets_per_user(mut self, max: usize) -> Self {
        self.sessions.max_per_user = max.max(1);
        self
    }

    /// Users' event streams: what the bus keeps and delivers of events other instances sent.
    pub fn streams(&self) -> &EventStreams {
        &self.streams
    }

    /// Another instance saw call `id` reach `stage` ([`ringline_domain::CallStatus::stage`]):
    /// a copy this process cached at an earlier stage is dropped, and read again when needed.
    pub fn call_changed_elsewhere(&self, id: CallId, stage: u8) {
        self.calls.forget_older(id, stage);
    }

    /// Another instance changed `call` and sent it as it is now (with its `parties`' profiles
    /// when it knew them): kept unless the copy here is as new, so that the next request or
    /// frame about it here reads nothing. For instances holding a party's sessions; the
    /// others only need [`Signaling::call_changed_elsewhere`].
    pub fn call_copied_elsewhere(&self, call: &Call, parties: Option<Arc<[UserProfile]>>) {
        self.calls.remember_copy(call, parties);
    }

    pub fn service(&self) -> &CallService {
        &self.service
    }

    pub fn notifications(&self) -> &Arc<dyn NotificationRepository> {
        &self.announcer.notifications
    }

    pub fn sessions(&self) -> &LocalRouter {
        &self.sessions.local
    }

    /// The profiles of `call`'s parties the directory knows: remembered from when this
    /// process started the call, or read now.
    ///
    /// # Errors
    /// When the directory cannot answer.
    pub async fn parties_of(&self, call: &Call) -> Result<Arc<[UserProfile]>, ringline_domain::DirectoryError> {
        self.announcer.parties_of(call).await
    }

    pub(crate) fn next_event_id(&self) -> String {
        self.sessions.ids.next()
    }

    /// One liveness pass: records that the parties of open calls connected here are alive,
    /// ends the calls whose parties have all been gone for the grace period (or that ran too
    /// long), and tells both parties. Returns how many calls it ended. Several instances may
    /// run it at once; each end is a compare-and-set.
    ///
    /// # Errors
    /// As [`CallService::end_abandoned`].
    pub async fn sweep_liveness(&self, limit: u32) -> Result<usize, CallServiceError> {
        self.streams.prune();
        let on_lines: HashSet<UserId> = self.service.users_on_lines().await?.into_iter().collect();
        let here: Vec<UserId> =
            on_lines.iter().filter(|user| self.sessions.local.sessions_of(user) > 0).cloned().collect();
        *self.announcer.on_lines.write().unwrap_or_else(std::sync::PoisonError::into_inner) = on_lines;
        self.service.mark_seen(&here).await?;
        // The service tells the announcer of each call it ends.
        Ok(self.service.end_abandoned(limit).await?.len())
    }

    /// Starts a call (REST `initiate/`); the receiver's devices ring as the service tells the
    /// announcer.
    ///
    /// # Errors
    /// As [`CallService::initiate`].
    pub async fn initiate(&self, caller: &UserId, command: InitiateCommand) -> Result<Initiated, CallServiceError> {
        self.service.initiate(caller, command).await.inspect_err(|error| self.count_refusal(error))
    }

    /// Counts a refused call action by its code.
    fn count_refusal(&self, error: &CallServiceError) {
        self.metrics.calls.refused(Refusal::from(error).code);
    }

    /// `reporter`'s quality report on call `id` (`POST /api/calls/{id}/quality/`): stored with
    /// the call, counted in the quality metrics (with the tags the call earned by it).
    ///
    /// # Errors
    /// As [`CallService::report_quality`].
    pub async fn report_quality(
        &self,
        reporter: &UserId,
        id: CallId,
        report: &QualityReport,
    ) -> Result<Call, CallServiceError> {
        let QualityReported { call, new_tags } = self.service.report_quality(reporter, id, report).await?;
        self.metrics.quality.reported(report, &new_tags);
        self.calls.remember(&call);
        Ok(call)
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

    /// [`Signaling::act`], deciding on the cached call first; `answer` is the callee's SDP when
    /// a socket `call.answer` accepts the call (the caller gets it with the acceptance).
    pub(crate) async fn act_with_answer(
        &self,
        actor: &UserId,
        id: CallId,
        action: CallAction,
        device: Option<DeviceId>,
        answer: Option<&RawValue>,
    ) -> Result<Outcome, CallServiceError> {
        let known = self.calls.get(id).map(|route| Call::clone(&route));
        let origin = ChangeOrigin { device, answer: answer.map(RawValue::get) };
        let outcome = self
            .service
            .act_on(actor, id, action, known, origin)
            .await
            .inspect_err(|error| self.count_refusal(error))?;
        // A change is cached by the announcer; a repeat refreshes the copy the relay checks.
        self.calls.remember(outcome.call());
        Ok(outcome)
    }

    /// `receiver` now blocks `blocked`: a call from one of them that is ringing `receiver` ends
    /// as declined by `receiver`, announced as any decline. Returns whether one did.
    ///
    /// # Errors
    /// As [`CallService::act`], but a call that stopped ringing meanwhile is no error.
    pub async fn decline_calls_from(&self, receiver: &UserId, blocked: &[UserId]) -> Result<bool, CallServiceError> {
        // A user is in at most one open call, and it is their newest.
        let Some(call) = self.service.newest_call_of(receiver).await? else { return Ok(false) };
        let ringing_from_blocked = call.status() == ringline_domain::CallStatus::Ringing
            && call.receiver() == receiver
            && blocked.contains(call.caller());
        if !ringing_from_blocked {
            return Ok(false);
        }
        match self.act(receiver, call.id(), CallAction::Reject, None).await {
            Ok(outcome) => Ok(matches!(outcome, Outcome::Changed(_))),
            Err(CallServiceError::Transition(_)) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Expires calls past the ring timeout (the service tells the announcer of each). Returns
    /// how many.
    ///
    /// # Errors
    /// As [`CallService::expire_due`].
    pub async fn expire_due(&self, limit: u32) -> Result<usize, CallServiceError> {
        Ok(self.service.expire_due(limit).await?.len())
    }
}
