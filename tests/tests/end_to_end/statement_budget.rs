//! Deterministic guards on the database work behind the hot paths: the number of SQL
//! statements of one whole call cycle, as the load generator drives it (initiate, accept and
//! end over REST with both parties' notification sockets open), and of one socket connect.
//! Counted by the storage itself (every statement sea-orm runs; a transaction's `BEGIN` and
//! `COMMIT` would not be counted, so the comments say where there is none). A change that adds a round
//! trip fails here, on any machine, instead of showing up as a slower benchmark.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ringline_tests::{DatabaseBackend, TestApp, on_both_databases};
use serde_json::json;

/// Waits until the count stops moving (background work of the step just taken, such as the
/// notification stored after `call.incoming`, is included) and returns it, resetting it.
async fn settled(counter: &AtomicUsize) -> usize {
    let mut last = counter.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = counter.load(Ordering::Relaxed);
        if now == last {
            return counter.swap(0, Ordering::Relaxed);
        }
        last = now;
    }
}

/// Reads events until one of type `kind`, as the load generator does.
async fn until(socket: &mut ringline_tests::WsClient, kind: &str) {
    while let Some(event) = socket.next_event_within(ringline_tests::EVENT_WAIT).await {
        if event["type"] == kind {
            return;
        }
    }
    panic!("no {kind} event");
}

/// Statements of one call cycle: alice on `caller_side` rings bob on `callee_side`, bob
/// accepts there, alice hangs up; counted step by step (initiate, accept, end).
async fn cycle(caller_side: &TestApp, callee_side: &TestApp, counter: &AtomicUsize) -> (usize, usize, usize) {
    let (alice, bob) = (caller_side.user("alice").await, caller_side.user("bob").await);
    let mut alice_socket = caller_side.notifications_socket(&alice).await;
    let mut bob_socket = callee_side.notifications_socket(&bob).await;
    settled(counter).await;

    let id = caller_side.ring(&alice, "bob").await;
    until(&mut bob_socket, "notification.created").await;
    // Both parties' profiles in one read, what the call policy decides from (blocks either
    // way, the callee's settings, the caller's recent calls: one read), the call row (whose insert
    // claims both lines through the database's trigger: no transaction), the incoming-call
    // notification, and the callee's browsers to ring with Web Push (none here).
    let initiate = settled(counter).await;
    callee_side.post(&format!("/api/calls/{id}/accept/"), &bob, json!({})).await.expect(200);
    until(&mut alice_socket, "call.answer").await;
    // One compare-and-set UPDATE, no transaction; the call and profiles come from memory.
    let accept = settled(counter).await;
    caller_side.post(&format!("/api/calls/{id}/end/"), &alice, json!({"duration_seconds": 3})).await.expect(200);
    until(&mut bob_socket, "call.end").await;
    // The compare-and-set UPDATE, which frees both lines through the trigger: no transaction.
    let end = settled(counter).await;
    (initiate, accept, end)
}

async fn a_call_cycle_stays_within_its_statement_budget(backend: DatabaseBackend) {
    let (app, counter) = TestApp::spawn_counting_statements(backend).await;
    assert_eq!(cycle(&app, &app, &counter).await, (5, 1, 1), "statements for initiate, accept, end");
    app.stop().await;
}

/// The same cycle with the parties on two instances: the instance that did not start the call
/// keeps the copy the other sends over the bus (with the parties' profiles), so neither reads
/// the call or the profiles back before acting on it.
async fn a_call_across_instances_reads_no_more_than_one_on_one_instance(backend: DatabaseBackend) {
    let (instances, counter) = TestApp::spawn_joined_counting_statements(backend, 2).await;
    let statements = cycle(&instances[0], &instances[1], &counter).await;
    assert_eq!(statements, (5, 1, 1), "statements for initiate, accept, end");
    for instance in instances {
        instance.stop().await;
    }
}

async fn a_socket_connect_reads_the_database_once(backend: DatabaseBackend) {
    let (app, counter) = TestApp::spawn_counting_statements(backend).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    settled(&counter).await;

    // Idle: the newest call (for `open_calls` and a call that ended while away), nothing else
    // (whether bob may still sign in is known from memory: the refused users are kept there).
    let _idle = app.notifications_socket(&bob).await;
    assert_eq!(settled(&counter).await, 1, "an idle user's connect");

    // In a call: the same read, and the record that the party is back.
    let id = app.ring(&alice, "bob").await;
    settled(&counter).await;
    let (_ringing, ack) = app.notifications_socket_resuming(&bob, None).await;
    assert_eq!(ack["open_calls"][0]["id"], id);
    assert_eq!(settled(&counter).await, 2, "a connect during a call");
    app.stop().await;
}

on_both_databases!(
    a_call_cycle_stays_within_its_statement_budget,
    a_socket_connect_reads_the_database_once,
    a_call_across_instances_reads_no_more_than_one_on_one_instance
);
