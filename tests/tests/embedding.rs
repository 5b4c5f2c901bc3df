//! The call API nested inside a host poem application with the host's own authenticator,
//! as `crates/api/examples/embed.rs` shows: requests reach it under the host's prefix.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ringline_api::{AuthError, Authenticator, CallApiParts, IceSettings};
use ringline_domain::{CallService, Clock, SystemClock, UserId, UserProfile};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_application_serves_calls_under_its_own_prefix_with_its_own_auth() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let storage = database.storage().clone();
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
    let service = CallService::new(
        Arc::new(storage.calls()),
        Arc::new(storage.directory()),
        clock.clone(),
        Duration::from_secs(30),
    );
    let calls = ringline_api::call_routes(CallApiParts {
        signaling: Arc::new(ringline_signaling::Signaling::local(service, Arc::new(storage.notifications()))),
        authenticator: Arc::new(HostSessions),
        ice: IceSettings::default(),
        clock,
    });
    let host = poem::Route::new().at("/", poem::endpoint::make_sync(|_| "host home")).nest("/calls-service", calls);
    let base = spawn_http(host).await;
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
