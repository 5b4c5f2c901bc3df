//! The `ringline` server, as a library so that tests and other binaries start exactly what
//! the binary starts.
//!
//! [`Application::build`] opens and migrates the database and wires the ports into the call
//! service and the signaling hub; [`Application::listen`] binds the configured address with
//! the connection bounds; [`Application::run`] serves on that listener until the shutdown
//! future resolves, then closes the sessions, drains requests and stops the background tasks.
//!
//! Modules: [`settings`] (layered configuration), [`telemetry`] (logs, shutdown signal),
//! `wiring` ([`Wiring`]), `database` ([`open_storage`]), `descriptors` (the connection cap),
//! [`observability`] (the metrics registry and the gauges read at scrape time),
//! [`push_services`] (the mobile push services the settings turn on).

pub mod config_check;
mod database;
mod descriptors;
pub mod observability;
pub mod push_services;
pub mod settings;
pub mod telemetry;
mod wiring;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ringline_api::{CallApiParts, ConnectionAcceptor, JwtAuthenticator, MetricsListener, ServerParts};
use ringline_bus::SharedBus;
use ringline_domain::{CallPolicy, CallService, Clock, MobilePushOutbox, SignalRouter, WebhookOutbox};
use ringline_metrics::{CallFunnel, Metrics};
use ringline_outbound::mobile_push::PushService;
use ringline_outbound::{
    HttpPolicyHook, MobilePushSender, MobilePushSettings, OutboxWaker, WebPushObserver, WebPushSender, WebhookSender,
};
use ringline_signaling::{Background, LocalRouter, Signaling};
use ringline_storage::Storage;

pub use database::open_storage;
pub use settings::Settings;
pub use wiring::Wiring;

/// How long in-flight requests may run after a shutdown signal before the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long WebSocket sessions get to close after the shutdown signal.
const SESSION_DRAIN: Duration = Duration::from_secs(5);

/// A built, not yet serving server.
#[derive(Debug)]
pub struct Application {
    settings: Settings,
    storage: Storage,
    clock: Arc<dyn Clock>,
    signaling: Arc<Signaling>,
    authenticator: Arc<JwtAuthenticator>,
    /// The server runs on the built-in development secret: demo sign-in is on.
    development_secret: bool,
    /// Whether `run` runs the ring timer and the liveness sweep (always, but in tests that
    /// count the database work of one request).
    sweeps: bool,
    /// The bus to the other instances, when `RINGLINE_REDIS_URL` is set (or the application
    /// joined a `MemoryHub`).
    bus: Option<Arc<SharedBus>>,
    /// Wakes the webhook sender, which `run` starts when `RINGLINE_WEBHOOK_URLS` is set.
    webhook_waker: Arc<OutboxWaker>,
    /// The mobile push services that could be set up, and what wakes their sender.
    push_services: Vec<Arc<dyn PushService>>,
    push_waker: Arc<OutboxWaker>,
    web_push: Arc<WebPushSender>,
    metrics: Arc<Metrics>,
    /// Bound by [`Application::bind_metrics`] (or by `run`) when `RINGLINE_METRICS_BIND` is set.
    metrics_listener: Option<MetricsListener>,
}

impl Application {
    /// Opens and migrates the database and wires everything.
    ///
    /// # Errors
    /// When the database cannot be opened or migrated, or Redis does not answer.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let storage = open_storage(&settings).await?;
        Self::build_on(settings, storage).await
    }

    /// [`Application::build`] on storage opened (and migrated) by the caller, for example one
    /// whose statements a test counts.
    ///
    /// # Errors
    /// As [`Application::build`].
    pub async fn build_on(settings: Settings, storage: Storage) -> anyhow::Result<Self> {
        Self::build_with(settings, storage, Wiring::default()).await
    }

    /// [`Application::build_on`] with other [`Wiring`]: joined to other instances in this
    /// process, or on a clock a test drives.
    ///
    /// # Errors
    /// As [`Application::build`].
    pub async fn build_with(settings: Settings, storage: Storage, wiring: Wiring) -> anyhow::Result<Self> {
        let clock = wiring.clock;
        let metrics = observability::new_metrics();
        storage.count_in(metrics.clone());
        // The outbox's triggers write events only for active subscriptions: none, without URLs.
        let urls = settings.webhooks().map(|webhooks| webhooks.urls).unwrap_or_default();
        storage.webhooks().set_subscriptions(&urls).await.context("cannot record the webhook subscriptions")?;
        let webhook_waker = OutboxWaker::new();
        // The same for mobile pushes: stored only for the services that could be set up.
        let push = push_services::PushServices::from_settings(&settings.mobile_push, &clock);
        for problem in &push.problems {
            tracing::error!("{problem}");
        }
        let providers: Vec<_> = push.services.iter().map(|service| service.provider()).collect();
        let outbox = storage.mobile_push();
        outbox.set_providers(&providers).await.context("cannot record the mobile push services")?;
        let push_waker = OutboxWaker::new();
        let (calls, directory) = (Arc::new(storage.calls()), Arc::new(storage.directory()));
        let mut policy = CallPolicy::new(Arc::new(storage.call_policy()), settings.rate_caps());
        if let Some((hook, fails_open)) = settings.call_policy_hook() {
            let hook = HttpPolicyHook::new(hook, clock.clone(), metrics.clone())
                .context("cannot set up the call policy hook")?;
            policy = policy.with_hook(Arc::new(hook), fails_open);
        }
        let mut service = CallService::new(calls, directory, clock.clone(), settings.ring_timeout())
            .with_liveness(settings.liveness())
            .with_policy(policy)
            .observed_by(Arc::new(CallFunnel(metrics.clone())));
        if !urls.is_empty() {
            service = service.observed_by(webhook_waker.clone());
        }
        if !push.services.is_empty() {
            service = service.observed_by(push_waker.clone());
        }
        let subscriptions = Arc::new(storage.push_subscriptions());
        let web_push = WebPushSender::start(subscriptions, settings.web_push(), clock.clone(), ringline_api::call_json);
        let web_push = Arc::new(web_push.await.context("cannot set up Web Push")?.with_metrics(metrics.clone()));
        service = service.observed_by(Arc::new(WebPushObserver(web_push.clone())));

        let local = Arc::new(LocalRouter::new());
        let bus = SharedBus::for_instance(wiring.hub.as_ref(), settings.redis().as_ref(), &local).await;
        let bus = bus.context("cannot connect to Redis")?;
        let router: Arc<dyn SignalRouter> = match &bus {
            Some(bus) => bus.clone(),
            None => local.clone(),
        };
        let mut signaling = Signaling::new(service, Arc::new(storage.notifications()), router, local)
            .with_keepalive(settings.keepalive())
            .with_frame_rate(settings.frame_rate())
            .with_max_sockets_per_user(settings.sockets.ws_max_per_user)
            .with_metrics(metrics.clone());
        if let Some(bus) = &bus {
            signaling = signaling.with_gate(bus.clone()).with_presence(bus.clone());
        }
        let signaling = Arc::new(signaling);
        // Before serving: a removed user's token must not get in during the first seconds.
        signaling.accounts().reload().await.context("cannot read the removed and inactive users")?;

        let (secret, development_secret) = settings.jwt_secret_or_default();
        let mut authenticator = JwtAuthenticator::new(&secret, settings.auth.jwt_user_claim.clone(), clock.clone())
            .checking_accounts(signaling.accounts().clone());
        if settings.auth.register_on_first_use {
            authenticator = authenticator.provisioning_into(storage.directory());
        }
        let authenticator = Arc::new(authenticator);
        Ok(Self {
            settings,
            storage,
            clock,
            signaling,
            authenticator,
            development_secret,
            sweeps: true,
            bus,
            webhook_waker,
            push_services: push.services,
            push_waker,
            web_push,
            metrics,
            metrics_listener: None,
        })
    }

    /// Runs without the ring timer and the liveness sweep, for tests that count the database
    /// work of single requests. Such a server never expires or ends calls by itself.
    #[must_use]
    pub fn without_sweeps(mut self) -> Self {
        self.sweeps = false;
        self
    }

    pub fn authenticator(&self) -> Arc<JwtAuthenticator> {
        self.authenticator.clone()
    }

    pub fn signaling(&self) -> Arc<Signaling> {
        self.signaling.clone()
    }

    /// Binds the metrics listener (`RINGLINE_METRICS_BIND`), if one is configured, and returns
    /// its address (useful with port 0). `run` binds it itself when this was not called.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind_metrics(&mut self) -> anyhow::Result<Option<std::net::SocketAddr>> {
        if self.metrics_listener.is_none()
            && let Some(address) = self.settings.metrics.metrics_bind
        {
            let listener = MetricsListener::bind(address).await;
            let listener = listener.with_context(|| format!("cannot listen for metrics on {address}"))?;
            self.metrics_listener = Some(listener);
        }
        Ok(self.metrics_listener.as_ref().and_then(MetricsListener::local_socket_addr))
    }

    /// Binds the configured address (`RINGLINE_BIND`), with the connection bounds.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn listen(&self) -> anyhow::Result<ConnectionAcceptor> {
        let listener = self.settings.listener(descriptors::connection_cap(&self.settings));
        tracing::info!(per_address = listener.max_per_address, "connections from one address are capped");
        ConnectionAcceptor::bind(&listener).await.map_err(|error| self.settings.bind_error(error))
    }

    /// Serves on `listener` until `shutdown` resolves, then closes WebSocket sessions (code
    /// 1001, up to 5 s), drains in-flight requests (up to 10 s), stops the background tasks and
    /// closes the database.
    ///
    /// # Errors
    /// When the server fails to run, or the webhooks' HTTP client cannot be built.
    pub async fn run(
        mut self,
        listener: ConnectionAcceptor,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        // Said when serving, not when building: `ringline openapi` builds one too.
        self.settings.warn_about_risks();
        self.bind_metrics().await?;
        let address = listener.local_socket_addr();
        let port = address.map_or(self.settings.http.bind.port(), |address| address.port());
        let app = ringline_api::server_routes(self.parts(listener.max_per_address().unwrap_or(usize::MAX)));
        let Self {
            settings,
            storage,
            clock,
            signaling,
            sweeps,
            bus,
            webhook_waker,
            push_services,
            push_waker,
            web_push,
            ..
        } = self;
        let (metrics, metrics_listener) = (self.metrics, self.metrics_listener);
        let background =
            if sweeps { Background::start(signaling.clone()) } else { Background::without_sweeps(signaling.clone()) };
        if sweeps {
            let storage = storage.clone();
            background.spawn(|stop| storage.keep_checkpointing(stop.cancelled_owned()));
        }
        if let Some(listener) = metrics_listener {
            let gauges = observability::SharedGauges {
                calls: storage.calls(),
                webhooks: settings.webhooks().is_some().then(|| storage.webhooks()),
                bus: bus.as_ref().map(|bus| bus.health()),
                clock: clock.clone(),
            };
            observability::serve_metrics(&background, listener, metrics.clone(), gauges);
        }
        if let Some(bus) = bus {
            let signaling = signaling.clone();
            background.spawn(|stop| bus.run(signaling, stop));
        }
        if let Some(mut webhook_settings) = settings.webhooks() {
            // Who sends, the same across restarts: the deliveries it had in flight when it
            // stopped are released when it starts again.
            webhook_settings.sender = settings::outbox_sender(port);
            let (outbox, directory) = (Arc::new(storage.webhooks()), Arc::new(storage.directory()));
            let (signaling, render) = (signaling.clone(), ringline_api::call_json);
            let sender = WebhookSender::new(
                outbox,
                directory,
                signaling,
                clock.clone(),
                webhook_settings,
                &webhook_waker,
                render,
            )
            .context("cannot build the webhooks' HTTP client")?;
            background.spawn(|stop| Arc::new(sender).run(stop));
        }
        if !push_services.is_empty() {
            let push_settings =
                MobilePushSettings { ring_timeout: settings.ring_timeout(), sender: settings::outbox_sender(port) };
            let sender = MobilePushSender::new(
                Arc::new(storage.mobile_push()),
                Arc::new(storage.directory()),
                Arc::new(storage.notifications()),
                push_services,
                clock.clone(),
                push_settings,
                &push_waker,
                metrics.clone(),
            );
            background.spawn(|stop| Arc::new(sender).run(stop));
        }
        background.spawn(|stop| web_push.run(stop));
        tracing::info!(address = ?address, backend = storage.backend_name(), "ringline is serving");
        // poem detaches upgraded connections, so the sessions are closed here, as soon as the
        // signal arrives: clients reconnect (to another instance) at once.
        let sessions = signaling.clone();
        let shutdown = async move {
            shutdown.await;
            sessions.begin_shutdown();
        };
        let served = ringline_api::serve(listener, app, shutdown, SHUTDOWN_GRACE).await;
        if !background.shutdown(SESSION_DRAIN).await {
            tracing::warn!("some WebSocket sessions did not close in time");
        }
        served.context("server failed")?;
        storage.close().await.context("closing the database")?;
        tracing::info!("ringline stopped");
        Ok(())
    }

    /// What the HTTP surface is built from.
    fn parts(&self, max_per_forwarded_client: usize) -> ServerParts {
        let settings = &self.settings;
        let calls = CallApiParts {
            signaling: self.signaling.clone(),
            authenticator: self.authenticator.clone(),
            ice: settings.ice(),
            clock: self.clock.clone(),
        };
        ServerParts {
            calls,
            storage: self.storage.clone(),
            admin_token: settings.auth.admin_token.clone(),
            demo_login: self.development_secret.then(|| self.authenticator.clone()),
            bus: self.bus.as_ref().map(|bus| -> Arc<dyn ringline_signaling::BusStatus> { bus.health() }),
            vapid_public_key: self.web_push.vapid().public_key().to_owned(),
            trusted_proxies: settings.http.trusted_proxies.clone(),
            max_per_forwarded_client,
            web_push_policy: Arc::new(settings.web_push_rules()),
            cors_allowed_origins: settings.http.cors_allowed_origins.clone(),
        }
    }
}

/// The OpenAPI document of the standalone server: the one a server on default settings
/// publishes (built over an in-memory database, since it depends on the code only).
///
/// # Errors
/// Only if the in-memory database cannot be opened.
pub async fn openapi_document() -> anyhow::Result<String> {
    let storage = Storage::connect("sqlite::memory:").await?;
    storage.migrate().await?;
    let settings = Settings::for_tests("sqlite::memory:", "unused-secret-for-the-document");
    let application = Application::build_on(settings, storage.clone()).await?;
    let document = ringline_api::openapi_json(application.parts(1));
    storage.close().await?;
    Ok(document)
}
