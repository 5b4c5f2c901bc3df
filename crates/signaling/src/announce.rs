//! Announcing call changes: what each party's devices are sent when a call rings, is
//! accepted, rejected, cancelled, ends or is missed, and the notifications stored with it.
//!
//! [`Announcer`] is the hub's [`CallObserver`]: the `CallService` tells it of every change it
//! stores, so a change is announced however it was made (REST, a socket, a timer, an
//! embedding application calling the service itself), exactly once, and the relay's call
//! cache follows every change.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use ringline_domain::{
    Call, CallEvent, CallMoment, CallObserver, ChangeOrigin, DeviceId, Directory, NotificationRepository,
    NotificationVerb, Transition, UserId, UserProfile,
};
use serde_json::value::RawValue;

use crate::call_cache::CallCache;
use crate::events::{self, NotificationPayload};
use crate::streams::EventStreams;

/// What announcing needs, shared by the hub and the call service that tells it of changes.
#[derive(Debug)]
pub(crate) struct Announcer {
    pub(crate) notifications: Arc<dyn NotificationRepository>,
    pub(crate) streams: Arc<EventStreams>,
    pub(crate) directory: Arc<dyn Directory>,
    pub(crate) cache: Arc<CallCache>,
    /// Users who held a line at the last liveness sweep or were rung here since: the ones
    /// whose last socket closing is worth recording as their last-seen moment.
    pub(crate) on_lines: RwLock<HashSet<UserId>>,
}

#[async_trait]
impl CallObserver for Announcer {
    async fn ringing(&self, call: &Call, parties: &[UserProfile]) {
        self.cache.remember_with(call, Some(parties.into()));
        // Other instances may have remembered this id as missing (a client probing ids).
        self.streams.router().call_changed(call, Some(parties));
        self.on_lines
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend([call.caller().clone(), call.receiver().clone()]);
        // Do-not-disturb: none of the receiver's devices rings (the caller hears it ring as
        // for any call, and learns nothing more than from an unanswered one).
        if !call.is_silenced() {
            self.ring(call).await;
        }
    }

    async fn changed(&self, transition: &Transition, origin: ChangeOrigin<'_>, parties: Option<&[UserProfile]>) {
        self.cache.remember_with(&transition.call, parties.map(Into::into));
        let known = parties.map_or_else(|| self.cache.parties(transition.call.id()), |parties| Some(parties.into()));
        self.streams.router().call_changed(&transition.call, known.as_deref());
        // The answer was valid JSON when the frame was parsed; it is passed on as it came.
        let answer = origin.answer.and_then(|answer| serde_json::from_str::<&RawValue>(answer).ok());
        self.announce(&transition.call, &transition.event, origin.device, answer).await;
    }

    async fn moment(&self, call: &Call, moment: CallMoment) {
        self.cache.remember(call);
        if moment == CallMoment::Rang {
            // Once per call (the first of the receiver's devices), to every device of the caller.
            self.streams.send(call.caller(), None, |id| events::ringing(id, call));
        }
    }
}

impl Announcer {
    /// The profiles of `call`'s parties the directory knows: remembered from when this
    /// process started the call, or read now.
    ///
    /// # Errors
    /// When the directory cannot answer.
    pub(crate) async fn parties_of(&self, call: &Call) -> Result<Arc<[UserProfile]>, ringline_domain::DirectoryError> {
        if let Some(parties) = self.cache.parties(call.id()) {
            return Ok(parties);
        }
        let ids = [call.caller().clone(), call.receiver().clone()];
        Ok(self.directory.users(&ids).await?.into())
    }

    /// `user`'s profile as a party of `call`, if known.
    pub(crate) async fn party(&self, call: &Call, user: &UserId) -> Option<UserProfile> {
        match self.parties_of(call).await {
            Ok(parties) => parties.iter().find(|profile| &profile.id == user).cloned(),
            Err(error) => {
                tracing::warn!(%error, "cannot look up a party of a call for an event");
                None
            }
        }
    }

    pub(crate) async fn username(&self, call: &Call, user: &UserId) -> String {
        self.party(call, user).await.map(|profile| profile.username).unwrap_or_default()
    }

    /// Sends the notification that `call`'s change stored for its receiver (the repository
    /// writes it with the change) as `notification.created`. A storage failure is logged; the
    /// live event has already been sent, and the notification is in the list all the same.
    pub(crate) async fn notify_receiver(&self, call: &Call, verb: NotificationVerb) {
        let stored = match self.notifications.caused_by(call.receiver(), call, verb).await {
            Ok(Some(stored)) => stored,
            // A repository that stores none (an embedding application's own) has nothing to send.
            Ok(None) => return,
            Err(error) => {
                tracing::error!(%error, call = %call.id(), "cannot read a call's notification");
                return;
            }
        };
        let actor = self.party(call, call.caller()).await;
        let payload = NotificationPayload::new(&stored, actor.as_ref());
        self.streams.send(call.receiver(), None, |id| events::notification_created(id, &payload));
    }

    pub(crate) async fn ring(&self, call: &Call) {
        let caller_username = self.username(call, call.caller()).await;
        self.streams.send(call.receiver(), None, |id| events::incoming(id, call, &caller_username));
        self.notify_receiver(call, NotificationVerb::incoming(call.call_type())).await;
    }

    /// Tells the parties' devices what `event` did to `call`. `origin` (the device that caused
    /// it) is skipped; `answer` is the SDP when a socket `call.answer` accepted the call.
    pub(crate) async fn announce(
        &self,
        call: &Call,
        event: &CallEvent,
        origin: Option<DeviceId>,
        answer: Option<&RawValue>,
    ) {
        let (caller, receiver) = (call.caller(), call.receiver());
        match event {
            CallEvent::Accepted { by } => {
                self.streams.send(caller, None, |id| events::answer(id, call, by, answer));
                self.streams.send(caller, None, |id| events::party_event("call.accepted", id, call, "receiver_id", by));
                // The callee's other devices stop ringing (newer clients; the original web
                // client needs the `call.end` that `answered_elsewhere` sends once the
                // answering socket is known).
                self.streams
                    .send(receiver, origin, |id| events::party_event("call.accepted", id, call, "receiver_id", by));
            }
            CallEvent::Rejected { by } => {
                let username = self.username(call, by).await;
                // No `call.end` for the caller: both original clients handle `call.rejected`, and
                // the web client's "Call Declined" screen would not survive one.
                self.streams.send(caller, None, |id| events::rejected(id, call, by, &username));
                // The callee's other devices stop ringing; the original web client does only on
                // `call.end`.
                self.streams.send(receiver, origin, |id| events::rejected(id, call, by, &username));
                self.streams.send(receiver, origin, |id| events::end(id, call, Some(by)));
            }
            CallEvent::Cancelled { by } => {
                self.streams.send(receiver, None, |id| events::end(id, call, Some(by)));
                self.streams.send(receiver, None, |id| events::party_event("call.cancelled", id, call, "user_id", by));
                self.streams.send(caller, origin, |id| events::party_event("call.cancelled", id, call, "user_id", by));
            }
            CallEvent::Ended { by, .. } => {
                // `by` is `None` when the server ended it; the `end_reason` says why.
                for party in [caller, receiver] {
                    self.streams.send(party, origin, |id| events::end(id, call, by.as_ref()));
                }
            }
            CallEvent::Missed => {
                for party in [caller, receiver] {
                    self.streams.send(party, None, |id| events::missed(id, call));
                    self.streams.send(party, None, |id| events::end(id, call, None));
                }
                self.notify_receiver(call, NotificationVerb::missed(call.call_type())).await;
            }
        }
    }
}
