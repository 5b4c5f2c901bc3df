//! Ringline's metrics: one [`Metrics`] per application, rendered in the OpenMetrics text
//! format (the standard form of Prometheus's) by [`Metrics::render`].
//!
//! A registry the application owns, not a process-wide recorder: an embedding application
//! keeps its own registry beside Ringline's, and several instances in one process (as the
//! tests run them) each count their own. Every family's labels are bounded: enums of the
//! domain (call type, status, end reason, error code), route templates, frame types and
//! close codes from a fixed list; never a user id, call id or address.
//!
//! The groups, each in its own module: [`calls`] (the call funnel, and [`CallFunnel`], the
//! observer that counts it), [`sockets`], [`http`], [`dependencies`], [`quality`] and
//! [`process`].

pub mod calls;
pub mod dependencies;
pub mod http;
pub mod process;
pub mod quality;
pub mod sockets;

use std::sync::Arc;

use prometheus_client::registry::Registry;

pub use calls::{CallFunnel, CallMetrics};
pub use dependencies::DependencyMetrics;
pub use http::HttpMetrics;
pub use process::{BuildInfo, ProcessMetrics};
pub use quality::QualityMetrics;
pub use sockets::{SocketEndpoint, SocketMetrics};

/// What every metric's name starts with.
pub const PREFIX: &str = "ringline";

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric of one application.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub calls: CallMetrics,
    pub sockets: SocketMetrics,
    pub http: HttpMetrics,
    pub dependencies: DependencyMetrics,
    pub quality: QualityMetrics,
    pub process: ProcessMetrics,
}

impl Metrics {
    /// A fresh registry holding every family, with this build's version and commit.
    pub fn new(build: &BuildInfo) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let calls = CallMetrics::register(&mut registry);
        let sockets = SocketMetrics::register(&mut registry);
        let http = HttpMetrics::register(&mut registry);
        let dependencies = DependencyMetrics::register(&mut registry);
        let quality = QualityMetrics::register(&mut registry);
        let process = ProcessMetrics::register(&mut registry, build);
        Self { registry, calls, sockets, http, dependencies, quality, process }
    }

    /// Metrics that nobody reads: what a component gets when its embedder gave it none.
    pub fn unread() -> Arc<Self> {
        Arc::new(Self::new(&BuildInfo::default()))
    }

    /// The whole registry in the OpenMetrics text format, the process figures read now.
    pub fn render(&self) -> String {
        self.process.refresh();
        let mut text = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Gauges read from shared state (the database) at scrape time rather than counted: with
/// several instances, counting them in each instance would split one figure into parts that
/// only sum right while every instance lives.
#[async_trait::async_trait]
pub trait ScrapeGauges: Send + Sync + std::fmt::Debug {
    /// Sets the gauges it owns on `metrics`. Errors are the implementor's to log: a scrape
    /// answers with what it has.
    async fn refresh(&self, metrics: &Metrics);
}

/// Bucket bounds in seconds from 1 ms to 10 s: request and statement latencies.
pub(crate) const LATENCY_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_starts_with_the_prefix_and_ends_with_the_eof_marker() {
        let metrics = Metrics::new(&BuildInfo { version: "1.2.3", commit: "abc" });
        let text = metrics.render();
        assert!(text.ends_with("# EOF\n"));
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            assert!(line.starts_with("ringline_"), "{line}");
        }
        assert!(text.contains(r#"ringline_build_info{version="1.2.3",commit="abc"} 1"#), "{text}");
    }
}
