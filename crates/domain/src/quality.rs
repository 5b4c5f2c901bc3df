//! Call quality as the parties' clients report it: a peer-to-peer call's media never passes
//! the server, so each client sends what `RTCPeerConnection.getStats()` tells it, and the
//! server keeps a summary per party with the call, scores it (a MOS from a simplified E-model)
//! and tags it.
//!
//! - [`QualityReport`]: one report, checked field by field ([`QualityReport::check`]);
//! - [`PartyQuality`]: the running summary of one party's reports (means, the latest
//!   candidate pair, the first setup time, and the moments of the latest reports, which bound
//!   how often a party may report);
//! - [`CallQuality`]: both parties' summaries, the call's MOS (the worse party's) and its
//!   [`QualityTag`]s.

use serde::{Deserialize, Serialize};

use crate::values::{CandidateType, EndReason, QualityTag, Timestamp, TransportProtocol};

/// Round trips over this are `high_rtt` (Twilio's warning threshold).
pub const HIGH_RTT_MS: f64 = 400.0;
/// Jitter over this is `high_jitter`.
pub const HIGH_JITTER_MS: f64 = 30.0;
/// Packet loss over this fraction is `high_packet_loss`.
pub const HIGH_PACKET_LOSS: f64 = 0.03;
/// A MOS under this is `low_mos`.
pub const LOW_MOS: f64 = 3.5;
/// A party's reports over a threshold that tag the call even when its mean is under it: a bad
/// stretch of a long call (Twilio judges 3 of the last 5 samples).
pub const BAD_REPORTS_TO_TAG: u32 = 3;

/// Reports one party may send per minute.
pub const REPORTS_PER_MINUTE: usize = 6;
/// Reports one party may send for one call in all (a two-hour call at one per 10 s is 720).
pub const MAX_REPORTS_PER_PARTY: u32 = 2_000;
/// How long after its end a call still takes reports: the final report comes after the hangup.
pub const REPORT_WINDOW_AFTER_END: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// One quality report from a party's client. Every field is optional; a report names at least
/// one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QualityReport {
    pub rtt_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    /// Fraction of packets lost, 0 to 1.
    pub packet_loss: Option<f64>,
    pub bitrate_in_kbps: Option<f64>,
    pub bitrate_out_kbps: Option<f64>,
    pub local_candidate_type: Option<CandidateType>,
    pub remote_candidate_type: Option<CandidateType>,
    pub protocol: Option<TransportProtocol>,
    /// Time from the accept to media flowing.
    pub setup_ms: Option<f64>,
    /// The client's own MOS estimate, 1 to 5.
    pub mos: Option<f64>,
}

/// A report field out of its range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("\"{field}\" must be {rule}")]
pub struct InvalidReport {
    pub field: &'static str,
    pub rule: &'static str,
}

impl QualityReport {
    /// Checks every number against its range (finite, within what a real call can show).
    ///
    /// # Errors
    /// The first field out of range, or `report` when the report names nothing.
    pub fn check(&self) -> Result<(), InvalidReport> {
        let ranges: [(&'static str, Option<f64>, f64, f64, &'static str); 7] = [
            ("rtt_ms", self.rtt_ms, 0.0, 60_000.0, "a number of milliseconds from 0 to 60000"),
            ("jitter_ms", self.jitter_ms, 0.0, 60_000.0, "a number of milliseconds from 0 to 60000"),
            ("packet_loss", self.packet_loss, 0.0, 1.0, "a fraction from 0 to 1"),
            ("bitrate_in_kbps", self.bitrate_in_kbps, 0.0, 1_000_000.0, "a number of kbit/s from 0 to 1000000"),
            ("bitrate_out_kbps", self.bitrate_out_kbps, 0.0, 1_000_000.0, "a number of kbit/s from 0 to 1000000"),
            ("setup_ms", self.setup_ms, 0.0, 600_000.0, "a number of milliseconds from 0 to 600000"),
            ("mos", self.mos, 1.0, 5.0, "a number from 1 to 5"),
        ];
        for (field, value, low, high, rule) in ranges {
            if let Some(value) = value
                && !(value.is_finite() && (low..=high).contains(&value))
            {
                return Err(InvalidReport { field, rule });
            }
        }
        let names_something = ranges.iter().any(|(_, value, ..)| value.is_some())
            || self.local_candidate_type.is_some()
            || self.remote_candidate_type.is_some()
            || self.protocol.is_some();
        if names_something { Ok(()) } else { Err(InvalidReport { field: "report", rule: "given at least one metric" }) }
    }

    /// The MOS this report's network figures give, if it has a round trip.
    pub fn network_mos(&self) -> Option<f64> {
        self.rtt_ms.map(|rtt| mos(rtt, self.jitter_ms.unwrap_or(0.0), self.packet_loss.unwrap_or(0.0)))
    }

    /// The candidate type that best describes the selected pair: `relay` if either end is
    /// relayed, else the remote end's (or the local end's when only that is known).
    pub fn pair_type(&self) -> Option<CandidateType> {
        if self.local_candidate_type == Some(CandidateType::Relay) {
            return Some(CandidateType::Relay);
        }
        self.remote_candidate_type.or(self.local_candidate_type)
    }
}

/// Packet loss weight of the E-model below: R drops by 2.5 per percent lost (PingPlotter's
/// simplified E-model, which LiveKit's scorer also follows).
const LOSS_WEIGHT: f64 = 2.5;

/// A MOS from 1 to 4.5 for a round trip, jitter (both ms) and a loss fraction: a simplified
/// ITU-T G.107 E-model. The effective one-way delay is half the round trip plus twice the
/// jitter; R starts at 100 and drops by a fortieth of the delay (a tenth of what exceeds 120 ms
/// beyond 160 ms) and 2.5 per percent lost; the MOS is G.107's mapping of R.
pub fn mos(rtt_ms: f64, jitter_ms: f64, packet_loss: f64) -> f64 {
    let effective_delay = rtt_ms / 2.0 + jitter_ms * 2.0;
    let delay_effect = if effective_delay > 160.0 { (effective_delay - 120.0) / 10.0 } else { effective_delay / 40.0 };
    let r = (100.0 - delay_effect - packet_loss * 100.0 * LOSS_WEIGHT).clamp(0.0, 100.0);
    (1.0 + 0.035 * r + 0.000_007 * r * (r - 60.0) * (100.0 - r)).clamp(1.0, 4.5)
}

/// A running mean: the sum and how many values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Mean {
    sum: f64,
    count: u32,
}

impl Mean {
    fn add(&mut self, value: Option<f64>) {
        if let Some(value) = value {
            self.sum += value;
            self.count += 1;
        }
    }

    fn value(self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / f64::from(self.count))
    }
}

/// How many of a party's reports were over each threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct OverThreshold {
    rtt: u32,
    jitter: u32,
    packet_loss: u32,
    mos: u32,
}

/// The summary of one party's reports, stored with the call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartyQuality {
    reports: u32,
    rtt_ms: Mean,
    jitter_ms: Mean,
    packet_loss: Mean,
    bitrate_in_kbps: Mean,
    bitrate_out_kbps: Mean,
    client_mos: Mean,
    local_candidate_type: Option<CandidateType>,
    remote_candidate_type: Option<CandidateType>,
    protocol: Option<TransportProtocol>,
    /// The first reported: media connects once per call.
    setup_ms: Option<f64>,
    /// Whether any report's pair went through a relay.
    relayed: bool,
    over: OverThreshold,
    /// When the latest reports arrived (Unix microseconds, oldest first, at most
    /// [`REPORTS_PER_MINUTE`]): how often this party reports.
    recent: Vec<i64>,
}

impl PartyQuality {
    pub fn reports(&self) -> u32 {
        self.reports
    }

    pub fn rtt_ms(&self) -> Option<f64> {
        self.rtt_ms.value()
    }

    pub fn jitter_ms(&self) -> Option<f64> {
        self.jitter_ms.value()
    }

    pub fn packet_loss(&self) -> Option<f64> {
        self.packet_loss.value()
    }

    pub fn bitrate_in_kbps(&self) -> Option<f64> {
        self.bitrate_in_kbps.value()
    }

    pub fn bitrate_out_kbps(&self) -> Option<f64> {
        self.bitrate_out_kbps.value()
    }

    /// The mean of the client's own estimates.
    pub fn client_mos(&self) -> Option<f64> {
        self.client_mos.value()
    }

    pub fn local_candidate_type(&self) -> Option<CandidateType> {
        self.local_candidate_type
    }

    pub fn remote_candidate_type(&self) -> Option<CandidateType> {
        self.remote_candidate_type
    }

    pub fn protocol(&self) -> Option<TransportProtocol> {
        self.protocol
    }

    pub fn setup_ms(&self) -> Option<f64> {
        self.setup_ms
    }

    /// The server's MOS from the mean round trip, jitter and loss; without a round trip, the
    /// client's own estimate.
    pub fn mos(&self) -> Option<f64> {
        match self.rtt_ms() {
            Some(rtt) => Some(mos(rtt, self.jitter_ms().unwrap_or(0.0), self.packet_loss().unwrap_or(0.0))),
            None => self.client_mos(),
        }
    }

    /// The tags this party's reports earn: a mean over a threshold, or enough reports over it.
    fn tags(&self) -> impl Iterator<Item = QualityTag> + '_ {
        let over = |mean: Option<f64>, threshold: f64, reports_over: u32| {
            mean.is_some_and(|mean| mean > threshold) || reports_over >= BAD_REPORTS_TO_TAG
        };
        let low_mos = self.mos().is_some_and(|mos| mos < LOW_MOS) || self.over.mos >= BAD_REPORTS_TO_TAG;
        [
            (over(self.rtt_ms(), HIGH_RTT_MS, self.over.rtt), QualityTag::HighRtt),
            (over(self.jitter_ms(), HIGH_JITTER_MS, self.over.jitter), QualityTag::HighJitter),
            (over(self.packet_loss(), HIGH_PACKET_LOSS, self.over.packet_loss), QualityTag::HighPacketLoss),
            (low_mos, QualityTag::LowMos),
            (self.relayed, QualityTag::Relayed),
        ]
        .into_iter()
        .filter_map(|(applies, tag)| applies.then_some(tag))
    }

    fn add(&mut self, report: &QualityReport, at: Timestamp) {
        self.reports += 1;
        self.rtt_ms.add(report.rtt_ms);
        self.jitter_ms.add(report.jitter_ms);
        self.packet_loss.add(report.packet_loss);
        self.bitrate_in_kbps.add(report.bitrate_in_kbps);
        self.bitrate_out_kbps.add(report.bitrate_out_kbps);
        self.client_mos.add(report.mos);
        self.local_candidate_type = report.local_candidate_type.or(self.local_candidate_type);
        self.remote_candidate_type = report.remote_candidate_type.or(self.remote_candidate_type);
        self.protocol = report.protocol.or(self.protocol);
        self.setup_ms = self.setup_ms.or(report.setup_ms);
        self.relayed |= report.pair_type() == Some(CandidateType::Relay);
        let exceeds = |value: Option<f64>, threshold: f64| u32::from(value.is_some_and(|value| value > threshold));
        self.over.rtt += exceeds(report.rtt_ms, HIGH_RTT_MS);
        self.over.jitter += exceeds(report.jitter_ms, HIGH_JITTER_MS);
        self.over.packet_loss += exceeds(report.packet_loss, HIGH_PACKET_LOSS);
        self.over.mos += u32::from(report.network_mos().or(report.mos).is_some_and(|mos| mos < LOW_MOS));
        self.recent.push(at.unix_micros());
        let excess = self.recent.len().saturating_sub(REPORTS_PER_MINUTE);
        self.recent.drain(..excess);
    }

    /// Whether one more report at `at` stays within the bounds.
    fn may_report(&self, at: Timestamp) -> bool {
        let minute_ago = at.minus(std::time::Duration::from_secs(60)).unix_micros();
        let in_last_minute = self.recent.iter().filter(|moment| **moment > minute_ago).count();
        self.reports < MAX_REPORTS_PER_PARTY && in_last_minute < REPORTS_PER_MINUTE
    }
}

/// Which party of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    Caller,
    Receiver,
}

/// Why a report was not taken although it was well formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QualityRefusal {
    #[error("too many quality reports")]
    TooMany,
}

/// Both parties' summaries, stored with the call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallQuality {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<PartyQuality>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver: Option<PartyQuality>,
}

// Every number in a summary is finite: reports are checked before they are added.
impl Eq for CallQuality {}

impl CallQuality {
    /// Adds `party`'s report received at `at`.
    ///
    /// # Errors
    /// `TooMany` when the party reported [`REPORTS_PER_MINUTE`] times in the last minute, or
    /// [`MAX_REPORTS_PER_PARTY`] times in all.
    pub fn record(&mut self, party: Party, report: &QualityReport, at: Timestamp) -> Result<(), QualityRefusal> {
        let summary = match party {
            Party::Caller => self.caller.get_or_insert_with(PartyQuality::default),
            Party::Receiver => self.receiver.get_or_insert_with(PartyQuality::default),
        };
        if !summary.may_report(at) {
            return Err(QualityRefusal::TooMany);
        }
        summary.add(report, at);
        Ok(())
    }

    /// The call's MOS: the worse of the parties' (a call is as good as its worse direction).
    pub fn mos(&self) -> Option<f64> {
        [&self.caller, &self.receiver].into_iter().flatten().filter_map(PartyQuality::mos).reduce(f64::min)
    }

    /// The call's tags, sorted and each once: both parties' and `ice_failure` when the call
    /// ended for it.
    pub fn tags(&self, end_reason: Option<EndReason>) -> Vec<QualityTag> {
        let mut tags: Vec<QualityTag> =
            [&self.caller, &self.receiver].into_iter().flatten().flat_map(PartyQuality::tags).collect();
        if end_reason == Some(EndReason::IceFailed) {
            tags.push(QualityTag::IceFailure);
        }
        tags.sort();
        tags.dedup();
        tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix_micros(1_800_000_000_000_000 + seconds * 1_000_000).expect("a moment")
    }

    #[test]
    fn a_clean_network_scores_near_the_top_and_a_lossy_one_low() {
        // 20 ms round trip, 2 ms jitter: R = 100 - 14 / 40.
        assert!((mos(20.0, 2.0, 0.0) - 4.497).abs() < 0.001, "{}", mos(20.0, 2.0, 0.0));
        // 400 ms round trip and 30 ms jitter: R = 100 - (260 - 120) / 10 = 86.
        assert!((mos(400.0, 30.0, 0.0) - 4.229).abs() < 0.01, "{}", mos(400.0, 30.0, 0.0));
        // 15 % loss costs 37.5 points of R.
        assert!(mos(100.0, 10.0, 0.15) < LOW_MOS);
        assert!(mos(100.0, 10.0, 0.05) > LOW_MOS);
        assert!((mos(100_000.0, 0.0, 1.0) - 1.0).abs() < f64::EPSILON);
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let bad = |report: QualityReport| report.check().expect_err("refused").field;
        assert_eq!(bad(QualityReport { rtt_ms: Some(-1.0), ..QualityReport::default() }), "rtt_ms");
        assert_eq!(bad(QualityReport { packet_loss: Some(1.5), ..QualityReport::default() }), "packet_loss");
        assert_eq!(bad(QualityReport { mos: Some(0.5), ..QualityReport::default() }), "mos");
        assert_eq!(bad(QualityReport { jitter_ms: Some(f64::NAN), ..QualityReport::default() }), "jitter_ms");
        assert_eq!(bad(QualityReport::default()), "report");
        let fine = QualityReport { protocol: Some(TransportProtocol::Udp), ..QualityReport::default() };
        assert_eq!(fine.check(), Ok(()));
    }

    #[test]
    fn summaries_average_and_tag() {
        let mut quality = CallQuality::default();
        let good = QualityReport {
            rtt_ms: Some(40.0),
            jitter_ms: Some(4.0),
            packet_loss: Some(0.0),
            local_candidate_type: Some(CandidateType::Host),
            remote_candidate_type: Some(CandidateType::Srflx),
            setup_ms: Some(800.0),
            ..QualityReport::default()
        };
        quality.record(Party::Caller, &good, at(0)).expect("taken");
        let worse = QualityReport { rtt_ms: Some(80.0), setup_ms: Some(5.0), ..good.clone() };
        quality.record(Party::Caller, &worse, at(10)).expect("taken");
        let caller = quality.caller.as_ref().expect("a summary");
        assert_eq!((caller.reports(), caller.rtt_ms(), caller.setup_ms()), (2, Some(60.0), Some(800.0)));
        assert_eq!(quality.tags(None), Vec::<QualityTag>::new());

        let relayed_and_lossy = QualityReport {
            rtt_ms: Some(500.0),
            jitter_ms: Some(50.0),
            packet_loss: Some(0.2),
            local_candidate_type: Some(CandidateType::Relay),
            ..QualityReport::default()
        };
        quality.record(Party::Receiver, &relayed_and_lossy, at(10)).expect("taken");
        assert_eq!(
            quality.tags(Some(EndReason::IceFailed)),
            vec![
                QualityTag::HighRtt,
                QualityTag::HighJitter,
                QualityTag::HighPacketLoss,
                QualityTag::LowMos,
                QualityTag::IceFailure,
                QualityTag::Relayed
            ]
        );
        assert_eq!(quality.mos(), quality.receiver.as_ref().and_then(PartyQuality::mos), "the worse party's");
    }

    #[test]
    fn three_bad_reports_tag_a_call_whose_mean_is_fine() {
        let mut quality = CallQuality::default();
        for (second, rtt) in [(0, 500.0), (10, 500.0), (20, 500.0), (30, 10.0), (40, 10.0), (50, 10.0)] {
            let report = QualityReport { rtt_ms: Some(rtt), ..QualityReport::default() };
            quality.record(Party::Caller, &report, at(second)).expect("taken");
        }
        assert!(quality.caller.as_ref().and_then(PartyQuality::rtt_ms).expect("a mean") < HIGH_RTT_MS);
        assert_eq!(quality.tags(None), vec![QualityTag::HighRtt]);
    }

    #[test]
    fn a_party_reports_at_most_six_times_a_minute() {
        let mut quality = CallQuality::default();
        let report = QualityReport { rtt_ms: Some(10.0), ..QualityReport::default() };
        for second in 0..6 {
            quality.record(Party::Caller, &report, at(second)).expect("taken");
        }
        assert_eq!(quality.record(Party::Caller, &report, at(30)), Err(QualityRefusal::TooMany));
        // The other party has its own budget, and a minute later this one has again.
        quality.record(Party::Receiver, &report, at(30)).expect("taken");
        quality.record(Party::Caller, &report, at(61)).expect("taken again");
    }

    #[test]
    fn a_summary_survives_its_stored_form() {
        let mut quality = CallQuality::default();
        let report =
            QualityReport { rtt_ms: Some(33.3), protocol: Some(TransportProtocol::Tcp), ..QualityReport::default() };
        quality.record(Party::Receiver, &report, at(0)).expect("taken");
        let text = serde_json::to_string(&quality).expect("stored");
        assert_eq!(serde_json::from_str::<CallQuality>(&text).expect("read back"), quality);
    }
}
