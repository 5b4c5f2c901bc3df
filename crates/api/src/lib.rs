//! Ringline's HTTP surface, built on poem and poem-openapi.
//!
//! - [`CallsApi`] (`/api/calls/…`) and [`TurnApi`] (`/api/turn/ice-servers/`): the call
//!   lifecycle and ICE configuration, wire-compatible with the original app's clients;
//! - [`CallPolicyApi`] (`/api/call-settings/`, `/api/call-blocks/`): who may ring a user;
//! - [`AdminApi`] (`/api/admin/…`): the standalone server's users and conversations;
//! - [`NotificationsApi`] (`/api/notifications/…`): notifications about calls;
//! - [`HealthApi`] (`/healthz`, `/readyz`);
//! - [`websocket_routes`] (`/ws/notifications/`, `/ws/chat/<id>/`): signaling sessions;
//! - [`PushApi`] (`/api/push/…`): browsers' Web Push subscriptions, and [`DeviceTokensApi`]
//!   (`/api/device-tokens/`): the tokens phones registered with Expo, FCM or APNs (the outbound
//!   crate sends the pushes, and the webhooks);
//! - [`call_json`]: a call as the API shows it, for whoever sends calls elsewhere.
//!
//! [`server_routes`] assembles all of them for the `ringline` binary; [`call_routes`] mounts
//! just the call API inside another poem application that brings its own [`Authenticator`] and
//! directory. Both answer every error, including unknown routes, wrong methods, oversized and
//! malformed bodies, with one envelope: `{"detail", "code"}` ([`error`]). This is the only
//! crate that knows HTTP status codes, and it makes no request of its own: what leaves the
//! server for other hosts is the outbound crate's.

mod admin;
pub mod auth;
mod calls;
mod cors;
mod demo;
mod device_tokens;
pub mod error;
mod forwarded;
mod health;
mod listener;
mod metrics;
#[macro_use]
pub mod models;
mod call_policy;
mod notifications;
mod pagination;
mod push;
mod quality;
mod security;
mod serving;
mod turn;
mod web;
mod ws;

use std::sync::Arc;
use std::time::Instant;

use poem::http::{StatusCode, Uri};
use poem::web::Html;
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use poem_openapi::{OpenApiService, Tags};
use ringline_domain::Clock;
use ringline_signaling::Signaling;
use ringline_storage::Storage;
use secrecy::SecretString;

pub use admin::AdminApi;
pub use auth::{AuthError, Authenticator, JwtAuthenticator, bearer_token};
pub use call_policy::CallPolicyApi;
pub use calls::CallsApi;
pub use demo::DemoApi;
pub use device_tokens::DeviceTokensApi;
pub use error::{envelope_json, refusal_response};
pub use health::HealthApi;
pub use listener::{AddressCap, AddressPlace, BoundedConnection, ConnectionAcceptor, ListenerSettings};
pub use metrics::{MetricsListener, metrics_routes};
pub use notifications::NotificationsApi;
pub use pagination::PAGE_SIZE;
pub use push::PushApi;
pub use security::RequestUser;
pub use serving::serve;
pub use turn::{IceSettings, TurnApi, TurnServer, turn_credential};
pub use ws::{READ_BUFFER_BYTES, WRITE_BUFFER_BYTES, websocket_config, websocket_routes};

/// `call` as the API shows it (the `CallJson` of `GET /api/calls/{id}/`), with `parties`'
/// profiles: webhooks and pushes carry the same object.
pub fn call_json(call: &ringline_domain::Call, parties: &[ringline_domain::UserProfile]) -> serde_json::Value {
    use poem_openapi::types::ToJSON;
    models::CallJson::new(call, parties).to_json().unwrap_or_default()
}

/// Largest request body accepted, in bytes. Call requests are a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Tags)]
pub enum ApiTags {
    /// Calls between two users.
    Calls,
    /// Notifications about calls.
    Notifications,
    /// Users and conversations of the standalone server (operator token).
    Admin,
    /// Probes for load balancers and orchestrators.
    Health,
    /// Sign-in for trying Ringline locally; only with the development JWT secret.
    Demo,
    /// Push: browsers' Web Push subscriptions, and the device tokens phones and browsers
    /// registered with Expo, FCM or APNs.
    Push,
    /// Who may ring you: call privacy, do-not-disturb, blocks.
    CallPolicy,
}

/// What the call API needs, whoever hosts it.
#[derive(Debug, Clone)]
pub struct CallApiParts {
    pub signaling: Arc<Signaling>,
    pub authenticator: Arc<dyn Authenticator>,
    pub ice: IceSettings,
    pub clock: Arc<dyn Clock>,
}

/// What the standalone server adds: its own database and the operator's admin token.
#[derive(Debug, Clone)]
pub struct ServerParts {
    pub calls: CallApiParts,
    pub storage: Storage,
    pub admin_token: Option<SecretString>,
    /// Set to enable demo sign-in (only with the development JWT secret).
    pub demo_login: Option<Arc<JwtAuthenticator>>,
    /// The bus to other instances, when there is one: `/readyz` reports it.
    pub bus: Option<Arc<dyn ringline_signaling::BusStatus>>,
    /// The public half of the server's VAPID key, for `/api/push/config/`.
    pub vapid_public_key: String,
    /// Proxies whose forwarding headers are believed; anyone else's are removed.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Requests and WebSockets one client behind a trusted proxy may hold at once.
    pub max_per_forwarded_client: usize,
    /// What a Web Push subscription's endpoint may be.
    pub web_push_policy: Arc<dyn ringline_domain::UserUrlPolicy>,
    /// Origins browsers may call the API from (none: no cross-origin requests).
    pub cors_allowed_origins: Vec<String>,
}

type ServerApis =
    (CallsApi, CallPolicyApi, NotificationsApi, TurnApi, PushApi, DeviceTokensApi, AdminApi, HealthApi, DemoApi);

fn describe<T>(service: OpenApiService<T, ()>) -> OpenApiService<T, ()>
where
    T: poem_openapi::OpenApi,
{
    service
        .description(
            "Ringline: one-to-one voice and video calls. Errors are JSON `{\"detail\": text, \"code\": stable_code}`. \
             WebRTC signaling runs over WebSockets; see docs/protocol.md.",
        )
        .license("MIT OR Apache-2.0")
}

/// The OpenAPI service of the standalone server.
pub fn server_api(parts: ServerParts) -> OpenApiService<ServerApis, ()> {
    let build = parts.calls.signaling.metrics().build;
    let CallApiParts { signaling, authenticator, ice, clock } = parts.calls;
    let apis = (
        CallsApi::new(signaling.clone(), authenticator.clone()),
        CallPolicyApi::new(signaling.clone(), authenticator.clone(), clock.clone()),
        NotificationsApi::new(signaling.clone(), authenticator.clone()),
        TurnApi::new(ice, signaling.clone(), authenticator.clone(), clock.clone()),
        PushApi::new(
            Arc::new(parts.storage.push_subscriptions()),
            parts.vapid_public_key,
            parts.web_push_policy,
            authenticator.clone(),
            clock.clone(),
        ),
        DeviceTokensApi::new(Arc::new(parts.storage.mobile_push()), authenticator, clock.clone()),
        AdminApi::new(parts.storage.directory(), parts.admin_token, clock, signaling),
        HealthApi::new(parts.storage.clone(), parts.bus.clone(), build),
        DemoApi::new(parts.demo_login.map(|authenticator| (parts.storage.directory(), authenticator))),
    );
    describe(OpenApiService::new(apis, "Ringline", env!("CARGO_PKG_VERSION")))
}

/// The standalone server's whole HTTP surface: the web client at `/`, the APIs,
/// `/api/openapi.json`, the interactive docs at `/api/docs`, the WebSocket endpoints, the error
/// envelope, the body limit, CORS and the request log.
pub fn server_routes(parts: ServerParts) -> impl Endpoint + use<> {
    let cors_allowed_origins = parts.cors_allowed_origins.clone();
    let metrics = parts.calls.signaling.metrics().clone();
    let sockets = websocket_routes(parts.calls.signaling.clone(), parts.calls.authenticator.clone());
    let forwarding = forwarded::Forwarding::new(parts.trusted_proxies.clone(), parts.max_per_forwarded_client);
    let index = Arc::new(web::index(parts.demo_login.is_some()));
    let api = server_api(parts);
    let generated = api.spec();
    let spec = published_spec(&generated);
    let route_names = metrics::RouteNames::from_spec(&generated, published_path);
    // The Swagger page embeds the document verbatim; give it the contract's paths too.
    let docs_html = api.swagger_ui_html().replace(&generated, &spec);
    let spec_endpoint =
        poem::endpoint::make_sync(move |_| Response::builder().content_type("application/json").body(spec.clone()));
    let docs_endpoint = poem::endpoint::make_sync(move |_| Html(docs_html.clone()));
    let served_outside_the_document = [
        ("/", "GET"),
        ("/app.js", "GET"),
        ("/style.css", "GET"),
        ("/sw.js", "GET"),
        ("/favicon.svg", "GET"),
        ("/favicon.ico", "GET"),
        ("/api/openapi.json", "GET"),
        ("/api/docs", "GET"),
        ("/ws/notifications", "GET"),
        ("/ws/chat/{conversation_id}", "GET"),
    ];
    let allowed = AllowedMethods::from_spec(&generated, &served_outside_the_document);
    let routes = http_conventions(
        Route::new()
            .at("/api/openapi.json", spec_endpoint)
            .at("/api/docs", docs_endpoint)
            .nest("/ws", sockets)
            .at("/app.js", web::script())
            .at("/style.css", web::style())
            .at("/sw.js", web::service_worker())
            .at("/favicon.svg", web::icon())
            .at("/favicon.ico", web::icon())
            .nest("/", api)
            // The API nested at "/" owns the root path in poem's router; the page is served
            // for exactly "/" before routing.
            .around(move |routes, mut req| {
                let admitted = forwarding.admit(&mut req);
                let index = index.clone();
                async move {
                    if let Err(refused) = admitted {
                        return Ok(refused.into_response());
                    }
                    if req.uri().path() == "/" && req.method() == poem::http::Method::GET {
                        let mut page = index.call(req).await?.into_response();
                        page.set_data(poem::PathPattern("/".into()));
                        return Ok(page);
                    }
                    routes.call(req).await.map(IntoResponse::into_response)
                }
            }),
    );
    let routes = cors::with_cors(with_allow_header(routes, allowed), cors_allowed_origins);
    metrics::with_http_metrics(routes, metrics, route_names)
}

/// The call API alone (`/api/calls/…`, `/api/notifications/…`, `/api/turn/ice-servers/` and the
/// WebSocket endpoints under `/ws/`), for a host application to nest in its own poem `Route`
/// with its own authenticator and directory.
pub fn call_routes(parts: CallApiParts) -> impl Endpoint + use<> {
    let CallApiParts { signaling, authenticator, ice, clock } = parts;
    let sockets = websocket_routes(signaling.clone(), authenticator.clone());
    let apis = (
        CallsApi::new(signaling.clone(), authenticator.clone()),
        CallPolicyApi::new(signaling.clone(), authenticator.clone(), clock.clone()),
        NotificationsApi::new(signaling.clone(), authenticator.clone()),
        TurnApi::new(ice, signaling, authenticator, clock),
    );
    let api = describe(OpenApiService::new(apis, "Ringline calls", env!("CARGO_PKG_VERSION")));
    let allowed =
        AllowedMethods::from_spec(&api.spec(), &[("/ws/notifications", "GET"), ("/ws/chat/{conversation_id}", "GET")]);
    with_allow_header(http_conventions(Route::new().nest("/ws", sockets).nest("/", api)), allowed)
}

/// Which methods each documented path answers, for the `Allow` header of a 405 (RFC 9110
/// requires it). Read from the OpenAPI document, so it cannot drift from the routes.
#[derive(Debug, Default)]
struct AllowedMethods {
    /// Path templates split into segments (`{id}` matches any one segment), with the methods.
    paths: Vec<(Vec<String>, String)>,
}

impl AllowedMethods {
    /// From `spec` (the document poem-openapi generated), plus `extra` paths served outside it.
    fn from_spec(spec: &str, extra: &[(&str, &str)]) -> Self {
        let document: serde_json::Value = serde_json::from_str(spec).unwrap_or_default();
        let mut paths = Vec::new();
        for (path, operations) in document["paths"].as_object().into_iter().flatten() {
            let mut methods: Vec<String> = operations
                .as_object()
                .into_iter()
                .flat_map(|operations| operations.keys())
                .map(|method| method.to_ascii_uppercase())
                .collect();
            if methods.iter().any(|method| method == "GET") {
                methods.push("HEAD".to_owned()); // poem answers HEAD wherever GET is routed
            }
            paths.push((Self::segments(path), methods.join(", ")));
        }
        for (path, methods) in extra {
            paths.push((Self::segments(path), format!("{methods}, HEAD")));
        }
        Self { paths }
    }

    fn segments(path: &str) -> Vec<String> {
        path.trim_matches('/').split('/').map(str::to_owned).collect()
    }

    /// The `Allow` value for a request path (with or without its trailing slash).
    fn for_path(&self, path: &str) -> Option<&str> {
        let wanted: Vec<&str> = path.trim_matches('/').split('/').collect();
        self.paths
            .iter()
            .find(|(template, _)| {
                template.len() == wanted.len()
                    && template.iter().zip(&wanted).all(|(part, given)| part.starts_with('{') || part == given)
            })
            .map(|(_, methods)| methods.as_str())
    }
}

/// Adds `Allow` to a 405 answered by `endpoint`.
fn with_allow_header(endpoint: impl Endpoint + 'static, allowed: AllowedMethods) -> impl Endpoint + 'static {
    let allowed = Arc::new(allowed);
    endpoint.around(move |endpoint, req| {
        let allowed = allowed.clone();
        async move {
            let path = req.uri().path().to_owned();
            let mut response = endpoint.call(req).await?.into_response();
            if response.status() == StatusCode::METHOD_NOT_ALLOWED
                && let Some(methods) = allowed.for_path(&path)
                && let Ok(value) = poem::http::HeaderValue::from_str(methods)
            {
                response.headers_mut().insert(poem::http::header::ALLOW, value);
            }
            Ok(response)
        }
    })
}

/// The OpenAPI document of the standalone server, as JSON, with the contract's paths.
pub fn openapi_json(parts: ServerParts) -> String {
    published_spec(&server_api(parts).spec())
}

/// A generated path as the contract spells it: the API's paths end with a slash.
fn published_path(path: &str) -> String {
    if path.starts_with("/api/") { format!("{path}/") } else { path.to_owned() }
}

/// The document as published: poem-openapi's output with three corrections.
///
/// - poem-openapi drops the trailing slash of every operation path, but the wire contract (the
///   original Django app's URLs) has one on every `/api/` path. Requests work either way (see
///   [`strip_trailing_slash`]); the document shows the contract's form.
/// - A documented or nullable field whose type is a named schema comes out as
///   `allOf: [{$ref}, {description, nullable}]`, which mainstream generators cannot read;
///   it is folded into the equivalent `{allOf: [{$ref}], description, nullable}`.
/// - A quality report must name at least one field (`minProperties: 1`), which poem-openapi
///   has no attribute for.
fn published_spec(spec: &str) -> String {
    let Ok(mut document) = serde_json::from_str::<serde_json::Value>(spec) else {
        return spec.to_owned();
    };
    if let Some(paths) = document.get_mut("paths").and_then(serde_json::Value::as_object_mut) {
        let renamed: serde_json::Map<String, serde_json::Value> =
            std::mem::take(paths).into_iter().map(|(path, item)| (published_path(&path), item)).collect();
        *paths = renamed;
    }
    fold_all_of_patches(&mut document);
    // What poem-openapi cannot say with an attribute: a quality report names at least one field.
    if let Some(schema) =
        document.pointer_mut("/components/schemas/QualityReportBody").and_then(serde_json::Value::as_object_mut)
    {
        schema.insert("minProperties".to_owned(), serde_json::json!(1));
    }
    serde_json::to_string_pretty(&document).unwrap_or_else(|_| spec.to_owned())
}

fn fold_all_of_patches(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(object) => {
            let patch = match object.get_mut("allOf").and_then(serde_json::Value::as_array_mut) {
                Some(parts) if parts.len() == 2 && parts[0].get("$ref").is_some() && parts[1].get("$ref").is_none() => {
                    parts.pop()
                }
                _ => None,
            };
            if let Some(serde_json::Value::Object(patch)) = patch {
                for (key, field) in patch {
                    object.entry(key).or_insert(field);
                }
            }
            object.values_mut().for_each(fold_all_of_patches);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(fold_all_of_patches),
        _ => {}
    }
}

/// Wraps `endpoint` in what every Ringline route shares: a body limit, the JSON error
/// envelope for errors raised outside handlers, and one log line per request.
pub fn http_conventions(endpoint: impl Endpoint + 'static) -> impl Endpoint + 'static {
    endpoint
        .around(|endpoint, mut req| async move {
            limit_body(&mut req).await?;
            strip_trailing_slash(&mut req);
            endpoint.call(req).await
        })
        .catch_all_error(error_response)
        .around(|endpoint, mut req| async move {
            let started = Instant::now();
            let method = req.method().clone();
            // The path only: query strings can carry tokens (`?token=` on WebSockets).
            let path = req.uri().path().to_owned();
            let user = RequestUser::default();
            req.extensions_mut().insert(user.clone());
            let request_id = request_id_of(&req);
            // Everything logged while the request is handled carries its id (and the call's,
            // once a handler knows it: `call_id`); a WebSocket session keeps its upgrade's.
            let span = tracing::info_span!("request", %request_id, call_id = tracing::field::Empty);
            let mut response = tracing::Instrument::instrument(endpoint.call(req), span.clone()).await?;
            if let Ok(value) = poem::http::HeaderValue::from_str(&request_id) {
                response.headers_mut().insert(REQUEST_ID, value);
            }
            let status = response.status().as_u16();
            // To a tenth of a millisecond: the digits beyond are noise, and make lines long.
            let latency_ms = (started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0;
            let user = user.get().map_or("-", |user| user.as_str());
            span.in_scope(|| {
                tracing::info!(target: "ringline::http", %method, %path, status, latency_ms, %user, "request");
            });
            Ok(response)
        })
}

/// The header a request's id travels in, both ways.
const REQUEST_ID: &str = "x-request-id";

/// The request's id: the one a proxy or client sent in `X-Request-Id` when it is a plain token
/// (1 to 64 letters, digits, `-`, `_`, `.`: nothing that could forge a log line), else a new one.
fn request_id_of(req: &Request) -> String {
    let given = req.headers().get(REQUEST_ID).and_then(|value| value.to_str().ok());
    match given {
        Some(id)
            if (1..=64).contains(&id.len())
                && id.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.')) =>
        {
            id.to_owned()
        }
        _ => uuid::Uuid::new_v4().simple().to_string(),
    }
}

/// Refuses bodies over [`MAX_BODY_BYTES`] with 413, whether announced by `Content-Length` or
/// sent chunked (then read up to the limit, and no further), and reads the others before
/// routing.
async fn limit_body(req: &mut Request) -> poem::Result<()> {
    let too_large = || poem::Error::from_status(StatusCode::PAYLOAD_TOO_LARGE);
    let announced = req.headers().get("content-length").and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    match announced {
        Some(length) if length > MAX_BODY_BYTES => Err(too_large()),
        // Read now (it is small): a request refused before its handler reads the body (no
        // token, no route) would otherwise leave it unread, and the connection could not be
        // kept alive for the client's next request.
        Some(length) if length > 0 => {
            let body = req.take_body().into_bytes_limit(MAX_BODY_BYTES).await.map_err(|_| too_large())?;
            req.set_body(body);
            Ok(())
        }
        Some(_) => Ok(()),
        None if req.headers().contains_key("transfer-encoding") => {
            let body = req.take_body().into_bytes_limit(MAX_BODY_BYTES).await.map_err(|_| too_large())?;
            req.set_body(body);
            Ok(())
        }
        None => Ok(()),
    }
}

/// `/api/calls/` and `/api/calls` are the same resource: routes are registered without the
/// trailing slash (poem-openapi's form), while the original clients always send one.
fn strip_trailing_slash(req: &mut Request) {
    let path = req.uri().path();
    if path.len() <= 1 || !path.ends_with('/') {
        return;
    }
    let trimmed = path.trim_end_matches('/');
    let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{trimmed}?{query}"),
        None => trimmed.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(path_and_query) = path_and_query.parse() {
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// Turns an error poem raised (no route, wrong method, body too large, unparsable request)
/// into the JSON envelope. Errors that already carry a JSON body (our handlers' [`ApiError`]s,
/// which poem-openapi passes on as errors) keep it.
async fn error_response(error: poem::Error) -> Response {
    let status = error.status();
    let text = error.to_string();
    let response = error.into_response();
    let is_json = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json {
        return response;
    }
    if status.is_server_error() {
        tracing::error!(error = %text, "request failed outside a handler");
    }
    // poem's status stays (a parse error may be 400 or another 4xx); the body is the catalogue's.
    let mut response = error::refusal_response(&error::refusal_for(status, &text));
    response.set_status(status);
    response
}
