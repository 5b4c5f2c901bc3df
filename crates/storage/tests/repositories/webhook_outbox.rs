//! The webhook outbox, run on SQLite and on PostgreSQL: events written with the call change
//! (and only for active subscriptions), leased once, a call's events one at a time and in
//! order, retention.

use crate::common::{at, ring, transition, user};
use ringline_domain::{CallRepository, DeliveryOutcome, WebhookEventType, WebhookOutbox};
use ringline_storage::Storage;

on_both_databases!(
    no_subscription_no_events,
    each_change_is_an_event_per_subscription_handed_out_in_order,
    a_lease_hands_a_delivery_to_one_claimer_until_it_runs_out,
    a_removed_subscription_gets_nothing_more,
    finished_events_are_pruned_after_the_retention,
);

const HOOK_A: &str = "https://a.example/hooks";
const HOOK_B: &str = "https://b.example/hooks";
const SENDER: &str = "host-a:8000";

async fn no_subscription_no_events(storage: Storage) {
    let outbox = storage.webhooks();
    outbox.set_subscriptions(&[]).await.expect("none");
    ring(&storage.calls(), "alice", "bob", 0).await;
    assert!(outbox.claim_due(SENDER, at(1), at(31), 10).await.expect("claim").is_empty());
}

async fn each_change_is_an_event_per_subscription_handed_out_in_order(storage: Storage) {
    let outbox = storage.webhooks();
    outbox.set_subscriptions(&[HOOK_A.into(), HOOK_B.into()]).await.expect("two");
    let repo = storage.calls();
    let call = ring(&repo, "alice", "bob", 0).await;
    let accepted = transition(call.accept(&user("bob"), at(2)).expect("accept"));
    repo.apply(&accepted).await.expect("stored");

    // Only the oldest event of the call, once per subscription.
    let due = outbox.claim_due(SENDER, at(3), at(33), 10).await.expect("claim");
    let mut urls: Vec<&str> = due.iter().map(|d| d.url.as_str()).collect();
    urls.sort_unstable();
    assert_eq!(urls, [HOOK_A, HOOK_B]);
    assert!(due.iter().all(|d| d.event.kind == WebhookEventType::Ringing && d.event.call == call));
    assert_ne!(due[0].event.id, "", "an id to dedupe by");
    assert_eq!(due[0].event.id, due[1].event.id, "one event, two subscriptions");

    // A retry keeps the next event waiting; delivered, the next one is due.
    let (first, second) = (&due[0], &due[1]);
    let retry = DeliveryOutcome::RetryAt { at: at(10), status: Some(500), error: "down".into() };
    outbox.finish(first.id, &retry, at(4)).await.expect("recorded");
    outbox.finish(second.id, &DeliveryOutcome::Delivered { status: 200 }, at(4)).await.expect("recorded");
    let due = outbox.claim_due(SENDER, at(5), at(35), 10).await.expect("claim");
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!((due[0].url.as_str(), due[0].event.kind), (second.url.as_str(), WebhookEventType::Accepted));
    assert_eq!(due[0].event.call, accepted.call, "the call as it was at the change");
    outbox.finish(due[0].id, &DeliveryOutcome::Delivered { status: 204 }, at(5)).await.expect("recorded");
    // The retry comes when it is due, with its attempt counted, then the accepted event.
    assert!(outbox.claim_due(SENDER, at(9), at(39), 10).await.expect("claim").is_empty());
    let due = outbox.claim_due(SENDER, at(10), at(40), 10).await.expect("claim");
    assert_eq!((due.len(), due[0].attempts, due[0].event.kind), (1, 1, WebhookEventType::Ringing));
    outbox.finish(due[0].id, &DeliveryOutcome::Gone, at(10)).await.expect("recorded");
    let due = outbox.claim_due(SENDER, at(11), at(41), 10).await.expect("claim");
    assert_eq!(due[0].event.kind, WebhookEventType::Accepted);
}

async fn a_lease_hands_a_delivery_to_one_claimer_until_it_runs_out(storage: Storage) {
    let outbox = storage.webhooks();
    outbox.set_subscriptions(&[HOOK_A.into()]).await.expect("one");
    ring(&storage.calls(), "alice", "bob", 0).await;
    let (a, b) = tokio::join!(outbox.claim_due(SENDER, at(1), at(31), 10), outbox.claim_due(SENDER, at(1), at(31), 10));
    assert_eq!(a.expect("claim").len() + b.expect("claim").len(), 1, "one claimer gets it");
    assert!(outbox.claim_due(SENDER, at(30), at(60), 10).await.expect("claim").is_empty(), "leased");
    // The claimer died: once the lease has run out another takes it over.
    assert_eq!(outbox.claim_due("host-b:8000", at(31), at(61), 10).await.expect("claim").len(), 1);
    // The one that holds it restarts: its leases end at once, another's do not.
    assert_eq!(outbox.release_leases(SENDER).await.expect("release"), 0);
    assert!(outbox.claim_due(SENDER, at(32), at(62), 10).await.expect("claim").is_empty());
    assert_eq!(outbox.release_leases("host-b:8000").await.expect("release"), 1);
    assert_eq!(outbox.claim_due(SENDER, at(32), at(62), 10).await.expect("claim").len(), 1);
}

async fn a_removed_subscription_gets_nothing_more(storage: Storage) {
    let outbox = storage.webhooks();
    outbox.set_subscriptions(&[HOOK_A.into(), HOOK_B.into()]).await.expect("two");
    ring(&storage.calls(), "alice", "bob", 0).await;
    outbox.set_subscriptions(&[HOOK_B.into()]).await.expect("one left");
    ring(&storage.calls(), "carol", "dave", 0).await;
    let due = outbox.claim_due(SENDER, at(1), at(31), 10).await.expect("claim");
    assert_eq!(due.len(), 2);
    assert!(due.iter().all(|d| d.url == HOOK_B), "{due:?}");
}

async fn finished_events_are_pruned_after_the_retention(storage: Storage) {
    let outbox = storage.webhooks();
    outbox.set_subscriptions(&[HOOK_A.into()]).await.expect("one");
    ring(&storage.calls(), "alice", "bob", 0).await;
    ring(&storage.calls(), "carol", "dave", 0).await;
    let due = outbox.claim_due(SENDER, at(1), at(31), 10).await.expect("claim");
    outbox.finish(due[0].id, &DeliveryOutcome::Delivered { status: 200 }, at(2)).await.expect("recorded");
    let retry = DeliveryOutcome::RetryAt { at: at(3), status: None, error: "refused".into() };
    outbox.finish(due[1].id, &retry, at(2)).await.expect("recorded");
    assert_eq!(outbox.prune(at(2)).await.expect("prune"), 0, "not before the retention");
    assert_eq!(outbox.prune(at(100)).await.expect("prune"), 1, "the delivered one; the pending one stays");
    let due = outbox.claim_due(SENDER, at(100), at(130), 10).await.expect("claim");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].event.call.caller().as_str(), "carol");
}
