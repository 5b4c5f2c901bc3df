//! The repository and directory contract, run on SQLite and on PostgreSQL.

use crate::common::{RING_TIMEOUT, at, call_id, new_call, ring, transition, user};
use ringline_domain::{
    Call, CallListFilter, CallPolicyStore, CallRepository, CallStatus, ConversationId, CountedCalls, DeviceClaim,
    DeviceId, Directory, EndReason, MAX_PUSH_SUBSCRIPTIONS_PER_USER, NewNotification, NotificationRepository,
    NotificationVerb, Page, PageRequest, PushSubscription, PushSubscriptions, RecentCalls, RepositoryError, UserId,
    UserProfile,
};
use ringline_storage::{DirectoryWriteError, Storage};
use sea_orm::prelude::*;

on_both_databases!(
    migrations_are_idempotent,
    a_created_call_reads_back_exactly,
    transitions_round_trip_every_field,
    a_busy_receiver_cannot_be_rung_and_nothing_is_stored,
    a_crossing_call_finds_both_lines_taken,
    finishing_a_call_frees_both_lines,
    a_stale_transition_is_a_conflict,
    simultaneous_writes_each_get_their_own_outcome,
    a_transition_on_a_missing_call_is_not_found,
    listing_is_newest_first_paginated_and_private,
    listing_can_narrow_to_calls_with_one_user,
    open_calls_are_the_ringing_and_active_ones,
    the_ring_timeout_finds_old_unanswered_calls_oldest_first,
    the_directory_knows_users_and_conversations,
    contacts_are_the_other_participants_of_ones_conversations,
    notifications_are_private_newest_first_and_can_be_read,
    a_calls_notifications_are_stored_by_the_change_itself,
    an_answered_call_belongs_to_one_device_until_it_lets_go,
    a_user_keeps_only_their_newest_push_subscriptions,
    removed_and_deactivated_users_are_told_apart_from_unknown_ones,
    the_policy_counts_recent_calls_only_up_to_each_cap,
);

async fn migrations_are_idempotent(storage: Storage) {
    storage.migrate().await.expect("running the migrations again is a no-op");
    storage.ping().await.expect("the database answers");
}

async fn a_created_call_reads_back_exactly(storage: Storage) {
    let repo = storage.calls();
    let call = ring(&repo, "alice", "bob", 0).await;
    assert_eq!(call.status(), CallStatus::Ringing);
    assert_eq!(repo.get(call.id()).await.expect("read"), Some(call.clone()));
    assert_eq!(repo.get(call_id(call.id().get() + 1000)).await.expect("read"), None);
}

async fn transitions_round_trip_every_field(storage: Storage) {
    let repo = storage.calls();
    let ringing = ring(&repo, "alice", "bob", 0).await;
    let accepted = transition(ringing.accept(&user("bob"), at(2)).expect("receiver accepts"));
    repo.apply(&accepted).await.expect("first change wins");
    assert_eq!(repo.get(ringing.id()).await.expect("read"), Some(accepted.call.clone()));

    let ended = transition(accepted.call.end(&user("alice"), at(92)).expect("caller hangs up"));
    repo.apply(&ended).await.expect("apply end");
    let stored = repo.get(ringing.id()).await.expect("read").expect("exists");
    assert_eq!(stored, ended.call);
    assert_eq!(stored.duration_seconds(), Some(90));
    assert_eq!(stored.end_reason(), Some(EndReason::UserHangup));
}

async fn an_answered_call_belongs_to_one_device_until_it_lets_go(storage: Storage) {
    let repo = storage.calls();
    let (phone, laptop, tablet) = (DeviceId::new(0xa, 1), DeviceId::new(0xb, 1), DeviceId::new(0xa, 2));
    let ringing = ring(&repo, "alice", "bob", 0).await;
    let unanswered = repo.claim_callee_device(ringing.id(), phone, None).await.expect("claim");
    assert_eq!(unanswered, DeviceClaim::NotActive(CallStatus::Ringing), "nothing to hold before the answer");

    // The accept that names its device records it in the same write.
    let accepted = transition(ringing.accept_on(&user("bob"), at(2), Some(phone)).expect("receiver accepts"));
    repo.apply(&accepted).await.expect("accept");
    let stored = repo.get(ringing.id()).await.expect("read").expect("exists");
    assert_eq!(stored.callee_device(), Some(phone));
    let claim = |device, replacing| repo.claim_callee_device(ringing.id(), device, replacing);
    assert_eq!(claim(phone, None).await.expect("claim"), DeviceClaim::Granted, "the holder again");
    assert_eq!(claim(laptop, None).await.expect("claim"), DeviceClaim::HeldBy(phone));
    assert_eq!(claim(laptop, Some(tablet)).await.expect("claim"), DeviceClaim::HeldBy(phone), "not whom it replaces");
    // Replacing a device known to be gone.
    assert_eq!(claim(laptop, Some(phone)).await.expect("claim"), DeviceClaim::Granted);
    // Only the holder lets go; then the next device claims it.
    repo.release_callee_device(ringing.id(), phone).await.expect("release");
    assert_eq!(claim(tablet, None).await.expect("claim"), DeviceClaim::HeldBy(laptop));
    repo.release_callee_device(ringing.id(), laptop).await.expect("release");
    assert_eq!(repo.get(ringing.id()).await.expect("read").expect("exists").callee_device(), None);
    assert_eq!(claim(tablet, None).await.expect("claim"), DeviceClaim::Granted);

    // A change computed from a copy that missed the claim does not clear it.
    let ended = transition(accepted.call.end(&user("alice"), at(9)).expect("hang up"));
    let ended_without_device = transition(
        Call::restore(ringline_domain::CallParts { callee_device: None, ..accepted.call.to_parts() })
            .expect("valid")
            .end(&user("alice"), at(9))
            .expect("hang up"),
    );
    repo.apply(&ended_without_device).await.expect("end");
    let stored = repo.get(ringing.id()).await.expect("read").expect("exists");
    assert_eq!(stored.callee_device(), Some(tablet));
    assert_eq!(stored.status(), ended.call.status());
    assert_eq!(claim(laptop, Some(tablet)).await.expect("claim"), DeviceClaim::NotActive(CallStatus::Ended));
    let missing = repo.claim_callee_device(call_id(ringing.id().get() + 1000), phone, None).await;
    assert!(matches!(missing, Err(RepositoryError::NotFound)), "{missing:?}");
}

async fn a_busy_receiver_cannot_be_rung_and_nothing_is_stored(storage: Storage) {
    let repo = storage.calls();
    ring(&repo, "alice", "bob", 0).await;
    let attempt = repo.create(new_call("carol", "bob", 1)).await;
    assert!(matches!(attempt, Err(RepositoryError::LineBusy { ref user }) if user.as_str() == "bob"), "{attempt:?}");
    assert_eq!(list(&storage, "carol", 1).await.total, 0, "the refused call left no row behind");
    // Carol's line was not left claimed by the failed attempt.
    ring(&repo, "carol", "dave", 2).await;
}

async fn a_crossing_call_finds_both_lines_taken(storage: Storage) {
    let repo = storage.calls();
    ring(&repo, "alice", "bob", 0).await;
    let crossing = repo.create(new_call("bob", "alice", 1)).await;
    assert!(matches!(crossing, Err(RepositoryError::LineBusy { .. })), "{crossing:?}");
}

async fn finishing_a_call_frees_both_lines(storage: Storage) {
    let repo = storage.calls();
    let first = ring(&repo, "alice", "bob", 0).await;
    let accepted = transition(first.accept(&user("bob"), at(1)).expect("accept"));
    repo.apply(&accepted).await.expect("accept");
    assert!(matches!(repo.create(new_call("carol", "alice", 2)).await, Err(RepositoryError::LineBusy { .. })));

    let ended = transition(accepted.call.end(&user("bob"), at(5)).expect("end"));
    repo.apply(&ended).await.expect("end");
    ring(&repo, "carol", "alice", 6).await;
    ring(&repo, "bob", "dave", 7).await;
}

async fn a_stale_transition_is_a_conflict(storage: Storage) {
    let repo = storage.calls();
    let ringing = ring(&repo, "alice", "bob", 0).await;
    let accept = transition(ringing.accept(&user("bob"), at(1)).expect("accept"));
    let cancel = transition(ringing.end(&user("alice"), at(1)).expect("cancel"));
    repo.apply(&cancel).await.expect("the cancel lands first");
    let late = repo.apply(&accept).await;
    assert!(matches!(late, Err(RepositoryError::Conflict { current: CallStatus::Cancelled })), "{late:?}");
    assert_eq!(repo.get(ringing.id()).await.expect("read"), Some(cancel.call));
}

/// Writes issued at the same moment (committed together on SQLite, concurrently on
/// PostgreSQL) each get their own outcome: a busy line or a lost race refuses only its own
/// write, never one committed beside it.
async fn simultaneous_writes_each_get_their_own_outcome(storage: Storage) {
    let repo = storage.calls();
    let ringing = ring(&repo, "alice", "bob", 0).await;
    let accept = transition(ringing.accept(&user("bob"), at(1)).expect("accept"));
    let cancel = transition(ringing.end(&user("alice"), at(1)).expect("cancel"));
    let (carol_dave, erin_dave, frank_gina, accepted, cancelled) = tokio::join!(
        repo.create(new_call("carol", "dave", 1)),
        repo.create(new_call("erin", "dave", 1)),
        repo.create(new_call("frank", "gina", 1)),
        repo.apply(&accept),
        repo.apply(&cancel),
    );
    frank_gina.expect("an unrelated call is stored");
    let dave_busy = |attempt: &Result<Call, RepositoryError>| matches!(attempt, Err(RepositoryError::LineBusy { user }) if user.as_str() == "dave");
    assert!(
        (carol_dave.is_ok() && dave_busy(&erin_dave)) || (erin_dave.is_ok() && dave_busy(&carol_dave)),
        "exactly one call rings dave: {carol_dave:?} / {erin_dave:?}"
    );
    let winner = match (&accepted, &cancelled) {
        (Ok(()), Err(RepositoryError::Conflict { current: CallStatus::Active })) => accept.call,
        (Err(RepositoryError::Conflict { current: CallStatus::Cancelled }), Ok(())) => cancel.call,
        other => panic!("exactly one of accept and cancel wins, the other sees it: {other:?}"),
    };
    assert_eq!(repo.get(ringing.id()).await.expect("read"), Some(winner));
    assert_eq!(list(&storage, "frank", 1).await.total, 1);
}

async fn a_transition_on_a_missing_call_is_not_found(storage: Storage) {
    let repo = storage.calls();
    let never_stored = new_call("alice", "bob", 0).into_call(call_id(4242));
    let expire = transition(never_stored.expire(at(60), RING_TIMEOUT).expect("due"));
    assert!(matches!(repo.apply(&expire).await, Err(RepositoryError::NotFound)));
}

/// Rings and immediately cancels a call, so the same users can be called again.
async fn short_call(storage: &Storage, caller: &str, receiver: &str, started: i64) -> Call {
    let repo = storage.calls();
    let call = ring(&repo, caller, receiver, started).await;
    let cancelled = transition(call.end(&user(caller), at(started)).expect("cancel"));
    repo.apply(&cancelled).await.expect("cancel");
    cancelled.call
}

/// A cap's count reads the most recent calls up to the cap and no further (a caller's long
/// history costs nothing), its `oldest` is the oldest of those counted (when it leaves the
/// window, a place frees up), and a cap that is off counts nothing.
async fn the_policy_counts_recent_calls_only_up_to_each_cap(storage: Storage) {
    for started in [0, 10, 20, 30, 40] {
        short_call(&storage, "alice", "bob", started).await; // cancelled: unanswered too
    }
    short_call(&storage, "alice", "carol", 50).await;
    let policy = storage.call_policy();
    let counted = |limit| CountedCalls { since: at(-1), limit };
    let facts = |recent, unanswered| {
        let policy = policy.clone();
        async move { policy.facts(&user("alice"), &user("bob"), counted(recent), counted(unanswered)).await.expect("facts") }
    };

    let capped = facts(3, 2).await;
    assert_eq!(capped.caller_recent, RecentCalls { count: 3, oldest: Some(at(30)) });
    assert_eq!(capped.unanswered_to_callee, RecentCalls { count: 2, oldest: Some(at(30)) });

    let off = facts(0, 0).await;
    assert_eq!((off.caller_recent, off.unanswered_to_callee), (RecentCalls::default(), RecentCalls::default()));

    let beyond = facts(100, 100).await;
    assert_eq!(beyond.caller_recent, RecentCalls { count: 6, oldest: Some(at(0)) });
    assert_eq!(beyond.unanswered_to_callee, RecentCalls { count: 5, oldest: Some(at(0)) });
}

/// Page `page` (10 a page) of everything `who` took part in.
async fn list(storage: &Storage, who: &str, page: u32) -> Page<Call> {
    let page = PageRequest { page, per_page: 10 };
    storage.calls().list_for_user(&user(who), &CallListFilter::default(), page).await.expect("list")
}

async fn listing_is_newest_first_paginated_and_private(storage: Storage) {
    let mut expected = Vec::new();
    for i in 0..12 {
        let (caller, receiver) = if i % 2 == 0 { ("alice", "bob") } else { ("bob", "alice") };
        expected.push(short_call(&storage, caller, receiver, i).await);
    }
    short_call(&storage, "carol", "dave", 100).await;
    expected.reverse();

    let first = list(&storage, "alice", 1).await;
    assert_eq!(first.total, 12);
    assert_eq!(first.items, expected[..10]);
    assert_eq!(list(&storage, "alice", 2).await.items, expected[10..]);
    assert!(list(&storage, "alice", 3).await.items.is_empty());
    assert_eq!(list(&storage, "dave", 1).await.total, 1, "nobody sees calls they are not in");
}

async fn listing_can_narrow_to_calls_with_one_user(storage: Storage) {
    let repo = storage.calls();
    let with_bob = short_call(&storage, "alice", "bob", 0).await;
    short_call(&storage, "carol", "alice", 1).await;
    let filter = CallListFilter { with_user: Some(user("bob")) };
    let page = repo.list_for_user(&user("alice"), &filter, PageRequest { page: 1, per_page: 10 }).await;
    assert_eq!(page.expect("list").items, vec![with_bob]);
}

async fn open_calls_are_the_ringing_and_active_ones(storage: Storage) {
    let repo = storage.calls();
    short_call(&storage, "alice", "bob", 0).await;
    let ringing = ring(&repo, "alice", "bob", 1).await;
    assert_eq!(repo.open_calls_of(&user("bob")).await.expect("open"), vec![ringing.clone()]);
    let accepted = transition(ringing.accept(&user("bob"), at(2)).expect("accept"));
    repo.apply(&accepted).await.expect("accept");
    assert_eq!(repo.open_calls_of(&user("alice")).await.expect("open"), vec![accepted.call]);
    assert!(repo.open_calls_of(&user("carol")).await.expect("open").is_empty());
}

async fn the_ring_timeout_finds_old_unanswered_calls_oldest_first(storage: Storage) {
    let repo = storage.calls();
    let oldest = ring(&repo, "a1", "b1", 0).await;
    let older = ring(&repo, "a2", "b2", 10).await;
    let answered = ring(&repo, "a3", "b3", 5).await;
    repo.apply(&transition(answered.accept(&user("b3"), at(6)).expect("accept"))).await.expect("accept");
    ring(&repo, "a4", "b4", 50).await;

    let due = repo.unanswered_started_before(at(50), 10).await.expect("query");
    assert_eq!(due, vec![oldest.clone(), older]);
    assert_eq!(repo.unanswered_started_before(at(50), 1).await.expect("query"), vec![oldest]);
}

async fn the_directory_knows_users_and_conversations(storage: Storage) {
    let directory = storage.directory();
    let alice = UserProfile {
        id: user("alice"),
        username: "alice".into(),
        first_name: "Alice".into(),
        last_name: "Liddell".into(),
        profile_image_url: None,
    };
    directory.upsert_user(&alice, at(0)).await.expect("insert");
    let renamed =
        UserProfile { username: "alice_l".into(), profile_image_url: Some("https://x/a.png".into()), ..alice };
    directory.upsert_user(&renamed, at(1)).await.expect("update");
    let bob = UserProfile { id: user("bob"), username: "bob".into(), ..renamed.clone() };
    directory.upsert_user(&bob, at(1)).await.expect("insert");

    assert_eq!(directory.user(&user("alice")).await.expect("lookup"), Some(renamed.clone()));
    assert_eq!(directory.user(&user("nobody")).await.expect("lookup"), None);
    let mut known = directory.users(&[user("alice"), user("bob"), user("nobody")]).await.expect("lookup");
    known.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(known, vec![renamed, bob]);

    let conversation = ConversationId::new(7).expect("positive");
    assert_eq!(directory.conversation_participants(conversation).await.expect("lookup"), None);
    directory.set_conversation(conversation, &[user("alice"), user("bob")], at(2)).await.expect("create");
    let mut participants = directory.conversation_participants(conversation).await.expect("lookup").expect("exists");
    participants.sort();
    assert_eq!(participants, vec![user("alice"), user("bob")]);

    directory.set_conversation(conversation, &[user("bob")], at(3)).await.expect("replace the members");
    assert_eq!(directory.conversation_participants(conversation).await.expect("lookup"), Some(vec![user("bob")]));
    directory.add_participants(conversation, &[user("alice"), user("bob")]).await.expect("add, idempotently");
    assert!(directory.remove_participant(conversation, &user("bob")).await.expect("remove"));
    assert!(!directory.remove_participant(conversation, &user("bob")).await.expect("remove again"));
    assert_eq!(directory.conversation_participants(conversation).await.expect("lookup"), Some(vec![user("alice")]));

    let unknown_member = directory.set_conversation(conversation, &[user("alice"), user("nobody")], at(4)).await;
    assert!(matches!(unknown_member, Err(DirectoryWriteError::UnknownUser(ref who)) if who.as_str() == "nobody"));
    assert_eq!(directory.conversation_participants(conversation).await.expect("lookup"), Some(vec![user("alice")]));
    let missing = ConversationId::new(8).expect("positive");
    assert!(matches!(
        directory.add_participants(missing, &[user("alice")]).await,
        Err(DirectoryWriteError::UnknownConversation)
    ));

    // Removing a user removes their memberships, not the conversation.
    assert!(directory.delete_user(&user("alice"), at(5)).await.expect("delete"));
    assert!(!directory.delete_user(&user("alice"), at(6)).await.expect("delete again"));
    assert_eq!(directory.conversation_participants(conversation).await.expect("lookup"), Some(vec![]));
}

/// A removed user is gone from every lookup but stays known as removed, so that a token cannot
/// register them again; a deactivated one keeps everything but may not sign in; the operator
/// brings either back.
async fn removed_and_deactivated_users_are_told_apart_from_unknown_ones(storage: Storage) {
    use ringline_domain::{AccountStatus, PushSubscription, PushSubscriptions};
    let directory = storage.directory();
    let profile = |id: &str| UserProfile {
        id: user(id),
        username: format!("{id}-name"),
        first_name: "First".into(),
        last_name: "Last".into(),
        profile_image_url: Some("https://img.example/p.png".into()),
    };
    for id in ["alice", "bob"] {
        directory.upsert_user(&profile(id), at(0)).await.expect("insert");
    }
    let conversation = ConversationId::new(9).expect("positive");
    directory.set_conversation(conversation, &[user("alice"), user("bob")], at(1)).await.expect("create");
    let push = PushSubscription {
        endpoint: "https://fcm.googleapis.com/fcm/send/a".into(),
        p256dh: "k".into(),
        auth: "a".into(),
    };
    storage.push_subscriptions().subscribe(&user("alice"), &push, at(1)).await.expect("subscribe");
    assert_eq!(directory.account_status(&user("alice")).await.expect("read"), AccountStatus::Active);
    assert_eq!(directory.account_status(&user("nobody")).await.expect("read"), AccountStatus::Unknown);

    assert!(directory.set_active(&user("bob"), false, at(2)).await.expect("deactivate"));
    assert_eq!(directory.account_status(&user("bob")).await.expect("read"), AccountStatus::Inactive);
    assert_eq!(directory.user(&user("bob")).await.expect("read"), Some(profile("bob")), "the profile stays");
    assert!(!directory.set_active(&user("nobody"), false, at(2)).await.expect("no such user"));

    assert!(directory.delete_user(&user("alice"), at(3)).await.expect("delete"));
    assert_eq!(directory.account_status(&user("alice")).await.expect("read"), AccountStatus::Removed);
    assert_eq!(directory.user(&user("alice")).await.expect("read"), None);
    assert!(directory.users(&[user("alice"), user("bob")]).await.expect("read").iter().all(|p| p.id != user("alice")));
    assert!(directory.list_users(100).await.expect("read").iter().all(|p| p.id != user("alice")));
    assert!(storage.push_subscriptions().of_user(&user("alice")).await.expect("read").is_empty(), "no pushes either");
    assert!(!directory.set_active(&user("alice"), true, at(4)).await.expect("not for a removed user"));
    assert!(matches!(
        directory.add_participants(conversation, &[user("alice")]).await,
        Err(DirectoryWriteError::UnknownUser(_))
    ));
    let mut refused = directory.refused_accounts().await.expect("read");
    refused.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(refused, vec![(user("alice"), AccountStatus::Removed), (user("bob"), AccountStatus::Inactive)]);

    directory.upsert_user(&profile("alice"), at(5)).await.expect("the operator restores her");
    directory.upsert_user(&profile("bob"), at(5)).await.expect("and him");
    for id in ["alice", "bob"] {
        assert_eq!(directory.account_status(&user(id)).await.expect("read"), AccountStatus::Active, "{id}");
    }
    assert!(directory.refused_accounts().await.expect("read").is_empty());
}

async fn contacts_are_the_other_participants_of_ones_conversations(storage: Storage) {
    let directory = storage.directory();
    for (id, username) in [("u1", "grace"), ("u2", "alan"), ("u3", "ada"), ("u4", "stranger"), ("u5", "zed")] {
        let profile = UserProfile {
            id: user(id),
            username: username.into(),
            first_name: String::new(),
            last_name: String::new(),
            profile_image_url: None,
        };
        directory.upsert_user(&profile, at(0)).await.expect("insert");
    }
    let conversation = |id| ConversationId::new(id).expect("positive");
    directory.set_conversation(conversation(1), &[user("u1"), user("u2")], at(1)).await.expect("create");
    directory.set_conversation(conversation(2), &[user("u3"), user("u1"), user("u2")], at(1)).await.expect("create");
    directory.set_conversation(conversation(3), &[user("u2"), user("u4")], at(1)).await.expect("create");
    directory.set_conversation(conversation(4), &[user("u5")], at(1)).await.expect("create");

    let names = |contacts: Vec<UserProfile>| contacts.into_iter().map(|profile| profile.username).collect::<Vec<_>>();
    let of = |who: &'static str, limit| {
        let directory = directory.clone();
        async move { directory.contacts_of(&user(who), limit).await.expect("lookup") }
    };
    assert_eq!(names(of("u1", 100).await), ["ada", "alan"], "each once, by username; not the stranger");
    assert_eq!(names(of("u2", 100).await), ["ada", "grace", "stranger"]);
    assert_eq!(names(of("u1", 1).await), ["ada"], "at most the limit");
    assert!(of("u5", 100).await.is_empty(), "alone in a conversation: nobody");
    assert!(of("nobody", 100).await.is_empty());
}

/// One user cannot make a call fan out into hundreds of pushes: each new subscription past
/// the cap replaces their oldest; renewing one makes it the newest; others' are untouched.
async fn a_user_keeps_only_their_newest_push_subscriptions(storage: Storage) {
    let store = storage.push_subscriptions();
    let subscription = |n: usize| PushSubscription {
        endpoint: format!("https://fcm.googleapis.com/fcm/send/{n}"),
        p256dh: "key".into(),
        auth: "auth".into(),
    };
    let endpoints = |subscriptions: Vec<PushSubscription>| {
        let mut endpoints: Vec<String> = subscriptions.into_iter().map(|s| s.endpoint).collect();
        endpoints.sort();
        endpoints
    };
    store.subscribe(&user("carol"), &subscription(1000), at(0)).await.expect("store");
    for n in 0..300 {
        store
            .subscribe(&user("mallory"), &subscription(n), at(i64::try_from(n).expect("small") + 1))
            .await
            .expect("store");
    }
    let kept = endpoints(store.of_user(&user("mallory")).await.expect("read"));
    assert_eq!(kept.len(), MAX_PUSH_SUBSCRIPTIONS_PER_USER);
    assert_eq!(kept, endpoints((295..300).map(subscription).collect()), "the newest");
    // Renewing the oldest kept one makes it the newest: the next one replaces another.
    store.subscribe(&user("mallory"), &subscription(295), at(400)).await.expect("renew");
    store.subscribe(&user("mallory"), &subscription(500), at(401)).await.expect("store");
    let kept = endpoints(store.of_user(&user("mallory")).await.expect("read"));
    assert!(kept.contains(&subscription(295).endpoint) && !kept.contains(&subscription(296).endpoint), "{kept:?}");
    assert_eq!(store.of_user(&user("carol")).await.expect("read").len(), 1, "another user's are untouched");
}

#[tokio::test]
async fn sqlite_files_are_switched_to_wal_mode() {
    let database = ringline_storage::testing::TestDatabase::new(ringline_storage::testing::Backend::Sqlite).await;
    let connection = sea_orm::Database::connect(database.url()).await.expect("connect");
    let row = connection
        .query_one(sea_orm::Statement::from_string(sea_orm::DbBackend::Sqlite, "PRAGMA journal_mode"))
        .await
        .expect("pragma")
        .expect("one row");
    assert_eq!(row.try_get_by_index::<String>(0).expect("text"), "wal");
    connection.close().await.expect("close");
    database.cleanup().await;
}

async fn notifications_are_private_newest_first_and_can_be_read(storage: Storage) {
    let repo = storage.notifications();
    let note = |recipient: &str, verb: NotificationVerb, call: i64, at_second: i64| NewNotification {
        recipient: user(recipient),
        actor: Some(user("alice")),
        verb,
        call: call_id(call),
        conversation: if call % 2 == 0 { ConversationId::new(7).ok() } else { None },
        created_at: at(at_second),
    };
    let first = repo.create(note("bob", NotificationVerb::IncomingVideoCall, 2, 0)).await.expect("create");
    assert!(first.unread);
    assert_eq!(first.conversation, ConversationId::new(7).ok());
    let second = repo.create(note("bob", NotificationVerb::MissedVoiceCall, 3, 1)).await.expect("create");
    repo.create(note("carol", NotificationVerb::IncomingVoiceCall, 5, 2)).await.expect("create");

    let page = repo.list(&user("bob"), PageRequest { page: 1, per_page: 10 }).await.expect("list");
    assert_eq!(page.total, 2);
    assert_eq!(page.items, vec![second.clone(), first.clone()]);

    assert!(!repo.mark_read(&user("carol"), first.id).await.expect("mark"), "not carol's");
    assert!(repo.mark_read(&user("bob"), first.id).await.expect("mark"));
    assert_eq!(repo.mark_all_read(&user("bob")).await.expect("mark all"), 1);
    assert_eq!(repo.mark_all_read(&user("bob")).await.expect("mark all"), 0);
    let page = repo.list(&user("bob"), PageRequest { page: 1, per_page: 10 }).await.expect("list");
    assert!(page.items.iter().all(|n| !n.unread));
    let carols = repo.list(&user("carol"), PageRequest { page: 1, per_page: 10 }).await.expect("list");
    assert!(carols.items[0].unread);
}

/// The receiver's incoming-call notification is stored by the statement that stores the
/// ringing call, and the missed-call one by the change to `missed`: nothing else runs between
/// the change and its notification, so no crash or early reader can fall between them. Other
/// changes notify nobody.
async fn a_calls_notifications_are_stored_by_the_change_itself(storage: Storage) {
    let (calls, notifications) = (storage.calls(), storage.notifications());
    let everything = PageRequest { page: 1, per_page: 10 };
    let ringing = ring(&calls, "alice", "bob", 0).await;
    let incoming = notifications
        .caused_by(&user("bob"), &ringing, NotificationVerb::IncomingVideoCall)
        .await
        .expect("read")
        .expect("stored with the call");
    assert_eq!(
        (incoming.recipient.as_str(), incoming.actor.as_ref().map(UserId::as_str), incoming.call, incoming.unread),
        ("bob", Some("alice"), ringing.id(), true)
    );
    assert_eq!((incoming.conversation, incoming.created_at), (None, ringing.created_at()));
    assert_eq!(notifications.list(&user("bob"), everything).await.expect("list").items, vec![incoming.clone()]);
    assert_eq!(notifications.list(&user("alice"), everything).await.expect("list").total, 0, "not the caller's");

    let missed = transition(ringing.expire(at(60), RING_TIMEOUT).expect("due"));
    calls.apply(&missed).await.expect("expire");
    let page = notifications.list(&user("bob"), everything).await.expect("list");
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.items[0].verb, NotificationVerb::MissedVideoCall);
    assert_eq!((page.items[0].call, page.items[0].created_at), (ringing.id(), at(60)));
    assert_eq!(
        notifications.caused_by(&user("bob"), &missed.call, NotificationVerb::MissedVideoCall).await.expect("read"),
        Some(page.items[0].clone())
    );

    // Answered and ended, declined: no notification.
    let answered = ring(&calls, "alice", "bob", 100).await;
    let accepted = transition(answered.accept(&user("bob"), at(101)).expect("accept"));
    calls.apply(&accepted).await.expect("accept");
    calls.apply(&transition(accepted.call.end(&user("bob"), at(110)).expect("end"))).await.expect("end");
    let declined = ring(&calls, "alice", "bob", 200).await;
    calls.apply(&transition(declined.reject(&user("bob"), at(201)).expect("reject"))).await.expect("reject");
    let page = notifications.list(&user("bob"), everything).await.expect("list");
    assert_eq!(page.total, 4, "one incoming-call notification each, and one missed: {:?}", page.items);
}

/// The database, not the repository, keeps the lines in step with the calls: a call written
/// by plain SQL (an operator's fix, another tool) claims and frees lines like one written here.
async fn the_database_itself_keeps_lines_in_step_with_calls(backend: ringline_storage::testing::Backend) {
    let database = ringline_storage::testing::TestDatabase::new(backend).await;
    let repo = database.storage().calls();
    let connection = sea_orm::Database::connect(database.url()).await.expect("connect");
    let sql = |text: &str| sea_orm::Statement::from_string(connection.get_database_backend(), text.to_owned());
    let now =
        if backend == ringline_storage::testing::Backend::Sqlite { "'2026-12-03 10:00:00+00:00'" } else { "now()" };
    connection
        .execute(sql(&format!(
            "INSERT INTO calls (caller_id, receiver_id, call_type, status, started_at, created_at, updated_at) \
             VALUES ('alice', 'bob', 'voice', 'ringing', {now}, {now}, {now})"
        )))
        .await
        .expect("a ringing call inserted by hand");
    for (caller, receiver) in [("carol", "alice"), ("bob", "dave")] {
        let attempt = repo.create(new_call(caller, receiver, 1)).await;
        assert!(matches!(attempt, Err(RepositoryError::LineBusy { .. })), "{caller} → {receiver}: {attempt:?}");
    }
    connection.execute(sql("UPDATE calls SET status = 'cancelled'")).await.expect("finished by hand");
    ring(&repo, "carol", "alice", 2).await;
    ring(&repo, "bob", "dave", 3).await;
    connection.close().await.expect("close");
    database.cleanup().await;
}

#[tokio::test]
async fn sqlite_keeps_lines_in_step_with_calls() {
    the_database_itself_keeps_lines_in_step_with_calls(ringline_storage::testing::Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_keeps_lines_in_step_with_calls() {
    the_database_itself_keeps_lines_in_step_with_calls(ringline_storage::testing::Backend::Postgres).await;
}
