//! The call record and its state machine.
//!
//! ```text
//!             accept (receiver)              end (either party)
//!   ringing ───────────────────► active ─────────────────────────► ended   (duration measured here)
//!     │ reject (receiver), or end by the receiver ──────────────────► rejected
//!     │ end (caller) ───────────────────────────────────────────────► cancelled
//!     │ expire (server, after the ring timeout) ────────────────────► missed
//!
//!   ringing ─ lose_connection (server: the caller gone for the grace period) ────► cancelled
//!   active ── lose_connection (server: both parties gone for the grace period) ──► ended
//!   active ── cap_duration (server: the call reached its maximum length) ─────────► ended
//! ```
//!
//! Each transition is a pure function of the call, the acting user and `now`. It returns an
//! [`Outcome`]: either a [`Transition`] (the changed call, the status it was computed from, and
//! the event it causes) or `AlreadyDone` for the repeats clients make on purpose (ending a call
//! that is already over, rejecting one already rejected), which change nothing and emit nothing.
//! A forbidden move is a [`TransitionError`] value, never a panic.
//!
//! Time only moves forward inside a call: a `now` earlier than the call's last change (clock
//! skew between two server instances) is taken as that last change.

use std::time::Duration;

use crate::quality::CallQuality;
use crate::values::{
    Action, CallId, CallStatus, CallType, ConversationId, DeviceId, EndReason, HangupReason, Timestamp, UserId,
};

/// A call that has been decided on but not stored yet (it has no id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCall {
    caller: UserId,
    receiver: UserId,
    call_type: CallType,
    conversation: Option<ConversationId>,
    started_at: Timestamp,
    silenced: bool,
    waiting: bool,
}

impl NewCall {
    /// Starts ringing `receiver` on behalf of `caller`.
    ///
    /// # Errors
    /// [`TransitionError::SelfCall`] when both are the same user.
    pub fn ring(
        caller: UserId,
        receiver: UserId,
        call_type: CallType,
        conversation: Option<ConversationId>,
        now: Timestamp,
    ) -> Result<Self, TransitionError> {
        if caller == receiver {
            return Err(TransitionError::SelfCall);
        }
        Ok(Self { caller, receiver, call_type, conversation, started_at: now, silenced: false, waiting: false })
    }

    /// The same call, ringing a receiver who is in an active call (call waiting): it does not
    /// take their line, which their active call holds, but their one waiting place; taking it
    /// ends the active call ([`Call::switched_away`]).
    #[must_use]
    pub fn waiting(mut self) -> Self {
        self.waiting = true;
        self
    }

    /// The same call, ringing none of the receiver's devices (do-not-disturb): it rings for the
    /// caller only and ends as missed at the ring timeout.
    #[must_use]
    pub fn silenced(mut self) -> Self {
        self.silenced = true;
        self
    }

    /// The stored call, once the repository has given it an id. Its creation is the `Rang` event.
    pub fn into_call(self, id: CallId) -> Call {
        Call {
            id,
            conversation: self.conversation,
            caller: self.caller,
            receiver: self.receiver,
            call_type: self.call_type,
            status: CallStatus::Ringing,
            started_at: self.started_at,
            answered_at: None,
            ended_at: None,
            duration_seconds: None,
            end_reason: None,
            created_at: self.started_at,
            updated_at: self.started_at,
            callee_device: None,
            quality: None,
            silenced: self.silenced,
            rang_at: None,
            video_at: None,
            waiting: self.waiting,
        }
    }

    pub fn caller(&self) -> &UserId {
        &self.caller
    }
    pub fn receiver(&self) -> &UserId {
        &self.receiver
    }
    pub fn call_type(&self) -> CallType {
        self.call_type
    }
    pub fn conversation(&self) -> Option<ConversationId> {
        self.conversation
    }
    pub fn started_at(&self) -> Timestamp {
        self.started_at
    }
    pub fn is_silenced(&self) -> bool {
        self.silenced
    }
    pub fn is_waiting(&self) -> bool {
        self.waiting
    }
}

/// A one-to-one call. Fields are private so that every `Call` in the program satisfies the
/// invariants checked by [`Call::restore`]; read them through the accessors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    id: CallId,
    conversation: Option<ConversationId>,
    caller: UserId,
    receiver: UserId,
    call_type: CallType,
    status: CallStatus,
    started_at: Timestamp,
    answered_at: Option<Timestamp>,
    ended_at: Option<Timestamp>,
    duration_seconds: Option<u32>,
    end_reason: Option<EndReason>,
    created_at: Timestamp,
    updated_at: Timestamp,
    /// The receiver's device (socket) the answered call belongs to: the one whose SDP answer
    /// accepted it, or, after an accept that named no device (REST), the first to claim it.
    /// The caller's connection takes one answer, so the receiver's other devices may not
    /// signal in the call. `None` until a device holds it, and again once it let go.
    callee_device: Option<DeviceId>,
    /// What the parties reported about the media, once one did (shared: calls are cloned
    /// on every change, the summary never changes with them).
    quality: Option<std::sync::Arc<CallQuality>>,
    /// Placed while the receiver was in do-not-disturb: none of their devices was rung.
    silenced: bool,
    /// When the first of the receiver's devices said it shows the call ([`Call::ring_receipt`]).
    rang_at: Option<Timestamp>,
    /// When video first flowed, by a party's report ([`Call::video_seen`]): a voice call
    /// keeps its `call_type` and shows "video from" this moment.
    video_at: Option<Timestamp>,
    /// Rung while the receiver was in an active call (call waiting): accepting it ends that
    /// call first.
    waiting: bool,
}

/// Every field of a call, as a storage layer holds it. [`Call::restore`] checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallParts {
    pub id: CallId,
    pub conversation: Option<ConversationId>,
    pub caller: UserId,
    pub receiver: UserId,
    pub call_type: CallType,
    pub status: CallStatus,
    pub started_at: Timestamp,
    pub answered_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    pub duration_seconds: Option<u32>,
    pub end_reason: Option<EndReason>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub callee_device: Option<DeviceId>,
    pub quality: Option<std::sync::Arc<CallQuality>>,
    pub silenced: bool,
    pub rang_at: Option<Timestamp>,
    pub video_at: Option<Timestamp>,
    pub waiting: bool,
}

/// A stored record that no sequence of transitions could have produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("call {id} is inconsistent: {rule}")]
pub struct InvalidCall {
    pub id: CallId,
    pub rule: &'static str,
}

/// A moment in a call that is recorded once, without changing its status: reported by a
/// party's device, kept on the call, never moved once set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallMoment {
    /// The first of the receiver's devices shows the call (`rang_at`).
    Rang,
    /// Video first flowed (`video_at`).
    VideoStarted,
}

/// What a transition causes, for the signaling layer to tell the parties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    Accepted {
        by: UserId,
    },
    Rejected {
        by: UserId,
    },
    Cancelled {
        by: UserId,
    },
    /// An answered call ended: hung up by a party (`by`), or by the server (`by: None`) when
    /// both parties went away or the call ran too long; the call's `end_reason` says which.
    Ended {
        by: Option<UserId>,
        duration_seconds: u32,
    },
    Missed,
}

/// A change to apply: the new call, the status it was computed from (the repository writes it
/// only if the stored status is still that one), and the event it causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub call: Call,
    pub from: CallStatus,
    pub event: CallEvent,
}

/// The result of a permitted action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Changed(Transition),
    /// A deliberate repeat (end after end, reject after reject): nothing changes, nothing is sent.
    AlreadyDone(Call),
}

impl Outcome {
    pub fn call(&self) -> &Call {
        match self {
            Self::Changed(transition) => &transition.call,
            Self::AlreadyDone(call) => call,
        }
    }
}

/// Why an action is not allowed. Each maps to one stable error code at the API edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("you cannot call yourself")]
    SelfCall,
    #[error("only the two parties of a call may act on it")]
    NotAParty,
    #[error("only the receiver may {} a call", .0.as_str())]
    ReceiverOnly(Action),
    #[error("call is already {}", .status.as_str())]
    InvalidState { action: Action, status: CallStatus },
    #[error("the call has not rung for the whole ring timeout yet")]
    NotYetDue,
}

impl Call {
    /// Rebuilds a call from storage, checking the invariants the state machine keeps.
    ///
    /// # Errors
    /// [`InvalidCall`] naming the first broken rule.
    pub fn restore(parts: CallParts) -> Result<Self, InvalidCall> {
        let broken = |rule| Err(InvalidCall { id: parts.id, rule });
        if parts.caller == parts.receiver {
            return broken("caller and receiver are the same user");
        }
        let answered = parts.answered_at.is_some();
        let ended = parts.ended_at.is_some();
        let shape_ok = match parts.status {
            CallStatus::Initiating | CallStatus::Ringing => !answered && !ended && parts.end_reason.is_none(),
            CallStatus::Active => answered && !ended && parts.end_reason.is_none(),
            CallStatus::Ended => answered && ended && parts.end_reason.is_some(),
            CallStatus::Missed | CallStatus::Rejected | CallStatus::Cancelled => {
                !answered && ended && parts.end_reason.is_some()
            }
        };
        if !shape_ok {
            return broken("answered_at, ended_at and end_reason do not match the status");
        }
        if parts.duration_seconds.is_some() != (parts.status == CallStatus::Ended) {
            return broken("a duration exists exactly for answered calls that ended");
        }
        let mut previous = parts.started_at;
        for moment in [parts.answered_at, parts.ended_at].into_iter().flatten() {
            if moment < previous {
                return broken("timestamps go backwards");
            }
            previous = moment;
        }
        if parts.updated_at < previous || parts.created_at > parts.updated_at {
            return broken("updated_at is earlier than another timestamp");
        }
        if parts.callee_device.is_some() && !answered {
            return broken("only an answered call belongs to one of the receiver's devices");
        }
        if parts.rang_at.is_some_and(|rang| rang < parts.started_at) {
            return broken("the call rang before it started");
        }
        if parts.video_at.is_some_and(|video| parts.answered_at.is_none_or(|answered| video < answered)) {
            return broken("video flowed before the call was answered");
        }
        Ok(Self {
            id: parts.id,
            conversation: parts.conversation,
            caller: parts.caller,
            receiver: parts.receiver,
            call_type: parts.call_type,
            status: parts.status,
            started_at: parts.started_at,
            answered_at: parts.answered_at,
            ended_at: parts.ended_at,
            duration_seconds: parts.duration_seconds,
            end_reason: parts.end_reason,
            created_at: parts.created_at,
            updated_at: parts.updated_at,
            callee_device: parts.callee_device,
            quality: parts.quality,
            silenced: parts.silenced,
            rang_at: parts.rang_at,
            video_at: parts.video_at,
            waiting: parts.waiting,
        })
    }

    /// All fields, for a storage layer to write.
    pub fn to_parts(&self) -> CallParts {
        CallParts {
            id: self.id,
            conversation: self.conversation,
            caller: self.caller.clone(),
            receiver: self.receiver.clone(),
            call_type: self.call_type,
            status: self.status,
            started_at: self.started_at,
            answered_at: self.answered_at,
            ended_at: self.ended_at,
            duration_seconds: self.duration_seconds,
            end_reason: self.end_reason,
            created_at: self.created_at,
            updated_at: self.updated_at,
            callee_device: self.callee_device,
            quality: self.quality.clone(),
            silenced: self.silenced,
            rang_at: self.rang_at,
            video_at: self.video_at,
            waiting: self.waiting,
        }
    }

    pub fn id(&self) -> CallId {
        self.id
    }
    pub fn conversation(&self) -> Option<ConversationId> {
        self.conversation
    }
    pub fn caller(&self) -> &UserId {
        &self.caller
    }
    pub fn receiver(&self) -> &UserId {
        &self.receiver
    }
    pub fn call_type(&self) -> CallType {
        self.call_type
    }
    pub fn status(&self) -> CallStatus {
        self.status
    }
    pub fn started_at(&self) -> Timestamp {
        self.started_at
    }
    pub fn answered_at(&self) -> Option<Timestamp> {
        self.answered_at
    }
    pub fn ended_at(&self) -> Option<Timestamp> {
        self.ended_at
    }
    /// Whole seconds from answer to end, measured by the server; `None` unless the call was
    /// answered and has ended.
    pub fn duration_seconds(&self) -> Option<u32> {
        self.duration_seconds
    }
    pub fn end_reason(&self) -> Option<EndReason> {
        self.end_reason
    }
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }
    pub fn updated_at(&self) -> Timestamp {
        self.updated_at
    }
    /// Whether the call was placed while the receiver was in do-not-disturb, so that none of
    /// their devices rang.
    pub fn is_silenced(&self) -> bool {
        self.silenced
    }
    /// Whether the call rang while its receiver was in an active call (call waiting).
    pub fn is_waiting(&self) -> bool {
        self.waiting
    }
    /// When the first of the receiver's devices said it shows the call ringing.
    pub fn rang_at(&self) -> Option<Timestamp> {
        self.rang_at
    }
    /// When video first flowed in the call, by a party's report.
    pub fn video_at(&self) -> Option<Timestamp> {
        self.video_at
    }
    /// The receiver's device the answered call belongs to, as far as this copy knows (see the
    /// field).
    pub fn callee_device(&self) -> Option<DeviceId> {
        self.callee_device
    }

    /// What the parties reported about the media, if anything.
    pub fn quality(&self) -> Option<&CallQuality> {
        self.quality.as_deref()
    }

    /// Which party `user` is, if either.
    pub fn party(&self, user: &UserId) -> Option<crate::quality::Party> {
        if user == &self.caller {
            Some(crate::quality::Party::Caller)
        } else if user == &self.receiver {
            Some(crate::quality::Party::Receiver)
        } else {
            None
        }
    }

    /// This call with `quality` as its parties' reports.
    #[must_use]
    pub fn with_quality(mut self, quality: CallQuality) -> Self {
        self.quality = Some(std::sync::Arc::new(quality));
        self
    }

    /// True when `user` is the caller or the receiver.
    pub fn is_party(&self, user: &UserId) -> bool {
        &self.caller == user || &self.receiver == user
    }

    /// The party that is not `user`, if `user` is a party.
    pub fn other_party(&self, user: &UserId) -> Option<&UserId> {
        if &self.caller == user {
            Some(&self.receiver)
        } else if &self.receiver == user {
            Some(&self.caller)
        } else {
            None
        }
    }

    /// The receiver answers a ringing call.
    ///
    /// # Errors
    /// `NotAParty`, `ReceiverOnly(Accept)` for the caller, `InvalidState` unless ringing.
    pub fn accept(&self, actor: &UserId, now: Timestamp) -> Result<Outcome, TransitionError> {
        self.accept_on(actor, now, None)
    }

    /// [`Call::accept`] from `device`, the receiver's device that answered: the answered call
    /// belongs to it. `None` when the accept names no device (REST); the first of the
    /// receiver's devices to signal then claims the call.
    ///
    /// # Errors
    /// As [`Call::accept`].
    pub fn accept_on(
        &self,
        actor: &UserId,
        now: Timestamp,
        device: Option<DeviceId>,
    ) -> Result<Outcome, TransitionError> {
        self.require_receiver(actor, Action::Accept)?;
        if self.status != CallStatus::Ringing {
            return Err(TransitionError::InvalidState { action: Action::Accept, status: self.status });
        }
        let now = self.not_before_last_change(now);
        let mut next = self.clone();
        next.status = CallStatus::Active;
        next.answered_at = Some(now);
        next.updated_at = now;
        next.callee_device = device;
        Ok(self.changed(next, CallEvent::Accepted { by: actor.clone() }))
    }

    /// The receiver declines a ringing call. Declining a call already declined succeeds and
    /// changes nothing (the mobile client declines over the socket, then over REST).
    ///
    /// # Errors
    /// `NotAParty`, `ReceiverOnly(Reject)` for the caller, `InvalidState` from any other status.
    pub fn reject(&self, actor: &UserId, now: Timestamp) -> Result<Outcome, TransitionError> {
        self.require_receiver(actor, Action::Reject)?;
        match self.status {
            CallStatus::Rejected => Ok(Outcome::AlreadyDone(self.clone())),
            status if status.is_unanswered() => Ok(self.finish_unanswered(
                CallStatus::Rejected,
                EndReason::Declined,
                now,
                CallEvent::Rejected { by: actor.clone() },
            )),
            status => Err(TransitionError::InvalidState { action: Action::Reject, status }),
        }
    }

    /// Either party hangs up. An answered call ends with its duration measured here; a ringing
    /// call ended by the caller is cancelled and by the receiver is declined; a call that is
    /// already over is left as it is (clients retry their hang-up).
    ///
    /// # Errors
    /// `NotAParty` for anyone but the two parties.
    pub fn end(&self, actor: &UserId, now: Timestamp) -> Result<Outcome, TransitionError> {
        self.end_because(actor, now, HangupReason::UserHangup)
    }

    /// [`Call::end`], recording why the party hung up (`ice_failed` when the media path died).
    /// The reason applies to answered calls; an unanswered one is cancelled or declined.
    ///
    /// # Errors
    /// `NotAParty` for anyone but the two parties.
    pub fn end_because(
        &self,
        actor: &UserId,
        now: Timestamp,
        reason: HangupReason,
    ) -> Result<Outcome, TransitionError> {
        if !self.is_party(actor) {
            return Err(TransitionError::NotAParty);
        }
        match self.status {
            CallStatus::Active => {
                let event_by = Some(actor.clone());
                Ok(self.finish_answered(self.not_before_last_change(now), reason.into(), event_by))
            }
            status if status.is_unanswered() && actor == &self.caller => Ok(self.finish_unanswered(
                CallStatus::Cancelled,
                EndReason::CallerCancelled,
                now,
                CallEvent::Cancelled { by: actor.clone() },
            )),
            status if status.is_unanswered() => Ok(self.finish_unanswered(
                CallStatus::Rejected,
                EndReason::Declined,
                now,
                CallEvent::Rejected { by: actor.clone() },
            )),
            _ => Ok(Outcome::AlreadyDone(self.clone())),
        }
    }

    /// `actor`, a party of this active call, took a waiting call: this one ends, its duration
    /// measured here, with `end_reason: switched_call`.
    ///
    /// # Errors
    /// `NotAParty`; `InvalidState` unless active.
    pub fn switched_away(&self, actor: &UserId, now: Timestamp) -> Result<Outcome, TransitionError> {
        if !self.is_party(actor) {
            return Err(TransitionError::NotAParty);
        }
        if self.status != CallStatus::Active {
            return Err(TransitionError::InvalidState { action: Action::End, status: self.status });
        }
        Ok(self.finish_answered(self.not_before_last_change(now), EndReason::SwitchedCall, Some(actor.clone())))
    }

    /// The server ends a call nobody is left in, once `grace` has passed since `last_seen`
    /// with nobody back:
    /// - an answered call whose parties both lost their last live socket, the later of them at
    ///   `last_seen`, ends then (not at `now`): its duration is the time someone was there;
    /// - a ringing call whose caller lost their last live socket at `last_seen` is cancelled
    ///   (a callee without a socket is normal: their app may be asleep, waiting for a push).
    ///
    /// Either way the `end_reason` is `connection_lost`.
    ///
    /// # Errors
    /// `InvalidState` once finished; `NotYetDue` while the grace period runs.
    pub fn lose_connection(
        &self,
        last_seen: Timestamp,
        now: Timestamp,
        grace: Duration,
    ) -> Result<Outcome, TransitionError> {
        if self.status.is_finished() {
            return Err(TransitionError::InvalidState { action: Action::Abandon, status: self.status });
        }
        if now < last_seen.plus(grace) {
            return Err(TransitionError::NotYetDue);
        }
        if self.status.is_unanswered() {
            let event = CallEvent::Cancelled { by: self.caller.clone() };
            return Ok(self.finish_unanswered(CallStatus::Cancelled, EndReason::ConnectionLost, last_seen, event));
        }
        Ok(self.finish_answered(self.not_before_last_change(last_seen), EndReason::ConnectionLost, None))
    }

    /// The server ends an answered call that reached `max_length`, as a last resort for calls
    /// both parties forgot. It ends exactly at the cap, however late the check runs.
    ///
    /// # Errors
    /// `InvalidState` unless active; `NotYetDue` before the cap.
    pub fn cap_duration(&self, now: Timestamp, max_length: Duration) -> Result<Outcome, TransitionError> {
        if self.status != CallStatus::Active {
            return Err(TransitionError::InvalidState { action: Action::Abandon, status: self.status });
        }
        let cap = self.answered_at.unwrap_or(self.started_at).plus(max_length);
        if now < cap {
            return Err(TransitionError::NotYetDue);
        }
        Ok(self.finish_answered(self.not_before_last_change(cap), EndReason::MaxDuration, None))
    }

    /// The server gives up on a call nobody answered within `ring_timeout` of its start.
    ///
    /// # Errors
    /// `InvalidState` unless the call is still unanswered; `NotYetDue` before the timeout.
    pub fn expire(&self, now: Timestamp, ring_timeout: Duration) -> Result<Outcome, TransitionError> {
        if !self.status.is_unanswered() {
            return Err(TransitionError::InvalidState { action: Action::Expire, status: self.status });
        }
        if now < self.started_at.plus(ring_timeout) {
            return Err(TransitionError::NotYetDue);
        }
        Ok(self.finish_unanswered(CallStatus::Missed, EndReason::InviteTimeout, now, CallEvent::Missed))
    }

    /// One of the receiver's devices shows the ringing call: the first such report is the
    /// call's `rang_at` (the caller's devices hear of it once). `None` when the call has rung
    /// already: later reports, from the receiver's other devices, change nothing. Records a
    /// moment, not a change of status.
    ///
    /// # Errors
    /// `NotAParty`, `ReceiverOnly(ConfirmRinging)` for the caller, `InvalidState` unless ringing.
    pub fn ring_receipt(&self, actor: &UserId, now: Timestamp) -> Result<Option<Self>, TransitionError> {
        self.require_receiver(actor, Action::ConfirmRinging)?;
        if self.status != CallStatus::Ringing {
            return Err(TransitionError::InvalidState { action: Action::ConfirmRinging, status: self.status });
        }
        if self.rang_at.is_some() {
            return Ok(None);
        }
        let mut next = self.clone();
        next.rang_at = Some(now.max(self.started_at));
        Ok(Some(next))
    }

    /// A party reports that its video (camera) is on in the answered call: the first such
    /// report is the call's `video_at`. `None` once video has flowed. Records a moment, not a
    /// change of status; `call_type` stays what the call was placed as.
    ///
    /// # Errors
    /// `NotAParty`; `InvalidState` unless active.
    pub fn video_seen(&self, actor: &UserId, now: Timestamp) -> Result<Option<Self>, TransitionError> {
        if !self.is_party(actor) {
            return Err(TransitionError::NotAParty);
        }
        if self.status != CallStatus::Active {
            return Err(TransitionError::InvalidState { action: Action::ReportVideo, status: self.status });
        }
        if self.video_at.is_some() {
            return Ok(None);
        }
        let mut next = self.clone();
        next.video_at = Some(now.max(self.answered_at.unwrap_or(self.started_at)));
        Ok(Some(next))
    }

    /// When `moment` happened in this call, if it has.
    pub fn moment(&self, moment: CallMoment) -> Option<Timestamp> {
        match moment {
            CallMoment::Rang => self.rang_at,
            CallMoment::VideoStarted => self.video_at,
        }
    }

    fn require_receiver(&self, actor: &UserId, action: Action) -> Result<(), TransitionError> {
        if actor == &self.receiver {
            Ok(())
        } else if actor == &self.caller {
            Err(TransitionError::ReceiverOnly(action))
        } else {
            Err(TransitionError::NotAParty)
        }
    }

    fn finish_answered(&self, at: Timestamp, reason: EndReason, by: Option<UserId>) -> Outcome {
        let duration = at.whole_seconds_since(self.answered_at.unwrap_or(self.started_at));
        let mut next = self.clone();
        next.status = CallStatus::Ended;
        next.ended_at = Some(at);
        next.duration_seconds = Some(duration);
        next.end_reason = Some(reason);
        next.updated_at = at;
        self.changed(next, CallEvent::Ended { by, duration_seconds: duration })
    }

    fn finish_unanswered(&self, status: CallStatus, reason: EndReason, now: Timestamp, event: CallEvent) -> Outcome {
        let now = self.not_before_last_change(now);
        let mut next = self.clone();
        next.status = status;
        next.ended_at = Some(now);
        next.end_reason = Some(reason);
        next.updated_at = now;
        self.changed(next, event)
    }

    fn not_before_last_change(&self, now: Timestamp) -> Timestamp {
        now.max(self.updated_at)
    }

    fn changed(&self, next: Call, event: CallEvent) -> Outcome {
        Outcome::Changed(Transition { call: next, from: self.status, event })
    }
}
