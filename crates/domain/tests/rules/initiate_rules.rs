//! Self-calls, busy lines and glare, decided from the parties' open calls.

use ringline_domain::{
    Call, CallId, CallType, InitiateDecision, InitiateRefusal, NewCall, Outcome, Timestamp, UserId, decide_initiate,
};

fn user(name: &str) -> UserId {
    UserId::parse(name).expect("valid")
}

fn now() -> Timestamp {
    Timestamp::from_unix_micros(1_700_000_000_000_000).expect("in range")
}

fn ringing(id: i64, caller: &str, receiver: &str) -> Call {
    NewCall::ring(user(caller), user(receiver), CallType::Voice, None, now())
        .expect("distinct parties")
        .into_call(CallId::new(id).expect("positive"))
}

fn answered(call: &Call) -> Call {
    match call.accept(call.receiver(), now()) {
        Ok(Outcome::Changed(transition)) => transition.call,
        other => panic!("accept failed: {other:?}"),
    }
}

#[test]
fn free_lines_ring() {
    assert_eq!(decide_initiate(&user("a"), &user("b"), &[], &[]), Ok(InitiateDecision::Ring));
}

#[test]
fn self_calls_are_refused() {
    assert_eq!(decide_initiate(&user("a"), &user("a"), &[], &[]), Err(InitiateRefusal::SelfCall));
}

#[test]
fn a_receiver_ringing_or_talking_with_someone_else_is_busy() {
    let ringing_c = ringing(1, "c", "b");
    assert_eq!(
        decide_initiate(&user("a"), &user("b"), &[], std::slice::from_ref(&ringing_c)),
        Err(InitiateRefusal::ReceiverBusy)
    );
    let talking = answered(&ringing_c);
    assert_eq!(decide_initiate(&user("a"), &user("b"), &[], &[talking]), Err(InitiateRefusal::ReceiverBusy));
    let calling_out = ringing(2, "b", "c");
    assert_eq!(decide_initiate(&user("a"), &user("b"), &[], &[calling_out]), Err(InitiateRefusal::ReceiverBusy));
}

#[test]
fn a_caller_already_on_a_line_must_finish_first() {
    let talking = answered(&ringing(1, "a", "c"));
    assert_eq!(decide_initiate(&user("a"), &user("b"), &[talking], &[]), Err(InitiateRefusal::CallerBusy));
    let being_rung_by_c = ringing(2, "c", "a");
    assert_eq!(decide_initiate(&user("a"), &user("b"), &[being_rung_by_c], &[]), Err(InitiateRefusal::CallerBusy));
}

#[test]
fn glare_answers_the_crossing_call_instead_of_making_a_second_one() {
    // b is ringing a; a now calls b.
    let crossing = ringing(9, "b", "a");
    let decision =
        decide_initiate(&user("a"), &user("b"), std::slice::from_ref(&crossing), std::slice::from_ref(&crossing));
    assert_eq!(decision, Ok(InitiateDecision::AnswerCrossingCall(CallId::new(9).expect("positive"))));
}

#[test]
fn an_answered_call_between_the_two_is_not_glare() {
    let talking = answered(&ringing(9, "b", "a"));
    let decision =
        decide_initiate(&user("a"), &user("b"), std::slice::from_ref(&talking), std::slice::from_ref(&talking));
    assert_eq!(decision, Err(InitiateRefusal::CallerBusy));
}

#[test]
fn glare_is_recognised_even_when_only_the_receivers_list_has_caught_up() {
    // The caller's open calls were read just before the crossing call was created, the
    // receiver's just after.
    let crossing = ringing(9, "b", "a");
    let decision = decide_initiate(&user("a"), &user("b"), &[], std::slice::from_ref(&crossing));
    assert_eq!(decision, Ok(InitiateDecision::AnswerCrossingCall(CallId::new(9).expect("positive"))));
}
