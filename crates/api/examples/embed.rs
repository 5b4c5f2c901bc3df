//! Mounting Ringline's call API inside another poem application.
//!
//! The host keeps its own users and its own sessions: it implements `Directory` over its user
//! table (here, a map) and `Authenticator` over its session tokens, and lends Ringline only a
//! database for the call records. Run with `cargo run -p ringline-api --example embed`, then:
//!
//! ```text
//! curl -X POST localhost:3000/calls-service/api/calls/initiate/ \
//!      -H 'Authorization: Bearer session-ada' -H 'content-type: application/json' \
//!      -d '{"receiver_id": "grace"}'
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use poem::listener::TcpListener;
use poem::{Route, Server, get, handler};
use ringline_api::{AuthError, Authenticator, CallApiParts, IceSettings};
use ringline_domain::{
    CallService, Clock, ConversationId, Directory, DirectoryError, SystemClock, UserId, UserProfile,
};
use ringline_signaling::{Background, Signaling};
use ringline_storage::Storage;

/// The host's users, as Ringline's directory sees them.
#[derive(Debug, Default)]
struct HostUsers {
    users: HashMap<UserId, UserProfile>,
}

#[async_trait]
impl Directory for HostUsers {
    async fn user(&self, id: &UserId) -> Result<Option<UserProfile>, DirectoryError> {
        Ok(self.users.get(id).cloned())
    }

    async fn users(&self, ids: &[UserId]) -> Result<Vec<UserProfile>, DirectoryError> {
        Ok(ids.iter().filter_map(|id| self.users.get(id).cloned()).collect())
    }

    async fn conversation_participants(&self, _: ConversationId) -> Result<Option<Vec<UserId>>, DirectoryError> {
        // This host has no conversations: calls are made from profiles.
        Ok(None)
    }
}

/// The host's session tokens: `session-<user id>`. A real host would look the session up.
#[derive(Debug)]
struct HostSessions;

#[async_trait]
impl Authenticator for HostSessions {
    async fn authenticate(&self, token: &str) -> Result<UserId, AuthError> {
        let user = token.strip_prefix("session-").ok_or(AuthError::Invalid)?;
        UserId::parse(user).map_err(|_| AuthError::Invalid)
    }
}

#[handler]
fn home() -> &'static str {
    "the host application's own page"
}

fn profile(id: &str, name: &str) -> (UserId, UserProfile) {
    let id = UserId::parse(id).unwrap_or_else(|_| unreachable!("literal ids are valid"));
    let profile = UserProfile {
        id: id.clone(),
        username: name.to_owned(),
        first_name: name.to_owned(),
        last_name: String::new(),
        profile_image_url: None,
    };
    (id, profile)
}

/// The host's calls: Ringline's call service over the host's users and a database of its own.
fn host_signaling(storage: &Storage, clock: Arc<dyn Clock>) -> Arc<Signaling> {
    let directory = HostUsers { users: [profile("ada", "Ada"), profile("grace", "Grace")].into_iter().collect() };
    let service = CallService::new(Arc::new(storage.calls()), Arc::new(directory), clock, Duration::from_secs(30));
    Arc::new(Signaling::local(service, Arc::new(storage.notifications())))
}

/// The host's routes with Ringline nested under `/calls-service`.
fn host_app(signaling: Arc<Signaling>, clock: Arc<dyn Clock>) -> Route {
    let calls = ringline_api::call_routes(CallApiParts {
        signaling,
        authenticator: Arc::new(HostSessions),
        ice: IceSettings::default(),
        clock,
    });
    Route::new().at("/", get(home)).nest("/calls-service", calls)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let storage = Storage::connect("sqlite://embedded-calls.db?mode=rwc").await?;
    storage.migrate().await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let signaling = host_signaling(&storage, clock.clone());
    // The ring timer and the liveness sweep: without them unanswered calls would ring for ever.
    let background = Background::start(signaling.clone());
    let app = host_app(signaling.clone(), clock);
    println!("serving the host on http://127.0.0.1:3000 (calls under /calls-service); Ctrl-C stops it");
    let shutdown = async move {
        let _ = tokio::signal::ctrl_c().await;
        signaling.begin_shutdown(); // WebSocket sessions close at once (1001)
    };
    Server::new(TcpListener::bind("127.0.0.1:3000"))
        .run_with_graceful_shutdown(app, shutdown, Some(Duration::from_secs(10)))
        .await?;
    background.shutdown(Duration::from_secs(5)).await;
    storage.close().await?;
    Ok(())
}
