//! [`Apns`]: Apple's push service, VoIP pushes to native iOS apps (PushKit tokens), over
//! HTTP/2 (reqwest's, on hyper and h2) with token authentication: an ES256 JWT
//! (jsonwebtoken) signed with the team's `.p8` key, renewed every 40 minutes (Apple takes
//! one for an hour and refuses renewals more often than every 20 minutes).
//!
//! Only rings are pushed: `apns-push-type: voip` on the topic `<bundle>.voip`, priority 10,
//! expiring at the ring deadline. Apple ends the VoIP pushes of an app that does not report a
//! new call to CallKit for each one, so the end of a ring is never one: the woken app learns
//! it from Ringline. 410 and `BadDeviceToken` remove the token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ringline_domain::{Clock, MobilePush, MobilePushKind, PushProvider, PushRefusal};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{CredentialAlarm, PushContent, PushService, other_status, retry_after, unanswered};

/// Apple's production and development endpoints.
pub const APNS_URL: &str = "https://api.push.apple.com";
pub const APNS_SANDBOX_URL: &str = "https://api.sandbox.push.apple.com";

/// How long one signed token is used.
const TOKEN_LIFETIME: Duration = Duration::from_secs(40 * 60);

/// What APNs needs.
#[derive(Debug, Clone)]
pub struct ApnsSettings {
    /// The `.p8` key's contents (PKCS#8 PEM of a P-256 key).
    pub key_pem: SecretString,
    pub key_id: String,
    pub team_id: String,
    /// The app's bundle id; VoIP pushes go to `<bundle>.voip`.
    pub bundle_id: String,
    /// [`APNS_URL`], [`APNS_SANDBOX_URL`], or a stand-in's.
    pub url: String,
    pub extra_roots: Vec<reqwest::Certificate>,
}

impl ApnsSettings {
    /// The topic of VoIP pushes.
    pub fn voip_topic(&self) -> String {
        if self.bundle_id.ends_with(".voip") { self.bundle_id.clone() } else { format!("{}.voip", self.bundle_id) }
    }
}

/// APNs could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ApnsSetupError {
    #[error("the key is not a P-256 private key in PKCS#8 PEM (an AuthKey_….p8 file): {0}")]
    Key(jsonwebtoken::errors::Error),
    #[error("cannot build the APNs HTTP/2 client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Sends VoIP pushes through APNs.
#[derive(Debug)]
pub struct Apns {
    settings: ApnsSettings,
    topic: String,
    key: super::SigningKey,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    signed: tokio::sync::Mutex<Option<(String, Instant)>>,
    alarm: CredentialAlarm,
}

impl Apns {
    /// # Errors
    /// When the key cannot be read or the client built.
    pub fn new(settings: ApnsSettings, clock: Arc<dyn Clock>) -> Result<Self, ApnsSetupError> {
        let key = jsonwebtoken::EncodingKey::from_ec_pem(settings.key_pem.expose_secret().as_bytes())
            .map(super::SigningKey)
            .map_err(ApnsSetupError::Key)?;
        // HTTP/2 only: APNs speaks nothing else.
        let client = super::http_client(&settings.extra_roots, true)?;
        let topic = settings.voip_topic();
        Ok(Self {
            settings,
            topic,
            key,
            client,
            clock,
            signed: tokio::sync::Mutex::default(),
            alarm: CredentialAlarm::default(),
        })
    }

    /// The payload of a VoIP push: an empty `aps` (nothing is shown; the app reports the call
    /// to CallKit) and the call's fields.
    pub fn payload(content: &PushContent) -> Value {
        let mut payload = content.data.clone();
        payload.insert("aps".into(), json!({}));
        Value::Object(payload)
    }

    /// The provider token: the one kept, or a new one.
    async fn provider_token(&self) -> Result<String, PushRefusal> {
        let mut signed = self.signed.lock().await;
        if let Some((token, until)) = signed.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.settings.key_id.clone());
        let claims = json!({"iss": self.settings.team_id, "iat": self.clock.now().unix_micros() / 1_000_000});
        let token = jsonwebtoken::encode(&header, &claims, &self.key.0).map_err(|error| PushRefusal::Permanent {
            status: None,
            error: format!("cannot sign the APNs provider token: {error}"),
        })?;
        *signed = Some((token.clone(), Instant::now() + TOKEN_LIFETIME));
        Ok(token)
    }
}

#[async_trait]
impl PushService for Apns {
    fn provider(&self) -> PushProvider {
        PushProvider::ApnsVoip
    }

    async fn send(&self, push: &MobilePush, content: &PushContent) -> Result<(), PushRefusal> {
        if push.kind != MobilePushKind::Ring {
            return Err(PushRefusal::Permanent { status: None, error: "a VoIP push only ever rings".into() });
        }
        let token = self.provider_token().await?;
        // The device token is hexadecimal (checked when it was registered): safe in the path.
        let url = format!("{}/3/device/{}", self.settings.url.trim_end_matches('/'), push.token.token);
        let response = self
            .client
            .post(url)
            .header("authorization", format!("bearer {token}"))
            .header("apns-push-type", "voip")
            .header("apns-topic", &self.topic)
            .header("apns-priority", "10")
            .header("apns-expiration", (content.expires_at.unix_micros() / 1_000_000).to_string())
            .header("apns-collapse-id", &content.collapse_id)
            .json(&Self::payload(content))
            .send()
            .await
            .map_err(unanswered)?;
        let status = response.status().as_u16();
        let retry = retry_after(&response);
        if status == 200 {
            self.alarm.worked(PushProvider::ApnsVoip);
            return Ok(());
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let reason = body["reason"].as_str().unwrap_or("no reason").to_owned();
        match (status, reason.as_str()) {
            (410, _) | (400, "BadDeviceToken") => Err(PushRefusal::TokenGone { reason }),
            (403, "ExpiredProviderToken") => {
                *self.signed.lock().await = None;
                Err(PushRefusal::Transient { status: Some(status), retry_after: None, error: reason })
            }
            (403, _) => {
                self.alarm.failed(PushProvider::ApnsVoip, "APNs refuses the provider token (key id, team id or key)");
                Err(PushRefusal::Permanent { status: Some(status), error: reason })
            }
            (400, "DeviceTokenNotForTopic" | "TopicDisallowed" | "BadTopic") => {
                self.alarm.failed(PushProvider::ApnsVoip, "APNs refuses the topic (RINGLINE_APNS_TOPIC)");
                Err(PushRefusal::Permanent { status: Some(status), error: reason })
            }
            _ => Err(other_status(status, retry, format!("APNs answered {status} ({reason})"))),
        }
    }
}
