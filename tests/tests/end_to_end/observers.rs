//! "A call changed" is a port the call service itself calls: every stored change reaches its
//! observers exactly once, with where it came from, however the service was driven; and a
//! change made on the hub's service directly (as an embedding application might) still
//! reaches the parties' sockets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ringline_domain::{
    Call, CallAction, CallEvent, CallObserver, CallService, ChangeOrigin, Clock, DeviceId, HangupReason,
    InitiateCommand, Initiated, ManualClock, Outcome, SystemClock, Transition, UserId, UserProfile,
};
use ringline_storage::testing::TestDatabase;
use ringline_tests::{DatabaseBackend, TestApp, on_both_databases};

/// What an observer was told, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Told {
    Ringing { call: i64, parties: usize },
    Changed { call: i64, status: String, device: Option<DeviceId>, answer: Option<String> },
}

#[derive(Debug, Default)]
struct Recording {
    told: Mutex<Vec<Told>>,
}

impl Recording {
    fn told(&self) -> Vec<Told> {
        self.told.lock().expect("not poisoned").clone()
    }
}

#[async_trait]
impl CallObserver for Recording {
    async fn ringing(&self, call: &Call, parties: &[UserProfile]) {
        let told = Told::Ringing { call: call.id().get(), parties: parties.len() };
        self.told.lock().expect("not poisoned").push(told);
    }

    async fn changed(&self, transition: &Transition, origin: ChangeOrigin<'_>, _parties: Option<&[UserProfile]>) {
        let told = Told::Changed {
            call: transition.call.id().get(),
            status: transition.call.status().to_string(),
            device: origin.device,
            answer: origin.answer.map(str::to_owned),
        };
        self.told.lock().expect("not poisoned").push(told);
    }
}

fn user(id: &str) -> UserId {
    UserId::parse(id).expect("valid")
}

async fn service_over(
    database: &TestDatabase,
    clock: &Arc<ManualClock>,
    ring_timeout: Duration,
    observer: Arc<Recording>,
) -> CallService {
    let storage = database.storage();
    for id in ["ada", "grace"] {
        let profile = UserProfile {
            id: user(id),
            username: id.into(),
            first_name: String::new(),
            last_name: String::new(),
            profile_image_url: None,
        };
        storage.directory().upsert_user(&profile, SystemClock.now()).await.expect("user");
    }
    CallService::new(Arc::new(storage.calls()), Arc::new(storage.directory()), clock.clone(), ring_timeout)
        .observed_by(observer)
}

fn ring_grace() -> InitiateCommand {
    InitiateCommand { receiver: user("grace"), call_type: ringline_domain::CallType::Voice, conversation: None }
}

async fn every_stored_change_is_told_once_with_its_origin(backend: DatabaseBackend) {
    let database = TestDatabase::new(backend).await;
    let recording = Arc::new(Recording::default());
    let clock = Arc::new(ManualClock::new());
    let service = service_over(&database, &clock, Duration::from_secs(30), recording.clone()).await;

    let Initiated::Ringing(call) = service.initiate(&user("ada"), ring_grace()).await.expect("rings") else {
        panic!("no crossing call here");
    };
    let id = call.id();
    let phone = DeviceId::new(7, 1);
    let answer = r#"{"type":"answer","sdp":"v=0"}"#;
    let origin = ChangeOrigin { device: Some(phone), answer: Some(answer) };
    service.act_on(&user("grace"), id, CallAction::Accept, None, origin).await.expect("accepts");
    service.act(&user("ada"), id, CallAction::End(HangupReason::UserHangup)).await.expect("ends");
    // A repeat changes nothing and tells nobody.
    let repeat = service.act(&user("ada"), id, CallAction::End(HangupReason::UserHangup)).await.expect("repeat");
    assert!(matches!(repeat, Outcome::AlreadyDone(_)));
    assert_eq!(
        recording.told(),
        vec![
            Told::Ringing { call: id.get(), parties: 2 },
            Told::Changed { call: id.get(), status: "active".into(), device: Some(phone), answer: Some(answer.into()) },
            Told::Changed { call: id.get(), status: "ended".into(), device: None, answer: None },
        ]
    );

    // The ring timeout, driven by the service alone, is told too.
    let Initiated::Ringing(unanswered) = service.initiate(&user("ada"), ring_grace()).await.expect("rings") else {
        panic!("no crossing call here");
    };
    clock.advance(Duration::from_secs(29));
    assert!(service.expire_due(10).await.expect("sweeps").is_empty(), "not before the ring timeout");
    clock.advance(Duration::from_secs(2));
    assert_eq!(service.expire_due(10).await.expect("expires").len(), 1);
    let told = recording.told();
    assert_eq!(
        told[3..],
        [
            Told::Ringing { call: unanswered.id().get(), parties: 2 },
            Told::Changed { call: unanswered.id().get(), status: "missed".into(), device: None, answer: None },
        ]
    );
    database.cleanup().await;
}

/// Two accepts at once: exactly one change is stored, so exactly one is told.
async fn racing_accepts_are_told_once(backend: DatabaseBackend) {
    let database = TestDatabase::new(backend).await;
    let recording = Arc::new(Recording::default());
    let service =
        service_over(&database, &Arc::new(ManualClock::new()), Duration::from_secs(30), recording.clone()).await;
    for _ in 0..10 {
        let call = service.initiate(&user("ada"), ring_grace()).await.expect("rings").call().id();
        let accepts = (1..=2).map(|serial| {
            let service = service.clone();
            let origin = ChangeOrigin { device: Some(DeviceId::new(1, serial)), answer: None };
            async move { service.act_on(&user("grace"), call, CallAction::Accept, None, origin).await }
        });
        let outcomes = futures_util::future::join_all(accepts).await;
        let changed = outcomes.iter().filter(|outcome| matches!(outcome, Ok(Outcome::Changed(_)))).count();
        assert_eq!(changed, 1, "{outcomes:?}");
        service.act(&user("ada"), call, CallAction::End(HangupReason::UserHangup)).await.expect("ends");
    }
    let accepted = recording
        .told()
        .iter()
        .filter(|told| matches!(told, Told::Changed { status, .. } if status == "active"))
        .count();
    assert_eq!(accepted, 10);
    database.cleanup().await;
}

/// An application that changes a call on the hub's service itself, not through the hub's own
/// methods, still has the change announced to the parties' devices.
async fn a_change_made_on_the_hubs_service_reaches_the_sockets(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut alice_socket = app.notifications_socket(&alice).await;
    let mut bob_socket = app.notifications_socket(&bob).await;
    let id = app.ring(&alice, "bob").await;
    bob_socket.expect("call.incoming").await;
    let call = ringline_domain::CallId::new(id).expect("an id");
    let outcome = app.signaling().service().act(&user("bob"), call, CallAction::Accept).await.expect("accepts");
    assert!(matches!(outcome, Outcome::Changed(Transition { event: CallEvent::Accepted { .. }, .. })));
    // As for a REST accept: the caller gets `call.answer` (no SDP yet), then `call.accepted`.
    assert_eq!(alice_socket.expect("call.answer").await["call_id"], id.to_string());
    assert_eq!(alice_socket.expect("call.accepted").await["receiver_id"], "bob");
    app.stop().await;
}

on_both_databases!(
    every_stored_change_is_told_once_with_its_origin,
    racing_accepts_are_told_once,
    a_change_made_on_the_hubs_service_reaches_the_sockets
);
