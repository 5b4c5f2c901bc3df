//! Web Push for browsers: `/api/push/…` stores a browser's push subscription, and
//! [`WebPushSender`] (a call observer) rings it when a call rings its user, so that a browser
//! with no tab of the app open still shows the call (the web client's service worker,
//! `web/sw.js`, shows it).
//!
//! - Messages are encrypted to the subscription's keys (RFC 8291, `aes128gcm`, by the
//!   `web-push-native` crate) and signed with the server's VAPID key (RFC 8292: an ES256 JWT
//!   whose audience is the push service's origin, signed here with `jsonwebtoken`).
//! - `call.ringing` goes with `TTL` no longer than the ring time left and `Topic: call-<id>`;
//!   when the call stops ringing (answered on any device, declined, cancelled, missed) a
//!   second message with the same topic replaces it at the push service if the first was not
//!   delivered yet, and tells the service worker to take the notification down. The instance
//!   that rang sends it, to the browsers it rang; when the call stops ringing through another
//!   instance, the service worker takes the notification down at the ring deadline instead.
//! - A push service that answers 404 or 410 has dropped the subscription: it is deleted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::types::ToJSON;
use poem_openapi::{ApiResponse, Object, OpenApi};
use ringline_domain::{
    Call, CallId, CallObserver, CallStatus, ChangeOrigin, Clock, PushSubscription, PushSubscriptions, Timestamp,
    Transition, UserProfile,
};
use ringline_storage::VapidKeys;
use web_push_native::p256;

use crate::ApiTags;
use crate::auth::Authenticator;
use crate::error::ApiError;
use crate::models::CallJson;
use crate::security::{BearerAuth, authenticate};

/// How long one request to a push service may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's VAPID identity.
#[derive(Clone)]
pub struct Vapid {
    key: jsonwebtoken::EncodingKey,
    /// The public key, base64url (the browser's `applicationServerKey`, and `k=` of each request).
    public_key: String,
    /// Who to contact about this server's pushes (`mailto:` or `https:`), the JWT's `sub`.
    subject: String,
}

impl std::fmt::Debug for Vapid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vapid").field("public_key", &self.public_key).finish_non_exhaustive()
    }
}

/// The VAPID key pair could not be made or read.
#[derive(Debug, thiserror::Error)]
#[error("the VAPID key is unusable: {0}")]
pub struct VapidError(String);

impl Vapid {
    /// A new P-256 key pair, for [`ringline_storage::SqlPushSubscriptions::vapid_keys`] to keep.
    ///
    /// # Panics
    /// When the system's random source fails (nothing can be signed then).
    pub fn generate() -> VapidKeys {
        let random = ring::rand::SystemRandom::new();
        let algorithm = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(algorithm, &random).expect("a random key");
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(algorithm, pkcs8.as_ref(), &random).expect("our own key");
        VapidKeys {
            private_pkcs8_base64: STANDARD.encode(pkcs8.as_ref()),
            public_key: URL_SAFE_NO_PAD.encode(ring::signature::KeyPair::public_key(&pair).as_ref()),
        }
    }

    /// # Errors
    /// When the stored private key is not base64 PKCS#8.
    pub fn new(keys: &VapidKeys, subject: impl Into<String>) -> Result<Self, VapidError> {
        let der = STANDARD.decode(&keys.private_pkcs8_base64).map_err(|error| VapidError(error.to_string()))?;
        Ok(Self {
            key: jsonwebtoken::EncodingKey::from_ec_der(&der),
            public_key: keys.public_key.clone(),
            subject: subject.into(),
        })
    }

    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// `Authorization: vapid t=<JWT>, k=<public key>` for a request to `endpoint`.
    fn authorization(&self, endpoint: &reqwest::Url, now_unix: i64) -> Result<String, VapidError> {
        let audience = endpoint.origin().ascii_serialization();
        let claims = serde_json::json!({"aud": audience, "exp": now_unix + 12 * 3600, "sub": self.subject});
        let token =
            jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256), &claims, &self.key)
                .map_err(|error| VapidError(error.to_string()))?;
        Ok(format!("vapid t={token}, k={}", self.public_key))
    }
}

/// A subscription as the browser's `PushSubscription.toJSON()` gives it.
#[derive(Debug, Object)]
pub struct PushSubscriptionJson {
    /// The push service's URL for this browser.
    pub endpoint: String,
    pub keys: PushKeysJson,
    /// Ignored (browsers send it; push services expire subscriptions themselves).
    #[oai(rename = "expirationTime")]
    pub expiration_time: Option<serde_json::Value>,
}

#[derive(Debug, Object)]
pub struct PushKeysJson {
    /// The browser's P-256 public key, base64url.
    pub p256dh: String,
    /// The browser's 16-byte authentication secret, base64url.
    pub auth: String,
}

/// Which subscription to remove.
#[derive(Debug, Object)]
pub struct PushEndpointJson {
    pub endpoint: String,
}

#[derive(Debug, Object)]
pub struct PushConfigJson {
    /// The server's VAPID public key, base64url: `applicationServerKey` for
    /// `pushManager.subscribe`.
    pub vapid_public_key: String,
}

#[derive(ApiResponse)]
enum Subscribed {
    /// Stored (or updated, for an endpoint stored before).
    #[oai(status = 201)]
    Created,
}

#[derive(ApiResponse)]
enum Unsubscribed {
    /// Removed.
    #[oai(status = 204)]
    Removed,
}

/// Parses a subscription the way a push will need it: a URL, a point on P-256, 16 bytes.
fn checked(json: &PushSubscriptionJson) -> Result<PushSubscription, ApiError> {
    let invalid = |detail: &str| ApiError::bad_request(detail.to_owned(), "invalid_push_subscription");
    let endpoint = reqwest::Url::parse(&json.endpoint).map_err(|_| invalid("endpoint must be an absolute URL."))?;
    let loopback =
        endpoint.host_str().is_some_and(|host| host == "127.0.0.1" || host == "localhost" || host == "[::1]");
    if !(endpoint.scheme() == "https" || endpoint.scheme() == "http" && loopback) || json.endpoint.len() > 2048 {
        return Err(invalid("endpoint must be an https:// URL of at most 2048 characters."));
    }
    let p256dh = URL_SAFE_NO_PAD.decode(json.keys.p256dh.trim_end_matches('=')).ok();
    if !p256dh.is_some_and(|key| key.len() == 65 && p256::PublicKey::from_sec1_bytes(&key).is_ok()) {
        return Err(invalid("keys.p256dh must be a P-256 public key, base64url."));
    }
    if URL_SAFE_NO_PAD.decode(json.keys.auth.trim_end_matches('=')).map(|auth| auth.len()).ok() != Some(16) {
        return Err(invalid("keys.auth must be 16 bytes, base64url."));
    }
    Ok(PushSubscription {
        endpoint: json.endpoint.clone(),
        p256dh: json.keys.p256dh.trim_end_matches('=').to_owned(),
        auth: json.keys.auth.trim_end_matches('=').to_owned(),
    })
}

/// `/api/push/…`.
#[derive(Debug)]
pub struct PushApi {
    subscriptions: Arc<dyn PushSubscriptions>,
    vapid_public_key: String,
    auth: Arc<dyn Authenticator>,
    clock: Arc<dyn Clock>,
}

impl PushApi {
    pub fn new(
        subscriptions: Arc<dyn PushSubscriptions>,
        vapid: &Vapid,
        auth: Arc<dyn Authenticator>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { subscriptions, vapid_public_key: vapid.public_key.clone(), auth, clock }
    }
}

#[OpenApi(tag = "ApiTags::Push")]
impl PushApi {
    /// The server's VAPID public key
    ///
    /// What a browser passes to `pushManager.subscribe` as `applicationServerKey`.
    #[oai(path = "/api/push/config/", method = "get", operation_id = "push_config")]
    async fn config(&self) -> Json<PushConfigJson> {
        Json(PushConfigJson { vapid_public_key: self.vapid_public_key.clone() })
    }

    /// Ring this browser
    ///
    /// Stores the browser's push subscription (`PushSubscription.toJSON()`) for you: when a
    /// call rings you, the browser is sent a Web Push message even with no tab of the app
    /// open. A browser may hold one subscription; storing its endpoint again (for you or
    /// someone else signing in on it) replaces it.
    #[oai(path = "/api/push/subscriptions/", method = "post", operation_id = "push_subscribe")]
    async fn subscribe(
        &self,
        req: &Request,
        auth: BearerAuth,
        body: Json<PushSubscriptionJson>,
    ) -> Result<Subscribed, ApiError> {
        let user = authenticate(self.auth.as_ref(), req, &auth).await?;
        let subscription = checked(&body.0)?;
        self.subscriptions
            .subscribe(&user, &subscription, self.clock.now())
            .await
            .map_err(|error| ApiError::internal(&error))?;
        Ok(Subscribed::Created)
    }

    /// Stop ringing this browser
    #[oai(path = "/api/push/subscriptions/", method = "delete", operation_id = "push_unsubscribe")]
    async fn unsubscribe(
        &self,
        req: &Request,
        auth: BearerAuth,
        body: Json<PushEndpointJson>,
    ) -> Result<Unsubscribed, ApiError> {
        let user = authenticate(self.auth.as_ref(), req, &auth).await?;
        let removed = self
            .subscriptions
            .unsubscribe(&user, &body.0.endpoint)
            .await
            .map_err(|error| ApiError::internal(&error))?;
        if removed {
            Ok(Unsubscribed::Removed)
        } else {
            Err(ApiError::not_found("You have no push subscription at this endpoint.", "push_subscription_not_found"))
        }
    }
}

/// Sends Web Push messages when calls ring (see the module documentation).
#[derive(Debug)]
pub struct WebPushSender {
    subscriptions: Arc<dyn PushSubscriptions>,
    vapid: Vapid,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    ring_timeout: Duration,
    /// The calls whose ring was pushed from here, with the browsers it went to and when it
    /// stops mattering: the end of the ring goes to the same browsers without reading them
    /// again (most calls ring nobody's browser, and then nothing is read at all).
    rung: Mutex<HashMap<CallId, (Vec<PushSubscription>, Timestamp)>>,
}

impl WebPushSender {
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        subscriptions: Arc<dyn PushSubscriptions>,
        vapid: Vapid,
        clock: Arc<dyn Clock>,
        ring_timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(PUSH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Ringline/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { subscriptions, vapid, client, clock, ring_timeout, rung: Mutex::default() })
    }

    /// Rings every browser of `call`'s receiver, in the background, and remembers which.
    fn ring(self: &Arc<Self>, call: &Call, message: serde_json::Value) {
        let sender = Arc::clone(self);
        let call = call.clone();
        tokio::spawn(async move {
            let subscriptions = match sender.subscriptions.of_user(call.receiver()).await {
                Ok(subscriptions) => subscriptions,
                Err(error) => return tracing::warn!(%error, "cannot read push subscriptions"),
            };
            if subscriptions.is_empty() {
                return;
            }
            let now = sender.clock.now();
            {
                let mut rung = sender.rung.lock().unwrap_or_else(PoisonError::into_inner);
                rung.retain(|_, (_, until)| *until > now);
                rung.insert(call.id(), (subscriptions.clone(), call.started_at().plus(sender.ring_timeout)));
            }
            let (body, ttl, topic) = (message.to_string(), sender.ring_time_left(&call), topic(&call));
            for subscription in subscriptions {
                sender.send(&subscription, body.as_bytes(), ttl, &topic).await;
            }
        });
    }

    /// Tells the browsers `call` rang (from here) that it stopped ringing, in the background.
    fn stop_ringing(self: &Arc<Self>, call: &Call, message: serde_json::Value) {
        let Some((subscriptions, _)) = self.rung.lock().unwrap_or_else(PoisonError::into_inner).remove(&call.id())
        else {
            return;
        };
        let sender = Arc::clone(self);
        let topic = topic(call);
        tokio::spawn(async move {
            let body = message.to_string();
            for subscription in subscriptions {
                sender.send(&subscription, body.as_bytes(), Duration::from_secs(60), &topic).await;
            }
        });
    }

    /// One message to one browser; a subscription its push service no longer knows is deleted.
    async fn send(&self, subscription: &PushSubscription, body: &[u8], ttl: Duration, topic: &str) {
        let (Ok(endpoint), Some(key), Some(auth)) = (
            reqwest::Url::parse(&subscription.endpoint),
            URL_SAFE_NO_PAD
                .decode(&subscription.p256dh)
                .ok()
                .and_then(|key| p256::PublicKey::from_sec1_bytes(&key).ok()),
            URL_SAFE_NO_PAD.decode(&subscription.auth).ok().filter(|auth| auth.len() == 16),
        ) else {
            return tracing::warn!("skipping an unusable push subscription");
        };
        let auth = web_push_native::Auth::clone_from_slice(&auth);
        let encrypted = match web_push_native::encrypt(body.to_vec(), &key, &auth) {
            Ok(encrypted) => encrypted,
            Err(error) => return tracing::warn!(%error, "cannot encrypt a push message"),
        };
        let authorization = match self.vapid.authorization(&endpoint, self.clock.now().unix_micros() / 1_000_000) {
            Ok(authorization) => authorization,
            Err(error) => return tracing::error!(%error, "cannot sign a push request"),
        };
        let host = endpoint.host_str().unwrap_or("?").to_owned();
        let sent = self
            .client
            .post(endpoint)
            .header("ttl", ttl.as_secs().max(1).to_string())
            .header("topic", topic)
            .header("urgency", "high")
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("authorization", authorization)
            .body(encrypted)
            .send()
            .await;
        match sent.map(|response| response.status().as_u16()) {
            Ok(200..=299) => {}
            Ok(404 | 410) => {
                tracing::info!(host, "a push subscription has expired; removing it");
                if let Err(error) = self.subscriptions.forget(&subscription.endpoint).await {
                    tracing::warn!(%error, "cannot remove an expired push subscription");
                }
            }
            Ok(status) => tracing::warn!(host, status, "a push service refused a message"),
            Err(error) => tracing::warn!(host, error = %error.without_url(), "cannot reach a push service"),
        }
    }

    /// How long until `call` stops ringing, at least a second.
    fn ring_time_left(&self, call: &Call) -> Duration {
        let deadline = call.started_at().plus(self.ring_timeout);
        let left = deadline.unix_micros() - self.clock.now().unix_micros();
        Duration::from_micros(u64::try_from(left).unwrap_or(0)).max(Duration::from_secs(1))
    }
}

/// A call's messages share a topic, so a later one replaces an earlier one not yet delivered.
fn topic(call: &Call) -> String {
    format!("call-{}", call.id().get())
}

/// [`WebPushSender`] as the call observer that triggers it.
#[derive(Debug)]
pub struct WebPushObserver(pub Arc<WebPushSender>);

#[async_trait]
impl CallObserver for WebPushObserver {
    async fn ringing(&self, call: &Call, parties: &[UserProfile]) {
        let deadline = call.started_at().plus(self.0.ring_timeout).as_datetime();
        let message = serde_json::json!({
            "type": "call.ringing",
            "call": CallJson::new(call, parties).to_json(),
            "expires_at": deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        self.0.ring(call, message);
    }

    async fn changed(&self, transition: &Transition, _origin: ChangeOrigin<'_>, _parties: Option<&[UserProfile]>) {
        if transition.from != CallStatus::Ringing {
            return;
        }
        // It stopped ringing: the same topic replaces a ring not yet delivered, and the
        // service worker takes a shown one down.
        let call = &transition.call;
        let kind = match call.status() {
            CallStatus::Active => "call.accepted",
            CallStatus::Rejected => "call.rejected",
            CallStatus::Cancelled => "call.cancelled",
            CallStatus::Missed => "call.missed",
            _ => "call.ended",
        };
        let message = serde_json::json!({"type": kind, "call_id": call.id().get().to_string()});
        self.0.stop_ringing(call, message);
    }
}
