//! The metrics of one application: its registry, with this build's version and commit, and
//! the gauges read from shared state when Prometheus scrapes.

use std::sync::Arc;
use std::time::Duration;

use ringline_api::MetricsListener;
use ringline_bus::BusHealth;
use ringline_domain::Clock;
use ringline_metrics::{BuildInfo, Metrics, ScrapeGauges};
use ringline_signaling::Background;
use ringline_storage::{SqlCallRepository, SqlWebhookOutbox};

/// This build: the crate's version and the commit `build.rs` found.
pub fn build_info() -> BuildInfo {
    BuildInfo { version: env!("CARGO_PKG_VERSION"), commit: option_env!("BUILD_SOURCE_COMMIT").unwrap_or("unknown") }
}

/// A fresh registry for one application.
pub fn new_metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new(&build_info()))
}

/// Serves `GET /metrics` on `listener` among the background tasks (so until they stop).
pub(crate) fn serve_metrics(
    background: &Background,
    listener: MetricsListener,
    metrics: Arc<Metrics>,
    gauges: SharedGauges,
) {
    tracing::info!(address = ?listener.local_socket_addr(), "metrics are served at /metrics");
    background.spawn(move |stop| async move {
        if let Err(error) = listener.serve(metrics, Some(Arc::new(gauges)), stop.cancelled_owned()).await {
            tracing::error!(%error, "the metrics listener failed");
        }
    });
}

/// The gauges whose truth is shared by every instance (the database) or kept by another part
/// (the bus counts its own messages), read at scrape time.
#[derive(Debug)]
pub(crate) struct SharedGauges {
    pub(crate) calls: SqlCallRepository,
    /// Read only when webhooks are configured.
    pub(crate) webhooks: Option<SqlWebhookOutbox>,
    pub(crate) bus: Option<Arc<BusHealth>>,
    pub(crate) clock: Arc<dyn Clock>,
}

#[async_trait::async_trait]
impl ScrapeGauges for SharedGauges {
    async fn refresh(&self, metrics: &Metrics) {
        match self.calls.count_open().await {
            Ok((ringing, active)) => metrics.calls.set_open(ringing, active),
            Err(error) => tracing::warn!(%error, "cannot count the open calls for a scrape"),
        }
        if let Some(webhooks) = &self.webhooks {
            match webhooks.oldest_pending_since().await {
                Ok(since) => {
                    let now = self.clock.now().unix_micros();
                    let age = since.map_or(0, |since| now.saturating_sub(since.unix_micros()));
                    let age = Duration::from_micros(u64::try_from(age).unwrap_or(0));
                    metrics.dependencies.set_webhook_oldest_pending(age);
                }
                Err(error) => tracing::warn!(%error, "cannot read the webhook outbox for a scrape"),
            }
        }
        if let Some(bus) = &self.bus {
            metrics.dependencies.set_bus(bus.connected(), bus.published(), bus.dropped());
        }
    }
}
