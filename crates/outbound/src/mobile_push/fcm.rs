//! [`Fcm`]: Firebase Cloud Messaging's HTTP v1 API, for browsers registered through the
//! Firebase SDK (as the original web app's) and native Android apps.
//!
//! Authenticated as a service account: an RS256-signed assertion (jsonwebtoken) is traded at
//! the account's own `token_uri` for an OAuth access token, kept until five minutes before it
//! expires. A ring is a high-priority **data** message living as long as the ring; a missed
//! call also carries a visible notification. `UNREGISTERED` (or 404) removes the token.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use ringline_domain::{Clock, DevicePlatform, MobilePush, MobilePushKind, PushProvider, PushRefusal};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

use super::{CredentialAlarm, PushContent, PushService, other_status, retry_after, unanswered};

/// FCM's API base.
pub const FCM_URL: &str = "https://fcm.googleapis.com";

/// What the access token may do.
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// An access token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// A Google service account's key file (the JSON the Firebase console downloads).
#[derive(Clone, Deserialize)]
pub struct ServiceAccount {
    pub project_id: String,
    #[serde(default)]
    pub private_key_id: Option<String>,
    pub private_key: SecretString,
    pub client_email: String,
    pub token_uri: String,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

/// Why `RINGLINE_FCM_CREDENTIALS` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FcmCredentialsError {
    #[error("it is neither a service account's JSON, nor a readable file holding it, nor base64 of it")]
    Unreadable,
    #[error("the service account JSON lacks a field or has a wrong one: {0}")]
    Fields(serde_json::Error),
    #[error("its private_key is not an RSA private key in PEM: {0}")]
    Key(jsonwebtoken::errors::Error),
    #[error("its token_uri is not an https:// URL (http:// only to this machine)")]
    TokenUri,
}

impl ServiceAccount {
    /// Reads the setting as the original app takes it: the JSON itself, a path to a file
    /// holding it, or base64 of it.
    ///
    /// # Errors
    /// [`FcmCredentialsError`] saying what is wrong (never the key itself).
    pub fn from_setting(value: &str) -> Result<Self, FcmCredentialsError> {
        let value = value.trim();
        let json = if value.starts_with('{') {
            value.to_owned()
        } else if let Ok(text) = std::fs::read_to_string(value) {
            text
        } else {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(value))
                .map_err(|_| FcmCredentialsError::Unreadable)?;
            String::from_utf8(decoded).map_err(|_| FcmCredentialsError::Unreadable)?
        };
        let account: Self = serde_json::from_str(&json).map_err(FcmCredentialsError::Fields)?;
        jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key.expose_secret().as_bytes())
            .map_err(FcmCredentialsError::Key)?;
        let token_uri = reqwest::Url::parse(&account.token_uri).map_err(|_| FcmCredentialsError::TokenUri)?;
        let loopback = token_uri.host_str().is_some_and(|host| host == "localhost" || host.starts_with("127."));
        if !(token_uri.scheme() == "https" || (token_uri.scheme() == "http" && loopback)) {
            return Err(FcmCredentialsError::TokenUri);
        }
        Ok(account)
    }
}

/// What FCM needs.
#[derive(Debug, Clone)]
pub struct FcmSettings {
    pub account: ServiceAccount,
    /// [`FCM_URL`], or a stand-in's.
    pub url: String,
    pub extra_roots: Vec<reqwest::Certificate>,
}

/// Sends through FCM.
#[derive(Debug)]
pub struct Fcm {
    settings: FcmSettings,
    key: super::SigningKey,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    access: tokio::sync::Mutex<Option<(SecretString, Instant)>>,
    alarm: CredentialAlarm,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: SecretString,
    expires_in: u64,
}

impl Fcm {
    /// # Errors
    /// When the key cannot be read or the HTTP client built.
    pub fn new(settings: FcmSettings, clock: Arc<dyn Clock>) -> Result<Self, FcmSetupError> {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(settings.account.private_key.expose_secret().as_bytes())
            .map(super::SigningKey)
            .map_err(FcmCredentialsError::Key)?;
        let client = super::http_client(&settings.extra_roots, false)?;
        Ok(Self {
            settings,
            key,
            client,
            clock,
            access: tokio::sync::Mutex::default(),
            alarm: CredentialAlarm::default(),
        })
    }

    /// The message FCM's v1 API takes for `content` to `push`'s token.
    pub fn message(push: &MobilePush, content: &PushContent) -> Value {
        let ttl = content.time_to_live.as_secs().max(1);
        let mut data = content.string_data();
        if let Some(alert) = &content.alert {
            data.insert("title".into(), alert.title.clone().into());
            data.insert("body".into(), alert.body.clone().into());
        }
        let mut message = json!({
            "token": push.token.token,
            "data": data,
            "android": {"priority": "HIGH", "ttl": format!("{ttl}s"), "collapse_key": content.collapse_id},
            "webpush": {"headers": {"Urgency": "high", "TTL": ttl.to_string(), "Topic": content.collapse_id}},
        });
        let Some(object) = message.as_object_mut() else { return message };
        if push.token.platform == DevicePlatform::Ios {
            object.insert(
                "apns".into(),
                json!({
                    "headers": {
                        "apns-priority": "10",
                        "apns-expiration": (content.expires_at.unix_micros() / 1_000_000).to_string(),
                        "apns-collapse-id": content.collapse_id,
                    },
                    "payload": {"aps": {"content-available": 1}},
                }),
            );
        }
        // A missed call is seen, not only handled: FCM shows it itself when the app is closed.
        if push.kind == MobilePushKind::StopRinging
            && let Some(alert) = &content.alert
        {
            object.insert("notification".into(), json!({"title": alert.title, "body": alert.body}));
            // Tapping the missed call opens the app's activity for this action: call back.
            if push.token.platform == DevicePlatform::Android
                && let Some(android) = object.get_mut("android").and_then(Value::as_object_mut)
            {
                android.insert("notification".into(), json!({"click_action": "CALL_BACK"}));
            }
        }
        json!({ "message": message })
    }

    /// An access token: the one kept, or a new one from the account's `token_uri`.
    async fn access_token(&self) -> Result<SecretString, PushRefusal> {
        let mut access = self.access.lock().await;
        if let Some((token, until)) = access.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let account = &self.settings.account;
        let issued = self.clock.now().unix_micros() / 1_000_000;
        let claims = json!({
            "iss": account.client_email,
            "scope": SCOPE,
            "aud": account.token_uri,
            "iat": issued,
            "exp": issued + 3600,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid.clone_from(&account.private_key_id);
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key.0).map_err(|error| {
            PushRefusal::Permanent { status: None, error: format!("cannot sign the OAuth assertion: {error}") }
        })?;
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
            .append_pair("assertion", &assertion)
            .finish();
        let response = self
            .client
            .post(&account.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(unanswered)?;
        let status = response.status().as_u16();
        if status != 200 {
            let retry = retry_after(&response);
            if status == 429 || status >= 500 {
                return Err(other_status(status, retry, format!("the OAuth token endpoint answered {status}")));
            }
            self.alarm.failed(PushProvider::Fcm, "the service account's OAuth token is refused");
            return Err(PushRefusal::Permanent { status: Some(status), error: "OAuth token refused".into() });
        }
        let answer: TokenAnswer = response.json().await.map_err(|_| PushRefusal::Transient {
            status: Some(status),
            retry_after: None,
            error: "the OAuth token endpoint's answer is not a token".into(),
        })?;
        let lifetime = Duration::from_secs(answer.expires_in).saturating_sub(RENEW_BEFORE);
        *access = Some((answer.access_token.clone(), Instant::now() + lifetime));
        Ok(answer.access_token)
    }
}

/// FCM could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FcmSetupError {
    #[error(transparent)]
    Credentials(#[from] FcmCredentialsError),
    #[error("cannot build the FCM HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

#[async_trait]
impl PushService for Fcm {
    fn provider(&self) -> PushProvider {
        PushProvider::Fcm
    }

    async fn send(&self, push: &MobilePush, content: &PushContent) -> Result<(), PushRefusal> {
        let access = self.access_token().await?;
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            self.settings.url.trim_end_matches('/'),
            self.settings.account.project_id
        );
        let response = self
            .client
            .post(url)
            .bearer_auth(access.expose_secret())
            .json(&Self::message(push, content))
            .send()
            .await
            .map_err(unanswered)?;
        let status = response.status().as_u16();
        let retry = retry_after(&response);
        if status == 200 {
            self.alarm.worked(PushProvider::Fcm);
            return Ok(());
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let error = &body["error"];
        let code = error["details"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|detail| detail["errorCode"].as_str())
            .or_else(|| error["status"].as_str())
            .unwrap_or("no error code");
        match (status, code) {
            (404, _) | (_, "UNREGISTERED") => Err(PushRefusal::TokenGone { reason: code.to_owned() }),
            (401, _) => {
                // The access token was refused: the next attempt fetches another.
                *self.access.lock().await = None;
                self.alarm.failed(PushProvider::Fcm, "FCM refuses the service account's access token");
                Err(PushRefusal::Transient { status: Some(status), retry_after: retry, error: code.to_owned() })
            }
            (403, _) => {
                self.alarm.failed(PushProvider::Fcm, "the service account may not send for this Firebase project");
                Err(PushRefusal::Permanent { status: Some(status), error: code.to_owned() })
            }
            _ => Err(other_status(status, retry, format!("FCM answered {status} ({code})"))),
        }
    }
}
