//! The relay path must not read the database per frame: which users may signal for which call
//! is known in memory, and a call is read at most once per server instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ringline_domain::{
    Call, CallId, CallListFilter, CallRepository, CallService, CallType, Clock, DeviceClaim, DeviceId, NewCall, Page,
    PageRequest, RepositoryError, SystemClock, Timestamp, Transition, UserId,
};
use ringline_signaling::{FrameRate, SessionContext, SessionKind, Signaling};
use ringline_storage::testing::{Backend, TestDatabase};

/// The real SQL repository, counting the reads of single calls.
#[derive(Debug)]
struct CountingReads {
    inner: ringline_storage::SqlCallRepository,
    gets: AtomicUsize,
}

#[async_trait]
impl CallRepository for CountingReads {
    async fn create(&self, call: NewCall) -> Result<Call, RepositoryError> {
        self.inner.create(call).await
    }
    async fn get(&self, id: CallId) -> Result<Option<Call>, RepositoryError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.get(id).await
    }
    async fn list_for_user(
        &self,
        user: &UserId,
        filter: &CallListFilter,
        page: PageRequest,
    ) -> Result<Page<Call>, RepositoryError> {
        self.inner.list_for_user(user, filter, page).await
    }
    async fn open_calls_of(&self, user: &UserId) -> Result<Vec<Call>, RepositoryError> {
        self.inner.open_calls_of(user).await
    }
    async fn unanswered_started_before(&self, cutoff: Timestamp, limit: u32) -> Result<Vec<Call>, RepositoryError> {
        self.inner.unanswered_started_before(cutoff, limit).await
    }
    async fn apply(&self, transition: &Transition) -> Result<(), RepositoryError> {
        self.inner.apply(transition).await
    }
    async fn newest_call_of(&self, user: &UserId) -> Result<Option<Call>, RepositoryError> {
        self.inner.newest_call_of(user).await
    }
    async fn users_on_lines(&self) -> Result<Vec<UserId>, RepositoryError> {
        self.inner.users_on_lines().await
    }
    async fn mark_seen(&self, users: &[UserId], at: Timestamp) -> Result<(), RepositoryError> {
        self.inner.mark_seen(users, at).await
    }
    async fn abandoned_calls(
        &self,
        seen_before: Timestamp,
        limit: u32,
    ) -> Result<Vec<(Call, Timestamp)>, RepositoryError> {
        self.inner.abandoned_calls(seen_before, limit).await
    }
    async fn active_answered_before(&self, cutoff: Timestamp, limit: u32) -> Result<Vec<Call>, RepositoryError> {
        self.inner.active_answered_before(cutoff, limit).await
    }
    async fn apply_if_abandoned(&self, transition: &Transition, seen_before: Timestamp) -> Result<(), RepositoryError> {
        self.inner.apply_if_abandoned(transition, seen_before).await
    }
    async fn claim_callee_device(
        &self,
        id: CallId,
        device: DeviceId,
        replacing: Option<DeviceId>,
    ) -> Result<DeviceClaim, RepositoryError> {
        self.inner.claim_callee_device(id, device, replacing).await
    }
    async fn release_callee_device(&self, id: CallId, device: DeviceId) -> Result<(), RepositoryError> {
        self.inner.release_callee_device(id, device).await
    }
    async fn set_quality(
        &self,
        id: CallId,
        current: Option<&ringline_domain::CallQuality>,
        next: &ringline_domain::CallQuality,
    ) -> Result<bool, RepositoryError> {
        self.inner.set_quality(id, current, next).await
    }
    async fn create_waiting(&self, call: ringline_domain::NewCall) -> Result<Option<Call>, RepositoryError> {
        self.inner.create_waiting(call).await
    }
    async fn switch(
        &self,
        ended: &ringline_domain::Transition,
        accepted: &ringline_domain::Transition,
    ) -> Result<bool, RepositoryError> {
        self.inner.switch(ended, accepted).await
    }
    async fn record_moment(
        &self,
        id: CallId,
        moment: ringline_domain::CallMoment,
        at: ringline_domain::Timestamp,
    ) -> Result<bool, RepositoryError> {
        self.inner.record_moment(id, moment, at).await
    }
}

/// A hub on `storage` whose call reads are counted.
fn counting_hub(storage: &ringline_storage::Storage) -> (Arc<CountingReads>, Signaling) {
    let counting = Arc::new(CountingReads { inner: storage.calls(), gets: AtomicUsize::new(0) });
    let service = CallService::new(
        counting.clone(),
        Arc::new(storage.directory()),
        Arc::new(SystemClock),
        Duration::from_secs(45),
    );
    (counting, Signaling::local(service, Arc::new(storage.notifications())))
}

#[tokio::test]
async fn a_thousand_relayed_frames_read_the_call_at_most_once() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let storage = database.storage();
    // The call is created by "another instance", so this hub has never seen it.
    let alice = UserId::parse("alice").expect("id");
    let bob = UserId::parse("bob").expect("id");
    let call = storage
        .calls()
        .create(NewCall::ring(alice.clone(), bob.clone(), CallType::Video, None, SystemClock.now()).expect("distinct"))
        .await
        .expect("create");

    let (counting, hub) = counting_hub(storage);
    // No fan-in limit in the way: this is about reads, and the frames do not come through a
    // socket with its own limit.
    let hub = hub.with_frame_rate(FrameRate { per_second: 1e6, burst: 1e6 });
    let (slot, mut bob_events) = hub.sessions().register(bob.clone(), SessionKind::Notifications);
    let sender = SessionContext::new(ringline_domain::DeviceId::new(0, 9_999), alice, SessionKind::Notifications);
    for n in 0..1000 {
        let frame = format!(
            r#"{{"type":"call.ice-candidate","call_id":"{}","candidate":{{"candidate":"candidate:{n} 1 udp 1 127.0.0.1 5000 typ host"}}}}"#,
            call.id()
        );
        assert_eq!(hub.handle_text(&sender, &frame).await, None, "relayed without a reply");
        assert!(bob_events.try_recv().is_ok(), "frame {n} reached Bob");
    }
    assert_eq!(counting.gets.load(Ordering::Relaxed), 1, "one read on the first frame, none after");
    hub.sessions().unregister(&slot);
    database.cleanup().await;
}

/// Frames naming a call that does not exist read the database once per id, not once per frame:
/// a client cannot make the server read at its full frame rate. A call created afterwards under
/// such an id (here: made by "another instance") is found once the cache hears of it or the
/// entry expires.
#[tokio::test]
async fn frames_naming_a_missing_call_read_the_database_once() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let storage = database.storage();
    let (counting, hub) = counting_hub(storage);
    let alice = UserId::parse("alice").expect("id");
    let sender = SessionContext::new(ringline_domain::DeviceId::new(0, 1), alice, SessionKind::Notifications);
    for n in 0..500 {
        let frame = format!(
            r#"{{"type":"call.ice-candidate","call_id":"424242","candidate":{{"candidate":"candidate:{n} 1 udp 1 127.0.0.1 5000 typ host"}}}}"#
        );
        let reply = hub.handle_text(&sender, &frame).await.expect("an error");
        assert!(reply.contains("call_not_found"), "{reply}");
    }
    assert_eq!(counting.gets.load(Ordering::Relaxed), 1, "one read for the missing id, none after");
    database.cleanup().await;
}

/// Frames naming ever new call ids each cost a read once, so a per-user budget bounds them: a
/// user's frames cause at most 20 reads at once and 10 a second (answered `rate_limited`
/// beyond), and another user's reads are not affected.
#[tokio::test]
async fn one_users_frames_may_cause_only_so_many_reads() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let storage = database.storage();
    let (counting, hub) = counting_hub(storage);
    let frame = |id: u32| {
        format!(
            r#"{{"type":"call.ice-candidate","call_id":{id},"candidate":{{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host"}}}}"#
        )
    };
    let mallory = SessionContext::new(
        ringline_domain::DeviceId::new(0, 1),
        UserId::parse("mallory").expect("id"),
        SessionKind::Notifications,
    );
    let started = std::time::Instant::now();
    let (mut not_found, mut limited) = (0, 0);
    for id in 1_000..1_200 {
        let reply = hub.handle_text(&mallory, &frame(id)).await.expect("an error");
        if reply.contains("call_not_found") {
            not_found += 1;
        } else {
            assert!(reply.contains("rate_limited") && reply.contains(&id.to_string()), "{reply}");
            limited += 1;
        }
    }
    let reads = counting.gets.load(Ordering::Relaxed);
    let allowed = 20.0 + 10.0 * started.elapsed().as_secs_f64() + 1.0;
    assert!(reads >= 20 && reads as f64 <= allowed, "{reads} reads, at most {allowed:.0} allowed");
    assert_eq!((not_found, limited), (reads, 200 - reads));

    let alice = SessionContext::new(
        ringline_domain::DeviceId::new(0, 2),
        UserId::parse("alice").expect("id"),
        SessionKind::Notifications,
    );
    let reply = hub.handle_text(&alice, &frame(5_000)).await.expect("an error");
    assert!(reply.contains("call_not_found"), "another user's frame is still looked up: {reply}");
    database.cleanup().await;
}
