//! One test per transition and per forbidden transition, then property tests over random
//! sequences of actions.

use std::time::Duration;

use proptest::prelude::*;
use ringline_domain::{
    Action, Call, CallEvent, CallId, CallStatus, CallType, ConversationId, DeviceId, EndReason, HangupReason, NewCall,
    Outcome, Timestamp, TransitionError, UserId,
};

const RING_TIMEOUT: Duration = Duration::from_secs(45);

fn user(name: &str) -> UserId {
    UserId::parse(name).expect("test ids are valid")
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_unix_micros(1_700_000_000_000_000 + seconds * 1_000_000).expect("in range")
}

fn ringing() -> Call {
    NewCall::ring(user("alice"), user("bob"), CallType::Video, ConversationId::new(7).ok(), at(0))
        .expect("not a self-call")
        .into_call(CallId::new(1).expect("positive"))
}

fn changed(outcome: Result<Outcome, TransitionError>) -> (Call, CallEvent) {
    match outcome {
        Ok(Outcome::Changed(transition)) => (transition.call, transition.event),
        other => panic!("expected a change, got {other:?}"),
    }
}

fn active() -> Call {
    changed(ringing().accept(&user("bob"), at(3))).0
}

#[test]
fn initiate_rings_the_receiver() {
    let call = ringing();
    assert_eq!(call.status(), CallStatus::Ringing);
    assert_eq!(call.started_at(), at(0));
    assert_eq!(call.answered_at(), None);
    assert_eq!(call.duration_seconds(), None);
    assert_eq!(call.conversation(), ConversationId::new(7).ok());
}

#[test]
fn nobody_can_call_themselves() {
    let attempt = NewCall::ring(user("alice"), user("alice"), CallType::Voice, None, at(0));
    assert_eq!(attempt, Err(TransitionError::SelfCall));
}

#[test]
fn the_receiver_accepts_a_ringing_call() {
    let (call, event) = changed(ringing().accept(&user("bob"), at(3)));
    assert_eq!(call.status(), CallStatus::Active);
    assert_eq!(call.answered_at(), Some(at(3)));
    assert_eq!(call.updated_at(), at(3));
    assert_eq!(event, CallEvent::Accepted { by: user("bob") });
}

#[test]
fn the_caller_cannot_accept_and_strangers_cannot_touch_a_call() {
    assert_eq!(ringing().accept(&user("alice"), at(1)), Err(TransitionError::ReceiverOnly(Action::Accept)));
    assert_eq!(ringing().accept(&user("eve"), at(1)), Err(TransitionError::NotAParty));
    assert_eq!(ringing().reject(&user("alice"), at(1)), Err(TransitionError::ReceiverOnly(Action::Reject)));
    assert_eq!(ringing().reject(&user("eve"), at(1)), Err(TransitionError::NotAParty));
    assert_eq!(active().end(&user("eve"), at(9)), Err(TransitionError::NotAParty));
}

#[test]
fn only_a_ringing_call_can_be_accepted() {
    let error = active().accept(&user("bob"), at(4)).unwrap_err();
    assert_eq!(error, TransitionError::InvalidState { action: Action::Accept, status: CallStatus::Active });
    assert_eq!(error.to_string(), "call is already active");
    let missed = changed(ringing().expire(at(45), RING_TIMEOUT)).0;
    assert!(matches!(missed.accept(&user("bob"), at(46)), Err(TransitionError::InvalidState { .. })));
}

#[test]
fn the_receiver_declines_a_ringing_call_and_may_repeat_it() {
    let (call, event) = changed(ringing().reject(&user("bob"), at(2)));
    assert_eq!(call.status(), CallStatus::Rejected);
    assert_eq!(call.end_reason(), Some(EndReason::Declined));
    assert_eq!(call.ended_at(), Some(at(2)));
    assert_eq!(event, CallEvent::Rejected { by: user("bob") });
    assert_eq!(call.reject(&user("bob"), at(5)), Ok(Outcome::AlreadyDone(call.clone())));
}

#[test]
fn an_answered_call_cannot_be_rejected() {
    assert_eq!(
        active().reject(&user("bob"), at(4)),
        Err(TransitionError::InvalidState { action: Action::Reject, status: CallStatus::Active })
    );
}

#[test]
fn ending_an_active_call_measures_its_duration_on_the_server() {
    let (call, event) = changed(active().end(&user("alice"), at(63)));
    assert_eq!(call.status(), CallStatus::Ended);
    assert_eq!(call.duration_seconds(), Some(60));
    assert_eq!(call.end_reason(), Some(EndReason::UserHangup));
    assert_eq!(event, CallEvent::Ended { by: Some(user("alice")), duration_seconds: 60 });
}

#[test]
fn the_caller_ending_a_ringing_call_cancels_it() {
    let (call, event) = changed(ringing().end(&user("alice"), at(5)));
    assert_eq!(call.status(), CallStatus::Cancelled);
    assert_eq!(call.end_reason(), Some(EndReason::CallerCancelled));
    assert_eq!(call.duration_seconds(), None);
    assert_eq!(event, CallEvent::Cancelled { by: user("alice") });
}

#[test]
fn the_receiver_ending_a_ringing_call_declines_it() {
    let (call, event) = changed(ringing().end(&user("bob"), at(5)));
    assert_eq!(call.status(), CallStatus::Rejected);
    assert_eq!(event, CallEvent::Rejected { by: user("bob") });
}

#[test]
fn ending_a_finished_call_succeeds_and_changes_nothing() {
    let ended = changed(active().end(&user("bob"), at(10))).0;
    for actor in ["alice", "bob"] {
        assert_eq!(ended.end(&user(actor), at(99)), Ok(Outcome::AlreadyDone(ended.clone())));
    }
}

#[test]
fn an_unanswered_call_expires_after_the_ring_timeout() {
    assert_eq!(ringing().expire(at(44), RING_TIMEOUT), Err(TransitionError::NotYetDue));
    let (call, event) = changed(ringing().expire(at(45), RING_TIMEOUT));
    assert_eq!(call.status(), CallStatus::Missed);
    assert_eq!(call.end_reason(), Some(EndReason::InviteTimeout));
    assert_eq!(event, CallEvent::Missed);
}

#[test]
fn an_answered_call_never_expires() {
    assert_eq!(
        active().expire(at(500), RING_TIMEOUT),
        Err(TransitionError::InvalidState { action: Action::Expire, status: CallStatus::Active })
    );
}

#[test]
fn a_party_reporting_failed_media_records_why_the_call_ended() {
    let (call, event) = changed(active().end_because(&user("bob"), at(13), HangupReason::IceFailed));
    assert_eq!(call.end_reason(), Some(EndReason::IceFailed));
    assert_eq!(call.duration_seconds(), Some(10));
    assert_eq!(event, CallEvent::Ended { by: Some(user("bob")), duration_seconds: 10 });
    let (cancelled, _) = changed(ringing().end_because(&user("alice"), at(2), HangupReason::IceFailed));
    assert_eq!(cancelled.end_reason(), Some(EndReason::CallerCancelled), "an unanswered call is just cancelled");
}

const GRACE: Duration = Duration::from_secs(30);

#[test]
fn a_call_both_parties_left_ends_when_the_last_one_left_once_the_grace_period_is_over() {
    // Answered at 3, the last socket went away at 40.
    assert_eq!(active().lose_connection(at(40), at(69), GRACE), Err(TransitionError::NotYetDue));
    let (call, event) = changed(active().lose_connection(at(40), at(75), GRACE));
    assert_eq!(call.status(), CallStatus::Ended);
    assert_eq!(call.end_reason(), Some(EndReason::ConnectionLost));
    assert_eq!(call.ended_at(), Some(at(40)), "not the moment the sweep ran");
    assert_eq!(call.duration_seconds(), Some(37));
    assert_eq!(event, CallEvent::Ended { by: None, duration_seconds: 37 });
    // Seen last before the answer (a REST-only accept): the call lasted nothing.
    assert_eq!(changed(active().lose_connection(at(1), at(99), GRACE)).0.duration_seconds(), Some(0));
    let ended = changed(active().lose_connection(at(40), at(75), GRACE)).0;
    assert_eq!(
        ended.lose_connection(at(40), at(99), GRACE),
        Err(TransitionError::InvalidState { action: Action::Abandon, status: CallStatus::Ended })
    );
}

#[test]
fn a_ringing_call_whose_caller_left_is_cancelled_once_the_grace_period_is_over() {
    assert_eq!(ringing().lose_connection(at(2), at(31), GRACE), Err(TransitionError::NotYetDue));
    let (call, event) = changed(ringing().lose_connection(at(2), at(40), GRACE));
    assert_eq!(call.status(), CallStatus::Cancelled);
    assert_eq!(call.end_reason(), Some(EndReason::ConnectionLost));
    assert_eq!(call.ended_at(), Some(at(2)));
    assert_eq!(event, CallEvent::Cancelled { by: user("alice") });
}

#[test]
fn a_call_that_reaches_the_maximum_length_ends_exactly_at_it() {
    let max = Duration::from_secs(3600);
    assert_eq!(active().cap_duration(at(3602), max), Err(TransitionError::NotYetDue));
    let (call, _) = changed(active().cap_duration(at(90_000), max));
    assert_eq!(call.end_reason(), Some(EndReason::MaxDuration));
    assert_eq!(call.duration_seconds(), Some(3600));
    assert_eq!(call.ended_at(), Some(at(3603)));
}

#[test]
fn a_clock_running_backwards_cannot_make_time_run_backwards_in_a_call() {
    let (call, _) = changed(active().end(&user("alice"), at(1)));
    assert_eq!(call.ended_at(), Some(at(3)));
    assert_eq!(call.duration_seconds(), Some(0));
}

#[test]
fn restore_rejects_records_no_transition_could_produce() {
    let mut parts = active().to_parts();
    parts.duration_seconds = Some(5);
    assert!(Call::restore(parts).is_err());
    let mut parts = ringing().to_parts();
    parts.answered_at = Some(at(1));
    assert!(Call::restore(parts).is_err());
    let mut parts = active().to_parts();
    parts.answered_at = Some(at(-1));
    assert!(Call::restore(parts).is_err());
    let mut parts = ringing().to_parts();
    parts.callee_device = Some(DeviceId::new(1, 1));
    assert!(Call::restore(parts).is_err(), "an unanswered call belongs to no device");
    assert_eq!(Call::restore(active().to_parts()), Ok(active()));
}

#[test]
fn an_answered_call_belongs_to_the_device_that_answered_it() {
    let phone = DeviceId::new(0xabc, 7);
    let (call, _) = changed(ringing().accept_on(&user("bob"), at(3), Some(phone)));
    assert_eq!(call.callee_device(), Some(phone));
    assert_eq!(Call::restore(call.to_parts()), Ok(call.clone()));
    let (ended, _) = changed(call.end(&user("alice"), at(9)));
    assert_eq!(ended.callee_device(), Some(phone), "kept on the record");
    assert_eq!(active().callee_device(), None, "an accept over REST names no device");
}

#[test]
fn device_ids_read_back_what_they_write() {
    let device = DeviceId::new(u64::MAX, 42);
    assert_eq!(device.to_string().parse::<DeviceId>(), Ok(device));
    assert_eq!("0000000000000abc-7".parse::<DeviceId>(), Ok(DeviceId::new(0xabc, 7)));
    for bad in ["", "abc-7", "0000000000000abc", "0000000000000abc-", "000000000000zabc-7", "0000000000000abc--7"] {
        assert!(bad.parse::<DeviceId>().is_err(), "{bad:?}");
    }
}

#[derive(Debug, Clone)]
enum Step {
    Accept(usize),
    Reject(usize),
    End(usize),
    Expire,
}

fn step() -> impl Strategy<Value = (Step, i64)> {
    let actor = 0usize..3;
    let step = prop_oneof![
        actor.clone().prop_map(Step::Accept),
        actor.clone().prop_map(Step::Reject),
        actor.prop_map(Step::End),
        Just(Step::Expire),
    ];
    // Clock readings may go backwards (two instances with skewed clocks).
    (step, -30i64..120)
}

proptest! {
    #[test]
    fn random_action_sequences_keep_every_invariant(steps in proptest::collection::vec(step(), 0..12)) {
        let actors = [user("alice"), user("bob"), user("eve")];
        let mut call = ringing();
        let mut clock = 0i64;
        for (step, delta) in steps {
            clock += delta;
            let now = at(clock);
            let before = call.clone();
            let outcome = match &step {
                Step::Accept(who) => call.accept(&actors[*who], now),
                Step::Reject(who) => call.reject(&actors[*who], now),
                Step::End(who) => call.end(&actors[*who], now),
                Step::Expire => call.expire(now, RING_TIMEOUT),
            };
            match outcome {
                Ok(Outcome::Changed(transition)) => {
                    prop_assert!(before.status().is_open(), "a finished call changed: {before:?}");
                    prop_assert_eq!(transition.from, before.status());
                    call = transition.call;
                }
                Ok(Outcome::AlreadyDone(same)) => prop_assert_eq!(&same, &before),
                Err(_) => {}
            }
            // Every reachable call passes the storage invariants (timestamps never go
            // backwards; a duration exists exactly for answered calls that ended).
            prop_assert_eq!(Call::restore(call.to_parts()), Ok(call.clone()));
            prop_assert!(call.updated_at() >= before.updated_at());
            prop_assert_eq!(call.duration_seconds().is_some(), call.answered_at().is_some() && call.ended_at().is_some());
            if before.status().is_finished() {
                prop_assert_eq!(&call, &before);
            }
        }
    }

    #[test]
    fn the_measured_duration_is_the_time_between_answer_and_end(answer in 0i64..50, talk in 0i64..10_000) {
        let active = changed(ringing().accept(&user("bob"), at(answer))).0;
        let ended = changed(active.end(&user("alice"), at(answer + talk))).0;
        prop_assert_eq!(ended.duration_seconds(), Some(u32::try_from(talk).expect("small")));
    }
}
