//! Mobile push, sent: [`MobilePushSender`] reads due pushes from the outbox (the domain's
//! `mobile_push`, kept by `ringline_storage::SqlMobilePush`), renders each for its call
//! ([`PushContent`]) and hands it to its service: [`expo::Expo`], [`fcm::Fcm`] or
//! [`apns::Apns`]. `docs/push.md` is the apps' side of it.
//!
//! - Sent at once: the sender is woken by every call change made here ([`crate::OutboxWaker`]);
//!   changes made on other instances are found within a second.
//! - Bounded: at most [`IN_FLIGHT`] requests at a time, each within its service's timeout, in
//!   the background: a slow service delays only its own pushes, never a call.
//! - Leased, so that one instance sends each attempt; retried while it still matters
//!   (`ringline_domain::mobile_push::after_failure`); a token its service calls gone is deleted.
//! - A service whose credentials are refused says so in the log once (ERROR), and again only
//!   after it has worked in between.

pub mod apns;
pub mod expo;
pub mod fcm;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ringline_domain::{
    CallStatus, CallType, Clock, Directory, MobilePush, MobilePushKind, MobilePushOutbox, MobilePushOutcome,
    NotificationRepository, NotificationVerb, PushProvider, PushRefusal, Timestamp, UserProfile,
};
use ringline_metrics::Metrics;
use ringline_metrics::dependencies::MobilePushResult;
use ringline_signaling::CancellationToken;
use ringline_signaling::events::{NotificationPayload, PublicUser};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;

use crate::OutboxWaker;

/// Requests in flight at once, over all services.
const IN_FLIGHT: usize = 32;

/// How long a claimed push is reserved for the instance that claimed it: longer than a
/// request may take, so that no other instance sends it meanwhile.
const LEASE: Duration = Duration::from_secs(30);

/// How long one request to a push service may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long finished pushes are kept (for an operator who wonders what happened to one).
const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// One push service.
#[async_trait]
pub trait PushService: Send + Sync + std::fmt::Debug {
    fn provider(&self) -> PushProvider;

    /// Sends `content` to `push`'s token.
    ///
    /// # Errors
    /// How the service refused it.
    async fn send(&self, push: &MobilePush, content: &PushContent) -> Result<(), PushRefusal>;
}

/// What a push says, whatever service carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct PushContent {
    pub kind: MobilePushKind,
    /// Title and body shown to the user, for a ring and a missed call; none for the end of a
    /// ring (a data message the app acts on).
    pub alert: Option<Alert>,
    /// The fields the apps read (`docs/push.md`): `type`, `call_id`, `call_type`, `caller`,
    /// `conversation_id`, `expires_at`, and for a ring or a missed call the original app's
    /// `notification` and `target_url`.
    pub data: Map<String, Value>,
    /// How long the service may keep trying to deliver it.
    pub time_to_live: Duration,
    /// When it stops mattering.
    pub expires_at: Timestamp,
    /// A later push of the same call replaces an earlier one not yet delivered.
    pub collapse_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub title: String,
    pub body: String,
}

impl PushContent {
    /// The data with every value a string (FCM's data messages carry only strings): objects
    /// as their JSON text, null as nothing.
    pub fn string_data(&self) -> Map<String, Value> {
        self.data
            .iter()
            .filter(|(_, value)| !value.is_null())
            .map(|(key, value)| {
                let text = match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                (key.clone(), Value::String(text))
            })
            .collect()
    }
}

/// How a person is named in a push, as the original app does: full name, else username.
fn display_name(profile: Option<&UserProfile>) -> String {
    let Some(profile) = profile else { return "Someone".to_owned() };
    let full = format!("{} {}", profile.first_name, profile.last_name).trim().to_owned();
    if !full.is_empty() {
        full
    } else if !profile.username.is_empty() {
        profile.username.clone()
    } else {
        "Someone".to_owned()
    }
}

/// What a call's change makes its receiver's devices hear about it, in the `type` the socket
/// events use.
fn event_type(status: CallStatus) -> &'static str {
    match status {
        CallStatus::Ringing | CallStatus::Initiating => "call.ringing",
        CallStatus::Active => "call.accepted",
        CallStatus::Rejected => "call.rejected",
        CallStatus::Cancelled => "call.cancelled",
        CallStatus::Missed => "call.missed",
        CallStatus::Ended => "call.ended",
    }
}

/// Where everything but the services comes from.
#[derive(Debug, Clone)]
pub struct MobilePushSettings {
    pub ring_timeout: Duration,
    /// Who this sender is, the same across its restarts (as the webhook sender's): the pushes
    /// it was sending when it stopped are released when it starts again.
    pub sender: String,
}

/// Sends the outbox's pushes (see the module documentation).
#[derive(Debug)]
pub struct MobilePushSender {
    outbox: Arc<dyn MobilePushOutbox>,
    directory: Arc<dyn Directory>,
    notifications: Arc<dyn NotificationRepository>,
    services: HashMap<PushProvider, Arc<dyn PushService>>,
    providers: Vec<PushProvider>,
    clock: Arc<dyn Clock>,
    settings: MobilePushSettings,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl MobilePushSender {
    /// A sender through `services` (one per provider; a later one of the same provider
    /// replaces an earlier one).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        outbox: Arc<dyn MobilePushOutbox>,
        directory: Arc<dyn Directory>,
        notifications: Arc<dyn NotificationRepository>,
        services: Vec<Arc<dyn PushService>>,
        clock: Arc<dyn Clock>,
        settings: MobilePushSettings,
        waker: &OutboxWaker,
        metrics: Arc<Metrics>,
    ) -> Self {
        let services: HashMap<PushProvider, Arc<dyn PushService>> =
            services.into_iter().map(|service| (service.provider(), service)).collect();
        let mut providers: Vec<PushProvider> = services.keys().copied().collect();
        providers.sort_unstable();
        Self { outbox, directory, notifications, services, providers, clock, settings, wake: waker.notify(), metrics }
    }

    /// The services this sender pushes through.
    pub fn providers(&self) -> &[PushProvider] {
        &self.providers
    }

    /// Sends until `stop`. Requests in flight at `stop` are abandoned; their leases run out (or
    /// are released when this sender starts again) and they are sent again if still current.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        match self.outbox.release_leases(&self.settings.sender).await {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "sending again the mobile pushes in flight at the last stop"),
            Err(error) => tracing::warn!(%error, "cannot release this sender's mobile push leases"),
        }
        let wake = Arc::clone(&self.wake);
        crate::outbox::drain(self, &wake, IN_FLIGHT, stop).await;
    }

    /// One attempt: sends the push if it still matters, and records what happened.
    async fn send_one(self: Arc<Self>, push: MobilePush) {
        let provider = push.token.provider;
        let now = self.clock.now();
        let outcome = if let Some(reason) = self.stale(&push, now) {
            MobilePushOutcome::Dropped { reason: reason.to_owned() }
        } else if let Some(service) = self.services.get(&provider) {
            let content = self.content(&push).await;
            match service.send(&push, &content).await {
                Ok(()) => MobilePushOutcome::Sent,
                Err(refusal) => {
                    let jitter = f64::from(uuid::Uuid::new_v4().as_fields().0 % 1000) / 1000.0;
                    let now = self.clock.now();
                    ringline_domain::mobile_push::after_failure(&push, refusal, now, self.settings.ring_timeout, jitter)
                }
            }
        } else {
            MobilePushOutcome::Dropped { reason: "the push service is not configured here".to_owned() }
        };
        match &outcome {
            MobilePushOutcome::Sent | MobilePushOutcome::Dropped { .. } => {}
            MobilePushOutcome::TokenGone { reason } => {
                tracing::info!(provider = provider.as_str(), reason, "a device token is gone; removing it");
            }
            MobilePushOutcome::RetryAt { status, error, .. } | MobilePushOutcome::Failed { status, error } => {
                tracing::warn!(
                    provider = provider.as_str(),
                    kind = push.kind.as_str(),
                    status,
                    error,
                    attempts = push.attempts + 1,
                    retried = matches!(outcome, MobilePushOutcome::RetryAt { .. }),
                    "a mobile push failed"
                );
            }
        }
        self.metrics.dependencies.mobile_push(
            provider.as_str(),
            match &outcome {
                MobilePushOutcome::Sent => MobilePushResult::Sent,
                MobilePushOutcome::RetryAt { .. } => MobilePushResult::Retry,
                MobilePushOutcome::TokenGone { .. } => MobilePushResult::TokenGone,
                MobilePushOutcome::Dropped { .. } => MobilePushResult::Dropped,
                MobilePushOutcome::Failed { .. } => MobilePushResult::Failed,
            },
        );
        if let Err(error) = self.outbox.finish(&push, &outcome, self.clock.now()).await {
            // The lease runs out and the push is tried again if it still matters.
            tracing::warn!(%error, "cannot record a mobile push");
        }
    }

    /// Why `push` must not be sent (the domain's reasons, and one of this sender's).
    fn stale(&self, push: &MobilePush, now: Timestamp) -> Option<&'static str> {
        if let Some(reason) = push.stale(now, self.settings.ring_timeout) {
            return Some(reason);
        }
        // The original web client's service worker shows every FCM message it gets as a new
        // notification: the end of a ring would pop up as one. Browsers hear the end from
        // their sockets and from Web Push.
        (push.kind == MobilePushKind::StopRinging
            && push.call.status() != CallStatus::Missed
            && push.token.platform == ringline_domain::DevicePlatform::Web)
            .then_some("browsers are not told that a ring ended")
    }

    /// What `push` says (see [`PushContent`]).
    async fn content(&self, push: &MobilePush) -> PushContent {
        let call = &push.call;
        let expires_at = push.deadline(self.settings.ring_timeout);
        let time_to_live = Duration::from_micros(
            u64::try_from(expires_at.unix_micros() - self.clock.now().unix_micros()).unwrap_or(0),
        )
        .max(Duration::from_secs(1));
        let mut data = Map::new();
        data.insert("type".into(), event_type(call.status()).into());
        data.insert("call_id".into(), call.id().get().to_string().into());
        data.insert("call_type".into(), call.call_type().as_str().into());
        data.insert("conversation_id".into(), call.conversation().map(|id| id.get().to_string()).into());
        data.insert("status".into(), call.status().as_str().into());
        if let Some(reason) = call.end_reason() {
            data.insert("end_reason".into(), reason.as_str().into());
        }
        let collapse_id = format!("call-{}", call.id().get());
        let missed = call.status() == CallStatus::Missed;
        if push.kind == MobilePushKind::StopRinging && !missed {
            return PushContent { kind: push.kind, alert: None, data, time_to_live, expires_at, collapse_id };
        }
        let profiles = self.directory.users(std::slice::from_ref(call.caller())).await.unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read a caller's profile for a push; naming nobody");
            Vec::new()
        });
        let caller = profiles.iter().find(|profile| profile.id == *call.caller());
        let name = display_name(caller);
        let video = call.call_type() == CallType::Video;
        let alert = match (missed, video) {
            (false, false) => Alert { title: "📞 Incoming Call".into(), body: format!("{name} is calling you") },
            (false, true) => Alert { title: "📹 Incoming Video Call".into(), body: format!("{name} is calling you") },
            (true, false) => Alert { title: "📞 Missed Call".into(), body: format!("You missed a call from {name}") },
            (true, true) => {
                Alert { title: "📹 Missed Video Call".into(), body: format!("You missed a video call from {name}") }
            }
        };
        data.insert("caller".into(), caller.map(|profile| json!(PublicUser::from(profile))).unwrap_or(Value::Null));
        if missed {
            // "Call back": the app registers the category with this action (docs/push.md) and
            // places a call of `call_type` to `caller.id` when it is chosen.
            data.insert("category".into(), MISSED_CALL_CATEGORY.into());
            data.insert("actions".into(), json!([{"id": CALL_BACK_ACTION, "title": "Call back"}]));
        }
        data.insert("expires_at".into(), expires_at.as_datetime().to_rfc3339().into());
        // The original app's push carried its stored notification (`NotificationSerializer`) and
        // where to open it; its clients read `notification.title`/`body` when the message
        // itself has none, so they are added to it.
        let verb = NotificationVerb::caused_by(call.status(), call.call_type());
        let stored = match verb {
            Some(verb) => self.notifications.caused_by(call.receiver(), call, verb).await.unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot read a call's notification for a push");
                None
            }),
            None => None,
        };
        if let Some(notification) = stored {
            let payload = NotificationPayload::new(&notification, caller);
            data.insert("target_url".into(), payload.target_url.clone().into());
            let mut notification = json!(payload);
            if let Some(object) = notification.as_object_mut() {
                object.insert("title".into(), alert.title.clone().into());
                object.insert("body".into(), alert.body.clone().into());
            }
            data.insert("notification".into(), notification);
        }
        fit(&mut data);
        PushContent { kind: push.kind, alert: Some(alert), data, time_to_live, expires_at, collapse_id }
    }
}

/// The notification category of a missed call, whose action is [`CALL_BACK_ACTION`]: Expo's
/// `categoryId`, FCM's Android `click_action`, and `category` in every push's data.
pub const MISSED_CALL_CATEGORY: &str = "missed_call";

/// The missed call's action: call the caller back.
pub const CALL_BACK_ACTION: &str = "call_back";

/// The most bytes of JSON a push's fields may take: FCM and Expo refuse a message whose data
/// is over 4 KiB (APNs over 5 KiB), and a refused ring never rings.
const MAX_DATA_BYTES: usize = 3 * 1024;

/// Makes `data` fit [`MAX_DATA_BYTES`]: profile pictures go first (a URL may be long), then
/// the original app's notification object (its fields are in `data` anyway).
fn fit(data: &mut Map<String, Value>) {
    let size = |data: &Map<String, Value>| serde_json::to_string(data).map_or(usize::MAX, |text| text.len());
    if size(data) <= MAX_DATA_BYTES {
        return;
    }
    if let Some(Value::Object(caller)) = data.get_mut("caller") {
        caller.remove("profile_image_url");
    }
    if let Some(Value::Object(actor)) = data.get_mut("notification").and_then(|n| n.get_mut("actor")) {
        actor.remove("profile_image_url");
    }
    if size(data) > MAX_DATA_BYTES {
        data.remove("notification");
    }
}

#[async_trait]
impl crate::outbox::OutboxWork for MobilePushSender {
    type Item = MobilePush;
    const NAME: &'static str = "mobile push";

    async fn claim(&self, room: u32) -> Result<Vec<MobilePush>, ringline_domain::RepositoryError> {
        let now = self.clock.now();
        self.outbox.claim_due(&self.settings.sender, &self.providers, now, now.plus(LEASE), room).await
    }

    async fn deliver(self: Arc<Self>, push: MobilePush) {
        self.send_one(push).await;
    }

    async fn prune(&self) -> Result<u64, ringline_domain::RepositoryError> {
        self.outbox.prune(self.clock.now().minus(RETENTION)).await
    }
}

/// Says once that a service refuses Ringline's credentials (ERROR), and once that it works
/// again: a broken key is not a log line per call.
#[derive(Debug, Default)]
pub struct CredentialAlarm {
    failing: AtomicBool,
}

impl CredentialAlarm {
    pub fn failed(&self, provider: PushProvider, problem: &str) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::error!(
                provider = provider.as_str(),
                problem,
                "the push service refuses Ringline's credentials: no push goes through it until they are fixed"
            );
        }
    }

    pub fn worked(&self, provider: PushProvider) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(provider = provider.as_str(), "the push service takes Ringline's credentials again");
        }
    }
}

/// A private key that signs a service's tokens; never shown, not even in `Debug`.
pub(crate) struct SigningKey(pub(crate) jsonwebtoken::EncodingKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// The HTTP client every push service uses: `extra_roots` trusted besides the public roots
/// (a TLS-inspecting proxy, or a stand-in in tests), no redirects, bounded in time.
///
/// # Errors
/// When the client cannot be built.
pub(crate) fn http_client(
    extra_roots: &[reqwest::Certificate],
    http2_only: bool,
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("Ringline-Push/", env!("CARGO_PKG_VERSION")));
    for root in extra_roots {
        builder = builder.add_root_certificate(root.clone());
    }
    if http2_only {
        builder = builder.http2_prior_knowledge();
    }
    builder.build()
}

pub use reqwest::Certificate;

/// The PEM certificates in `file`, for the push clients to trust besides the public roots.
///
/// # Errors
/// What is wrong with the file, in a sentence.
pub fn certificates_in(file: &std::path::Path) -> Result<Vec<Certificate>, String> {
    let pem = std::fs::read(file).map_err(|error| format!("cannot read {}: {error}", file.display()))?;
    let roots = Certificate::from_pem_bundle(&pem)
        .map_err(|error| format!("{} holds no PEM certificate: {error}", file.display()))?;
    if roots.is_empty() {
        return Err(format!("{} holds no PEM certificate", file.display()));
    }
    Ok(roots)
}

/// A `Retry-After` given in seconds (the services send seconds, not dates).
pub(crate) fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let seconds = response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok()?;
    Some(Duration::from_secs(seconds.min(3600)))
}

/// A failed request (no answer) as a refusal worth retrying, without its URL (an APNs URL
/// holds the token).
pub(crate) fn unanswered(error: reqwest::Error) -> PushRefusal {
    let error = if error.is_timeout() {
        "the request timed out".to_owned()
    } else if error.is_connect() {
        "cannot connect to the push service".to_owned()
    } else {
        crate::web_push::error_chain(&error.without_url())
    };
    PushRefusal::Transient { status: None, retry_after: None, error }
}

/// An answer that is neither success nor one the service documents for a gone token: 429 and
/// 5xx are worth retrying, anything else is not.
pub(crate) fn other_status(status: u16, retry: Option<Duration>, what: String) -> PushRefusal {
    if status == 429 || status >= 500 {
        PushRefusal::Transient { status: Some(status), retry_after: retry, error: what }
    } else {
        PushRefusal::Permanent { status: Some(status), error: what }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_for_fcm_is_all_strings() {
        let mut data = Map::new();
        data.insert("call_id".into(), "7".into());
        data.insert("caller".into(), json!({"id": "u1"}));
        data.insert("conversation_id".into(), Value::Null);
        let content = PushContent {
            kind: MobilePushKind::Ring,
            alert: None,
            data,
            time_to_live: Duration::from_secs(30),
            expires_at: Timestamp::from_unix_micros(0).expect("epoch"),
            collapse_id: "call-7".into(),
        };
        assert_eq!(Value::Object(content.string_data()), json!({"call_id": "7", "caller": "{\"id\":\"u1\"}"}));
    }

    #[test]
    fn a_long_profile_never_makes_a_ring_too_big_to_send() {
        let picture = format!("https://cdn.example.org/{}", "p".repeat(2000));
        let person = json!({"id": "u1", "username": "ada", "profile_image_url": picture});
        let mut data = Map::new();
        data.insert("call_id".into(), "7".into());
        data.insert("caller".into(), person.clone());
        data.insert("notification".into(), json!({"id": 1, "actor": person}));
        fit(&mut data);
        assert!(serde_json::to_string(&data).expect("JSON").len() <= MAX_DATA_BYTES);
        assert_eq!(data["caller"], json!({"id": "u1", "username": "ada"}));
        assert_eq!(data["notification"]["actor"]["username"], "ada", "kept when it fits without pictures");
    }

    #[test]
    fn people_are_named_as_the_original_app_names_them() {
        let profile = |first: &str, last: &str, username: &str| UserProfile {
            id: ringline_domain::UserId::parse("u1").expect("id"),
            username: username.into(),
            first_name: first.into(),
            last_name: last.into(),
            profile_image_url: None,
        };
        assert_eq!(display_name(Some(&profile("Ada", "Lovelace", "ada"))), "Ada Lovelace");
        assert_eq!(display_name(Some(&profile("", "", "ada"))), "ada");
        assert_eq!(display_name(None), "Someone");
    }
}
