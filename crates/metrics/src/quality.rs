//! Call quality as the parties' clients report it: histograms of the reported round trip,
//! jitter, loss and the server's MOS, reports by the selected candidate pair's type, and calls
//! by the quality tags they earned.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use ringline_domain::{CandidateType, QualityReport, QualityTag};

/// Round trips and jitter in seconds, around the thresholds (30 ms jitter, 400 ms round trip).
const DELAY_BUCKETS: [f64; 12] = [0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 1.0];
/// Loss fractions, around the 3 % threshold.
const LOSS_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5];
/// MOS from 1 to 4.5, finer where calls go from fine to annoying.
const MOS_BUCKETS: [f64; 9] = [1.5, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.4];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CandidateLabels {
    candidate_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TagLabels {
    tag: &'static str,
}

/// The quality families.
#[derive(Debug)]
pub struct QualityMetrics {
    rtt: Histogram,
    jitter: Histogram,
    packet_loss: Histogram,
    mos: Histogram,
    reports: Family<CandidateLabels, Counter>,
    tagged: Family<TagLabels, Counter>,
}

impl QualityMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            rtt: Histogram::new(DELAY_BUCKETS),
            jitter: Histogram::new(DELAY_BUCKETS),
            packet_loss: Histogram::new(LOSS_BUCKETS),
            mos: Histogram::new(MOS_BUCKETS),
            reports: Family::default(),
            tagged: Family::default(),
        };
        registry.register_with_unit(
            "call_rtt",
            "Round trip of the media path, as the parties' quality reports give it",
            Unit::Seconds,
            metrics.rtt.clone(),
        );
        registry.register_with_unit(
            "call_jitter",
            "Jitter of the received media, as the parties' quality reports give it",
            Unit::Seconds,
            metrics.jitter.clone(),
        );
        registry.register(
            "call_packet_loss_ratio",
            "Fraction of packets lost, as the parties' quality reports give it",
            metrics.packet_loss.clone(),
        );
        registry.register(
            "call_mos",
            "The server's MOS (simplified E-model) for each report with a round trip; else the client's own",
            metrics.mos.clone(),
        );
        registry.register(
            "call_quality_reports",
            "Quality reports taken, by the selected candidate pair's type (relay if either end is relayed; unknown if not reported)",
            metrics.reports.clone(),
        );
        registry.register(
            "call_quality_tags",
            "Calls that earned a quality tag (high_rtt, high_jitter, high_packet_loss, low_mos, ice_failure, relayed), counted once per call and tag",
            metrics.tagged.clone(),
        );
        metrics
    }

    /// A report was taken; `new_tags` are the tags the call earned with it.
    pub fn reported(&self, report: &QualityReport, new_tags: &[QualityTag]) {
        if let Some(rtt) = report.rtt_ms {
            self.rtt.observe(rtt / 1000.0);
        }
        if let Some(jitter) = report.jitter_ms {
            self.jitter.observe(jitter / 1000.0);
        }
        if let Some(loss) = report.packet_loss {
            self.packet_loss.observe(loss);
        }
        if let Some(mos) = report.network_mos().or(report.mos) {
            self.mos.observe(mos);
        }
        let candidate_type = report.pair_type().map_or("unknown", CandidateType::as_str);
        self.reports.get_or_create(&CandidateLabels { candidate_type }).inc();
        for tag in new_tags {
            self.tag(*tag);
        }
    }

    /// A call earned `tag` (also when it ended for `ice_failed`, with no report at all).
    pub fn tag(&self, tag: QualityTag) {
        self.tagged.get_or_create(&TagLabels { tag: tag.as_str() }).inc();
    }
}
