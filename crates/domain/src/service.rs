//! [`CallService`]: the use cases, written once over the ports so that a REST request, a
//! WebSocket frame and the ring timer all drive calls the same way.
//!
//! The service adds what a single transition cannot know: who exists (the [`Directory`]), what
//! is stored (the [`CallRepository`]), and the time ([`Clock`]). It retries a step when another
//! writer won a race, re-reading the call so that the answer reflects what actually happened
//! (for example "Call is already ended." for an accept that lost to a hang-up). Each change
//! it stores is told to its [`CallObserver`]s before the use case returns.

use std::sync::Arc;
use std::time::Duration;

use crate::call::{Call, CallMoment, NewCall, Outcome, Transition, TransitionError};
use crate::policy::{Admission, CallPolicy, PolicyError, PolicyQuestion, PolicyRefusal};
use crate::ports::{
    CallListFilter, CallObserver, CallRepository, ChangeOrigin, Clock, DeviceClaim, Directory, DirectoryError, Page,
    PageRequest, RepositoryError, UserProfile,
};
use crate::quality::QualityReport;
use crate::rules::{InitiateDecision, InitiateRefusal, decide_initiate};
use crate::values::QualityTag;
use crate::values::{CallId, CallStatus, CallType, ConversationId, DeviceId, HangupReason, Timestamp, UserId};

/// How many times a step is re-read and retried after losing a race. A call changes status at
/// most twice (ringing → active → ended), so three attempts always see a settled state.
const ATTEMPTS: usize = 3;

/// A request to call someone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitiateCommand {
    pub receiver: UserId,
    pub call_type: CallType,
    pub conversation: Option<ConversationId>,
}

/// What an allowed call attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Initiated {
    /// A new call is ringing the receiver.
    Ringing(Call),
    /// Glare: the receiver was already ringing the caller, so that call was answered instead.
    AnsweredCrossingCall(Transition),
}

impl Initiated {
    pub fn call(&self) -> &Call {
        match self {
            Self::Ringing(call) => call,
            Self::AnsweredCrossingCall(transition) => &transition.call,
        }
    }
}

/// What a party does to an existing call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallAction {
    Accept,
    Reject,
    /// Hang up (or cancel, or decline while ringing); the reason is recorded for answered calls.
    End(HangupReason),
}

/// When the server ends answered calls on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessPolicy {
    /// How long an active call survives with neither party connected (30 s by default): long
    /// enough for a phone to switch networks or a page to reload.
    pub grace: Duration,
    /// The longest a call may last (12 hours by default): a last resort for forgotten calls.
    pub max_call: Duration,
}

impl Default for LivenessPolicy {
    fn default() -> Self {
        Self { grace: Duration::from_secs(30), max_call: Duration::from_secs(12 * 60 * 60) }
    }
}

/// Why a use case failed. The API maps each variant to one status and one stable code.
#[derive(Debug, thiserror::Error)]
pub enum CallServiceError {
    #[error("receiver not found")]
    ReceiverNotFound,
    #[error("conversation not found")]
    ConversationNotFound,
    #[error("you are not a participant in this conversation")]
    NotInConversation,
    #[error("the receiver is not a participant in this conversation")]
    ReceiverNotInConversation,
    #[error(transparent)]
    Refused(#[from] InitiateRefusal),
    /// The callee's blocks, privacy, the policy hook or a rate cap (see [`crate::policy`]).
    #[error(transparent)]
    Policy(#[from] PolicyRefusal),
    /// No such call, or the actor is not one of its parties (the two are indistinguishable on
    /// purpose: nobody learns that a call they are not in exists).
    #[error("call not found")]
    CallNotFound,
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("the call kept changing while it was being updated")]
    StillRacing,
    #[error(transparent)]
    InvalidReport(#[from] crate::quality::InvalidReport),
    #[error("the call was never answered")]
    NotAnswered,
    #[error("the call ended too long ago to take quality reports")]
    ReportTooLate,
    #[error("too many quality reports")]
    TooManyReports,
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// How many times a quality report is tried against concurrent ones before `StillRacing`.
pub const QUALITY_ATTEMPTS: usize = 8;

/// A quality report taken: the call with its new summary, and the tags the call earned by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualityReported {
    pub call: Call,
    pub new_tags: Vec<QualityTag>,
}

/// How long a call rings before it is `missed`, unless configured otherwise. Below 30 s on
/// purpose: the original web client declines an incoming call by itself after 30 s (`POST
/// reject/`), so with a longer ring a call to an open tab would be recorded as declined by the
/// callee and never as missed (with no missed-call notification).
pub const DEFAULT_RING_TIMEOUT: Duration = Duration::from_secs(28);

/// The call use cases over injected ports. Every change it stores is told to its
/// [`CallObserver`]s before the use case returns.
#[derive(Debug, Clone)]
pub struct CallService {
    calls: Arc<dyn CallRepository>,
    directory: Arc<dyn Directory>,
    clock: Arc<dyn Clock>,
    ring_timeout: Duration,
    liveness: LivenessPolicy,
    policy: Option<CallPolicy>,
    observers: Vec<Arc<dyn CallObserver>>,
}

impl CallService {
    pub fn new(
        calls: Arc<dyn CallRepository>,
        directory: Arc<dyn Directory>,
        clock: Arc<dyn Clock>,
        ring_timeout: Duration,
    ) -> Self {
        Self {
            calls,
            directory,
            clock,
            ring_timeout,
            liveness: LivenessPolicy::default(),
            policy: None,
            observers: Vec::new(),
        }
    }

    /// Adds `observer`: it is told of every change stored from now on, after the observers
    /// added before it.
    #[must_use]
    pub fn observed_by(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Replaces the default [`LivenessPolicy`].
    #[must_use]
    pub fn with_liveness(mut self, liveness: LivenessPolicy) -> Self {
        self.liveness = liveness;
        self
    }

    /// Consults `policy` before every call it creates (without one, everyone may ring
    /// everyone, as often as they like).
    #[must_use]
    pub fn with_policy(mut self, policy: CallPolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    pub fn policy(&self) -> Option<&CallPolicy> {
        self.policy.as_ref()
    }

    pub fn liveness(&self) -> LivenessPolicy {
        self.liveness
    }

    pub fn directory(&self) -> &Arc<dyn Directory> {
        &self.directory
    }

    pub fn ring_timeout(&self) -> Duration {
        self.ring_timeout
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    async fn tell_ringing(&self, call: &Call, parties: &[UserProfile]) {
        for observer in &self.observers {
            observer.ringing(call, parties).await;
        }
    }

    async fn tell_refused(&self, refusal: PolicyRefusal) {
        for observer in &self.observers {
            observer.refused(refusal).await;
        }
    }

    async fn tell_changed(&self, transition: &Transition, origin: ChangeOrigin<'_>, parties: Option<&[UserProfile]>) {
        for observer in &self.observers {
            observer.changed(transition, origin, parties).await;
        }
    }

    /// `caller` calls `command.receiver`, following the rules of [`crate::rules`].
    ///
    /// # Errors
    /// `Refused(SelfCall)` first, then `ReceiverNotFound`, `ConversationNotFound`,
    /// `NotInConversation` (the caller), `ReceiverNotInConversation`, `Policy` (blocks, privacy,
    /// the hook, rate caps), `Refused(CallerBusy | ReceiverBusy)`; `Repository`/`Directory`
    /// when a port fails.
    pub async fn initiate(&self, caller: &UserId, command: InitiateCommand) -> Result<Initiated, CallServiceError> {
        Ok(self.initiate_with_parties(caller, command).await?.0)
    }

    /// [`CallService::initiate`], also returning the profiles of both parties it read (the
    /// receiver's, and the caller's if the directory knows them), so that announcing the call
    /// and answering the request need no second lookup.
    ///
    /// # Errors
    /// As [`CallService::initiate`].
    pub async fn initiate_with_parties(
        &self,
        caller: &UserId,
        command: InitiateCommand,
    ) -> Result<(Initiated, Vec<UserProfile>), CallServiceError> {
        if caller == &command.receiver {
            return Err(InitiateRefusal::SelfCall.into());
        }
        let parties = self.directory.users(&[caller.clone(), command.receiver.clone()]).await?;
        if !parties.iter().any(|profile| profile.id == command.receiver) {
            return Err(CallServiceError::ReceiverNotFound);
        }
        if let Some(conversation) = command.conversation {
            let participants = self
                .directory
                .conversation_participants(conversation)
                .await?
                .ok_or(CallServiceError::ConversationNotFound)?;
            if !participants.contains(caller) {
                return Err(CallServiceError::NotInConversation);
            }
            if !participants.contains(&command.receiver) {
                return Err(CallServiceError::ReceiverNotInConversation);
            }
        }

        let admission = self.admit(caller, &command).await?;

        // Optimistic: most calls find both lines free, and claiming them is the check that
        // counts anyway (it is atomic across instances). Only a busy line costs reading the
        // open calls, to tell busy from glare.
        let mut last_busy = InitiateRefusal::ReceiverBusy;
        for _ in 0..ATTEMPTS {
            let mut new_call = NewCall::ring(
                caller.clone(),
                command.receiver.clone(),
                command.call_type,
                command.conversation,
                self.clock.now(),
            )?;
            if admission == Admission::Silently {
                new_call = new_call.silenced();
            }
            let waiting = (admission == Admission::RingOrWait).then(|| new_call.clone().waiting());
            match self.calls.create(new_call).await {
                Ok(call) => {
                    self.tell_ringing(&call, &parties).await;
                    return Ok((Initiated::Ringing(call), parties));
                }
                Err(RepositoryError::LineBusy { user }) => {
                    last_busy =
                        if &user == caller { InitiateRefusal::CallerBusy } else { InitiateRefusal::ReceiverBusy };
                }
                Err(error) => return Err(error.into()),
            }
            let caller_open = self.calls.open_calls_of(caller).await?;
            let receiver_open = self.calls.open_calls_of(&command.receiver).await?;
            // Call waiting: a receiver who turned it on and talks in an active call (with
            // someone else, and with no call ringing them) is rung for this one as well.
            if let Some(waiting) = waiting
                && caller_open.is_empty()
                && receiver_open.iter().any(|call| call.status() == CallStatus::Active)
                && !receiver_open.iter().any(|call| call.status().is_unanswered())
            {
                match self.calls.create_waiting(waiting).await {
                    Ok(Some(call)) => {
                        self.tell_ringing(&call, &parties).await;
                        return Ok((Initiated::Ringing(call), parties));
                    }
                    // The active call ended meanwhile: ring as usual.
                    Ok(None) => continue,
                    Err(RepositoryError::LineBusy { user }) => {
                        let refusal =
                            if &user == caller { InitiateRefusal::CallerBusy } else { InitiateRefusal::ReceiverBusy };
                        return Err(refusal.into());
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            match decide_initiate(caller, &command.receiver, &caller_open, &receiver_open)? {
                // The line was freed meanwhile: try to claim it again.
                InitiateDecision::Ring => {}
                InitiateDecision::AnswerCrossingCall(id) => {
                    let Some(crossing) = caller_open.into_iter().chain(receiver_open).find(|call| call.id() == id)
                    else {
                        continue;
                    };
                    if let Outcome::Changed(transition) = crossing.accept(caller, self.clock.now())? {
                        // Through `apply`: the crossing call may be one waiting for the caller.
                        match self.apply(&transition).await {
                            Ok(switched) => {
                                if let Some(ended) = switched {
                                    self.tell_changed(&ended, ChangeOrigin::default(), None).await;
                                }
                                self.tell_changed(&transition, ChangeOrigin::default(), Some(&parties)).await;
                                return Ok((Initiated::AnsweredCrossingCall(transition), parties));
                            }
                            Err(RepositoryError::Conflict { .. }) => {}
                            Err(error) => return Err(error.into()),
                        }
                    }
                }
            }
        }
        Err(last_busy.into())
    }

    /// What the policy says of `caller` ringing `command.receiver` now (without a policy:
    /// ring). A refusal is told to the observers (metrics) before it is returned.
    async fn admit(&self, caller: &UserId, command: &InitiateCommand) -> Result<Admission, CallServiceError> {
        let Some(policy) = &self.policy else { return Ok(Admission::Ring) };
        let question = PolicyQuestion {
            caller: caller.clone(),
            callee: command.receiver.clone(),
            call_type: command.call_type,
            conversation: command.conversation,
        };
        match policy.admit(&question, self.clock.now()).await {
            Ok(admission) => Ok(admission),
            Err(PolicyError::Refused(refusal)) => {
                self.tell_refused(refusal).await;
                Err(refusal.into())
            }
            Err(PolicyError::Repository(error)) => Err(error.into()),
        }
    }

    /// The call `id`, if `viewer` is one of its parties.
    ///
    /// # Errors
    /// `CallNotFound` for a missing call or a non-party; `Repository` when storage fails.
    pub async fn get(&self, viewer: &UserId, id: CallId) -> Result<Call, CallServiceError> {
        self.calls.get(id).await?.filter(|call| call.is_party(viewer)).ok_or(CallServiceError::CallNotFound)
    }

    /// Adds `reporter`'s quality report to call `id`'s summary and returns the call with it.
    /// Only a party may report (404 for anyone else, as for every call), only on an answered
    /// call, until [`crate::quality::REPORT_WINDOW_AFTER_END`] after its end, and at most as
    /// often as [`CallQuality::record`] allows. Two reports at once are both kept: the summary
    /// is replaced with a compare-and-set, and the loser adds its report to the winner's and tries again.
    ///
    /// # Errors
    /// `InvalidReport`, `CallNotFound`, `NotAnswered`, `ReportTooLate`, `TooManyReports`;
    /// `StillRacing` after [`QUALITY_ATTEMPTS`] lost races; `Repository` when storage fails.
    pub async fn report_quality(
        &self,
        reporter: &UserId,
        id: CallId,
        report: &QualityReport,
    ) -> Result<QualityReported, CallServiceError> {
        report.check()?;
        // Each lost race means another report was taken; a call takes at most a dozen a
        // minute, so a few more tries than reports that can arrive at once always do.
        for _ in 0..QUALITY_ATTEMPTS {
            let call = self.get(reporter, id).await?;
            let party = call.party(reporter).ok_or(CallServiceError::CallNotFound)?;
            if call.answered_at().is_none() {
                return Err(CallServiceError::NotAnswered);
            }
            let now = self.clock.now();
            if call.ended_at().is_some_and(|ended| ended.plus(crate::quality::REPORT_WINDOW_AFTER_END) < now) {
                return Err(CallServiceError::ReportTooLate);
            }
            let mut quality = call.quality().cloned().unwrap_or_default();
            // Before any report a call may already have `ice_failure` (from its end).
            let earlier = quality.tags(call.end_reason());
            quality.record(party, report, now).map_err(|_| CallServiceError::TooManyReports)?;
            if self.calls.set_quality(id, call.quality(), &quality).await? {
                let new_tags =
                    quality.tags(call.end_reason()).into_iter().filter(|tag| !earlier.contains(tag)).collect();
                return Ok(QualityReported { call: call.with_quality(quality), new_tags });
            }
        }
        Err(CallServiceError::StillRacing)
    }

    /// `actor` reports `moment` of call `id` (a callee device shows it ringing; a party's video
    /// is on), deciding first on `known`, the call as the caller last saw it, if given. The
    /// first report is recorded and told to the observers, once per call however many devices
    /// or instances report it; returns the call with it then, `None` for every later report
    /// (or one that lost a race with a change of status, which decides nothing).
    ///
    /// # Errors
    /// `CallNotFound` (missing, or `actor` is not a party); `Transition(ReceiverOnly)` when the
    /// caller reports ringing; `Transition(InvalidState)` when the call is not ringing (`Rang`)
    /// or not active (`VideoStarted`); `Repository` when storage fails.
    pub async fn record_moment(
        &self,
        actor: &UserId,
        id: CallId,
        moment: CallMoment,
        known: Option<Call>,
    ) -> Result<Option<Call>, CallServiceError> {
        let call = match known {
            Some(call) if call.is_party(actor) => call,
            Some(_) => return Err(CallServiceError::CallNotFound),
            None => self.get(actor, id).await?,
        };
        let now = self.clock.now();
        let next = match moment {
            CallMoment::Rang => call.ring_receipt(actor, now),
            CallMoment::VideoStarted => call.video_seen(actor, now),
        }
        .map_err(|error| match error {
            TransitionError::NotAParty => CallServiceError::CallNotFound,
            error => CallServiceError::Transition(error),
        })?;
        let Some(next) = next else { return Ok(None) };
        let at = next.moment(moment).unwrap_or(now);
        if !self.calls.record_moment(id, moment, at).await? {
            return Ok(None);
        }
        for observer in &self.observers {
            observer.moment(&next, moment).await;
        }
        Ok(Some(next))
    }

    /// The call `id`, whoever asks: for internal use (routing signals), never for answering a
    /// user directly.
    ///
    /// # Errors
    /// `Repository` when storage fails.
    pub async fn find(&self, id: CallId) -> Result<Option<Call>, CallServiceError> {
        Ok(self.calls.get(id).await?)
    }

    /// `viewer`'s calls, newest first.
    ///
    /// # Errors
    /// `Repository` when storage fails.
    pub async fn list(
        &self,
        viewer: &UserId,
        filter: &CallListFilter,
        page: PageRequest,
    ) -> Result<Page<Call>, CallServiceError> {
        Ok(self.calls.list_for_user(viewer, filter, page).await?)
    }

    /// `user`'s ringing and active calls.
    ///
    /// # Errors
    /// `Repository` when storage fails.
    pub async fn open_calls_of(&self, user: &UserId) -> Result<Vec<Call>, CallServiceError> {
        Ok(self.calls.open_calls_of(user).await?)
    }

    /// `actor` accepts, rejects or ends call `id`. Returns `AlreadyDone` for deliberate
    /// repeats, which change nothing and must notify nobody.
    ///
    /// # Errors
    /// `CallNotFound` (missing, or `actor` is not a party), `Transition` for a forbidden move
    /// (decided on the call as it is after any race), `Repository` when storage fails.
    pub async fn act(&self, actor: &UserId, id: CallId, action: CallAction) -> Result<Outcome, CallServiceError> {
        self.act_on(actor, id, action, None, ChangeOrigin::default()).await
    }

    /// [`CallService::act`], deciding first on `known`, the call as the caller last saw it (a
    /// cache), instead of reading it: the write is a compare-and-set on the status, so a stale
    /// copy only costs a re-read, never a wrong change. `origin` is passed to the observers.
    ///
    /// # Errors
    /// As [`CallService::act`].
    pub async fn act_on(
        &self,
        actor: &UserId,
        id: CallId,
        action: CallAction,
        known: Option<Call>,
        origin: ChangeOrigin<'_>,
    ) -> Result<Outcome, CallServiceError> {
        let device = origin.device;
        self.settle(id, known, origin, |call, now| {
            if !call.is_party(actor) {
                return Err(CallServiceError::CallNotFound);
            }
            Ok(match action {
                CallAction::Accept => call.accept_on(actor, now, device)?,
                CallAction::Reject => call.reject(actor, now)?,
                CallAction::End(reason) => call.end_because(actor, now, reason)?,
            })
        })
        .await
    }

    /// Makes `device` the receiver's device of active call `id`, unless another one holds it
    /// (one the caller does not know to be gone: `replacing`). See
    /// [`CallRepository::claim_callee_device`].
    ///
    /// # Errors
    /// `CallNotFound`; `Repository` when storage fails.
    pub async fn claim_callee_device(
        &self,
        id: CallId,
        device: DeviceId,
        replacing: Option<DeviceId>,
    ) -> Result<DeviceClaim, CallServiceError> {
        match self.calls.claim_callee_device(id, device, replacing).await {
            Err(RepositoryError::NotFound) => Err(CallServiceError::CallNotFound),
            claimed => Ok(claimed?),
        }
    }

    /// Lets go of call `id` if the receiver's device `device` holds it (its socket closed).
    ///
    /// # Errors
    /// `Repository` when storage fails.
    pub async fn release_callee_device(&self, id: CallId, device: DeviceId) -> Result<(), CallServiceError> {
        Ok(self.calls.release_callee_device(id, device).await?)
    }

    /// Expires call `id` if it is still unanswered after the ring timeout.
    ///
    /// # Errors
    /// `Transition(NotYetDue | InvalidState)` when it is not due or already settled;
    /// `CallNotFound`; `Repository` when storage fails.
    pub async fn expire(&self, id: CallId) -> Result<Outcome, CallServiceError> {
        let timeout = self.ring_timeout;
        self.settle(id, None, ChangeOrigin::default(), |call, now| Ok(call.expire(now, timeout)?)).await
    }

    /// Expires up to `limit` calls whose ring timeout has passed, oldest first, and returns the
    /// transitions that were applied (calls that settled some other way meanwhile are skipped).
    ///
    /// # Errors
    /// `Repository` when storage fails.
    pub async fn expire_due(&self, limit: u32) -> Result<Vec<Transition>, CallServiceError> {
        let cutoff = self.clock.now().minus(self.ring_timeout);
        let due = self.calls.unanswered_started_before(cutoff, limit).await?;
        let mut expired = Vec::with_capacity(due.len());
        for call in due {
            match self.expire(call.id()).await {
                Ok(Outcome::Changed(transition)) => expired.push(transition),
                Ok(Outcome::AlreadyDone(_)) | Err(CallServiceError::Transition(_) | CallServiceError::CallNotFound) => {
                }
                Err(error) => return Err(error),
            }
        }
        Ok(expired)
    }

    /// `user`'s newest call, open or finished.
    ///
    /// # Errors
    /// `Repository` when storage fails.
    pub async fn newest_call_of(&self, user: &UserId) -> Result<Option<Call>, CallServiceError> {
        Ok(self.calls.newest_call_of(user).await?)
    }

    /// The users who are parties of an open call (the ones whose presence matters).
    ///
    /// # Errors
    /// `Repository` when storage fails.
    pub async fn users_on_lines(&self) -> Result<Vec<UserId>, CallServiceError> {
        Ok(self.calls.users_on_lines().await?)
    }

    /// Records that `users` have a live socket now (a heartbeat, or a party coming back).
    ///
    /// # Errors
    /// `Repository` when storage fails.
    pub async fn mark_seen(&self, users: &[UserId]) -> Result<(), CallServiceError> {
        self.mark_seen_at(users, self.clock.now()).await
    }

    /// Records that `users` were last seen at `at`: the moment a party's last socket went,
    /// taken when it went (the write may land later, and must not move the moment on).
    ///
    /// # Errors
    /// `Repository` when storage fails.
    pub async fn mark_seen_at(&self, users: &[UserId], at: Timestamp) -> Result<(), CallServiceError> {
        if users.is_empty() {
            return Ok(());
        }
        Ok(self.calls.mark_seen(users, at).await?)
    }

    /// Ends up to `limit` active calls whose parties have both been gone for the grace period
    /// (`connection_lost`, ended when the later party left), cancels ringing calls whose caller
    /// has (`connection_lost` too), ends calls that reached the maximum length
    /// (`max_duration`), and returns the transitions applied. Decided from stored state only,
    /// so it survives restarts, and each end is a compare-and-set: with several instances
    /// sweeping, exactly one ends each call.
    ///
    /// # Errors
    /// `Repository` when storage fails.
    pub async fn end_abandoned(&self, limit: u32) -> Result<Vec<Transition>, CallServiceError> {
        let now = self.clock.now();
        let seen_before = now.minus(self.liveness.grace);
        let mut ended = Vec::new();
        for (call, last_seen) in self.calls.abandoned_calls(seen_before, limit).await? {
            let Ok(Outcome::Changed(transition)) = call.lose_connection(last_seen, now, self.liveness.grace) else {
                continue;
            };
            match self.calls.apply_if_abandoned(&transition, seen_before).await {
                Ok(()) => {
                    self.tell_changed(&transition, ChangeOrigin::default(), None).await;
                    ended.push(transition);
                }
                Err(RepositoryError::Conflict { .. } | RepositoryError::NotFound) => {}
                Err(error) => return Err(error.into()),
            }
        }
        for call in self.calls.active_answered_before(now.minus(self.liveness.max_call), limit).await? {
            let Ok(Outcome::Changed(transition)) = call.cap_duration(now, self.liveness.max_call) else {
                continue;
            };
            match self.calls.apply(&transition).await {
                Ok(()) => {
                    self.tell_changed(&transition, ChangeOrigin::default(), None).await;
                    ended.push(transition);
                }
                Err(RepositoryError::Conflict { .. } | RepositoryError::NotFound) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(ended)
    }

    /// Stores `transition`. Accepting a waiting call ends the receiver's active call in the
    /// same transaction (`switched_call`), unless it ended meanwhile; that ending is returned,
    /// to be told before the accept.
    async fn apply(&self, transition: &Transition) -> Result<Option<Transition>, RepositoryError> {
        let call = &transition.call;
        if !(call.is_waiting() && call.status() == CallStatus::Active && transition.from.is_unanswered()) {
            return self.calls.apply(transition).await.map(|()| None);
        }
        let receiver = call.receiver();
        let other = self
            .calls
            .open_calls_of(receiver)
            .await?
            .into_iter()
            .find(|open| open.id() != call.id() && open.status() == CallStatus::Active);
        let Some(Outcome::Changed(ended)) =
            other.and_then(|other| other.switched_away(receiver, transition.call.answered_at()?).ok())
        else {
            // Its active call is over already: the waiting call took the line.
            return self.calls.apply(transition).await.map(|()| None);
        };
        Ok(self.calls.switch(&ended, transition).await?.then_some(ended))
    }

    /// Tells the observers of a stored change, after the call it switched away from, if any.
    async fn tell_switched(&self, switched: Option<Transition>, transition: &Transition, origin: ChangeOrigin<'_>) {
        if let Some(ended) = switched {
            self.tell_changed(&ended, ChangeOrigin::default(), None).await;
        }
        self.tell_changed(transition, origin, None).await;
    }

    /// Loads call `id` (or starts from `known`), computes a transition with `decide`, and
    /// applies it; on a lost race, re-reads and decides again. A decision other than a change
    /// is only trusted on a call read from the store: a stale copy could refuse wrongly. A
    /// stored change is told to the observers with `origin`.
    async fn settle(
        &self,
        id: CallId,
        known: Option<Call>,
        origin: ChangeOrigin<'_>,
        decide: impl Fn(&Call, Timestamp) -> Result<Outcome, CallServiceError>,
    ) -> Result<Outcome, CallServiceError> {
        if let Some(call) = known.filter(|call| call.id() == id)
            && let Ok(Outcome::Changed(transition)) = decide(&call, self.clock.now())
        {
            match self.apply(&transition).await {
                Ok(switched) => {
                    self.tell_switched(switched, &transition, origin).await;
                    return Ok(Outcome::Changed(transition));
                }
                Err(RepositoryError::Conflict { .. } | RepositoryError::NotFound) => {}
                Err(error) => return Err(error.into()),
            }
        }
        for _ in 0..ATTEMPTS {
            let call = self.calls.get(id).await?.ok_or(CallServiceError::CallNotFound)?;
            match decide(&call, self.clock.now())? {
                Outcome::AlreadyDone(call) => return Ok(Outcome::AlreadyDone(call)),
                Outcome::Changed(transition) => match self.apply(&transition).await {
                    Ok(switched) => {
                        self.tell_switched(switched, &transition, origin).await;
                        return Ok(Outcome::Changed(transition));
                    }
                    Err(RepositoryError::Conflict { .. }) => {}
                    Err(RepositoryError::NotFound) => return Err(CallServiceError::CallNotFound),
                    Err(error) => return Err(error.into()),
                },
            }
        }
        Err(CallServiceError::StillRacing)
    }
}
