//! [`Expo`]: Expo's push service (`https://exp.host/--/api/v2/push/send`), for Expo and React
//! Native apps on iOS and Android, as the original app pushed to its mobile app.
//!
//! One message per request, as a JSON array of one (the service then answers an array of one
//! ticket). A ticket `DeviceNotRegistered` removes the token; `MessageRateExceeded`, 429 and
//! 5xx are retried; a refused access token is a credential problem.

use async_trait::async_trait;
use ringline_domain::{DevicePlatform, MobilePush, PushProvider, PushRefusal};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{CredentialAlarm, PushContent, PushService, other_status, retry_after, unanswered};

/// Expo's endpoint.
pub const EXPO_PUSH_URL: &str = "https://exp.host/--/api/v2/push/send";

/// The Android notification channel rings are posted to: the one the original app creates.
const ANDROID_CHANNEL: &str = "default";

/// What Expo needs.
#[derive(Debug, Clone)]
pub struct ExpoSettings {
    /// [`EXPO_PUSH_URL`], or a stand-in's.
    pub url: String,
    /// The project's access token, when its push security is on (`Authorization: Bearer`).
    pub access_token: Option<SecretString>,
    /// Trusted besides the public roots.
    pub extra_roots: Vec<reqwest::Certificate>,
}

/// Sends through Expo's push service.
#[derive(Debug)]
pub struct Expo {
    settings: ExpoSettings,
    client: reqwest::Client,
    alarm: CredentialAlarm,
}

impl Expo {
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(settings: ExpoSettings) -> Result<Self, reqwest::Error> {
        let client = super::http_client(&settings.extra_roots, false)?;
        Ok(Self { settings, client, alarm: CredentialAlarm::default() })
    }

    /// The message Expo's API takes for `content` to `push`'s token.
    pub fn message(push: &MobilePush, content: &PushContent) -> Value {
        let mut message = json!({
            "to": push.token.token,
            "data": content.data,
            "priority": "high",
            "ttl": content.time_to_live.as_secs().max(1),
            "expiration": content.expires_at.unix_micros() / 1_000_000,
        });
        let Some(object) = message.as_object_mut() else { return message };
        match &content.alert {
            Some(alert) => {
                object.insert("title".into(), alert.title.clone().into());
                object.insert("body".into(), alert.body.clone().into());
                object.insert("sound".into(), "default".into());
                if push.token.platform == DevicePlatform::Android {
                    object.insert("channelId".into(), ANDROID_CHANNEL.into());
                }
                // A missed call shows the app's "Call back" button (its notification category).
                if push.call.status() == ringline_domain::CallStatus::Missed {
                    object.insert("categoryId".into(), super::MISSED_CALL_CATEGORY.into());
                }
            }
            // A data message: iOS wakes the app for it only when asked to.
            None => {
                object.insert("_contentAvailable".into(), true.into());
            }
        }
        message
    }
}

#[async_trait]
impl PushService for Expo {
    fn provider(&self) -> PushProvider {
        PushProvider::Expo
    }

    async fn send(&self, push: &MobilePush, content: &PushContent) -> Result<(), PushRefusal> {
        let mut request = self
            .client
            .post(&self.settings.url)
            .header("accept", "application/json")
            .json(&json!([Self::message(push, content)]));
        if let Some(token) = &self.settings.access_token {
            request = request.bearer_auth(token.expose_secret());
        }
        let response = request.send().await.map_err(unanswered)?;
        let status = response.status().as_u16();
        let retry = retry_after(&response);
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status == 401 || status == 403 {
            self.alarm.failed(PushProvider::Expo, "the access token (RINGLINE_EXPO_ACCESS_TOKEN) is refused");
            return Err(PushRefusal::Permanent { status: Some(status), error: "access token refused".into() });
        }
        if status != 200 {
            let code = body["errors"][0]["code"].as_str().unwrap_or("no error code");
            return Err(other_status(status, retry, format!("Expo answered {status} ({code})")));
        }
        let ticket = &body["data"][0];
        match ticket["status"].as_str() {
            Some("ok") => {
                self.alarm.worked(PushProvider::Expo);
                Ok(())
            }
            Some("error") => {
                let code = ticket["details"]["error"].as_str().unwrap_or("no error code");
                Err(match code {
                    "DeviceNotRegistered" => PushRefusal::TokenGone { reason: code.to_owned() },
                    "MessageRateExceeded" => {
                        PushRefusal::Transient { status: Some(status), retry_after: retry, error: code.to_owned() }
                    }
                    "InvalidCredentials" => {
                        self.alarm.failed(PushProvider::Expo, "Expo has no valid FCM or APNs credentials for the app");
                        PushRefusal::Permanent { status: Some(status), error: code.to_owned() }
                    }
                    _ => PushRefusal::Permanent { status: Some(status), error: format!("Expo refused it: {code}") },
                })
            }
            _ => Err(PushRefusal::Transient {
                status: Some(status),
                retry_after: None,
                error: "Expo's answer holds no ticket".into(),
            }),
        }
    }
}
