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
    /// Which build counts (also in `/readyz`).
    pub build: BuildInfo,
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
        Self { registry, calls, sockets, http, dependencies, quality, process, build: *build }
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

/// The name of every family a scrape may show (the text format's names: counters end in
/// `_total`), for documents and tests to check their names against. A unit test keeps it equal
/// to what the registry holds.
pub const FAMILIES: &[&str] = &[
    "ringline_build_info",
    "ringline_bus_dropped_total",
    "ringline_bus_published_total",
    "ringline_bus_up",
    "ringline_call_answer_seconds",
    "ringline_call_duration_seconds",
    "ringline_call_jitter_seconds",
    "ringline_call_moments_total",
    "ringline_call_mos",
    "ringline_call_packet_loss_ratio",
    "ringline_call_policy_hook_duration_seconds",
    "ringline_call_policy_hook_requests_total",
    "ringline_call_policy_refusals_total",
    "ringline_call_quality_reports_total",
    "ringline_call_quality_tags_total",
    "ringline_call_refusals_total",
    "ringline_call_rtt_seconds",
    "ringline_calls_finished_total",
    "ringline_calls_open",
    "ringline_calls_silenced_total",
    "ringline_calls_started_total",
    "ringline_calls_waiting_total",
    "ringline_database_write_errors_total",
    "ringline_database_write_seconds",
    "ringline_http_request_duration_seconds",
    "ringline_http_requests_total",
    "ringline_mobile_pushes_total",
    "ringline_process_cpu_seconds",
    "ringline_process_open_fds",
    "ringline_process_resident_memory_bytes",
    "ringline_pushes_total",
    "ringline_relayed_frames_total",
    "ringline_socket_closes_total",
    "ringline_socket_connects_total",
    "ringline_socket_ping_rtt_seconds",
    "ringline_socket_refused_frames_total",
    "ringline_socket_resumes_total",
    "ringline_socket_slow_consumers_total",
    "ringline_sockets_open",
    "ringline_uptime_seconds",
    "ringline_webhook_deliveries_total",
    "ringline_webhook_oldest_pending_age_seconds",
];

/// Bucket bounds in seconds from 1 ms to 10 s: request and statement latencies.
pub(crate) const LATENCY_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use ringline_domain::{
        CallId, CallType, ErrorCode, NewCall, NotAllowedReason, Outcome, PolicyRefusal, QualityReport, QualityTag,
        Timestamp, UserId,
    };

    use super::*;
    use crate::dependencies::{PolicyHookResult, PushResult, WebhookResult};
    use crate::sockets::ResumeResult;

    /// Metrics with a sample in every family (an empty family shows nothing in a scrape).
    fn touched() -> Metrics {
        let metrics = Metrics::new(&BuildInfo::default());
        metrics.calls.started(CallType::Voice);
        let at = Timestamp::from_unix_micros(1_700_000_000_000_000).expect("a moment");
        let (ada, grace) = (UserId::parse("ada").expect("an id"), UserId::parse("grace").expect("an id"));
        let call = NewCall::ring(ada.clone(), grace, CallType::Voice, None, at).expect("a call");
        let call = call.into_call(CallId::new(1).expect("an id"));
        let Ok(Outcome::Changed(cancelled)) = call.end(&ada, at) else { panic!("the caller cancels") };
        metrics.calls.finished(&cancelled.call);
        metrics.calls.lasted(5);
        metrics.calls.refused(ErrorCode::UserBusy);
        metrics.calls.policy_refused(PolicyRefusal::NotAllowed(NotAllowedReason::Blocked));
        metrics.calls.rang_silently();
        metrics.calls.rang_waiting();
        metrics.calls.set_open(1, 1);
        let sockets = &metrics.sockets;
        sockets.opened(SocketEndpoint::Chat);
        sockets.closed(SocketEndpoint::Chat, 1000);
        sockets.resumed(ResumeResult::Replayed);
        sockets.ping_answered(Duration::from_millis(3));
        sockets.relayed("call.offer");
        sockets.refused_frame(ErrorCode::UnknownType);
        sockets.slow_consumer();
        metrics.http.answered("GET", "/healthz", 200, Duration::from_millis(1));
        let dependencies = &metrics.dependencies;
        dependencies.wrote(Duration::from_millis(1), true);
        dependencies.set_bus(true, 1, 1);
        dependencies.webhook(WebhookResult::Delivered);
        dependencies.set_webhook_oldest_pending(Duration::from_secs(1));
        dependencies.push(PushResult::Sent);
        dependencies.mobile_push("expo", crate::dependencies::MobilePushResult::Sent);
        dependencies.policy_hook(PolicyHookResult::Allowed, Duration::from_millis(3));
        let report = QualityReport {
            rtt_ms: Some(20.0),
            jitter_ms: Some(2.0),
            packet_loss: Some(0.0),
            ..QualityReport::default()
        };
        metrics.quality.reported(&report, &[QualityTag::Relayed]);
        metrics
    }

    /// The families a rendering shows, by their sample names' stems and `# TYPE` lines.
    fn families_in(text: &str) -> BTreeSet<String> {
        let mut families = BTreeSet::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
            families.insert(match kind {
                "counter" => format!("{name}_total"),
                "info" => format!("{name}_info"),
                _ => name.to_owned(),
            });
        }
        families
    }

    #[test]
    fn the_list_of_families_is_the_registry() {
        let listed: BTreeSet<String> = FAMILIES.iter().map(|name| (*name).to_owned()).collect();
        assert_eq!(families_in(&touched().render()), listed);
    }

    /// Every metric the operator's documents name exists: the tables and alerts of
    /// operations.md and the Grafana dashboard.
    #[test]
    fn the_documents_name_only_metrics_that_exist() {
        let documents = [
            ("operations.md", include_str!("../../../docs/operations.md")),
            ("grafana-dashboard.json", include_str!("../../../docs/grafana-dashboard.json")),
        ];
        for (document, text) in documents {
            let mut named: Vec<&str> = text
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("ringline_") && word.len() > "ringline_".len())
                .collect();
            named.sort_unstable();
            named.dedup();
            assert!(named.len() > 20, "{document} names the metrics: {named:?}");
            for name in named {
                let family = ["_bucket", "_count", "_sum"].iter().find_map(|suffix| name.strip_suffix(suffix));
                let known = FAMILIES.contains(&name) || family.is_some_and(|family| FAMILIES.contains(&family));
                assert!(known, "{document} names {name}, which is no metric");
            }
        }
    }

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
