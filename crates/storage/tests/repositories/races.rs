//! Many writers, one call: exactly one transition wins, every other gets a clear conflict,
//! and the stored record (and the busy lines) stay consistent. Run on SQLite and PostgreSQL.

use std::sync::Arc;

use crate::common::{RING_TIMEOUT, at, new_call, ring, user};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use ringline_domain::{Call, CallRepository, CallStatus, DeviceClaim, DeviceId, Outcome, RepositoryError, Transition};
use ringline_storage::Storage;
use tokio::sync::Barrier;

on_both_databases!(
    racing_transitions_on_one_call_have_exactly_one_winner,
    racing_call_attempts_to_one_receiver_ring_it_once,
    crossing_calls_racing_each_other_leave_one_call,
    random_action_sequences_store_what_the_domain_computed,
    devices_claiming_an_answered_call_at_once_leave_one_holder,
);

/// Every action the two parties and the ring timer can take on a ringing call, each computed
/// from the same snapshot, as concurrent requests would.
fn competing_transitions(call: &Call) -> Vec<Transition> {
    let caller = call.caller().clone();
    let receiver = call.receiver().clone();
    let attempts = [
        call.accept(&receiver, at(3)),
        call.reject(&receiver, at(3)),
        call.end(&caller, at(3)),
        call.end(&receiver, at(3)),
        call.expire(at(60), RING_TIMEOUT),
    ];
    attempts
        .into_iter()
        .map(|outcome| match outcome {
            Ok(Outcome::Changed(transition)) => transition,
            other => panic!("every action changes a ringing call: {other:?}"),
        })
        .collect()
}

async fn racing_transitions_on_one_call_have_exactly_one_winner(storage: Storage) {
    const COPIES: usize = 5; // 5 kinds of action x 5 = 25 concurrent writers per call
    for round in 0..8 {
        let repo = storage.calls();
        let caller = format!("caller{round}");
        let receiver = format!("receiver{round}");
        let call = ring(&repo, &caller, &receiver, 0).await;
        let attempts: Vec<Transition> = competing_transitions(&call).into_iter().cycle().take(5 * COPIES).collect();
        let barrier = Arc::new(Barrier::new(attempts.len()));
        let tasks: Vec<_> = attempts
            .into_iter()
            .map(|attempt| {
                let repo = storage.calls();
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    let result = repo.apply(&attempt).await;
                    (attempt, result)
                })
            })
            .collect();

        let mut winners = Vec::new();
        for task in tasks {
            let (attempt, result) = task.await.expect("task");
            match result {
                Ok(()) => winners.push(attempt),
                Err(RepositoryError::Conflict { current }) => {
                    assert_ne!(current, CallStatus::Ringing)
                }
                Err(other) => panic!("a loser must see a conflict, got {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one writer wins");
        let winner = winners.remove(0);
        let stored = repo.get(call.id()).await.expect("read").expect("exists");
        assert_eq!(stored, winner.call, "the stored row is the winner's, whole");

        // The busy lines agree with the winner: held while active, free once finished.
        let next = repo.create(new_call(&caller, &format!("other{round}"), 1)).await;
        if stored.status() == CallStatus::Active {
            assert!(matches!(next, Err(RepositoryError::LineBusy { .. })), "{next:?}");
        } else {
            next.expect("a finished call frees its lines");
        }
    }
}

/// The receiver's devices claiming a call answered over REST, all at once (as from several
/// instances): exactly one is granted, and every other is told which one holds it.
async fn devices_claiming_an_answered_call_at_once_leave_one_holder(storage: Storage) {
    const DEVICES: u64 = 12;
    for round in 0..8 {
        let repo = storage.calls();
        let (caller, receiver) = (format!("caller{round}"), format!("receiver{round}"));
        let call = ring(&repo, &caller, &receiver, 0).await;
        let id = call.id();
        let Ok(Outcome::Changed(accepted)) = call.accept(&user(&receiver), at(1)) else { panic!("accepts") };
        repo.apply(&accepted).await.expect("accept");
        let barrier = Arc::new(Barrier::new(usize::try_from(DEVICES).expect("few")));
        let tasks: Vec<_> = (0..DEVICES)
            .map(|n| {
                let repo = storage.calls();
                let barrier = Arc::clone(&barrier);
                let device = DeviceId::new(n % 3, n);
                tokio::spawn(async move {
                    barrier.wait().await;
                    (device, repo.claim_callee_device(id, device, None).await.expect("claim"))
                })
            })
            .collect();
        let mut granted = Vec::new();
        let mut told = Vec::new();
        for task in tasks {
            match task.await.expect("task") {
                (device, DeviceClaim::Granted) => granted.push(device),
                (_, DeviceClaim::HeldBy(holder)) => told.push(holder),
                (_, other) => panic!("the call is active: {other:?}"),
            }
        }
        assert_eq!(granted.len(), 1, "round {round}: exactly one device holds the call");
        assert!(told.iter().all(|holder| *holder == granted[0]), "every other is told the holder");
        let stored = repo.get(id).await.expect("read").expect("exists");
        assert_eq!(stored.callee_device(), Some(granted[0]));
    }
}

async fn racing_call_attempts_to_one_receiver_ring_it_once(storage: Storage) {
    let callers: Vec<String> = (0..16).map(|i| format!("caller{i}")).collect();
    let barrier = Arc::new(Barrier::new(callers.len()));
    let tasks: Vec<_> = callers
        .iter()
        .map(|caller| {
            let repo = storage.calls();
            let barrier = Arc::clone(&barrier);
            let attempt = new_call(caller, "popular", 0);
            tokio::spawn(async move {
                barrier.wait().await;
                repo.create(attempt).await
            })
        })
        .collect();
    let mut rung = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => rung += 1,
            Err(RepositoryError::LineBusy { user }) => assert_eq!(user.as_str(), "popular"),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(rung, 1);
    assert_eq!(storage.calls().open_calls_of(&user("popular")).await.expect("read").len(), 1);
}

async fn crossing_calls_racing_each_other_leave_one_call(storage: Storage) {
    for round in 0..10 {
        let a = format!("a{round}");
        let b = format!("b{round}");
        let barrier = Arc::new(Barrier::new(2));
        let spawn = |caller: &str, receiver: &str| {
            let repo = storage.calls();
            let barrier = Arc::clone(&barrier);
            let attempt = new_call(caller, receiver, 0);
            tokio::spawn(async move {
                barrier.wait().await;
                repo.create(attempt).await
            })
        };
        let (forward, backward) = (spawn(&a, &b), spawn(&b, &a));
        let results = [forward.await.expect("task"), backward.await.expect("task")];
        let created = results.iter().filter(|result| result.is_ok()).count();
        assert_eq!(created, 1, "round {round}: {results:?}");
        assert!(
            results.iter().any(|result| matches!(result, Err(RepositoryError::LineBusy { .. }))),
            "the loser is told the line is busy, not a storage failure: {results:?}"
        );
        assert_eq!(storage.calls().open_calls_of(&user(&a)).await.expect("read").len(), 1);
    }
}

#[derive(Debug, Clone)]
enum Step {
    Accept(bool),
    Reject(bool),
    End(bool),
    Expire,
}

fn steps() -> impl Strategy<Value = Vec<(Step, i64)>> {
    let step = prop_oneof![
        any::<bool>().prop_map(Step::Accept),
        any::<bool>().prop_map(Step::Reject),
        any::<bool>().prop_map(Step::End),
        Just(Step::Expire),
    ];
    proptest::collection::vec((step, 0i64..40), 0..8)
}

/// Applies random action sequences through the repository and checks after every step that the
/// stored call is exactly the one the domain computed: timestamps, durations and finished
/// calls survive the database unchanged.
async fn random_action_sequences_store_what_the_domain_computed(storage: Storage) {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(24));
    let mut sequences = Vec::new();
    for _ in 0..24 {
        sequences.push(steps().new_tree(&mut runner).expect("generate").current());
    }
    let repo = storage.calls();
    for (case, sequence) in sequences.into_iter().enumerate() {
        let (caller, receiver) = (user(&format!("c{case}")), user(&format!("r{case}")));
        let mut call = ring(&repo, caller.as_str(), receiver.as_str(), 0).await;
        let mut clock = 0;
        for (step, delta) in sequence {
            clock += delta;
            let party = |is_caller: bool| if is_caller { &caller } else { &receiver };
            let outcome = match step {
                Step::Accept(by_caller) => call.accept(party(by_caller), at(clock)),
                Step::Reject(by_caller) => call.reject(party(by_caller), at(clock)),
                Step::End(by_caller) => call.end(party(by_caller), at(clock)),
                Step::Expire => call.expire(at(clock), RING_TIMEOUT),
            };
            if let Ok(Outcome::Changed(transition)) = outcome {
                repo.apply(&transition).await.expect("a fresh transition applies");
                call = transition.call;
            }
            assert_eq!(repo.get(call.id()).await.expect("read").as_ref(), Some(&call));
        }
    }
}
