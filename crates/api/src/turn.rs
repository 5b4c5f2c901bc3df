//! `GET /api/turn/ice-servers/`: the ICE servers a client should use, with short-lived TURN
//! credentials in coturn's `use-auth-secret` (TURN REST API) scheme:
//! `username = "<expiry unix time>:<user id>"`, `credential = base64(HMAC-SHA1(secret, username))`.
//! The TURN server checks the signature and the expiry itself; no state is shared.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use poem::Request;
use poem_openapi::OpenApi;
use poem_openapi::payload::Json;
use ringline_domain::{Clock, UserId};
use secrecy::{ExposeSecret, SecretString};

use crate::ApiTags;
use crate::auth::Authenticator;
use crate::error::ApiError;
use crate::models::{IceServerJson, IceServersJson};
use crate::security::{BearerAuth, authenticate};

/// Which ICE servers to hand out.
#[derive(Debug, Clone, Default)]
pub struct IceSettings {
    /// STUN URLs, e.g. `stun:stun.example.org:3478`.
    pub stun_urls: Vec<String>,
    /// TURN URLs, e.g. `turn:turn.example.org:3478?transport=udp`. Handed out only together
    /// with a secret.
    pub turn_urls: Vec<String>,
    /// coturn's `static-auth-secret`.
    pub turn_secret: Option<SecretString>,
    /// How long issued TURN credentials stay valid.
    pub turn_ttl: Duration,
}

/// The TURN REST credential for `user`, valid until `expires_at` (Unix seconds).
pub fn turn_credential(secret: &SecretString, user: &UserId, expires_at: i64) -> (String, String) {
    let username = format!("{expires_at}:{user}");
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, credential)
}

#[derive(Debug)]
pub struct TurnApi {
    settings: IceSettings,
    auth: Arc<dyn Authenticator>,
    clock: Arc<dyn Clock>,
}

impl TurnApi {
    pub fn new(settings: IceSettings, auth: Arc<dyn Authenticator>, clock: Arc<dyn Clock>) -> Self {
        Self { settings, auth, clock }
    }
}

#[OpenApi(tag = "ApiTags::Calls")]
impl TurnApi {
    /// ICE servers for WebRTC
    ///
    /// STUN servers, and TURN servers with credentials that expire after the configured TTL
    /// (coturn `use-auth-secret`). Pass the list to `RTCPeerConnection` as `iceServers`.
    #[oai(path = "/api/turn/ice-servers/", method = "get", operation_id = "turn_ice_servers")]
    async fn ice_servers(&self, req: &Request, auth: BearerAuth) -> Result<Json<IceServersJson>, ApiError> {
        let user = authenticate(self.auth.as_ref(), req, &auth).await?;
        let mut ice_servers = Vec::new();
        if !self.settings.stun_urls.is_empty() {
            ice_servers.push(IceServerJson { urls: self.settings.stun_urls.clone(), username: None, credential: None });
        }
        if let (false, Some(secret)) = (self.settings.turn_urls.is_empty(), &self.settings.turn_secret) {
            let expires_at = self.clock.now().plus(self.settings.turn_ttl).unix_micros() / 1_000_000;
            let (username, credential) = turn_credential(secret, &user, expires_at);
            ice_servers.push(IceServerJson {
                urls: self.settings.turn_urls.clone(),
                username: Some(username),
                credential: Some(credential),
            });
        }
        Ok(Json(IceServersJson { ice_servers }))
    }
}
