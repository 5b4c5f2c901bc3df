//! Helpers shared by the storage test suites: every test body runs once on SQLite and once on
//! PostgreSQL, each time on a fresh database.

#![allow(dead_code)] // not every helper is used by every test module

use std::future::Future;
use std::time::Duration;

use ringline_domain::{Call, CallId, CallRepository, CallType, NewCall, Outcome, Timestamp, Transition, UserId};
use ringline_storage::Storage;
use ringline_storage::testing::{Backend, TestDatabase};

pub const RING_TIMEOUT: Duration = Duration::from_secs(45);

/// Runs `test` against a fresh, migrated database of `backend`, then removes the database.
pub async fn run<F, Fut>(backend: Backend, test: F)
where
    F: FnOnce(Storage) -> Fut,
    Fut: Future<Output = ()>,
{
    let database = TestDatabase::new(backend).await;
    test(database.storage().clone()).await;
    database.cleanup().await;
}

/// Declares each listed `async fn name(Storage)` as two tests, `sqlite::name` and
/// `postgres::name`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::common::run(ringline_storage::testing::Backend::Sqlite, super::$name).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::common::run(ringline_storage::testing::Backend::Postgres, super::$name).await;
                }
            )+
        }
    };
}

pub fn user(name: &str) -> UserId {
    UserId::parse(name).expect("test ids are valid")
}

/// `seconds` after a fixed instant, so tests never depend on the wall clock.
pub fn at(seconds: i64) -> Timestamp {
    Timestamp::from_unix_micros(1_700_000_000_123_456 + seconds * 1_000_000).expect("in range")
}

pub fn new_call(caller: &str, receiver: &str, started: i64) -> NewCall {
    NewCall::ring(user(caller), user(receiver), CallType::Video, None, at(started)).expect("distinct parties")
}

pub async fn ring(repo: &impl CallRepository, caller: &str, receiver: &str, started: i64) -> Call {
    repo.create(new_call(caller, receiver, started)).await.expect("lines are free")
}

/// The transition an outcome carries; panics on `AlreadyDone`.
pub fn transition(outcome: Outcome) -> Transition {
    match outcome {
        Outcome::Changed(transition) => transition,
        Outcome::AlreadyDone(call) => panic!("expected a change to call {}", call.id()),
    }
}

pub fn call_id(raw: i64) -> CallId {
    CallId::new(raw).expect("positive")
}
