//! Typed settings, layered: built-in defaults, then a TOML file (`--config`), then
//! `RINGLINE_*` environment variables, then command-line flags. Every key is documented in
//! `docs/configuration.md`. Secrets are `SecretString`: they never appear in logs or `Debug`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider};
use ringline_api::{IceSettings, ListenerSettings};
use ringline_bus::RedisSettings;
use ringline_domain::{LivenessPolicy, RateCaps};
use ringline_outbound::{AllowedHosts, WebhookSettings};
use ringline_signaling::{FrameRate, Keepalive};
use ringline_storage::SqliteSync;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};

/// The JWT secret used when none is configured. Refused in production.
pub const DEVELOPMENT_JWT_SECRET: &str = "ringline-development-secret-not-for-production";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    #[default]
    Development,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Everything `ringline` can be configured with, one group per component. The keys stay flat
/// (`RINGLINE_RING_TIMEOUT_SECS`, `ring_timeout_secs` in the file): each group reads its own,
/// and each default is written once, in its group's `Default`. An unknown key (a typo) is an
/// error, not silently ignored ([`Settings::load`]).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Settings {
    #[serde(flatten)]
    pub http: HttpConfig,
    #[serde(flatten)]
    pub database: DatabaseConfig,
    #[serde(flatten)]
    pub auth: AuthConfig,
    #[serde(flatten)]
    pub calls: CallConfig,
    #[serde(flatten)]
    pub call_policy: CallPolicyConfig,
    #[serde(flatten)]
    pub sockets: SocketConfig,
    #[serde(flatten)]
    pub ice_servers: IceConfig,
    #[serde(flatten)]
    pub bus: BusConfig,
    #[serde(flatten)]
    pub webhook: WebhookConfig,
    #[serde(flatten)]
    pub push: PushConfig,
    #[serde(flatten)]
    pub mobile_push: MobilePushConfig,
    #[serde(flatten)]
    pub process: ProcessConfig,
    #[serde(flatten)]
    pub metrics: MetricsConfig,
}

/// The listener and what browsers may do: `RINGLINE_BIND`, the connection bounds, proxies, CORS.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct HttpConfig {
    pub bind: SocketAddr,
    /// A connection on which nothing is read or written for this long is closed: a client that
    /// opened one and stalled (or sends its headers byte by byte, slower than this) does not
    /// hold it for ever. Above the WebSocket ping interval, so live sockets never idle.
    pub http_idle_timeout_secs: u64,
    /// How long a request's headers (a WebSocket upgrade's included) may take to arrive, from
    /// their first byte (from the accept, for a connection's first request), however slowly
    /// they trickle: the idle timeout alone restarts on every byte.
    pub http_header_timeout_secs: u64,
    /// Connections (HTTP and WebSocket together) kept open at most; one more is answered `503
    /// too_many_connections` and closed. `None`: the open-files limit (raised to its maximum
    /// at start) less [`RESERVED_DESCRIPTORS`], so the database, Redis and the log always have
    /// descriptors left.
    pub max_connections: Option<usize>,
    /// Connections one client address may hold at once (an IPv6 address: its /64); one more is
    /// answered `429 too_many_connections_from_address`. `None`: a quarter of the connection
    /// cap, so that one address always leaves most places to everyone else.
    pub max_connections_per_address: Option<usize>,
    /// Addresses not counted per address (they still count against the overall cap): the
    /// server's own machine by default, where a local proxy or probe connects from. Trusted
    /// proxies are never counted per address: their clients are, by forwarded address.
    #[serde(deserialize_with = "comma_list_of_addresses")]
    pub max_connections_per_address_exempt: Vec<std::net::IpAddr>,
    /// Proxies whose `X-Forwarded-Host`, `X-Forwarded-Proto`, `X-Forwarded-For` and
    /// `Forwarded` headers are believed (the address the connection comes from); anyone else's
    /// are removed before routing.
    #[serde(deserialize_with = "comma_list_of_addresses")]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    #[serde(deserialize_with = "comma_list")]
    pub cors_allowed_origins: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8000)),
            http_idle_timeout_secs: 75,
            http_header_timeout_secs: 5,
            max_connections: None,
            max_connections_per_address: None,
            max_connections_per_address_exempt: vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()],
            trusted_proxies: Vec::new(),
            cors_allowed_origins: Vec::new(),
        }
    }
}

/// The database: `RINGLINE_DATABASE_URL` and how it is used.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct DatabaseConfig {
    #[serde(serialize_with = "without_password")]
    pub database_url: String,
    /// How long a request waits for a PostgreSQL connection before it is answered `503
    /// database_unavailable`: short, so an outage fails requests at once instead of holding
    /// them.
    pub database_acquire_timeout_secs: u64,
    /// `None`: `full` when `env` is production, `normal` otherwise ([`Settings::sqlite_sync`]).
    pub sqlite_synchronous: Option<SqliteSync>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            database_url: ringline_storage::DEFAULT_DATABASE_URL.to_owned(),
            database_acquire_timeout_secs: ringline_storage::ConnectSettings::DEFAULT_ACQUIRE_TIMEOUT.as_secs(),
            sqlite_synchronous: None,
        }
    }
}

/// Who may call the API: the JWT secret and claim, first-use registration, the admin token.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AuthConfig {
    #[serde(serialize_with = "redacted")]
    pub jwt_secret: Option<SecretString>,
    pub jwt_user_claim: String,
    /// A token naming a user the directory never had registers them from its `username`
    /// claim; `false` refuses such tokens (`user_not_found`), for apps that sync their users.
    pub register_on_first_use: bool,
    #[serde(serialize_with = "redacted")]
    pub admin_token: Option<SecretString>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { jwt_secret: None, jwt_user_claim: "user_id".to_owned(), register_on_first_use: true, admin_token: None }
    }
}

/// How long calls ring and live.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct CallConfig {
    pub ring_timeout_secs: u64,
    pub liveness_grace_secs: u64,
    pub max_call_secs: u64,
}

impl Default for CallConfig {
    fn default() -> Self {
        Self {
            ring_timeout_secs: ringline_domain::DEFAULT_RING_TIMEOUT.as_secs(),
            liveness_grace_secs: LivenessPolicy::default().grace.as_secs(),
            max_call_secs: LivenessPolicy::default().max_call.as_secs(),
        }
    }
}

/// Who may ring whom beyond users' own settings (`docs/configuration.md`, "Call policy"):
/// the rate caps and the host application's policy hook.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct CallPolicyConfig {
    /// Calls one user may start within a minute, to anyone (0: no cap).
    pub calls_per_minute: u32,
    /// Unanswered calls (missed, cancelled, declined) from one caller to one callee within ten
    /// minutes after which the caller must wait (0: no cap).
    pub unanswered_calls_per_callee: u32,
    /// Asked before every call that users' settings allow, with a signed POST; none: not asked.
    pub call_policy_url: Option<String>,
    pub call_policy_timeout_ms: u64,
    /// Whether a call is placed when the hook does not answer in time or fails. On by default:
    /// users' blocks and privacy are enforced by Ringline itself, so an outage of the host
    /// application's hook then costs only its extra rules, not every call; turn it off when
    /// the hook enforces something calls must never bypass.
    pub call_policy_fail_open: bool,
}

impl Default for CallPolicyConfig {
    fn default() -> Self {
        let caps = RateCaps::default();
        Self {
            calls_per_minute: caps.calls_per_minute,
            unanswered_calls_per_callee: caps.unanswered_per_callee,
            call_policy_url: None,
            call_policy_timeout_ms: 1000,
            call_policy_fail_open: true,
        }
    }
}

/// WebSocket sessions: keepalive, frame rate, sockets per user.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct SocketConfig {
    pub ws_ping_interval_secs: u64,
    pub ws_idle_timeout_secs: u64,
    pub ws_frames_per_sec: u32,
    pub ws_frame_burst: u32,
    pub ws_max_per_user: usize,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            ws_ping_interval_secs: Keepalive::default().ping_interval.as_secs(),
            ws_idle_timeout_secs: Keepalive::default().idle_timeout.as_secs(),
            ws_frames_per_sec: FrameRate::default().per_second as u32,
            ws_frame_burst: FrameRate::default().burst as u32,
            ws_max_per_user: ringline_signaling::hub::DEFAULT_MAX_SOCKETS_PER_USER,
        }
    }
}

/// The STUN and TURN servers handed to clients.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct IceConfig {
    #[serde(deserialize_with = "comma_list")]
    pub stun_urls: Vec<String>,
    #[serde(deserialize_with = "comma_list")]
    pub turn_urls: Vec<String>,
    #[serde(serialize_with = "redacted")]
    pub turn_secret: Option<SecretString>,
    pub turn_ttl_secs: u64,
    /// More TURN servers, each with the secret it checks credentials with (a server or a
    /// cluster of them that shares one `static-auth-secret`); handed out after `turn_urls`.
    pub turn_servers: Vec<TurnServerConfig>,
    /// Every user's calls connect only through the TURN relay (as if each had chosen
    /// `relay_only`): no client's IP address reaches the other party.
    pub ice_relay_only: bool,
}

impl Default for IceConfig {
    fn default() -> Self {
        Self {
            stun_urls: Vec::new(),
            turn_urls: Vec::new(),
            turn_secret: None,
            turn_ttl_secs: 24 * 60 * 60,
            turn_servers: Vec::new(),
            ice_relay_only: false,
        }
    }
}

/// One TURN server of `turn_servers` (or a cluster sharing one secret): its URLs, and coturn's
/// `static-auth-secret` for them.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TurnServerConfig {
    #[serde(deserialize_with = "comma_list")]
    pub urls: Vec<String>,
    #[serde(serialize_with = "redacted_always")]
    pub secret: SecretString,
}

/// Redis, for several instances.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct BusConfig {
    /// Redis for several instances (`redis://127.0.0.1:6379`); `None`: one process, in-memory
    /// routing. With `redis_cluster`, any of the cluster's nodes, comma-separated. It may hold
    /// a password: never logged.
    #[serde(serialize_with = "redacted")]
    pub redis_url: Option<SecretString>,
    pub redis_prefix: String,
    /// `redis_url` names a Redis Cluster: sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`).
    pub redis_cluster: bool,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self { redis_url: None, redis_prefix: RedisSettings::DEFAULT_PREFIX.to_owned(), redis_cluster: false }
    }
}

/// Call webhooks (`docs/webhooks.md`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct WebhookConfig {
    /// Where call events are POSTed (`docs/webhooks.md`); none: no webhooks.
    #[serde(deserialize_with = "comma_list")]
    pub webhook_urls: Vec<String>,
    /// Signs every webhook request; required with `webhook_urls`.
    #[serde(serialize_with = "redacted")]
    pub webhook_secret: Option<SecretString>,
    pub webhook_timeout_secs: u64,
    pub webhook_give_up_hours: u64,
    pub webhook_retention_hours: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            webhook_urls: Vec::new(),
            webhook_secret: None,
            webhook_timeout_secs: 10,
            webhook_give_up_hours: 24,
            webhook_retention_hours: 72,
        }
    }
}

/// Web Push: which push services users' endpoints may name, and the VAPID contact.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct PushConfig {
    /// Hosts a Web Push subscription's endpoint may name (each with its subdomains; `*`: any
    /// host with a public address). By default the browsers' push services.
    #[serde(deserialize_with = "comma_list")]
    pub web_push_allowed_hosts: Vec<String>,
    /// Lets Web Push endpoints on loopback through (push-service stand-ins in tests); refused
    /// in production.
    pub web_push_allow_loopback: bool,
    /// Who push services may contact about this server's Web Push messages (VAPID `sub`): a
    /// `mailto:` or `https:` URL.
    pub vapid_subject: String,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            web_push_allowed_hosts: AllowedHosts::BROWSER_PUSH_SERVICES.iter().map(|host| (*host).to_owned()).collect(),
            web_push_allow_loopback: false,
            vapid_subject: "mailto:ringline@localhost".to_owned(),
        }
    }
}

/// Mobile push through Expo, FCM and APNs (`docs/push.md`). Each service is on when its
/// credentials are set (Expo: when `expo_push` is); the URLs are for stand-ins in tests.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct MobilePushConfig {
    pub expo_push: bool,
    #[serde(serialize_with = "redacted")]
    pub expo_access_token: Option<SecretString>,
    pub expo_push_url: String,
    /// A service account's JSON key, a path to a file holding it, or base64 of it.
    #[serde(serialize_with = "redacted")]
    pub fcm_credentials: Option<SecretString>,
    pub fcm_url: String,
    /// The `.p8` key file of token authentication; with the key id, team id and topic.
    pub apns_key_file: Option<String>,
    pub apns_key_id: Option<String>,
    pub apns_team_id: Option<String>,
    /// The iOS app's bundle id (VoIP pushes go to `<topic>.voip`).
    pub apns_topic: Option<String>,
    /// Apple's development endpoint (apps built for development get sandbox tokens).
    pub apns_sandbox: bool,
    /// Overrides the endpoint (a stand-in in tests).
    pub apns_url: Option<String>,
    /// PEM certificates the push clients trust besides the public roots (a TLS-inspecting
    /// egress proxy, or a stand-in in tests).
    pub push_ca_file: Option<String>,
}

impl Default for MobilePushConfig {
    fn default() -> Self {
        Self {
            expo_push: false,
            expo_access_token: None,
            expo_push_url: ringline_outbound::mobile_push::expo::EXPO_PUSH_URL.to_owned(),
            fcm_credentials: None,
            fcm_url: ringline_outbound::mobile_push::fcm::FCM_URL.to_owned(),
            apns_key_file: None,
            apns_key_id: None,
            apns_team_id: None,
            apns_topic: None,
            apns_sandbox: false,
            apns_url: None,
            push_ca_file: None,
        }
    }
}

/// The process: development or production, and the log format.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ProcessConfig {
    pub env: Environment,
    pub log_format: LogFormat,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self { env: Environment::Development, log_format: LogFormat::Text }
    }
}

/// Where Prometheus scrapes: `RINGLINE_METRICS_BIND`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct MetricsConfig {
    /// The address of the metrics listener (`GET /metrics`), e.g. `127.0.0.1:9464`; `None`:
    /// no metrics listener. Never the API's address: metrics are for the operator only.
    pub metrics_bind: Option<SocketAddr>,
}

/// Who sends from the outboxes (webhooks, mobile pushes) in this process: the machine's name
/// (the kernel's, else `$HOSTNAME`) and the port it serves on, which stay the same when it
/// restarts, so that it releases the leases it held when it stopped.
pub fn outbox_sender(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "ringline".to_owned());
    format!("{host}:{port}")
}

/// Every key the settings read: the fields of each group, as their `Deserialize` names them.
fn known_keys() -> Vec<&'static str> {
    [
        fields_of::<HttpConfig>(),
        fields_of::<DatabaseConfig>(),
        fields_of::<AuthConfig>(),
        fields_of::<CallConfig>(),
        fields_of::<CallPolicyConfig>(),
        fields_of::<SocketConfig>(),
        fields_of::<IceConfig>(),
        fields_of::<BusConfig>(),
        fields_of::<WebhookConfig>(),
        fields_of::<PushConfig>(),
        fields_of::<MobilePushConfig>(),
        fields_of::<ProcessConfig>(),
        fields_of::<MetricsConfig>(),
    ]
    .concat()
}

/// The field names a struct's derived `Deserialize` asks for, read by asking it to deserialize
/// from a deserializer that only records them. (serde refuses unknown fields only without
/// `flatten`, which the groups need; so the keys are checked here instead.)
fn fields_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    struct Recorder<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Recorder<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
            unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Recorder(&mut fields));
    fields
}

/// Every key no group reads, each named as its source spells it (`RINGLINE_X` or the file's
/// `x`) with the closest known one.
fn unknown_keys(figment: &Figment) -> Vec<SettingsError> {
    let known = known_keys();
    let data = match figment.data() {
        Ok(data) => data,
        Err(error) => return vec![SettingsError::Parse(Box::new(error))],
    };
    let mut unknown: Vec<&String> =
        data.values().flat_map(|dict| dict.keys()).filter(|key| !known.contains(&key.as_str())).collect();
    unknown.sort();
    unknown.dedup();
    unknown
        .into_iter()
        .map(|field| {
            let from_environment =
                figment.find_metadata(field).is_some_and(|metadata| metadata.name.contains("environment"));
            let spell =
                |key: &str| if from_environment { format!("RINGLINE_{}", key.to_uppercase()) } else { key.to_owned() };
            let suggestion = known
                .iter()
                .map(|known| (strsim::jaro_winkler(field, known), *known))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, known)| spell(known));
            SettingsError::Unknown { name: spell(field), suggestion }
        })
        .collect()
}

/// A secret as the effective configuration shows it: whether it is set, never its value.
fn redacted<S: serde::Serializer>(secret: &Option<SecretString>, serializer: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => serializer.serialize_some("<redacted>"),
        None => serializer.serialize_none(),
    }
}

fn redacted_always<S: serde::Serializer>(_: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("<redacted>")
}

/// A database URL as the effective configuration shows it: its password replaced.
fn without_password<S: serde::Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    let shown = match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("redacted"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    };
    serializer.serialize_str(&shown)
}

/// IP addresses, as [`comma_list`] reads lists.
fn comma_list_of_addresses<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<std::net::IpAddr>, D::Error> {
    comma_list(deserializer)?
        .iter()
        .map(|address| {
            address.parse().map_err(|_| serde::de::Error::custom(format!("{address:?} is not an IP address")))
        })
        .collect()
}

/// Accepts `"a, b"` (an environment variable) as well as `["a", "b"]` (TOML).
fn comma_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Text(String),
        Items(Vec<String>),
    }
    let items = match List::deserialize(deserializer)? {
        List::Text(text) => text.split(',').map(str::to_owned).collect(),
        List::Items(items) => items,
    };
    Ok(items.into_iter().map(|item| item.trim().to_owned()).filter(|item| !item.is_empty()).collect())
}

/// Flags that override the file and the environment.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
}

/// A setting that makes no sense, found before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("unknown setting {name}{}", suggestion.as_ref().map(|s| format!("; did you mean {s}?")).unwrap_or_default())]
    Unknown { name: String, suggestion: Option<String> },
    #[error("RINGLINE_JWT_SECRET must be set (and not the development default) when RINGLINE_ENV=production")]
    MissingProductionSecret,
    #[error(
        "RINGLINE_JWT_SECRET must be at least 32 bytes when RINGLINE_ENV=production: anyone who guesses a shorter \
         HS256 key can sign tokens for any user"
    )]
    ShortProductionSecret,
    #[error("RINGLINE_RING_TIMEOUT_SECS must be between 1 and 3600")]
    RingTimeout,
    #[error("RINGLINE_LIVENESS_GRACE_SECS must be between 1 and 3600")]
    LivenessGrace,
    #[error("RINGLINE_MAX_CALL_SECS must be between 60 and 604800 (a week)")]
    MaxCall,
    #[error("RINGLINE_TURN_TTL_SECS must be between 60 and 604800 (a week)")]
    TurnTtl,
    #[error("each of RINGLINE_TURN_SERVERS needs at least one URL and a secret that is not empty")]
    TurnServers,
    #[error(
        "RINGLINE_WS_PING_INTERVAL_SECS must be between 1 and 300, and RINGLINE_WS_IDLE_TIMEOUT_SECS longer than it \
         and at most 3600"
    )]
    Keepalive,
    #[error(
        "RINGLINE_WS_FRAMES_PER_SEC must be between 1 and 1000000, and RINGLINE_WS_FRAME_BURST at least that \
         and at most 10000000"
    )]
    FrameRate,
    #[error("RINGLINE_JWT_USER_CLAIM must not be empty")]
    UserClaim,
    #[error("{0} is set but empty; unset it or give it a value")]
    EmptySecret(&'static str),
    #[error("RINGLINE_WEBHOOK_URLS holds {0:?}, which is not an http:// or https:// URL")]
    WebhookUrl(String),
    #[error("RINGLINE_WEBHOOK_URLS is set: RINGLINE_WEBHOOK_SECRET must be set too (every request is signed)")]
    WebhookSecret,
    #[error(
        "RINGLINE_WEBHOOK_TIMEOUT_SECS must be 1–60, RINGLINE_WEBHOOK_GIVE_UP_HOURS 1–168 and \
         RINGLINE_WEBHOOK_RETENTION_HOURS 1–8760"
    )]
    WebhookLimits,
    #[error("RINGLINE_CALL_POLICY_URL is {0:?}, which is not an http:// or https:// URL")]
    CallPolicyUrl(String),
    #[error(
        "RINGLINE_CALL_POLICY_URL is set: RINGLINE_WEBHOOK_SECRET must be set too (the hook's requests are signed)"
    )]
    CallPolicySecret,
    #[error("RINGLINE_CALL_POLICY_TIMEOUT_MS must be between 50 and 10000")]
    CallPolicyTimeout,
    #[error("RINGLINE_HTTP_IDLE_TIMEOUT_SECS must be longer than RINGLINE_WS_PING_INTERVAL_SECS and at most 3600")]
    HttpIdleTimeout,
    #[error("RINGLINE_METRICS_BIND must not use RINGLINE_BIND's port: metrics are served to the operator only")]
    MetricsBind,
    #[error("RINGLINE_DATABASE_ACQUIRE_TIMEOUT_SECS must be between 1 and 60")]
    AcquireTimeout,
    #[error("RINGLINE_WS_MAX_PER_USER must be between 1 and 10000")]
    MaxPerUser,
    #[error("RINGLINE_MAX_CONNECTIONS must be between 1 and 10000000")]
    MaxConnections,
    #[error("RINGLINE_MAX_CONNECTIONS_PER_ADDRESS must be between 1 and 10000000")]
    MaxConnectionsPerAddress,
    #[error("RINGLINE_HTTP_HEADER_TIMEOUT_SECS must be at least 1 and at most RINGLINE_HTTP_IDLE_TIMEOUT_SECS")]
    HeaderTimeout,
    #[error("RINGLINE_VAPID_SUBJECT must be a mailto: or https:// URL")]
    VapidSubject,
    #[error(
        "RINGLINE_WEB_PUSH_ALLOW_LOOPBACK=true is for tests: it lets users make the server send requests to this \
         machine, and is refused when RINGLINE_ENV=production"
    )]
    LoopbackPushInProduction,
    #[error("RINGLINE_WEB_PUSH_ALLOWED_HOSTS must name at least one host (or *)")]
    NoPushHosts,
    #[error(
        "RINGLINE_APNS_KEY_FILE, RINGLINE_APNS_KEY_ID, RINGLINE_APNS_TEAM_ID and RINGLINE_APNS_TOPIC go together: \
         set all four (or none)"
    )]
    ApnsIncomplete,
    #[error("{0} is {1:?}, which is not an http:// or https:// URL")]
    PushUrl(&'static str, String),
}

/// Descriptors the default connection cap leaves for everything but connections: the database
/// pool, Redis, the SQLite files, the log, the runtime's own.
pub const RESERVED_DESCRIPTORS: usize = 64;

/// The fewest connections the default cap allows, however low the open-files limit.
const MIN_DEFAULT_CONNECTIONS: usize = 64;

impl Settings {
    /// The connection cap: the configured one, or the open-files limit less
    /// [`RESERVED_DESCRIPTORS`]. `open_files` is that limit (after raising it).
    pub fn connection_cap(&self, open_files: u64) -> usize {
        self.http.max_connections.unwrap_or_else(|| {
            usize::try_from(open_files)
                .unwrap_or(usize::MAX)
                .saturating_sub(RESERVED_DESCRIPTORS)
                .max(MIN_DEFAULT_CONNECTIONS)
        })
    }

    /// The cap per client address, for a connection cap of `cap`: the configured one, or a
    /// quarter of `cap`.
    pub fn connection_cap_per_address(&self, cap: usize) -> usize {
        self.http.max_connections_per_address.unwrap_or((cap / 4).max(1))
    }

    /// Reads defaults, then `file` (if given), then the environment, then `overrides`.
    ///
    /// # Errors
    /// [`SettingsError`] naming the first bad setting.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Self, SettingsError> {
        let (settings, mut problems) = Self::check(file, overrides);
        match settings {
            Some(settings) if problems.is_empty() => Ok(settings),
            _ => Err(problems.remove(0)),
        }
    }

    /// Reads as [`Settings::load`] does and finds every problem rather than the first: each
    /// unknown key, a value that does not parse, each value the server refuses. The settings
    /// when they could be read at all (an unknown key does not keep the others from being
    /// read); the server starts only when the list is empty.
    pub fn check(file: Option<&Path>, overrides: Overrides) -> (Option<Self>, Vec<SettingsError>) {
        let mut figment = Figment::new();
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        // `RINGLINE_TEST_*` belongs to the test tools, not to the server.
        let environment =
            Env::prefixed("RINGLINE_").filter(|key| !key.as_str().to_ascii_lowercase().starts_with("test_"));
        let figment = figment.merge(environment).merge(Serialized::defaults(overrides));
        let mut problems = unknown_keys(&figment);
        match figment.extract::<Self>() {
            Ok(settings) => {
                problems.extend(settings.problems());
                (Some(settings), problems)
            }
            Err(error) => {
                problems.push(SettingsError::Parse(Box::new(error)));
                (None, problems)
            }
        }
    }

    /// The first of [`Settings::problems`], if any.
    #[cfg(test)]
    fn validate(&self) -> Result<(), SettingsError> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every value the server refuses to start with (none: it starts), in the order the
    /// settings are documented.
    pub fn problems(&self) -> Vec<SettingsError> {
        let mut problems = Vec::new();
        for (name, secret) in [
            ("RINGLINE_JWT_SECRET", &self.auth.jwt_secret),
            ("RINGLINE_ADMIN_TOKEN", &self.auth.admin_token),
            ("RINGLINE_TURN_SECRET", &self.ice_servers.turn_secret),
            ("RINGLINE_WEBHOOK_SECRET", &self.webhook.webhook_secret),
            ("RINGLINE_EXPO_ACCESS_TOKEN", &self.mobile_push.expo_access_token),
            ("RINGLINE_FCM_CREDENTIALS", &self.mobile_push.fcm_credentials),
        ] {
            if secret.as_ref().is_some_and(|secret| secret.expose_secret().trim().is_empty()) {
                problems.push(SettingsError::EmptySecret(name));
            }
        }
        if self.process.env == Environment::Production
            && self.auth.jwt_secret.as_ref().is_none_or(|secret| secret.expose_secret() == DEVELOPMENT_JWT_SECRET)
        {
            problems.push(SettingsError::MissingProductionSecret);
        }
        if self.process.env == Environment::Production
            && self.auth.jwt_secret.as_ref().is_some_and(|secret| {
                secret.expose_secret().len() < 32 && secret.expose_secret() != DEVELOPMENT_JWT_SECRET
            })
        {
            problems.push(SettingsError::ShortProductionSecret);
        }
        if !(1..=3600).contains(&self.calls.ring_timeout_secs) {
            problems.push(SettingsError::RingTimeout);
        }
        if !(1..=3600).contains(&self.calls.liveness_grace_secs) {
            problems.push(SettingsError::LivenessGrace);
        }
        if !(60..=7 * 24 * 3600).contains(&self.calls.max_call_secs) {
            problems.push(SettingsError::MaxCall);
        }
        if !(60..=7 * 24 * 3600).contains(&self.ice_servers.turn_ttl_secs) {
            problems.push(SettingsError::TurnTtl);
        }
        if self
            .ice_servers
            .turn_servers
            .iter()
            .any(|server| server.urls.is_empty() || server.secret.expose_secret().trim().is_empty())
        {
            problems.push(SettingsError::TurnServers);
        }
        if !(1..=300).contains(&self.sockets.ws_ping_interval_secs)
            || !(self.sockets.ws_ping_interval_secs + 1..=3600).contains(&self.sockets.ws_idle_timeout_secs)
        {
            problems.push(SettingsError::Keepalive);
        }
        if !(1..=1_000_000).contains(&self.sockets.ws_frames_per_sec)
            || !(self.sockets.ws_frames_per_sec..=10_000_000).contains(&self.sockets.ws_frame_burst)
        {
            problems.push(SettingsError::FrameRate);
        }
        if !(self.sockets.ws_ping_interval_secs + 1..=3600).contains(&self.http.http_idle_timeout_secs) {
            problems.push(SettingsError::HttpIdleTimeout);
        }
        if !(1..=60).contains(&self.database.database_acquire_timeout_secs) {
            problems.push(SettingsError::AcquireTimeout);
        }
        if !(1..=10_000).contains(&self.sockets.ws_max_per_user) {
            problems.push(SettingsError::MaxPerUser);
        }
        if self.http.max_connections.is_some_and(|max| !(1..=10_000_000).contains(&max)) {
            problems.push(SettingsError::MaxConnections);
        }
        if self.http.max_connections_per_address.is_some_and(|max| !(1..=10_000_000).contains(&max)) {
            problems.push(SettingsError::MaxConnectionsPerAddress);
        }
        if !(1..=self.http.http_idle_timeout_secs).contains(&self.http.http_header_timeout_secs) {
            problems.push(SettingsError::HeaderTimeout);
        }
        // Port 0 on both picks two free ports; the same port twice would put the operator's
        // metrics on the public listener.
        if let Some(metrics) = self.metrics.metrics_bind
            && metrics.port() != 0
            && metrics.port() == self.http.bind.port()
        {
            problems.push(SettingsError::MetricsBind);
        }
        if self.auth.jwt_user_claim.trim().is_empty() {
            problems.push(SettingsError::UserClaim);
        }
        for url in self.webhook.webhook_urls.iter().filter(|url| !ringline_outbound::webhooks::is_valid_url(url)) {
            problems.push(SettingsError::WebhookUrl(url.clone()));
        }
        if !(self.push.vapid_subject.starts_with("mailto:") || self.push.vapid_subject.starts_with("https://")) {
            problems.push(SettingsError::VapidSubject);
        }
        if self.push.web_push_allow_loopback && self.process.env == Environment::Production {
            problems.push(SettingsError::LoopbackPushInProduction);
        }
        if self.push.web_push_allowed_hosts.is_empty() {
            problems.push(SettingsError::NoPushHosts);
        }
        if !self.webhook.webhook_urls.is_empty() && self.webhook.webhook_secret.is_none() {
            problems.push(SettingsError::WebhookSecret);
        }
        if !(1..=60).contains(&self.webhook.webhook_timeout_secs)
            || !(1..=24 * 7).contains(&self.webhook.webhook_give_up_hours)
            || !(1..=24 * 365).contains(&self.webhook.webhook_retention_hours)
        {
            problems.push(SettingsError::WebhookLimits);
        }
        if let Some(url) = &self.call_policy.call_policy_url {
            if !ringline_outbound::webhooks::is_valid_url(url) {
                problems.push(SettingsError::CallPolicyUrl(url.clone()));
            }
            if self.webhook.webhook_secret.is_none() {
                problems.push(SettingsError::CallPolicySecret);
            }
        }
        if !(50..=10_000).contains(&self.call_policy.call_policy_timeout_ms) {
            problems.push(SettingsError::CallPolicyTimeout);
        }
        let push = &self.mobile_push;
        let apns = [&push.apns_key_file, &push.apns_key_id, &push.apns_team_id, &push.apns_topic];
        let apns_set = apns.iter().filter(|value| value.as_deref().is_some_and(|v| !v.trim().is_empty())).count();
        if apns_set != 0 && apns_set != apns.len() {
            problems.push(SettingsError::ApnsIncomplete);
        }
        for (name, url) in [
            ("RINGLINE_EXPO_PUSH_URL", Some(&push.expo_push_url)),
            ("RINGLINE_FCM_URL", Some(&push.fcm_url)),
            ("RINGLINE_APNS_URL", push.apns_url.as_ref()),
        ] {
            if let Some(url) = url.filter(|url| !ringline_outbound::webhooks::is_valid_url(url)) {
                problems.push(SettingsError::PushUrl(name, url.clone()));
            }
        }
        problems
    }

    /// The configured JWT secret, or the development default (the caller warns about it).
    pub fn jwt_secret_or_default(&self) -> (SecretString, bool) {
        match &self.auth.jwt_secret {
            Some(secret) => (secret.clone(), false),
            None => (SecretString::from(DEVELOPMENT_JWT_SECRET), true),
        }
    }

    pub fn ring_timeout(&self) -> Duration {
        Duration::from_secs(self.calls.ring_timeout_secs)
    }

    /// How SQLite makes commits durable: as configured, or else every commit flushed to disk
    /// in production (it survives a power cut) and written to the log only elsewhere (it
    /// survives a crash of the process, and is several times faster).
    pub fn sqlite_sync(&self) -> SqliteSync {
        self.database.sqlite_synchronous.unwrap_or(match self.process.env {
            Environment::Production => SqliteSync::Full,
            _ => SqliteSync::Normal,
        })
    }

    /// How the database is opened.
    pub fn connect(&self) -> ringline_storage::ConnectSettings {
        ringline_storage::ConnectSettings {
            sqlite_sync: self.sqlite_sync(),
            acquire_timeout: Duration::from_secs(self.database.database_acquire_timeout_secs),
        }
    }

    pub fn liveness(&self) -> LivenessPolicy {
        LivenessPolicy {
            grace: Duration::from_secs(self.calls.liveness_grace_secs),
            max_call: Duration::from_secs(self.calls.max_call_secs),
        }
    }

    pub fn keepalive(&self) -> Keepalive {
        Keepalive {
            ping_interval: Duration::from_secs(self.sockets.ws_ping_interval_secs),
            idle_timeout: Duration::from_secs(self.sockets.ws_idle_timeout_secs),
        }
    }

    pub fn frame_rate(&self) -> FrameRate {
        FrameRate {
            per_second: f64::from(self.sockets.ws_frames_per_sec),
            burst: f64::from(self.sockets.ws_frame_burst),
        }
    }

    /// The bus to the other instances, when `redis_url` is set.
    pub fn redis(&self) -> Option<RedisSettings> {
        let url = self.bus.redis_url.as_ref()?.expose_secret();
        let redis = if self.bus.redis_cluster {
            RedisSettings::cluster(
                url.split(',').map(str::trim).filter(|node| !node.is_empty()).map(str::to_owned).collect(),
            )
        } else {
            RedisSettings::new(url)
        };
        Some(RedisSettings { prefix: self.bus.redis_prefix.clone(), ..redis })
    }

    pub fn ice(&self) -> IceSettings {
        IceSettings {
            stun_urls: self.ice_servers.stun_urls.clone(),
            turn_urls: self.ice_servers.turn_urls.clone(),
            turn_secret: self.ice_servers.turn_secret.clone(),
            turn_ttl: Duration::from_secs(self.ice_servers.turn_ttl_secs),
            relay_only: self.ice_servers.ice_relay_only,
            turn_servers: self
                .ice_servers
                .turn_servers
                .iter()
                .map(|server| ringline_api::TurnServer { urls: server.urls.clone(), secret: server.secret.clone() })
                .collect(),
        }
    }

    /// Settings for tests and embedding: defaults, with the given database and a random port.
    pub fn for_tests(database_url: &str, jwt_secret: &str) -> Self {
        let mut settings = Self::default();
        settings.http.bind = SocketAddr::from(([127, 0, 0, 1], 0));
        settings.database.database_url = database_url.to_owned();
        settings.auth.jwt_secret = Some(SecretString::from(jwt_secret));
        settings
    }

    /// The listener on `bind`, for a connection cap of `cap` ([`Settings::connection_cap`]).
    pub fn listener(&self, cap: usize) -> ListenerSettings {
        ListenerSettings {
            bind: self.http.bind,
            idle_timeout: Duration::from_secs(self.http.http_idle_timeout_secs),
            header_timeout: Duration::from_secs(self.http.http_header_timeout_secs),
            max_connections: cap,
            max_per_address: self.connection_cap_per_address(cap),
            exempt: self
                .http
                .max_connections_per_address_exempt
                .iter()
                .chain(&self.http.trusted_proxies)
                .copied()
                .collect(),
        }
    }

    /// `error` binding `bind`, with what to set instead.
    pub fn bind_error(&self, error: std::io::Error) -> anyhow::Error {
        let hint = if error.kind() == std::io::ErrorKind::AddrInUse {
            " (another program is listening there: choose another address with RINGLINE_BIND=127.0.0.1:8001 \
             or --bind 127.0.0.1:8001)"
        } else {
            " (choose another address with RINGLINE_BIND or --bind)"
        };
        anyhow::Error::new(error).context(format!("cannot listen on {}{hint}", self.http.bind))
    }

    /// Logs what is risky about these settings but allowed: the development JWT secret, no
    /// STUN or TURN server, TURN without its secret, Web Push to loopback.
    pub fn warn_about_risks(&self) {
        for risk in self.risks() {
            tracing::warn!("{risk}");
        }
    }

    /// What the server starts with but an operator should know: the same list
    /// `ringline check-config` prints as warnings.
    pub fn risks(&self) -> Vec<String> {
        let mut risks = Vec::new();
        if self.auth.jwt_secret.is_none() {
            risks.push(
                "RINGLINE_JWT_SECRET is not set: using the built-in development secret. Anyone can mint tokens \
                 for this server. Set RINGLINE_JWT_SECRET (the same secret as your Django SIMPLE_JWT signing key)."
                    .to_owned(),
            );
        }
        if self.ice_servers.stun_urls.is_empty()
            && self.ice_servers.turn_urls.is_empty()
            && self.ice_servers.turn_servers.is_empty()
        {
            risks.push(
                "no STUN or TURN server is configured (RINGLINE_STUN_URLS, RINGLINE_TURN_URLS): calls between \
                 devices behind different NATs will fail to connect media"
                    .to_owned(),
            );
        }
        if !self.ice_servers.turn_urls.is_empty() && self.ice_servers.turn_secret.is_none() {
            risks.push(
                "RINGLINE_TURN_URLS is set but RINGLINE_TURN_SECRET is not: TURN servers are not handed out".to_owned(),
            );
        }
        if self.ice_servers.ice_relay_only
            && (self.ice_servers.turn_urls.is_empty() || self.ice_servers.turn_secret.is_none())
        {
            risks.push(
                "RINGLINE_ICE_RELAY_ONLY is on but no TURN server is handed out (RINGLINE_TURN_URLS and \
                 RINGLINE_TURN_SECRET): no call can connect media"
                    .to_owned(),
            );
        }
        if self.push.web_push_allow_loopback {
            risks.push(
                "RINGLINE_WEB_PUSH_ALLOW_LOOPBACK is on: users can make this server POST to this machine".to_owned(),
            );
        }
        if self.process.env == Environment::Production {
            for url in self.webhook.webhook_urls.iter().filter(|url| url.starts_with("http://")) {
                let host = url::Url::parse(url).ok().and_then(|url| url.host_str().map(str::to_owned));
                risks.push(format!(
                    "a webhook URL is plain http ({}): call events and their signatures cross the network unencrypted",
                    host.as_deref().unwrap_or("?")
                ));
            }
            if self.call_policy.call_policy_url.as_deref().is_some_and(|url| url.starts_with("http://")) {
                risks.push(
                    "RINGLINE_CALL_POLICY_URL is plain http: who calls whom crosses the network unencrypted".to_owned(),
                );
            }
            if self.metrics.metrics_bind.is_some_and(|address| !address.ip().is_loopback()) {
                risks.push(
                    "RINGLINE_METRICS_BIND listens beyond this machine: make sure only Prometheus can reach it"
                        .to_owned(),
                );
            }
        }
        risks
    }

    /// How Web Push is sent.
    pub fn web_push(&self) -> ringline_outbound::WebPushSettings {
        ringline_outbound::WebPushSettings {
            vapid_subject: self.push.vapid_subject.clone(),
            rules: self.web_push_rules(),
            ring_timeout: self.ring_timeout(),
        }
    }

    /// What a user's Web Push endpoint may be.
    pub fn web_push_rules(&self) -> ringline_outbound::UserUrlRules {
        ringline_outbound::UserUrlRules {
            allowed_hosts: ringline_outbound::AllowedHosts::new(&self.push.web_push_allowed_hosts),
            allow_loopback: self.push.web_push_allow_loopback,
        }
    }

    /// The rate caps of the call policy.
    pub fn rate_caps(&self) -> RateCaps {
        RateCaps {
            calls_per_minute: self.call_policy.calls_per_minute,
            unanswered_per_callee: self.call_policy.unanswered_calls_per_callee,
        }
    }

    /// How the call policy hook is asked (`None` without `call_policy_url`), and whether a
    /// call is placed when it has no answer.
    pub fn call_policy_hook(&self) -> Option<(ringline_outbound::PolicyHookSettings, bool)> {
        let url = self.call_policy.call_policy_url.clone()?;
        let secret = self.webhook.webhook_secret.clone()?;
        let timeout = Duration::from_millis(self.call_policy.call_policy_timeout_ms);
        Some((ringline_outbound::PolicyHookSettings { url, secret, timeout }, self.call_policy.call_policy_fail_open))
    }

    /// How call webhooks are sent (`None` without `webhook_urls`).
    pub fn webhooks(&self) -> Option<WebhookSettings> {
        let secret = self.webhook.webhook_secret.clone()?;
        (!self.webhook.webhook_urls.is_empty()).then(|| WebhookSettings {
            urls: self.webhook.webhook_urls.clone(),
            secret,
            timeout: Duration::from_secs(self.webhook.webhook_timeout_secs),
            give_up_after: Duration::from_secs(self.webhook.webhook_give_up_hours * 3600),
            retention: Duration::from_secs(self.webhook.webhook_retention_hours * 3600),
            ring_timeout: self.ring_timeout(),
            sender: outbox_sender(self.http.bind.port()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key a group reads is one `docs/configuration.md` documents, and no group reads
    /// one another reads too (the keys are flat).
    #[test]
    fn every_key_is_documented_and_read_by_one_group() {
        let documented = include_str!("../../../docs/configuration.md");
        let keys = known_keys();
        for key in &keys {
            assert!(documented.contains(&format!("`RINGLINE_{}`", key.to_uppercase())), "{key} is not documented");
        }
        let mut unique = keys.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), keys.len(), "a key read by two groups");
        assert!(keys.len() >= 40, "the groups' fields were read: {keys:?}");
    }

    #[test]
    fn lists_come_from_comma_separated_text_or_toml_arrays() {
        let from_text: Settings = Figment::new()
            .merge(Serialized::defaults(serde_json::json!({"stun_urls": "stun:a:3478, stun:b:3478,"})))
            .extract()
            .expect("parse");
        assert_eq!(from_text.ice_servers.stun_urls, vec!["stun:a:3478", "stun:b:3478"]);
        let from_toml: Settings =
            Figment::new().merge(Toml::string("turn_urls = [\"turn:t:3478\"]")).extract().expect("parse");
        assert_eq!(from_toml.ice_servers.turn_urls, vec!["turn:t:3478"]);
    }

    #[test]
    fn the_connection_cap_leaves_descriptors_for_the_rest_unless_configured() {
        let mut settings = Settings::for_tests("sqlite::memory:", DEVELOPMENT_JWT_SECRET);
        assert_eq!(settings.connection_cap(1024), 1024 - RESERVED_DESCRIPTORS);
        assert_eq!(settings.connection_cap(100), MIN_DEFAULT_CONNECTIONS, "a floor however low the limit");
        settings.http.max_connections = Some(5000);
        assert_eq!(settings.connection_cap(1024), 5000, "the configured cap is taken as it is");
        settings.http.max_connections = Some(0);
        assert!(matches!(settings.validate(), Err(SettingsError::MaxConnections)));
    }

    #[test]
    fn one_address_gets_a_quarter_of_the_connection_cap_unless_configured() {
        let mut settings = Settings::for_tests("sqlite::memory:", DEVELOPMENT_JWT_SECRET);
        assert_eq!(settings.connection_cap_per_address(100), 25);
        assert_eq!(settings.connection_cap_per_address(2), 1, "at least one");
        settings.http.max_connections_per_address = Some(7);
        assert_eq!(settings.connection_cap_per_address(100), 7);
        let parsed: Settings = Figment::new()
            .merge(Serialized::defaults(serde_json::json!({"max_connections_per_address_exempt": "10.0.0.5, ::1"})))
            .extract()
            .expect("parse");
        assert_eq!(
            parsed.http.max_connections_per_address_exempt,
            vec!["10.0.0.5".parse::<std::net::IpAddr>().expect("ip"), "::1".parse().expect("ip")]
        );
        let defaults: Settings = Figment::new().extract().expect("parse");
        assert_eq!(defaults.http.max_connections_per_address_exempt.len(), 2, "the machine's own addresses");
        let none: Settings = Figment::new()
            .merge(Serialized::defaults(serde_json::json!({"max_connections_per_address_exempt": ""})))
            .extract()
            .expect("parse");
        assert!(none.http.max_connections_per_address_exempt.is_empty(), "set empty, every address is counted");
        settings.http.http_header_timeout_secs = settings.http.http_idle_timeout_secs + 1;
        assert!(matches!(settings.validate(), Err(SettingsError::HeaderTimeout)));
    }

    #[test]
    fn an_unanswered_call_to_an_original_web_client_is_missed_before_the_client_declines_it() {
        // The original web client POSTs reject/ after ringing for 30 s: the server's own ring
        // timeout must come first, or such calls are recorded as declined, never missed.
        let settings = Settings::for_tests("sqlite::memory:", "x");
        assert!(settings.ring_timeout() < Duration::from_secs(30), "{:?}", settings.ring_timeout());
        let parsed: Settings = Figment::new().extract().expect("defaults");
        assert_eq!(parsed.ring_timeout(), ringline_domain::DEFAULT_RING_TIMEOUT);
    }

    #[test]
    fn loopback_push_endpoints_are_refused_in_production() {
        let mut settings = Settings::for_tests("sqlite::memory:", "a real secret of thirty-two bytes");
        settings.push.web_push_allow_loopback = true;
        assert!(settings.validate().is_ok(), "for tests");
        settings.process.env = Environment::Production;
        assert!(matches!(settings.validate(), Err(SettingsError::LoopbackPushInProduction)));
        let parsed: Settings = Figment::new().extract().expect("defaults");
        assert!(!parsed.push.web_push_allow_loopback, "off by default");
        assert_eq!(parsed.web_push_rules().allowed_hosts, ringline_outbound::AllowedHosts::browser_push_services());
    }

    #[test]
    fn production_refuses_a_missing_or_default_secret() {
        let mut settings = Settings::for_tests("sqlite::memory:", DEVELOPMENT_JWT_SECRET);
        settings.process.env = Environment::Production;
        assert!(matches!(settings.validate(), Err(SettingsError::MissingProductionSecret)));
        settings.auth.jwt_secret = None;
        assert!(matches!(settings.validate(), Err(SettingsError::MissingProductionSecret)));
        // HS256 is as strong as its key: simplejwt's warns below 32 bytes, and so do we, by refusing.
        settings.auth.jwt_secret = Some(SecretString::from("abc"));
        assert!(matches!(settings.validate(), Err(SettingsError::ShortProductionSecret)));
        settings.auth.jwt_secret = Some(SecretString::from("x".repeat(31)));
        assert!(matches!(settings.validate(), Err(SettingsError::ShortProductionSecret)));
        settings.auth.jwt_secret = Some(SecretString::from("a real secret of thirty-two bytes"));
        assert!(settings.validate().is_ok());
    }

    #[test]
    fn sqlite_flushes_every_commit_in_production_unless_told_otherwise() {
        let mut settings = Settings::for_tests("sqlite::memory:", "a real secret");
        assert_eq!(settings.sqlite_sync(), SqliteSync::Normal);
        settings.process.env = Environment::Production;
        assert_eq!(settings.sqlite_sync(), SqliteSync::Full);
        settings.database.sqlite_synchronous = Some(SqliteSync::Normal);
        assert_eq!(settings.sqlite_sync(), SqliteSync::Normal, "an explicit choice wins");
        let parsed: Settings = Figment::new()
            .merge(Serialized::defaults(serde_json::json!({"sqlite_synchronous": "full"})))
            .extract()
            .expect("parse");
        assert_eq!(parsed.database.sqlite_synchronous, Some(SqliteSync::Full));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let mut settings = Settings::for_tests("sqlite::memory:", "s3cr3t-jwt");
        settings.auth.admin_token = Some(SecretString::from("s3cr3t-admin"));
        settings.ice_servers.turn_secret = Some(SecretString::from("s3cr3t-turn"));
        let debug = format!("{settings:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
    }

    #[test]
    fn empty_secrets_are_refused_rather_than_used() {
        let settings = Settings::for_tests("sqlite::memory:", " ");
        assert!(matches!(settings.validate(), Err(SettingsError::EmptySecret("RINGLINE_JWT_SECRET"))));
        let mut settings = Settings::for_tests("sqlite::memory:", "x");
        settings.auth.admin_token = Some(SecretString::from(""));
        assert!(matches!(settings.validate(), Err(SettingsError::EmptySecret("RINGLINE_ADMIN_TOKEN"))));
    }

    #[test]
    fn out_of_range_numbers_are_refused() {
        let mut settings = Settings::for_tests("sqlite::memory:", "x");
        settings.calls.ring_timeout_secs = 0;
        assert!(matches!(settings.validate(), Err(SettingsError::RingTimeout)));

        let mut settings = Settings::for_tests("sqlite::memory:", "x");
        settings.sockets.ws_idle_timeout_secs = settings.sockets.ws_ping_interval_secs;
        assert!(matches!(settings.validate(), Err(SettingsError::Keepalive)), "idle must outlast a ping interval");
        settings.sockets.ws_ping_interval_secs = 0;
        assert!(matches!(settings.validate(), Err(SettingsError::Keepalive)));
        let mut settings = Settings::for_tests("sqlite::memory:", "x");
        settings.sockets.ws_ping_interval_secs = 5;
        settings.sockets.ws_idle_timeout_secs = 6;
        assert!(settings.validate().is_ok());

        let mut settings = Settings::for_tests("sqlite::memory:", "x");
        settings.sockets.ws_frame_burst = settings.sockets.ws_frames_per_sec - 1;
        assert!(matches!(settings.validate(), Err(SettingsError::FrameRate)), "a burst below the rate");
        settings.sockets.ws_frames_per_sec = 0;
        assert!(matches!(settings.validate(), Err(SettingsError::FrameRate)));
    }
}
