//! Who may start a call right now.
//!
//! Ringline gives every user one *line*: a user is in at most one open call (ringing, in
//! either direction, or active) at a time. From that:
//!
//! - **self-call**: calling yourself is refused;
//! - **glare**: if the receiver is already ringing the caller (B calls A while A's phone shows
//!   B's incoming call), the two intents meet in that one call: the caller's attempt answers
//!   the existing call instead of creating a crossing one. The existing call keeps its caller,
//!   type and offer, so the client that placed it first stays the one that offers media;
//! - **caller busy**: a caller whose line is taken by any other open call (including an
//!   incoming call from someone else that is still ringing) must finish it first;
//! - **receiver busy**: a receiver whose line is taken gets `user_busy`.
//!
//! [`decide_initiate`] applies these rules to the open calls a repository read. The read and
//! the insert are not atomic, so the repository enforces the line rule itself when it creates
//! a call (two users' lines are claimed in the same transaction as the insert) and answers
//! [`crate::RepositoryError::LineBusy`] when someone got there first; the caller of
//! `decide_initiate` then reads again and decides again, and this time sees the winning call.

use crate::call::Call;
use crate::values::{CallId, CallStatus, UserId};

/// What to do with a call attempt that is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitiateDecision {
    /// Create a new call and ring the receiver.
    Ring,
    /// Glare: the receiver is already ringing the caller; accept that call on the caller's
    /// behalf instead.
    AnswerCrossingCall(CallId),
}

/// Why a call attempt is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InitiateRefusal {
    #[error("you cannot call yourself")]
    SelfCall,
    #[error("you are already in a call")]
    CallerBusy,
    #[error("the user is busy on another call")]
    ReceiverBusy,
}

/// Decides a call attempt from `caller` to `receiver`, given the open calls of each.
///
/// # Errors
/// An [`InitiateRefusal`] per the rules in the module documentation.
pub fn decide_initiate(
    caller: &UserId,
    receiver: &UserId,
    caller_open_calls: &[Call],
    receiver_open_calls: &[Call],
) -> Result<InitiateDecision, InitiateRefusal> {
    if caller == receiver {
        return Err(InitiateRefusal::SelfCall);
    }
    let open = |calls: &[Call]| calls.iter().filter(|call| call.status().is_open()).count();
    // The crossing call is in both lists, but the two lists are read separately and may be
    // from different moments: look in both, or a call created between the reads would make a
    // glare look like a busy receiver.
    let crossing = caller_open_calls
        .iter()
        .chain(receiver_open_calls)
        .find(|call| call.status() == CallStatus::Ringing && call.caller() == receiver && call.receiver() == caller);
    if let Some(crossing) = crossing {
        return Ok(InitiateDecision::AnswerCrossingCall(crossing.id()));
    }
    if open(caller_open_calls) > 0 {
        return Err(InitiateRefusal::CallerBusy);
    }
    if open(receiver_open_calls) > 0 {
        return Err(InitiateRefusal::ReceiverBusy);
    }
    Ok(InitiateDecision::Ring)
}
