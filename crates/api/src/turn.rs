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
use ringline_domain::{Clock, Timestamp, UserId};
use ringline_signaling::Signaling;
use secrecy::{ExposeSecret, SecretString};

use crate::ApiTags;
use crate::auth::Authenticator;
use crate::error::ApiError;
use crate::models::{IceServerJson, IceServersJson, IceTransportPolicyJson, UtcTime};
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
    /// Every user's calls connect only through the relay (`RINGLINE_ICE_RELAY_ONLY`); each
    /// user may also choose it for themselves (`relay_only` in their call settings).
    pub relay_only: bool,
    /// More TURN servers, each with its own secret, handed out after `turn_urls`.
    pub turn_servers: Vec<TurnServer>,
}

/// A TURN server (or a cluster sharing one secret): its URLs and coturn's `static-auth-secret`.
#[derive(Debug, Clone)]
pub struct TurnServer {
    pub urls: Vec<String>,
    pub secret: SecretString,
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
    signaling: Arc<Signaling>,
    auth: Arc<dyn Authenticator>,
    clock: Arc<dyn Clock>,
}

impl TurnApi {
    pub fn new(
        settings: IceSettings,
        signaling: Arc<Signaling>,
        auth: Arc<dyn Authenticator>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { settings, signaling, auth, clock }
    }

    /// Whether `user`'s calls must go through the relay: the server says so for everyone, or
    /// the user chose it.
    async fn relay_only(&self, user: &UserId) -> Result<bool, ApiError> {
        if self.settings.relay_only {
            return Ok(true);
        }
        let Some(policy) = self.signaling.service().policy() else { return Ok(false) };
        let settings = policy.store().settings(user).await.map_err(|error| ApiError::internal(&error))?;
        Ok(settings.relay_only)
    }
}

#[OpenApi(tag = "ApiTags::Calls")]
impl TurnApi {
    /// ICE servers for WebRTC
    ///
    /// STUN servers, and TURN servers with credentials that expire after the configured TTL
    /// (coturn `use-auth-secret`; `expires_at` says when). Pass the list to `RTCPeerConnection`
    /// as `iceServers`, and `ice_transport_policy` as `iceTransportPolicy`: `relay` when the
    /// user (call settings' `relay_only`) or the server chose relay-only calls.
    #[oai(path = "/api/turn/ice-servers/", method = "get", operation_id = "turn_ice_servers")]
    async fn ice_servers(&self, req: &Request, auth: BearerAuth) -> Result<Json<IceServersJson>, ApiError> {
        let user = authenticate(self.auth.as_ref(), req, &auth).await?;
        let relay_only = self.relay_only(&user).await?;
        let mut ice_servers = Vec::new();
        let mut expires = None;
        if !self.settings.stun_urls.is_empty() {
            ice_servers.push(IceServerJson { urls: self.settings.stun_urls.clone(), username: None, credential: None });
        }
        let first = self.settings.turn_secret.iter().filter(|_| !self.settings.turn_urls.is_empty());
        let servers = first
            .map(|secret| (&self.settings.turn_urls, secret))
            .chain(self.settings.turn_servers.iter().map(|server| (&server.urls, &server.secret)));
        // The credential names whole seconds; the moment given is that second.
        let expires_at = self.clock.now().plus(self.settings.turn_ttl).unix_micros() / 1_000_000;
        for (urls, secret) in servers {
            expires = Timestamp::from_unix_micros(expires_at * 1_000_000);
            let (username, credential) = turn_credential(secret, &user, expires_at);
            ice_servers.push(IceServerJson {
                urls: urls.clone(),
                username: Some(username),
                credential: Some(credential),
            });
        }
        let ice_transport_policy = if relay_only { IceTransportPolicyJson::Relay } else { IceTransportPolicyJson::All };
        Ok(Json(IceServersJson { ice_servers, ice_transport_policy, expires_at: expires.map(UtcTime) }))
    }
}
