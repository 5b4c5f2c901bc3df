//! Relaying client frames: offers, answers, ICE candidates, media state and typing
//! indicators, checked against the in-memory [`CallCache`](crate::call_cache::CallCache) so
//! that the relay path touches no database; hang-ups and answers change the call through
//! [`Signaling`].

use std::sync::Arc;

use ringline_domain::{
    Audience, Call, CallAction, CallId, CallMoment, CallServiceError, CallStatus, ConversationId, DeviceId, ErrorCode,
    Outcome, Signal, TransitionError, UserId,
};

use crate::call_cache::Route;
use crate::events;
use crate::hub::Signaling;
use crate::limits::Direction;
use crate::protocol::{ClientFrame, FrameError, allowed_in};
use crate::router::SessionKind;

/// The live session a frame came from.
#[derive(Debug)]
pub struct SessionContext {
    pub device: DeviceId,
    pub user: UserId,
    pub kind: SessionKind,
    /// Looked up on first use (a typing indicator): most sessions never need it, and a lookup
    /// per connect would be a database read per page load.
    username: std::sync::OnceLock<String>,
    /// Answered calls this device holds as the callee's device: let go when it closes, so that
    /// the callee's next device (a reloaded page) may take them over on any instance.
    held_calls: std::sync::Mutex<Vec<CallId>>,
}

impl SessionContext {
    pub fn new(device: DeviceId, user: UserId, kind: SessionKind) -> Self {
        Self { device, user, kind, username: std::sync::OnceLock::new(), held_calls: std::sync::Mutex::default() }
    }

    /// Records that this device holds `call`, forgetting the calls it held that `finished`
    /// says are over (a device that lives for days takes many calls).
    pub(crate) fn holds(&self, call: CallId, finished: impl Fn(CallId) -> bool) {
        let mut held = self.held_calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        held.retain(|earlier| !finished(*earlier));
        if !held.contains(&call) {
            held.push(call);
        }
    }

    /// The answered calls this device holds (see the field), emptied.
    pub(crate) fn take_held_calls(&self) -> Vec<CallId> {
        std::mem::take(&mut self.held_calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub(crate) async fn username(&self, signaling: &Signaling) -> &str {
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

impl Signaling {
    /// The route of call `id` from memory, or read once from the database for a frame of
    /// `user`'s (within the user's `DATABASE_READS_PER_USER`).
    pub(crate) async fn route(&self, id: CallId, user: &UserId) -> Result<Option<Route>, FrameError> {
        if let Some(route) = self.calls.get(id) {
            return Ok(Some(route));
        }
        if self.calls.is_missing(id) {
            return Ok(None);
        }
        if !self.limits.allow_database_read(user) {
            return Err(FrameError::with_detail(
                ErrorCode::RateLimited,
                "Too many frames naming calls the server has to look up; this one was dropped. Slow down.",
            ));
        }
        match self.service.find(id).await {
            Ok(Some(call)) => Ok(Some(self.calls.remember(&call))),
            Ok(None) => {
                self.calls.remember_missing(id);
                Ok(None)
            }
            Err(error) if ringline_domain::is_store_unavailable(&error) => {
                if crate::throttle::database_outage_log_due() {
                    tracing::warn!(%error, "cannot load a call for signaling: the database is unavailable");
                }
                Err(database_unavailable())
            }
            Err(error) => {
                tracing::error!(%error, "cannot load a call for signaling");
                Err(FrameError::with_detail(ErrorCode::InternalError, "The server could not load the call; try again."))
            }
        }
    }

    /// Handles one text frame from `session`. Returns the reply for that session alone
    /// (`pong`, or an error), if any.
    pub async fn handle_text(&self, session: &SessionContext, text: &str) -> Option<String> {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(error) => {
                self.metrics.sockets.refused_frame(error.code);
                return Some(crate::protocol::error_event(&self.sessions.ids.next(), &error, None));
            }
        };
        let call_id = match frame {
            ClientFrame::Offer { call, .. }
            | ClientFrame::Answer { call, .. }
            | ClientFrame::IceCandidate { call, .. }
            | ClientFrame::MediaState { call, .. }
            | ClientFrame::Ringing { call }
            | ClientFrame::End { call, .. } => Some(call),
            _ => None,
        };
        let kind = frame.kind();
        match self.handle_frame(session, frame).await {
            Ok(reply) => {
                self.metrics.sockets.relayed(kind);
                reply
            }
            Err(error) => {
                self.metrics.sockets.refused_frame(error.code);
                let call = call_id.map(CallId::get);
                tracing::debug!(user = %session.user, kind, code = error.code.as_str(), call_id = call, "frame refused");
                Some(crate::protocol::error_event(&self.sessions.ids.next(), &error, call_id))
            }
        }
    }

    pub(crate) async fn handle_frame(
        &self,
        session: &SessionContext,
        frame: ClientFrame<'_>,
    ) -> Result<Option<String>, FrameError> {
        match frame {
            ClientFrame::Ping => Ok(Some(events::pong(&self.sessions.ids.next()))),
            ClientFrame::TypingStart | ClientFrame::TypingStop => self.typing(session, frame).await,
            ClientFrame::End { call, reason } => {
                // Boxed, like the accept below: a change to a call awaits the database, and its
                // future would otherwise make every session's task that much larger.
                Box::pin(self.act(&session.user, call, CallAction::End(reason), Some(session.device)))
                    .await
                    .map_err(refusal)?;
                Ok(None)
            }
            ClientFrame::Offer { call, offer } => {
                let route = self.party_route(session, call, &frame).await?;
                self.callee_device_only(&route, session).await?;
                self.within_call_fan_in(&route, session)?;
                let username = self.announcer.username(&route, &session.user).await;
                self.to_other_party(&route, &session.user, |id| {
                    events::offer(id, &route, &session.user, &username, offer)
                });
                Ok(None)
            }
            ClientFrame::IceCandidate { call, candidate } => {
                let route = self.party_route(session, call, &frame).await?;
                self.callee_device_only(&route, session).await?;
                self.within_call_fan_in(&route, session)?;
                self.to_other_party(&route, &session.user, |id| {
                    events::ice_candidate(id, &route, &session.user, candidate)
                });
                Ok(None)
            }
            ClientFrame::MediaState { call, media } => {
                let route = self.party_route(session, call, &frame).await?;
                self.callee_device_only(&route, session).await?;
                self.within_call_fan_in(&route, session)?;
                self.to_other_party(&route, &session.user, |id| events::media_state(id, &route, &session.user, media));
                if media.video && !media.screen && route.status() == CallStatus::Active && route.video_at().is_none() {
                    self.record_moment(session, route, CallMoment::VideoStarted).await;
                }
                Ok(None)
            }
            ClientFrame::Ringing { call } => {
                let not_found =
                    || FrameError::with_detail(ErrorCode::CallNotFound, "No such call, or not one of yours.");
                let route = self.route(call, &session.user).await?.ok_or_else(not_found)?;
                if route.caller() == &session.user {
                    return Err(FrameError::from(&TransitionError::ReceiverOnly(
                        ringline_domain::Action::ConfirmRinging,
                    )));
                }
                let route = self.party_route(session, call, &frame).await?;
                if route.rang_at().is_none() {
                    self.record_moment(session, route, CallMoment::Rang).await;
                }
                Ok(None)
            }
            ClientFrame::Answer { call, answer } => {
                let route = self.party_route(session, call, &frame).await?;
                let callee = route.receiver() == &session.user;
                // One of the callee's devices takes the call with its first SDP; the others'
                // answers are refused, never relayed (the caller's connection takes one answer).
                if callee {
                    self.claim_as_callee(&route, session).await?;
                }
                self.within_call_fan_in(&route, session)?;
                let route = if route.status().is_unanswered() {
                    // The web client never calls accept/: the receiver's answer accepts the call,
                    // and the caller gets this answer in the acceptance's `call.answer`.
                    let outcome = Box::pin(self.act_with_answer(
                        &session.user,
                        call,
                        CallAction::Accept,
                        Some(session.device),
                        Some(answer),
                    ))
                    .await;
                    match outcome {
                        Ok(Outcome::Changed(transition)) => {
                            // The accept recorded this device: as good as a granted claim.
                            self.calls.confirm_callee_device(call, session.device);
                            self.remember_held(session, call);
                            Arc::new(transition.call)
                        }
                        // Answered meanwhile: over REST (no device: this one may claim the call,
                        // and its answer is the one the caller needs), or by another device
                        // (then this one is refused).
                        Ok(Outcome::AlreadyDone(_))
                        | Err(CallServiceError::Transition(TransitionError::InvalidState {
                            status: CallStatus::Active,
                            ..
                        })) => {
                            self.calls.release_callee_device(route.id(), session.device);
                            self.hold_answered_call(call, session).await?;
                            let accepted = self.route(call, &session.user).await?.ok_or_else(elsewhere)?;
                            self.to_other_party(&accepted, &session.user, |id| {
                                events::answer(id, &accepted, &session.user, Some(answer))
                            });
                            accepted
                        }
                        Err(error) => {
                            self.calls.release_callee_device(route.id(), session.device);
                            return Err(refusal(error));
                        }
                    }
                } else {
                    self.to_other_party(&route, &session.user, |id| {
                        events::answer(id, &route, &session.user, Some(answer))
                    });
                    route
                };
                if callee {
                    self.answered_elsewhere(&route, session);
                }
                Ok(None)
            }
        }
    }

    /// Records `moment` of the call (`route`, as this process knows it) from `session`'s
    /// report. The database keeps the first report only, so of all devices and instances one
    /// is told to the observers (the caller's `call.ringing`). This process's copy learns the
    /// stored moment either way (a report that lost reads the call back once), so that the same
    /// call's next reports here cost nothing; a failure is logged (a lost moment costs a label
    /// in the history, not the call).
    async fn record_moment(&self, session: &SessionContext, route: Route, moment: CallMoment) {
        let known = Call::clone(&route);
        match self.service.record_moment(&session.user, route.id(), moment, Some(known)).await {
            Ok(Some(call)) => {
                self.calls.remember(&call);
            }
            Ok(None) => {
                if let Ok(Some(stored)) = self.service.find(route.id()).await {
                    self.calls.remember(&stored);
                }
            }
            Err(error) if ringline_domain::is_store_unavailable(&error) => {
                if crate::throttle::database_outage_log_due() {
                    tracing::warn!(%error, "cannot record a call's moment: the database is unavailable");
                }
            }
            Err(error) => tracing::warn!(%error, call = %route.id(), "cannot record a call's moment"),
        }
    }

    /// Refuses a frame over what `session`'s user may relay to the other party of the call,
    /// from all of its devices together (`limits.rs`).
    fn within_call_fan_in(&self, route: &Route, session: &SessionContext) -> Result<(), FrameError> {
        let direction = if route.caller() == &session.user { Direction::FromCaller } else { Direction::FromReceiver };
        if self.limits.allow_relay(route.id(), direction) {
            Ok(())
        } else {
            Err(FrameError::with_detail(
                ErrorCode::RateLimited,
                "Too many frames to the other party from all your devices together; this one was dropped. Slow down.",
            ))
        }
    }

    /// Stops the ringing on the callee's other devices with a `call.end` once the callee's SDP
    /// answer came from `session`. Only here is the answering device known: the mobile client
    /// accepts over REST (no device) and then sends this answer, and a `call.end` to the device
    /// that answered would hang it up. Sent on every answer from the callee (a renegotiation
    /// repeats it), which is harmless: a device that is not in the call has nothing to end.
    pub(crate) fn answered_elsewhere(&self, call: &Call, session: &SessionContext) {
        self.streams
            .send(call.receiver(), Some(session.device), |id| events::answered_elsewhere(id, call, &session.user));
    }

    /// The call's route, if `session`'s user is a party and the frame fits the call's state.
    pub(crate) async fn party_route(
        &self,
        session: &SessionContext,
        id: CallId,
        frame: &ClientFrame<'_>,
    ) -> Result<Route, FrameError> {
        let not_found = || FrameError::with_detail(ErrorCode::CallNotFound, "No such call, or not one of yours.");
        let route = self.route(id, &session.user).await?.ok_or_else(not_found)?;
        if !route.is_party(&session.user) {
            return Err(not_found());
        }
        if !allowed_in(route.status(), frame, route.caller() == &session.user) {
            return Err(FrameError::with_detail(
                ErrorCode::InvalidCallState,
                format!("{} is not allowed while the call is {}.", frame.kind(), route.status()),
            ));
        }
        Ok(route)
    }

    pub(crate) fn to_other_party(&self, call: &Call, sender: &UserId, event: impl Fn(&str) -> String) {
        if let Some(other) = call.other_party(sender) {
            self.streams.send(other, None, event);
        }
    }

    pub(crate) async fn typing(
        &self,
        session: &SessionContext,
        frame: ClientFrame<'_>,
    ) -> Result<Option<String>, FrameError> {
        let SessionKind::Chat(conversation) = session.kind else {
            return Err(FrameError::new(ErrorCode::WrongSocket));
        };
        if !self.limits.allow_typing(conversation) {
            return Err(FrameError::with_detail(
                ErrorCode::RateLimited,
                "Too many typing indicators in this conversation; this one was dropped. Slow down.",
            ));
        }
        let username = session.username(self).await;
        let kind = if matches!(frame, ClientFrame::TypingStart) { "typing.started" } else { "typing.stopped" };
        let payload =
            events::typing(kind, &self.sessions.ids.next(), &session.user, username, &conversation.to_string());
        self.streams.router().route(Signal {
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
pub(crate) fn elsewhere() -> FrameError {
    FrameError::new(ErrorCode::AnsweredElsewhere)
}

/// The database did not answer: nothing was done, and the same frame can be sent again.
fn database_unavailable() -> FrameError {
    FrameError::new(ErrorCode::DatabaseUnavailable)
}

/// The refusal of a socket action the call use cases turned down: the catalogue's mapping, as
/// REST answers it; a failure of the server is logged here.
pub(crate) fn refusal(error: CallServiceError) -> FrameError {
    let refusal = FrameError::from(&error);
    match refusal.code {
        ErrorCode::DatabaseUnavailable if crate::throttle::database_outage_log_due() => {
            tracing::warn!(error = %error, "a socket action failed: the database is unavailable");
        }
        ErrorCode::InternalError => tracing::error!(error = %error, "a socket action failed"),
        _ => {}
    }
    refusal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_remembers_the_calls_it_holds_until_they_are_over() {
        let user = UserId::parse("bob").expect("an id");
        let session = SessionContext::new(DeviceId::new(1, 1), user, SessionKind::Notifications);
        let call = |id| CallId::new(id).expect("an id");
        session.holds(call(1), |_| false);
        session.holds(call(1), |_| false);
        session.holds(call(2), |_| false);
        // Holding a third call forgets the one that is over.
        session.holds(call(3), |id| id == call(1));
        assert_eq!(session.take_held_calls(), vec![call(2), call(3)]);
        assert!(session.take_held_calls().is_empty(), "taken once");
    }
}
