//! Web Push for browsers: `/api/push/…` stores a browser's push subscription, which the
//! outbound crate's `WebPushSender` rings when a call rings its user, so that a browser with no
//! tab of the app open still shows the call (the web client's service worker, `web/sw.js`,
//! shows it).
//!
//! This file is the API and the checks on what a browser sends. A subscription's endpoint is a
//! URL a user gave, which the server will POST to: it must pass the [`UserUrlPolicy`] when
//! stored, and again (as resolved) when a message is sent.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use ringline_domain::{Clock, ErrorCode, PushSubscription, PushSubscriptions, UserUrlPolicy};
use web_push_native::p256;

use crate::ApiTags;
use crate::auth::Authenticator;
use crate::error::ApiError;
use crate::security::{BearerAuth, authenticate};

/// The longest endpoint stored. Push services' are a few hundred characters.
const MAX_ENDPOINT_LEN: usize = 2048;

/// base64url of a 65-byte P-256 point is 87 characters, of 16 bytes 22 (padding is dropped).
const MAX_P256DH_LEN: usize = 88;
const MAX_AUTH_LEN: usize = 24;

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

/// Parses a subscription the way a push will need it: an allowed URL, a point on P-256, 16
/// bytes.
fn checked(json: &PushSubscriptionJson, policy: &dyn UserUrlPolicy) -> Result<PushSubscription, ApiError> {
    let invalid = |detail: String| ApiError::with_detail(ErrorCode::InvalidPushSubscription, detail);
    if json.endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(invalid(format!("endpoint must be at most {MAX_ENDPOINT_LEN} characters.")));
    }
    policy.check(&json.endpoint).map_err(|refusal| invalid(format!("endpoint {refusal}.")))?;
    let (p256dh, auth) = (json.keys.p256dh.trim_end_matches('='), json.keys.auth.trim_end_matches('='));
    let key = (p256dh.len() <= MAX_P256DH_LEN).then(|| URL_SAFE_NO_PAD.decode(p256dh).ok()).flatten();
    if !key.is_some_and(|key| key.len() == 65 && p256::PublicKey::from_sec1_bytes(&key).is_ok()) {
        return Err(invalid("keys.p256dh must be a P-256 public key, base64url.".to_owned()));
    }
    if auth.len() > MAX_AUTH_LEN || URL_SAFE_NO_PAD.decode(auth).map(|auth| auth.len()).ok() != Some(16) {
        return Err(invalid("keys.auth must be 16 bytes, base64url.".to_owned()));
    }
    Ok(PushSubscription { endpoint: json.endpoint.clone(), p256dh: p256dh.to_owned(), auth: auth.to_owned() })
}

/// `/api/push/…`.
#[derive(Debug)]
pub struct PushApi {
    subscriptions: Arc<dyn PushSubscriptions>,
    vapid_public_key: String,
    policy: Arc<dyn UserUrlPolicy>,
    auth: Arc<dyn Authenticator>,
    clock: Arc<dyn Clock>,
}

impl PushApi {
    pub fn new(
        subscriptions: Arc<dyn PushSubscriptions>,
        vapid_public_key: String,
        policy: Arc<dyn UserUrlPolicy>,
        auth: Arc<dyn Authenticator>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { subscriptions, vapid_public_key, policy, auth, clock }
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
    /// someone else signing in on it) replaces it. Your five most recently stored browsers are
    /// rung; storing a sixth drops the oldest. The endpoint must be an `https://` URL of a
    /// browser push service (the server's allowed list) that leads to no private or loopback
    /// address.
    #[oai(path = "/api/push/subscriptions/", method = "post", operation_id = "push_subscribe")]
    async fn subscribe(
        &self,
        req: &Request,
        auth: BearerAuth,
        body: Json<PushSubscriptionJson>,
    ) -> Result<Subscribed, ApiError> {
        let user = authenticate(self.auth.as_ref(), req, &auth).await?;
        let subscription = checked(&body.0, self.policy.as_ref())?;
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
        if removed { Ok(Unsubscribed::Removed) } else { Err(ApiError::new(ErrorCode::PushSubscriptionNotFound)) }
    }
}
