//! The call API nested inside a host poem application with the host's own authenticator,
//! as `crates/api/examples/embed.rs` shows: requests reach it under the host's prefix.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ringline_api::{AuthError, Authenticator, CallApiParts, IceSettings};
use ringline_domain::{CallService, Clock, SystemClock, UserId, UserProfile};
use ringline_signaling::{Background, Signaling};
use ringline_storage::testing::{Backend, TestDatabase};
use ringline_tests::spawn_http;
use serde_json::{Value, json};

/// The host's sessions: the token is `host-session:<user>`.
#[derive(Debug)]
struct HostSessions;

#[async_trait]
impl Authenticator for HostSessions {
    async fn authenticate(&self, token: &str) -> Result<UserId, AuthError> {
        let user = token.strip_prefix("host-session:").ok_or(AuthError::Invalid)?;
        UserId::parse(user).map_err(|_| AuthError::Invalid)
    }
}

/// The host's users `ada` and `grace`, and Ringline's calls facade over them.
async fn host_signaling(storage: &ringline_storage::Storage, ring_timeout: Duration) -> Arc<Signaling> {
    for id in ["ada", "grace"] {
        let profile = UserProfile {
            id: UserId::parse(id).expect("valid"),
            username: id.into(),
            first_name: String::new(),
            last_name: String::new(),
            profile_image_url: None,
        };
        storage.directory().upsert_user(&profile, SystemClock.now()).await.expect("user");
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let service = CallService::new(Arc::new(storage.calls()), Arc::new(storage.directory()), clock, ring_timeout);
    Arc::new(Signaling::local(service, Arc::new(storage.notifications())))
}

fn host_app(signaling: Arc<Signaling>) -> poem::Route {
    let calls = ringline_api::call_routes(CallApiParts {
        signaling,
        authenticator: Arc::new(HostSessions),
        ice: IceSettings::default(),
        clock: Arc::new(SystemClock),
    });
    poem::Route::new().at("/", poem::endpoint::make_sync(|_| "host home")).nest("/calls-service", calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_application_serves_calls_under_its_own_prefix_with_its_own_auth() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let signaling = host_signaling(database.storage(), Duration::from_secs(30)).await;
    let base = spawn_http(host_app(signaling)).await;
    let http = reqwest::Client::new();

    assert_eq!(http.get(format!("{base}/")).send().await.expect("home").text().await.expect("text"), "host home");
    let created = http
        .post(format!("{base}/calls-service/api/calls/initiate/"))
        .bearer_auth("host-session:ada")
        .json(&json!({"receiver_id": "grace"}))
        .send()
        .await
        .expect("initiate");
    assert_eq!(created.status(), 201);
    let call: Value = created.json().await.expect("json");
    let accepted = http
        .post(format!("{base}/calls-service/api/calls/{}/accept/", call["id"]))
        .bearer_auth("host-session:grace")
        .send()
        .await
        .expect("accept");
    assert_eq!(accepted.status(), 200);
    let refused = http
        .get(format!("{base}/calls-service/api/calls/"))
        .bearer_auth("a JWT the host does not accept")
        .send()
        .await
        .expect("list");
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.json::<Value>().await.expect("json")["code"], "token_not_valid");
    database.cleanup().await;
}

/// An embedding application starts `Background` as the server does: its unanswered calls are
/// missed at the ring timeout instead of ringing for ever, and shutting it down stops the
/// sweeps and closes the sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_call_nobody_answers_is_missed_once_background_work_runs() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let signaling = host_signaling(database.storage(), Duration::from_millis(400)).await;
    let background = Background::start(signaling.clone());
    let base = spawn_http(host_app(signaling)).await;
    let http = reqwest::Client::new();
    let call: Value = http
        .post(format!("{base}/calls-service/api/calls/initiate/"))
        .bearer_auth("host-session:ada")
        .json(&json!({"receiver_id": "grace"}))
        .send()
        .await
        .expect("initiate")
        .json()
        .await
        .expect("json");
    let mut status = Value::Null;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let current: Value = http
            .get(format!("{base}/calls-service/api/calls/{}/", call["id"]))
            .bearer_auth("host-session:grace")
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        status = current["status"].clone();
        if status != "ringing" {
            break;
        }
    }
    assert_eq!(status, "missed", "the ring timer expired the call");
    assert!(background.shutdown(Duration::from_secs(2)).await, "no session was left open");
    database.cleanup().await;
}
