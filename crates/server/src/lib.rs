//! The `ringline` server, as a library so that tests and other binaries start exactly what
//! the binary starts.
//!
//! [`Application::build`] opens and migrates the database, wires the ports into the call
//! service, binds the listener and assembles the routes; [`Application::run_until`] serves
//! until the given shutdown future resolves, then finishes in-flight requests and stops the
//! background tasks.
//!
//! Modules: [`settings`] (layered configuration), [`telemetry`] (logs, shutdown signal).

pub mod settings;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::middleware::Cors;
use poem::{Endpoint, EndpointExt, IntoResponse, Server};
use ringline_api::{AddressCap, CallApiParts, ConnectionAcceptor, JwtAuthenticator, ServerParts};
use ringline_bus::{MemoryHub, SharedBus};
use ringline_domain::{CallService, Clock, ErrorCode, SignalRouter, SystemClock, WebhookOutbox};
use ringline_outbound::{Vapid, WebPushObserver, WebPushSender, WebhookSender, WebhookWaker};
use ringline_signaling::{Background, CancellationToken, LocalRouter, Signaling};
use ringline_storage::{ConnectSettings, Storage};

pub use settings::Settings;

/// How long in-flight requests may run after a shutdown signal before the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long WebSocket sessions get to close after the shutdown signal.
const SESSION_DRAIN: Duration = Duration::from_secs(5);

/// A built, bound, not yet serving server.
pub struct Application {
    settings: Settings,
    storage: Storage,
    signaling: Arc<Signaling>,
    authenticator: Arc<JwtAuthenticator>,
    /// The server runs on the built-in development secret: demo sign-in is on.
    development_secret: bool,
    acceptor: ConnectionAcceptor,
    /// What one client address may hold; behind a trusted proxy, one forwarded client.
    per_address: usize,
    local_addr: SocketAddr,
    /// Whether `run_until` runs the ring timer and the liveness sweep (always, but in tests
    /// that count the database work of one request).
    sweeps: bool,
    /// The bus to the other instances, when `RINGLINE_REDIS_URL` is set (or the application
    /// joined a [`MemoryHub`]).
    bus: Option<Arc<SharedBus>>,
    /// Sends call webhooks, when `RINGLINE_WEBHOOK_URLS` is set.
    webhooks: Option<Arc<WebhookSender>>,
    vapid: Vapid,
    web_push: Arc<WebPushSender>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

impl Application {
    /// Opens and migrates the database and binds `settings.bind`.
    ///
    /// # Errors
    /// When the database cannot be opened or migrated, or the address cannot be bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let storage = open_storage(&settings).await?;
        Self::build_on(settings, storage).await
    }

    /// [`Application::build`] on storage opened (and migrated) by the caller, for example one
    /// whose statements a test counts.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn build_on(settings: Settings, storage: Storage) -> anyhow::Result<Self> {
        Self::assemble(settings, storage, None).await
    }

    /// [`Application::build_on`] for one of several instances in this process, joined by
    /// `hub` instead of Redis (tests of several instances; trying them out).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn build_joined(settings: Settings, storage: Storage, hub: &Arc<MemoryHub>) -> anyhow::Result<Self> {
        Self::assemble(settings, storage, Some(hub)).await
    }

    async fn assemble(settings: Settings, storage: Storage, hub: Option<&Arc<MemoryHub>>) -> anyhow::Result<Self> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        // The outbox's triggers write events only for active subscriptions: none, without URLs.
        let webhook_settings = settings.webhooks();
        let urls = webhook_settings.as_ref().map(|webhooks| webhooks.urls.clone()).unwrap_or_default();
        storage.webhooks().set_subscriptions(&urls).await.context("cannot record the webhook subscriptions")?;
        let waker = WebhookWaker::new();
        let mut service = CallService::new(
            Arc::new(storage.calls()),
            Arc::new(storage.directory()),
            clock.clone(),
            settings.ring_timeout(),
        )
        .with_liveness(settings.liveness());
        if webhook_settings.is_some() {
            service = service.observed_by(waker.clone());
        }
        // Web Push: one key pair for every instance, made on the first start.
        let vapid_keys =
            storage.push_subscriptions().vapid_keys(Vapid::generate).await.context("cannot read the VAPID key")?;
        let vapid = Vapid::new(&vapid_keys, settings.vapid_subject.clone()).context("the stored VAPID key")?;
        let web_push = Arc::new(
            WebPushSender::new(
                Arc::new(storage.push_subscriptions()),
                vapid.clone(),
                settings.web_push_rules(),
                clock.clone(),
                settings.ring_timeout(),
                ringline_api::call_json,
            )
            .context("cannot build the Web Push HTTP client")?,
        );
        service = service.observed_by(Arc::new(WebPushObserver(web_push.clone())));
        if settings.web_push_allow_loopback {
            tracing::warn!("RINGLINE_WEB_PUSH_ALLOW_LOOPBACK is on: users can make this server POST to this machine");
        }
        let local = Arc::new(LocalRouter::new());
        let bus = match (hub, settings.redis()) {
            (Some(hub), _) => Some(SharedBus::join(hub, local.clone())),
            (None, Some(redis)) => {
                let bus = SharedBus::connect_redis(&redis, local.clone()).await.context("cannot connect to Redis")?;
                tracing::info!(
                    instance = format!("{:016x}", local.instance()),
                    cluster = settings.redis_cluster,
                    "several instances: events cross them over Redis"
                );
                Some(bus)
            }
            (None, None) => None,
        };
        let router: Arc<dyn SignalRouter> = match &bus {
            Some(bus) => bus.clone(),
            None => local.clone(),
        };
        let mut signaling = Signaling::new(service, Arc::new(storage.notifications()), router, local)
            .with_keepalive(settings.keepalive())
            .with_frame_rate(settings.frame_rate())
            .with_max_sockets_per_user(settings.ws_max_per_user);
        if let Some(bus) = &bus {
            signaling = signaling.with_gate(bus.clone()).with_presence(bus.clone());
        }
        let signaling = Arc::new(signaling);
        // Before serving: a removed user's token must not get in during the first seconds.
        signaling.accounts().reload().await.context("cannot read the removed and inactive users")?;
        let (secret, is_default) = settings.jwt_secret_or_default();
        if is_default {
            tracing::warn!(
                "RINGLINE_JWT_SECRET is not set: using the built-in development secret. Anyone can mint tokens \
                 for this server. Set RINGLINE_JWT_SECRET (the same secret as your Django SIMPLE_JWT signing key)."
            );
        }
        let mut authenticator = JwtAuthenticator::new(&secret, settings.jwt_user_claim.clone(), clock.clone())
            .checking_accounts(signaling.accounts().clone());
        if settings.register_on_first_use {
            authenticator = authenticator.provisioning_into(storage.directory());
        }
        let authenticator = Arc::new(authenticator);
        if settings.stun_urls.is_empty() && settings.turn_urls.is_empty() {
            tracing::warn!(
                "no STUN or TURN server is configured (RINGLINE_STUN_URLS, RINGLINE_TURN_URLS): calls between \
                 devices behind different NATs will fail to connect media"
            );
        }
        if !settings.turn_urls.is_empty() && settings.turn_secret.is_none() {
            tracing::warn!(
                "RINGLINE_TURN_URLS is set but RINGLINE_TURN_SECRET is not: TURN servers are not handed out"
            );
        }
        let cap = connection_cap(&settings);
        let per_address = settings.connection_cap_per_address(cap);
        tracing::info!(per_address, "connections from one address are capped");
        let acceptor =
            ConnectionAcceptor::new(TcpListener::bind(settings.bind).into_acceptor().await.map_err(|error| {
                let hint = if error.kind() == std::io::ErrorKind::AddrInUse {
                    " (another program is listening there: choose another address with RINGLINE_BIND=127.0.0.1:8001 \
                     or --bind 127.0.0.1:8001)"
                } else {
                    " (choose another address with RINGLINE_BIND or --bind)"
                };
                anyhow::Error::new(error).context(format!("cannot listen on {}{hint}", settings.bind))
            })?)
            .with_idle_timeout(Duration::from_secs(settings.http_idle_timeout_secs))
            .with_header_timeout(Duration::from_secs(settings.http_header_timeout_secs))
            .with_max_connections(cap)
            .with_address_cap(AddressCap::new(
                per_address,
                settings.max_connections_per_address_exempt.iter().chain(&settings.trusted_proxies).copied(),
            ));
        let local_addr = acceptor
            .local_addr()
            .first()
            .and_then(|addr| addr.as_socket_addr().copied())
            .context("the listener has no socket address")?;
        let webhooks = match webhook_settings {
            Some(mut webhook_settings) => Some(Arc::new({
                // Who sends, the same across restarts: the deliveries it had in flight when it
                // stopped are released when it starts again.
                webhook_settings.sender = settings::webhook_sender(local_addr.port());

                WebhookSender::new(
                    Arc::new(storage.webhooks()),
                    Arc::new(storage.directory()),
                    signaling.clone(),
                    clock.clone(),
                    webhook_settings,
                    &waker,
                    ringline_api::call_json,
                )
                .context("cannot build the webhooks' HTTP client")?
            })),
            None => None,
        };
        Ok(Self {
            settings,
            storage,
            signaling,
            authenticator,
            acceptor,
            per_address,
            local_addr,
            development_secret: is_default,
            sweeps: true,
            bus,
            webhooks,
            vapid,
            web_push,
        })
    }

    /// Runs without the ring timer and the liveness sweep, for tests that count the database
    /// work of single requests. Such a server never expires or ends calls by itself.
    #[must_use]
    pub fn without_sweeps(mut self) -> Self {
        self.sweeps = false;
        self
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn authenticator(&self) -> Arc<JwtAuthenticator> {
        self.authenticator.clone()
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn signaling(&self) -> Arc<Signaling> {
        self.signaling.clone()
    }

    /// Serves until `shutdown` resolves, then closes WebSocket sessions (code 1001, up to 5 s),
    /// drains in-flight requests (up to 10 s), stops the ring timer and closes the database.
    ///
    /// # Errors
    /// When the server fails to run.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Self {
            settings,
            storage,
            signaling,
            authenticator,
            acceptor,
            per_address,
            local_addr,
            development_secret,
            sweeps,
            bus,
            webhooks,
            vapid,
            web_push,
        } = self;
        let demo_login = development_secret.then(|| authenticator.clone());
        let parts = ServerParts {
            calls: CallApiParts {
                signaling: signaling.clone(),
                authenticator,
                ice: settings.ice(),
                clock: Arc::new(SystemClock),
            },
            storage: storage.clone(),
            admin_token: settings.admin_token.clone(),
            demo_login,
            bus: bus.as_ref().map(|bus| -> Arc<dyn ringline_signaling::BusStatus> { bus.health() }),
            vapid_public_key: vapid.public_key().to_owned(),
            trusted_proxies: settings.trusted_proxies.clone(),
            max_per_forwarded_client: per_address,
            web_push_policy: Arc::new(settings.web_push_rules()),
        };
        let app = ringline_api::server_routes(parts);
        let app = app.with_if(!settings.cors_allowed_origins.is_empty(), cors(&settings.cors_allowed_origins)).around(
            |endpoint, mut req| async move {
                // The web client served at `/` calls from the server's own origin: not a
                // cross-origin request, whatever the allowed list says.
                if same_origin(&req) {
                    req.headers_mut().remove(poem::http::header::ORIGIN);
                }
                match endpoint.call(req).await {
                    Ok(response) => Ok(response.into_response()),
                    Err(error) if error.is::<poem::error::CorsError>() => {
                        Ok(ringline_api::refusal_response(&ErrorCode::OriginNotAllowed.into()))
                    }
                    Err(error) => Err(error),
                }
            },
        );

        let background =
            if sweeps { Background::start(signaling.clone()) } else { Background::without_sweeps(signaling.clone()) };
        if sweeps {
            let storage = storage.clone();
            background.spawn(|stop| checkpoint_every_second(storage, stop));
        }
        if let Some(bus) = bus {
            let signaling = signaling.clone();
            background.spawn(|stop| bus.run(signaling, stop));
        }
        if let Some(webhooks) = webhooks {
            background.spawn(|stop| webhooks.run(stop));
        }
        background.spawn(|stop| web_push.run(stop));
        tracing::info!(address = %local_addr, backend = storage.backend_name(), "ringline is serving");
        // poem detaches upgraded connections, so the sessions are closed here, as soon as the
        // signal arrives: clients reconnect (to another instance) at once.
        let sessions = signaling.clone();
        let signalled = CancellationToken::new();
        let shutdown = {
            let signalled = signalled.clone();
            async move {
                shutdown.await;
                signalled.cancel();
                sessions.begin_shutdown();
            }
        };
        // poem's graceful shutdown waits for every connection, and a client stalled in the
        // middle of its request headers never finishes one: it held the exit for the whole
        // grace period. So the wait ends as soon as no request is in progress.
        let in_flight = InFlight::default();
        let app = in_flight.counting(app);
        let served = tokio::select! {
            served = Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(app, shutdown, Some(SHUTDOWN_GRACE)) => served,
            () = in_flight.drained_after(signalled) => Ok(()),
        };
        if !background.shutdown(SESSION_DRAIN).await {
            tracing::warn!("some WebSocket sessions did not close in time");
        }
        served.context("server failed")?;
        storage.close().await.context("closing the database")?;
        tracing::info!("ringline stopped");
        Ok(())
    }
}

/// How many requests are being handled, so that shutdown waits for those and not for idle or
/// stalled connections.
#[derive(Debug, Clone, Default)]
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

/// Counts one request while it lives (also when its future is dropped midway).
struct Handling(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Time for responses handed to their connections to be written once no request is in
/// progress.
const RESPONSE_FLUSH: Duration = Duration::from_millis(200);

impl InFlight {
    fn counting(&self, app: impl Endpoint + 'static) -> impl Endpoint + 'static {
        let count = Arc::clone(&self.0);
        app.around(move |endpoint, req| {
            count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let handling = Handling(Arc::clone(&count));
            async move {
                let response = endpoint.call(req).await.map(IntoResponse::into_response);
                drop(handling);
                response
            }
        })
    }

    /// Resolves once `signalled` is cancelled and then no request is in progress (checked every
    /// 20 ms), after a moment for the last responses to be written.
    async fn drained_after(&self, signalled: CancellationToken) {
        signalled.cancelled().await;
        while self.0.load(std::sync::atomic::Ordering::Acquire) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(RESPONSE_FLUSH).await;
    }
}

/// The connection cap for `settings`, after raising this process's open-files limit as far as
/// it may go (a service manager often starts processes at 1,024, far below what thousands of
/// WebSockets need).
fn connection_cap(settings: &Settings) -> usize {
    let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _hard)| soft)
        }
    };
    let cap = settings.connection_cap(open_files);
    if u64::try_from(cap).unwrap_or(u64::MAX) > open_files {
        tracing::warn!(cap, open_files, "RINGLINE_MAX_CONNECTIONS is above the open-files limit");
    }
    tracing::info!(cap, open_files, "connections are capped");
    cap
}

/// Keeps SQLite's write-ahead log short from a background task, so that no request pays for a
/// checkpoint's disk flushes ([`Storage::checkpoint`]; nothing to do on PostgreSQL).
async fn checkpoint_every_second(storage: Storage, stop: CancellationToken) {
    if storage.backend_name() != "sqlite" {
        return;
    }
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        if let Err(error) = storage.checkpoint().await {
            tracing::warn!(%error, "SQLite checkpoint failed; retrying in a second");
        }
    }
}

/// Opens the configured database and applies pending migrations.
///
/// # Errors
/// When the database cannot be opened or migrated.
pub async fn open_storage(settings: &Settings) -> anyhow::Result<Storage> {
    let connect = ConnectSettings {
        sqlite_sync: settings.sqlite_sync(),
        acquire_timeout: Duration::from_secs(settings.database_acquire_timeout_secs),
    };
    let storage = Storage::connect_with(&settings.database_url, connect).await.context("cannot open the database")?;
    storage.migrate().await.context("cannot migrate the database")?;
    Ok(storage)
}

/// Browsers may call the API from these origins only (the original web client is served from
/// another origin than its API).
/// Whether the request's `Origin` is the server itself (the authority the client addressed).
fn same_origin(req: &poem::Request) -> bool {
    let header = |name| req.headers().get(name).and_then(|value: &poem::http::HeaderValue| value.to_str().ok());
    let (Some(origin), Some(host)) = (header(poem::http::header::ORIGIN), header(poem::http::header::HOST)) else {
        return false;
    };
    origin.split_once("://").is_some_and(|(scheme, authority)| matches!(scheme, "http" | "https") && authority == host)
}

fn cors(origins: &[String]) -> Cors {
    Cors::new()
        .allow_origins(origins.iter().map(String::as_str))
        .allow_credentials(true)
        .allow_methods(["GET", "POST", "PUT", "DELETE", "OPTIONS"])
        .allow_headers(["authorization", "content-type"])
        .max_age(600)
}

/// The OpenAPI document of the standalone server. It depends on the code only, so it is built
/// over an in-memory database and default settings.
///
/// # Errors
/// Only if the in-memory database cannot be opened.
pub async fn openapi_document() -> anyhow::Result<String> {
    let storage = Storage::connect("sqlite::memory:").await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let service = CallService::new(
        Arc::new(storage.calls()),
        Arc::new(storage.directory()),
        clock.clone(),
        ringline_domain::DEFAULT_RING_TIMEOUT,
    );
    let signaling = Arc::new(Signaling::local(service, Arc::new(storage.notifications())));
    let authenticator = Arc::new(JwtAuthenticator::new(&"unused".to_owned().into(), "user_id", clock.clone()));
    let parts = ServerParts {
        calls: CallApiParts { signaling, authenticator, ice: ringline_api::IceSettings::default(), clock },
        storage: storage.clone(),
        admin_token: None,
        demo_login: None,
        bus: None,
        vapid_public_key: Vapid::generate().public_key,
        trusted_proxies: Vec::new(),
        max_per_forwarded_client: 1,
        web_push_policy: Arc::new(ringline_outbound::UserUrlRules::default()),
    };
    let document = ringline_api::openapi_json(parts);
    storage.close().await?;
    Ok(document)
}
