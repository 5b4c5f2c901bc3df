//! The mobile push services the settings turn on ([`PushServices::from_settings`]): Expo when
//! `RINGLINE_EXPO_PUSH` is on, FCM with `RINGLINE_FCM_CREDENTIALS`, APNs VoIP with the four
//! `RINGLINE_APNS_*` keys. A credential that cannot be used (an unreadable key file, a service
//! account that is not one) does not stop the server: that service stays off, and the problem
//! is said once, at start-up, as an ERROR (and by `ringline check-config`).

use std::sync::Arc;

use ringline_domain::{Clock, PushProvider};
use ringline_outbound::mobile_push::PushService;
use ringline_outbound::mobile_push::apns::{APNS_SANDBOX_URL, APNS_URL, Apns, ApnsSettings};
use ringline_outbound::mobile_push::expo::{Expo, ExpoSettings};
use ringline_outbound::mobile_push::fcm::{Fcm, FcmSettings, ServiceAccount};
use secrecy::{ExposeSecret, SecretString};

use crate::settings::MobilePushConfig;

/// The services that could be set up, and what kept others off.
#[derive(Debug, Default)]
pub struct PushServices {
    pub services: Vec<Arc<dyn PushService>>,
    /// One sentence per configured service that is off, naming its setting and why.
    pub problems: Vec<String>,
}

impl PushServices {
    /// The services `config` configures.
    pub fn from_settings(config: &MobilePushConfig, clock: &Arc<dyn Clock>) -> Self {
        let mut found = Self::default();
        let roots = match extra_roots(config) {
            Ok(roots) => roots,
            Err(problem) => {
                found.problems.push(format!("mobile push is off: {problem}"));
                return found;
            }
        };
        if config.expo_push {
            let settings = ExpoSettings {
                url: config.expo_push_url.clone(),
                access_token: config.expo_access_token.clone(),
                extra_roots: roots.clone(),
            };
            found.add(PushProvider::Expo, Expo::new(settings).map_err(|error| error.to_string()));
        }
        if let Some(credentials) = &config.fcm_credentials {
            let service = ServiceAccount::from_setting(credentials.expose_secret())
                .map_err(|error| format!("RINGLINE_FCM_CREDENTIALS: {error}"))
                .and_then(|account| {
                    let settings = FcmSettings { account, url: config.fcm_url.clone(), extra_roots: roots.clone() };
                    Fcm::new(settings, clock.clone()).map_err(|error| format!("RINGLINE_FCM_CREDENTIALS: {error}"))
                });
            found.add(PushProvider::Fcm, service);
        }
        if let (Some(key_file), Some(key_id), Some(team_id), Some(topic)) =
            (&config.apns_key_file, &config.apns_key_id, &config.apns_team_id, &config.apns_topic)
        {
            let service = std::fs::read_to_string(key_file)
                .map_err(|error| format!("RINGLINE_APNS_KEY_FILE: cannot read {key_file}: {error}"))
                .and_then(|key| {
                    let url = config
                        .apns_url
                        .clone()
                        .unwrap_or_else(|| (if config.apns_sandbox { APNS_SANDBOX_URL } else { APNS_URL }).to_owned());
                    let settings = ApnsSettings {
                        key_pem: SecretString::from(key),
                        key_id: key_id.trim().to_owned(),
                        team_id: team_id.trim().to_owned(),
                        bundle_id: topic.trim().to_owned(),
                        url,
                        extra_roots: roots.clone(),
                    };
                    Apns::new(settings, clock.clone()).map_err(|error| format!("RINGLINE_APNS_KEY_FILE: {error}"))
                });
            found.add(PushProvider::ApnsVoip, service);
        }
        found
    }

    fn add<S: PushService + 'static>(&mut self, provider: PushProvider, service: Result<S, String>) {
        match service {
            Ok(service) => self.services.push(Arc::new(service)),
            Err(problem) => {
                self.problems.push(format!("mobile push through {} is off: {problem}", provider.as_str()));
            }
        }
    }
}

/// The certificates of `RINGLINE_PUSH_CA_FILE`.
fn extra_roots(config: &MobilePushConfig) -> Result<Vec<ringline_outbound::mobile_push::Certificate>, String> {
    let Some(file) = &config.push_ca_file else { return Ok(Vec::new()) };
    ringline_outbound::mobile_push::certificates_in(std::path::Path::new(file))
        .map_err(|problem| format!("RINGLINE_PUSH_CA_FILE: {problem}"))
}
