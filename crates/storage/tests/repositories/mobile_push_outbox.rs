//! Device tokens and the mobile push outbox, run on SQLite and on PostgreSQL: pushes written
//! with the call change (only for active services, the end of a ring only for the services
//! that take it), the end of a ring held back while its ring is in flight, a gone token
//! deleted with its pushes, a token that moves to another user taking none of the last one's.

use crate::common::{at, ring, transition, user};
use ringline_domain::{
    CallRepository, DevicePlatform, DeviceRegistration, DeviceTokens, MobilePushKind, MobilePushOutbox,
    MobilePushOutcome, PageRequest, PushProvider, UserProfile,
};
use ringline_storage::Storage;

on_both_databases!(
    no_active_service_no_pushes,
    a_ring_and_its_end_are_pushed_in_order_to_the_services_that_take_them,
    a_gone_token_is_deleted_with_its_pushes,
    a_token_that_moves_takes_no_pushes_with_it,
);

const SENDER: &str = "host-a:8000";
const ALL: [PushProvider; 3] = PushProvider::ALL;

async fn with_users(storage: &Storage, names: &[&str]) {
    for name in names {
        let profile = UserProfile {
            id: user(name),
            username: (*name).to_owned(),
            first_name: String::new(),
            last_name: String::new(),
            profile_image_url: None,
        };
        storage.directory().upsert_user(&profile, at(0)).await.expect("a user");
    }
}

async fn register(storage: &Storage, name: &str, token: &str, platform: DevicePlatform) -> i64 {
    let registration = DeviceRegistration::new(token.to_owned(), platform, None).expect("a valid token");
    storage.mobile_push().register(&user(name), &registration, at(0)).await.expect("stored").id
}

async fn bobs_devices(storage: &Storage) -> (i64, i64, i64) {
    with_users(storage, &["alice", "bob", "carol"]).await;
    let expo = register(storage, "bob", "ExponentPushToken[bob-phone]", DevicePlatform::Android).await;
    let fcm = register(storage, "bob", "fcm:bob-android", DevicePlatform::Android).await;
    let apns = register(storage, "bob", &"ab".repeat(32), DevicePlatform::Ios).await;
    (expo, fcm, apns)
}

async fn no_active_service_no_pushes(storage: Storage) {
    let outbox = storage.mobile_push();
    bobs_devices(&storage).await;
    outbox.set_providers(&[]).await.expect("none");
    let repo = storage.calls();
    let call = ring(&repo, "alice", "bob", 0).await;
    repo.apply(&transition(call.reject(&user("bob"), at(1)).expect("reject"))).await.expect("stored");
    assert!(outbox.claim_due(SENDER, &ALL, at(1), at(31), 10).await.expect("claim").is_empty());
    // Only the active service's token is rung; a sender without the service claims nothing.
    outbox.set_providers(&[PushProvider::Expo]).await.expect("one");
    ring(&repo, "carol", "bob", 2).await;
    assert!(outbox.claim_due(SENDER, &[PushProvider::Fcm], at(1), at(31), 10).await.expect("claim").is_empty());
    let due = outbox.claim_due(SENDER, &ALL, at(1), at(31), 10).await.expect("claim");
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(due[0].token.provider, PushProvider::Expo);
}

async fn a_ring_and_its_end_are_pushed_in_order_to_the_services_that_take_them(storage: Storage) {
    let outbox = storage.mobile_push();
    let (expo, fcm, apns) = bobs_devices(&storage).await;
    outbox.set_providers(&ALL).await.expect("all");
    let repo = storage.calls();
    let call = ring(&repo, "alice", "bob", 0).await;
    let rings = outbox.claim_due(SENDER, &ALL, at(1), at(31), 10).await.expect("claim");
    let mut tokens: Vec<i64> = rings.iter().map(|push| push.token.id).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, [expo, fcm, apns]);
    assert!(rings.iter().all(|push| push.kind == MobilePushKind::Ring && push.call == call));

    let rejected = transition(call.reject(&user("bob"), at(2)).expect("reject"));
    repo.apply(&rejected).await.expect("stored");
    // The ends wait while their rings are in flight; the call is read as it is now.
    assert!(outbox.claim_due(SENDER, &ALL, at(3), at(33), 10).await.expect("claim").is_empty());
    for push in &rings {
        outbox.finish(push, &MobilePushOutcome::Sent, at(3)).await.expect("recorded");
    }
    let ends = outbox.claim_due(SENDER, &ALL, at(4), at(34), 10).await.expect("claim");
    let mut tokens: Vec<i64> = ends.iter().map(|push| push.token.id).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, [expo, fcm], "no VoIP push for the end of a ring");
    assert!(ends.iter().all(|push| push.kind == MobilePushKind::StopRinging && push.call == rejected.call));

    // A retry comes back when due, its attempt counted.
    let retry = MobilePushOutcome::RetryAt { at: at(10), status: Some(503), error: "down".into() };
    outbox.finish(&ends[0], &retry, at(4)).await.expect("recorded");
    outbox.finish(&ends[1], &MobilePushOutcome::Sent, at(4)).await.expect("recorded");
    assert!(outbox.claim_due(SENDER, &ALL, at(9), at(39), 10).await.expect("claim").is_empty());
    let again = outbox.claim_due(SENDER, &ALL, at(10), at(40), 10).await.expect("claim");
    assert_eq!((again.len(), again[0].id, again[0].attempts), (1, ends[0].id, 1));
    outbox.finish(&again[0], &MobilePushOutcome::Sent, at(10)).await.expect("recorded");
    assert_eq!(outbox.prune(at(11)).await.expect("pruned"), 5, "every finished push");
}

async fn a_gone_token_is_deleted_with_its_pushes(storage: Storage) {
    let outbox = storage.mobile_push();
    let (expo, _, _) = bobs_devices(&storage).await;
    outbox.set_providers(&ALL).await.expect("all");
    let repo = storage.calls();
    let call = ring(&repo, "alice", "bob", 0).await;
    let rings = outbox.claim_due(SENDER, &[PushProvider::Expo], at(1), at(31), 10).await.expect("claim");
    assert_eq!(rings.len(), 1);
    let gone = MobilePushOutcome::TokenGone { reason: "DeviceNotRegistered".into() };
    outbox.finish(&rings[0], &gone, at(2)).await.expect("recorded");
    let left = storage.mobile_push().list(&user("bob"), PageRequest { page: 1, per_page: 10 }).await.expect("list");
    assert_eq!(left.total, 2);
    assert!(left.items.iter().all(|token| token.id != expo));
    repo.apply(&transition(call.reject(&user("bob"), at(3)).expect("reject"))).await.expect("stored");
    let due = outbox.claim_due(SENDER, &ALL, at(4), at(34), 10).await.expect("claim");
    assert!(due.iter().all(|push| push.token.id != expo), "{due:?}");
}

async fn a_token_that_moves_takes_no_pushes_with_it(storage: Storage) {
    let outbox = storage.mobile_push();
    with_users(&storage, &["alice", "bob", "carol"]).await;
    outbox.set_providers(&ALL).await.expect("all");
    let token = register(&storage, "bob", "ExponentPushToken[shared-phone]", DevicePlatform::Ios).await;
    ring(&storage.calls(), "alice", "bob", 0).await;
    // Carol signs in on bob's phone before the ring went out: it is not rung with bob's call.
    let moved = register(&storage, "carol", "ExponentPushToken[shared-phone]", DevicePlatform::Ios).await;
    assert_eq!(moved, token);
    assert!(outbox.claim_due(SENDER, &ALL, at(1), at(31), 10).await.expect("claim").is_empty());
    let bobs = outbox_list(&storage, "bob").await;
    assert_eq!((bobs, outbox_list(&storage, "carol").await), (0, 1));
}

async fn outbox_list(storage: &Storage, name: &str) -> u64 {
    storage.mobile_push().list(&user(name), PageRequest { page: 1, per_page: 10 }).await.expect("list").total
}
