//! The JSON of call quality: the report a party's client posts (`POST
//! /api/calls/{id}/quality/`) and the summary the call record shows (`"quality"`).

use std::borrow::Cow;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use poem_openapi::{Enum, Object};
use ringline_domain::{CallQuality, CandidateType, InvalidReport, PartyQuality, QualityReport, TransportProtocol};
use serde_json::Value;

/// A number documented with its range (`MIN` to `MAX`) and taken as any number: the domain
/// judges the range, so a value out of it is `400 invalid_quality_report` naming the field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measure<const MIN: i64, const MAX: i64>(pub f64);

impl<const MIN: i64, const MAX: i64> Type for Measure<MIN, MAX> {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        format!("number_{MIN}_to_{MAX}").into()
    }

    fn schema_ref() -> MetaSchemaRef {
        #[allow(clippy::cast_precision_loss)] // the bounds are small integers
        let schema = MetaSchema { minimum: Some(MIN as f64), maximum: Some(MAX as f64), ..MetaSchema::new("number") };
        MetaSchemaRef::Inline(Box::new(schema))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl<const MIN: i64, const MAX: i64> ParseFromJSON for Measure<MIN, MAX> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::Number(number)) => number.as_f64().map(Self).ok_or_else(|| ParseError::custom("not a number")),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl<const MIN: i64, const MAX: i64> ToJSON for Measure<MIN, MAX> {
    fn to_json(&self) -> Option<Value> {
        serde_json::Number::from_f64(self.0).map(Value::Number)
    }
}

/// An ICE candidate's type, as the schema documents it.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
pub enum CandidateTypeJson {
    Host,
    Srflx,
    Prflx,
    Relay,
}

/// A transport protocol, as the schema documents it.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
pub enum ProtocolJson {
    Udp,
    Tcp,
}

/// A candidate type in a report: documented as [`CandidateTypeJson`], taken as any string and
/// judged by the handler (400 `invalid_quality_report`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateTypeField(pub String);

text_type!(
    CandidateTypeField,
    CandidateTypeJson::name(),
    CandidateTypeJson::schema_ref(),
    register = CandidateTypeJson::register
);
json_text!(CandidateTypeField);

/// A protocol in a report: documented as [`ProtocolJson`], taken as any string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolField(pub String);

text_type!(ProtocolField, ProtocolJson::name(), ProtocolJson::schema_ref(), register = ProtocolJson::register);
json_text!(ProtocolField);

/// A quality report from a party's client, from `RTCPeerConnection.getStats()`. Every field is
/// optional; send at least one. Numbers in the units their names say.
#[derive(Debug, Clone, Object)]
pub struct QualityReportBody {
    /// Round trip of the selected candidate pair (`currentRoundTripTime`), in milliseconds.
    pub rtt_ms: Option<Measure<0, 60_000>>,
    /// Jitter of the received audio, in milliseconds.
    pub jitter_ms: Option<Measure<0, 60_000>>,
    /// Fraction of packets lost, 0 to 1.
    pub packet_loss: Option<Measure<0, 1>>,
    pub bitrate_in_kbps: Option<Measure<0, 1_000_000>>,
    pub bitrate_out_kbps: Option<Measure<0, 1_000_000>>,
    /// The selected pair's local candidate type.
    pub local_candidate_type: Option<CandidateTypeField>,
    /// The selected pair's remote candidate type.
    pub remote_candidate_type: Option<CandidateTypeField>,
    /// The local candidate's transport.
    pub protocol: Option<ProtocolField>,
    /// Time from the accept to media flowing, in milliseconds.
    pub setup_ms: Option<Measure<0, 600_000>>,
    /// The client's own MOS estimate, 1 to 5.
    pub mos: Option<Measure<1, 5>>,
}

impl QualityReportBody {
    /// The domain's report, the names checked (the ranges are the domain's to check).
    ///
    /// # Errors
    /// The field with a name that is not a candidate type or protocol.
    pub fn into_report(self) -> Result<QualityReport, InvalidReport> {
        let candidate = |field: &'static str, raw: Option<CandidateTypeField>| {
            raw.map(|raw| raw.0.parse::<CandidateType>())
                .transpose()
                .map_err(|_| InvalidReport { field, rule: "one of host, srflx, prflx or relay" })
        };
        Ok(QualityReport {
            rtt_ms: self.rtt_ms.map(|measure| measure.0),
            jitter_ms: self.jitter_ms.map(|measure| measure.0),
            packet_loss: self.packet_loss.map(|measure| measure.0),
            bitrate_in_kbps: self.bitrate_in_kbps.map(|measure| measure.0),
            bitrate_out_kbps: self.bitrate_out_kbps.map(|measure| measure.0),
            local_candidate_type: candidate("local_candidate_type", self.local_candidate_type)?,
            remote_candidate_type: candidate("remote_candidate_type", self.remote_candidate_type)?,
            protocol: self
                .protocol
                .map(|raw| raw.0.parse::<TransportProtocol>())
                .transpose()
                .map_err(|_| InvalidReport { field: "protocol", rule: "udp or tcp" })?,
            setup_ms: self.setup_ms.map(|measure| measure.0),
            mos: self.mos.map(|measure| measure.0),
        })
    }
}

/// One party's reports, summarised: means of the numbers, the latest candidate pair, the
/// first setup time.
#[derive(Debug, Clone, Object)]
pub struct PartyQualityJson {
    /// How many reports the party sent.
    pub reports: u32,
    #[oai(nullable)]
    pub rtt_ms: Option<f64>,
    #[oai(nullable)]
    pub jitter_ms: Option<f64>,
    #[oai(nullable)]
    pub packet_loss: Option<f64>,
    #[oai(nullable)]
    pub bitrate_in_kbps: Option<f64>,
    #[oai(nullable)]
    pub bitrate_out_kbps: Option<f64>,
    #[oai(nullable)]
    pub local_candidate_type: Option<String>,
    #[oai(nullable)]
    pub remote_candidate_type: Option<String>,
    #[oai(nullable)]
    pub protocol: Option<String>,
    #[oai(nullable)]
    pub setup_ms: Option<f64>,
    /// The server's MOS from the means (a simplified E-model), 1 to 4.5.
    #[oai(nullable)]
    pub mos: Option<f64>,
    /// The mean of the client's own MOS estimates.
    #[oai(nullable)]
    pub client_mos: Option<f64>,
}

/// What the parties reported about the call's media, with the server's conclusions.
#[derive(Debug, Clone, Object)]
pub struct QualityJson {
    #[oai(nullable)]
    pub caller: Option<PartyQualityJson>,
    #[oai(nullable)]
    pub receiver: Option<PartyQualityJson>,
    /// The worse party's MOS.
    #[oai(nullable)]
    pub mos: Option<f64>,
    /// `high_rtt`, `high_jitter`, `high_packet_loss`, `low_mos`, `ice_failure`, `relayed`.
    pub tags: Vec<String>,
}

/// `value` rounded to `decimals` places: means of floats print as long fractions otherwise.
fn rounded(value: Option<f64>, decimals: i32) -> Option<f64> {
    let scale = 10f64.powi(decimals);
    value.map(|value| (value * scale).round() / scale)
}

impl PartyQualityJson {
    fn new(party: &PartyQuality) -> Self {
        Self {
            reports: party.reports(),
            rtt_ms: rounded(party.rtt_ms(), 1),
            jitter_ms: rounded(party.jitter_ms(), 1),
            packet_loss: rounded(party.packet_loss(), 4),
            bitrate_in_kbps: rounded(party.bitrate_in_kbps(), 1),
            bitrate_out_kbps: rounded(party.bitrate_out_kbps(), 1),
            local_candidate_type: party.local_candidate_type().map(|kind| kind.as_str().to_owned()),
            remote_candidate_type: party.remote_candidate_type().map(|kind| kind.as_str().to_owned()),
            protocol: party.protocol().map(|protocol| protocol.as_str().to_owned()),
            setup_ms: rounded(party.setup_ms(), 0),
            mos: rounded(party.mos(), 2),
            client_mos: rounded(party.client_mos(), 2),
        }
    }
}

impl QualityJson {
    pub fn new(quality: &CallQuality, end_reason: Option<ringline_domain::EndReason>) -> Self {
        Self {
            caller: quality.caller.as_ref().map(PartyQualityJson::new),
            receiver: quality.receiver.as_ref().map(PartyQualityJson::new),
            mos: rounded(quality.mos(), 2),
            tags: quality.tags(end_reason).into_iter().map(|tag| tag.as_str().to_owned()).collect(),
        }
    }
}
