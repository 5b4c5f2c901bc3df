//! [`Signaling`]: the calls facade every entry point uses, and the relay for client frames.
//!
//! - REST handlers, socket frames and the ring timer change calls through [`Signaling`] (never
//!   through `CallService` directly), so every change is told to both parties' devices the same
//!   way, exactly once.
//! - Relayed frames (offer, answer, ICE candidates) are checked against an in-memory route of
//!   the call (its parties, conversation and status), kept in step with every change made here
//!   and read from the database at most once per call on a miss. The relay path touches no
//!   database.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use ringline_domain::{
    Audience, Call, CallAction, CallEvent, CallId, CallService, CallServiceError, ConversationId, DeviceId, EndReason,
    InitiateCommand, Initiated, NewNotification, NotificationRepository, NotificationVerb, Outcome, Signal,
    SignalRouter, UserId, UserProfile,
};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::events::{self, NotificationPayload};
use crate::protocol::{ClientFrame, EventIds, FrameError, allowed_in};
use crate::replay::{Attached, InMemoryReplay, ReplayStore};
use crate::router::{LocalRouter, SessionKind, SessionSlot};
use crate::session::{FrameRate, Keepalive};

/// How long after a call finished a party that connects without `resume` is still sent its
/// `call.end`: a client whose socket was down meanwhile (a phone switching networks) may still
/// ring for it or show it. Calls the server ended because both parties were gone are told for
/// longer: nobody was connected to hear it.
const TELL_FINISHED_CALLS_FOR: std::time::Duration = std::time::Duration::from_secs(5 * 60);
const TELL_LOST_CALLS_FOR: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// What [`Signaling::calls_on_connect`] found.
#[derive(Debug, Default)]
pub(crate) struct CallsOnConnect {
    /// The user's ringing or active call.
    pub open: Option<Call>,
    /// The user's newest call, when it finished recently.
    pub recently_finished: Option<Call>,
}

/// Routes kept for finished calls (late ICE candidates and retried hang-ups are answered from
/// memory); beyond this many cached routes, finished ones are forgotten.
const MAX_CACHED_ROUTES: usize = 50_000;

/// The live session a frame came from.
#[derive(Debug, Clone)]
pub struct SessionContext {
    pub device: DeviceId,
    pub user: UserId,
    pub kind: SessionKind,
    /// Looked up on first use (a typing indicator): most sessions never need it, and a lookup
    /// per connect would be a database read per page load.
    username: std::sync::OnceLock<String>,
}

impl SessionContext {
    pub fn new(device: DeviceId, user: UserId, kind: SessionKind) -> Self {
        Self { device, user, kind, username: std::sync::OnceLock::new() }
    }

    async fn username(&self, signaling: &Signaling) -> &str {
        if let Some(username) = self.username.get() {
            return username;
        }
        let username = match signaling.service.directory().user(&self.user).await {
            Ok(profile) => profile.map(|profile| profile.username).unwrap_or_default(),
            Err(error) => {
                tracing::warn!(%error, "cannot look up a user's name");
                return "";
            }
        };
        self.username.get_or_init(|| username)
    }
}

/// What the relay needs to know about a call. Shared, so a lookup clones a pointer only.
type Route = Arc<Call>;

/// A cached route, and the parties' profiles when this process started the call (so that
/// announcing it and answering REST requests about it need no directory lookup).
#[derive(Debug)]
struct Cached {
    route: Route,
    parties: Option<Arc<[UserProfile]>>,
}

#[derive(Debug, Default)]
struct Routes {
    map: RwLock<HashMap<CallId, Cached>>,
}

impl Routes {
    fn get(&self, id: CallId) -> Option<Route> {
        self.read().get(&id).map(|cached| Arc::clone(&cached.route))
    }

    fn parties(&self, id: CallId) -> Option<Arc<[UserProfile]>> {
        self.read().get(&id).and_then(|cached| cached.parties.clone())
    }

    fn remember(&self, call: &Call) -> Route {
        self.remember_with(call, None)
    }

    fn remember_with(&self, call: &Call, parties: Option<Arc<[UserProfile]>>) -> Route {
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

/// The signaling hub: the calls facade, the relay, and the registry of live sessions.
#[derive(Debug)]
pub struct Signaling {
    service: CallService,
    notifications: Arc<dyn NotificationRepository>,
    router: Arc<dyn SignalRouter>,
    local: Arc<LocalRouter>,
    routes: Routes,
    ids: EventIds,
    replay: Arc<dyn ReplayStore>,
    /// Users who held a line at the last liveness sweep or were rung here since: the ones
    /// whose last socket closing is worth recording as their last-seen moment.
    on_lines: RwLock<HashSet<UserId>>,
    keepalive: Keepalive,
    frame_rate: FrameRate,
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
            routes: Routes::default(),
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

    /// Registers a new session of `user` and attaches it to the user's stream: it receives
    /// every later event, and `replay` holds what it missed since `resume`, if given.
    pub(crate) fn attach(
        &self,
        user: &UserId,
        kind: SessionKind,
        resume: Option<&str>,
    ) -> (Arc<SessionSlot>, tokio::sync::mpsc::Receiver<Arc<str>>, Attached) {
        let mut registered = None;
        let attached = self.replay.attach(user, resume, &mut || {
            registered = Some(self.local.register(user.clone(), kind));
        });
        let (slot, events) = registered.unwrap_or_else(|| self.local.register(user.clone(), kind));
        (slot, events, attached)
    }

    /// Unregisters a session. When it was its user's last one here and the user is in a call,
    /// the moment is recorded as their last-seen, so a call both parties left ends measured
    /// up to when the last of them went (not up to the last heartbeat before).
    pub(crate) async fn detach(&self, slot: &SessionSlot) {
        self.local.unregister(slot);
        let on_line = self.on_lines.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&slot.user);
        if on_line
            && self.local.sessions_of(&slot.user) == 0
            && let Err(error) = self.service.mark_seen(std::slice::from_ref(&slot.user)).await
        {
            tracing::warn!(%error, "cannot record when a party of a call went away");
        }
    }

    /// What a connecting session of `user` is told about their calls: the open call, if any
    /// (`connection.ack`'s `open_calls`), or else the newest call if it finished recently (an
    /// old client that missed its end while offline needs a `call.end`: it ignores
    /// `open_calls`). A party of an open call counts as seen from now.
    ///
    /// # Errors
    /// As [`CallService::newest_call_of`].
    pub(crate) async fn calls_on_connect(&self, user: &UserId) -> Result<CallsOnConnect, CallServiceError> {
        let Some(newest) = self.service.newest_call_of(user).await? else {
            return Ok(CallsOnConnect::default());
        };
        if newest.status().is_open() {
            self.on_lines.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(user.clone());
            if let Err(error) = self.service.mark_seen(std::slice::from_ref(user)).await {
                tracing::warn!(%error, "cannot record that a party of a call is back");
            }
            self.routes.remember(&newest);
            return Ok(CallsOnConnect { open: Some(newest), recently_finished: None });
        }
        let told_for = if newest.end_reason() == Some(EndReason::ConnectionLost) {
            TELL_LOST_CALLS_FOR
        } else {
            TELL_FINISHED_CALLS_FOR
        };
        let recent = newest.ended_at().is_some_and(|ended| ended.plus(told_for) > self.service.now());
        Ok(CallsOnConnect { open: None, recently_finished: recent.then_some(newest) })
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
            self.routes.remember(&transition.call);
            self.announce(&transition.call, &transition.event, None, None).await;
        }
        Ok(ended.len())
    }

    /// Asks every session to close (code 1001) and refuses new ones.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
        self.sessions.close();
    }

    /// Waits up to `grace` for the sessions to finish closing; returns whether they all did.
    pub async fn drain(&self, grace: std::time::Duration) -> bool {
        self.begin_shutdown();
        tokio::time::timeout(grace, self.sessions.wait()).await.is_ok()
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
                self.routes.remember_with(call, parties);
                self.on_lines
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend([call.caller().clone(), call.receiver().clone()]);
                self.ring(call).await;
            }
            Initiated::AnsweredCrossingCall(transition) => {
                self.routes.remember_with(&transition.call, parties);
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

    async fn act_with_answer(
        &self,
        actor: &UserId,
        id: CallId,
        action: CallAction,
        origin: Option<DeviceId>,
        answer: Option<&RawValue>,
    ) -> Result<Outcome, CallServiceError> {
        let known = self.routes.get(id).map(|route| Call::clone(&route));
        let outcome = self.service.act_on(actor, id, action, known).await?;
        self.routes.remember(outcome.call());
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
            self.routes.remember(&transition.call);
            self.announce(&transition.call, &transition.event, None, None).await;
        }
        Ok(expired.len())
    }

    /// The next event of `user`'s stream, built by `event(event_id)`: kept for sockets that
    /// resume, and one copy for each of `user`'s sessions but `except_device` (which sockets:
    /// [`Audience::User`]).
    fn to_user(&self, user: &UserId, except_device: Option<DeviceId>, event: impl Fn(&str) -> String) {
        self.replay.append(user, &mut |event_id| event(event_id), &mut |payload| {
            self.router.route(Signal {
                audience: Audience::User(user.clone()),
                except_device,
                except_user: None,
                payload,
            });
        });
    }

    /// The profiles of `call`'s parties the directory knows: remembered from when this
    /// process started the call, or read now.
    ///
    /// # Errors
    /// When the directory cannot answer.
    pub async fn parties_of(&self, call: &Call) -> Result<Arc<[UserProfile]>, ringline_domain::DirectoryError> {
        if let Some(parties) = self.routes.parties(call.id()) {
            return Ok(parties);
        }
        let ids = [call.caller().clone(), call.receiver().clone()];
        Ok(self.service.directory().users(&ids).await?.into())
    }

    /// `user`'s profile as a party of `call`, if known.
    async fn party(&self, call: &Call, user: &UserId) -> Option<UserProfile> {
        match self.parties_of(call).await {
            Ok(parties) => parties.iter().find(|profile| &profile.id == user).cloned(),
            Err(error) => {
                tracing::warn!(%error, "cannot look up a party of a call for an event");
                None
            }
        }
    }

    async fn username(&self, call: &Call, user: &UserId) -> String {
        self.party(call, user).await.map(|profile| profile.username).unwrap_or_default()
    }

    /// Stores a notification for `call`'s receiver and pushes it as `notification.created`.
    /// A storage failure is logged; the live event has already been sent.
    async fn notify_receiver(&self, call: &Call, verb: NotificationVerb) {
        let new = NewNotification {
            recipient: call.receiver().clone(),
            actor: Some(call.caller().clone()),
            verb,
            call: call.id(),
            conversation: call.conversation(),
            created_at: self.service.now(),
        };
        let stored = match self.notifications.create(new).await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::error!(%error, call = %call.id(), "cannot store a call notification");
                return;
            }
        };
        let actor = self.party(call, call.caller()).await;
        let payload = NotificationPayload::new(&stored, actor.as_ref());
        self.to_user(call.receiver(), None, |id| events::notification_created(id, &payload));
    }

    async fn ring(&self, call: &Call) {
        let caller_username = self.username(call, call.caller()).await;
        self.to_user(call.receiver(), None, |id| events::incoming(id, call, &caller_username));
        self.notify_receiver(call, NotificationVerb::incoming(call.call_type())).await;
    }

    /// Tells the parties' devices what `event` did to `call`. `origin` (the device that caused
    /// it) is skipped; `answer` is the SDP when a socket `call.answer` accepted the call.
    async fn announce(&self, call: &Call, event: &CallEvent, origin: Option<DeviceId>, answer: Option<&RawValue>) {
        let (caller, receiver) = (call.caller(), call.receiver());
        match event {
            CallEvent::Accepted { by } => {
                self.to_user(caller, None, |id| events::answer(id, call, by, answer));
                self.to_user(caller, None, |id| events::party_event("call.accepted", id, call, "receiver_id", by));
                // The callee's other devices stop ringing (newer clients; the original web
                // client needs the `call.end` that `answered_elsewhere` sends once the
                // answering socket is known).
                self.to_user(receiver, origin, |id| events::party_event("call.accepted", id, call, "receiver_id", by));
            }
            CallEvent::Rejected { by } => {
                let username = self.username(call, by).await;
                // No `call.end` for the caller: both original clients handle `call.rejected`, and
                // the web client's "Call Declined" screen would not survive one.
                self.to_user(caller, None, |id| events::rejected(id, call, by, &username));
                // The callee's other devices stop ringing; the original web client does only on
                // `call.end`.
                self.to_user(receiver, origin, |id| events::rejected(id, call, by, &username));
                self.to_user(receiver, origin, |id| events::end(id, call, Some(by)));
            }
            CallEvent::Cancelled { by } => {
                self.to_user(receiver, None, |id| events::end(id, call, Some(by)));
                self.to_user(receiver, None, |id| events::party_event("call.cancelled", id, call, "user_id", by));
                self.to_user(caller, origin, |id| events::party_event("call.cancelled", id, call, "user_id", by));
            }
            CallEvent::Ended { by, .. } => {
                // `by` is `None` when the server ended it; the `end_reason` says why.
                for party in [caller, receiver] {
                    self.to_user(party, origin, |id| events::end(id, call, by.as_ref()));
                }
            }
            CallEvent::Missed => {
                for party in [caller, receiver] {
                    self.to_user(party, None, |id| events::missed(id, call));
                    self.to_user(party, None, |id| events::end(id, call, None));
                }
                self.notify_receiver(call, NotificationVerb::missed(call.call_type())).await;
            }
        }
    }

    /// The route of call `id` from memory, or read once from the database.
    async fn route(&self, id: CallId) -> Result<Option<Route>, FrameError> {
        if let Some(route) = self.routes.get(id) {
            return Ok(Some(route));
        }
        match self.service.find(id).await {
            Ok(Some(call)) => Ok(Some(self.routes.remember(&call))),
            Ok(None) => Ok(None),
            Err(error) => {
                tracing::error!(%error, "cannot load a call for signaling");
                Err(FrameError::new("internal_error", "The server could not load the call; try again."))
            }
        }
    }

    /// Handles one text frame from `session`. Returns the reply for that session alone
    /// (`pong`, or an error), if any.
    pub async fn handle_text(&self, session: &SessionContext, text: &str) -> Option<String> {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(error) => return Some(crate::protocol::error_event(&self.ids.next(), &error, None)),
        };
        let call_id = match frame {
            ClientFrame::Offer { call, .. }
            | ClientFrame::Answer { call, .. }
            | ClientFrame::IceCandidate { call, .. }
            | ClientFrame::MediaState { call, .. }
            | ClientFrame::End { call, .. } => Some(call),
            _ => None,
        };
        match self.handle_frame(session, frame).await {
            Ok(reply) => reply,
            Err(error) => {
                tracing::debug!(user = %session.user, kind = frame.kind(), code = error.code, "frame refused");
                Some(crate::protocol::error_event(&self.ids.next(), &error, call_id))
            }
        }
    }

    async fn handle_frame(
        &self,
        session: &SessionContext,
        frame: ClientFrame<'_>,
    ) -> Result<Option<String>, FrameError> {
        match frame {
            ClientFrame::Ping => Ok(Some(events::pong(&self.ids.next()))),
            ClientFrame::TypingStart | ClientFrame::TypingStop => self.typing(session, frame).await,
            ClientFrame::End { call, reason } => {
                self.act(&session.user, call, CallAction::End(reason), Some(session.device)).await.map_err(refusal)?;
                Ok(None)
            }
            ClientFrame::Offer { call, offer } => {
                let route = self.party_route(session, call, &frame).await?;
                let username = self.username(&route, &session.user).await;
                self.to_other_party(&route, &session.user, |id| {
                    events::offer(id, &route, &session.user, &username, offer)
                });
                Ok(None)
            }
            ClientFrame::IceCandidate { call, candidate } => {
                let route = self.party_route(session, call, &frame).await?;
                self.to_other_party(&route, &session.user, |id| {
                    events::ice_candidate(id, &route, &session.user, candidate)
                });
                Ok(None)
            }
            ClientFrame::MediaState { call, audio, video } => {
                let route = self.party_route(session, call, &frame).await?;
                self.to_other_party(&route, &session.user, |id| {
                    events::media_state(id, &route, &session.user, audio, video)
                });
                Ok(None)
            }
            ClientFrame::Answer { call, answer } => {
                let route = self.party_route(session, call, &frame).await?;
                let route = if route.status().is_unanswered() {
                    // The web client never calls accept/: the receiver's answer accepts the call,
                    // and the caller gets this answer in the acceptance's `call.answer`.
                    let outcome = self
                        .act_with_answer(&session.user, call, CallAction::Accept, Some(session.device), Some(answer))
                        .await
                        .map_err(refusal)?;
                    match outcome {
                        Outcome::Changed(transition) => Arc::new(transition.call),
                        // Not accepted by this answer: its device is not the one in the call.
                        Outcome::AlreadyDone(_) => return Ok(None),
                    }
                } else {
                    self.to_other_party(&route, &session.user, |id| {
                        events::answer(id, &route, &session.user, Some(answer))
                    });
                    route
                };
                if route.receiver() == &session.user {
                    self.answered_elsewhere(&route, session);
                }
                Ok(None)
            }
        }
    }

    /// Stops the ringing on the callee's other devices with a `call.end` once the callee's SDP
    /// answer came from `session`. Only here is the answering device known: the mobile client
    /// accepts over REST (no device) and then sends this answer, and a `call.end` to the device
    /// that answered would hang it up. Sent on every answer from the callee (a renegotiation
    /// repeats it), which is harmless: a device that is not in the call has nothing to end.
    fn answered_elsewhere(&self, call: &Call, session: &SessionContext) {
        self.to_user(call.receiver(), Some(session.device), |id| events::answered_elsewhere(id, call, &session.user));
    }

    /// The call's route, if `session`'s user is a party and the frame fits the call's state.
    async fn party_route(
        &self,
        session: &SessionContext,
        id: CallId,
        frame: &ClientFrame<'_>,
    ) -> Result<Route, FrameError> {
        let not_found = || FrameError::new("call_not_found", "No such call, or not one of yours.");
        let route = self.route(id).await?.ok_or_else(not_found)?;
        if !route.is_party(&session.user) {
            return Err(not_found());
        }
        if !allowed_in(route.status(), frame, route.caller() == &session.user) {
            return Err(FrameError::new(
                "invalid_call_state",
                format!("{} is not allowed while the call is {}.", frame.kind(), route.status()),
            ));
        }
        Ok(route)
    }

    fn to_other_party(&self, call: &Call, sender: &UserId, event: impl Fn(&str) -> String) {
        if let Some(other) = call.other_party(sender) {
            self.to_user(other, None, event);
        }
    }

    async fn typing(&self, session: &SessionContext, frame: ClientFrame<'_>) -> Result<Option<String>, FrameError> {
        let SessionKind::Chat(conversation) = session.kind else {
            return Err(FrameError::new("wrong_socket", "Typing indicators belong on a chat socket."));
        };
        let username = session.username(self).await;
        let kind = if matches!(frame, ClientFrame::TypingStart) { "typing.started" } else { "typing.stopped" };
        let payload = events::typing(kind, &self.ids.next(), &session.user, username, &conversation.to_string());
        self.router.route(Signal {
            audience: Audience::Conversation(conversation),
            except_device: None,
            except_user: Some(session.user.clone()),
            payload: payload.into(),
        });
        Ok(None)
    }

    /// Whether `user` may open a chat socket on `conversation`.
    ///
    /// # Errors
    /// When the directory cannot answer.
    pub async fn may_join(
        &self,
        user: &UserId,
        conversation: ConversationId,
    ) -> Result<bool, ringline_domain::DirectoryError> {
        let participants = self.service.directory().conversation_participants(conversation).await?;
        Ok(participants.is_some_and(|participants| participants.contains(user)))
    }
}

/// A refused socket action, as an error frame. Same codes as the REST API.
fn refusal(error: CallServiceError) -> FrameError {
    use ringline_domain::TransitionError;
    match error {
        CallServiceError::CallNotFound | CallServiceError::Transition(TransitionError::NotAParty) => {
            FrameError::new("call_not_found", "No such call, or not one of yours.")
        }
        CallServiceError::Transition(TransitionError::InvalidState { status, .. }) => {
            FrameError::new("invalid_call_state", format!("Call is already {status}."))
        }
        CallServiceError::Transition(TransitionError::ReceiverOnly(_)) => {
            FrameError::new("receiver_only", "Only the receiver may do that.")
        }
        CallServiceError::StillRacing => FrameError::new("call_conflict", "The call changed meanwhile; try again."),
        other => {
            tracing::error!(error = %other, "a socket action failed");
            FrameError::new("internal_error", "The server could not do that; try again.")
        }
    }
}
