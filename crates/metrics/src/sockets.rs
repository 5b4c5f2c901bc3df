//! The WebSocket sessions: open now, connects, closes by code, resumes, the ping round trip,
//! frames relayed by type, frames refused by code and slow consumers dropped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use ringline_domain::ErrorCode;

/// Ping round trips in seconds: a LAN answers in a millisecond, a congested mobile link in
/// seconds.
const PING_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0];

/// The frame types a session relays to the other party (the label's only values).
const RELAYED_TYPES: [&str; 6] =
    ["call.offer", "call.answer", "call.ice-candidate", "call.media-state", "typing.start", "typing.stop"];

/// The close codes counted by their number; any other a peer sends counts as `other`.
const KNOWN_CLOSE_CODES: [(u16, &str); 15] = [
    (1000, "1000"),
    (1001, "1001"),
    (1002, "1002"),
    (1005, "1005"),
    (1006, "1006"),
    (1007, "1007"),
    (1008, "1008"),
    (1009, "1009"),
    (1011, "1011"),
    (4400, "4400"),
    (4401, "4401"),
    (4403, "4403"),
    (4408, "4408"),
    (4409, "4409"),
    (4429, "4429"),
];

/// Which WebSocket endpoint a session came in on.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SocketEndpoint {
    /// `/ws/notifications`
    Notifications,
    /// `/ws/chat/{conversation_id}/`
    Chat,
}

impl SocketEndpoint {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Notifications => "notifications",
            Self::Chat => "chat",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    endpoint: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResumeLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

/// How a resuming session was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeResult {
    /// The missed events were replayed.
    Replayed,
    /// Nothing was missed.
    UpToDate,
    /// The position was too old or unknown: the client was told to resync.
    Resync,
}

impl ResumeResult {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Replayed => "replayed",
            Self::UpToDate => "up_to_date",
            Self::Resync => "resync",
        }
    }
}

/// The sessions' families. The relayed-frame counters are resolved once: a relayed frame
/// costs one atomic add, not a label lookup.
#[derive(Debug)]
pub struct SocketMetrics {
    open: Family<EndpointLabels, Gauge>,
    connects: Family<EndpointLabels, Counter>,
    closes: Family<CloseLabels, Counter>,
    resumes: Family<ResumeLabels, Counter>,
    ping_rtt: Histogram,
    relayed: [Counter; RELAYED_TYPES.len()],
    refused_frames: Family<CodeLabels, Counter>,
    slow_consumers: Counter,
}

impl SocketMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let relayed_family = Family::<TypeLabels, Counter>::default();
        let relayed = RELAYED_TYPES.map(|kind| relayed_family.get_or_create_owned(&TypeLabels { r#type: kind }));
        let metrics = Self {
            open: Family::default(),
            connects: Family::default(),
            closes: Family::default(),
            resumes: Family::default(),
            ping_rtt: Histogram::new(PING_BUCKETS),
            relayed,
            refused_frames: Family::default(),
            slow_consumers: Counter::default(),
        };
        registry.register(
            "sockets_open",
            "WebSocket sessions open on this instance, by endpoint",
            metrics.open.clone(),
        );
        registry.register("socket_connects", "WebSocket sessions opened, by endpoint", metrics.connects.clone());
        registry.register(
            "socket_closes",
            "WebSocket sessions closed, by endpoint and close code (the server's, or the peer's; unusual codes count as other)",
            metrics.closes.clone(),
        );
        registry.register(
            "socket_resumes",
            "Sessions that resumed from a position: replayed, up_to_date, or resync (position lost)",
            metrics.resumes.clone(),
        );
        registry.register_with_unit(
            "socket_ping_rtt",
            "Round trip of the server's WebSocket pings",
            Unit::Seconds,
            metrics.ping_rtt.clone(),
        );
        registry.register(
            "relayed_frames",
            "Frames relayed to the other party of a call or conversation, by frame type",
            relayed_family,
        );
        registry.register(
            "socket_refused_frames",
            "Frames answered with an error frame, by error code",
            metrics.refused_frames.clone(),
        );
        registry.register(
            "socket_slow_consumers",
            "Sessions dropped (4409) because they did not read their events",
            metrics.slow_consumers.clone(),
        );
        for endpoint in [SocketEndpoint::Notifications, SocketEndpoint::Chat] {
            let _ = metrics.open.get_or_create_owned(&EndpointLabels { endpoint: endpoint.as_str() });
            let _ = metrics.connects.get_or_create_owned(&EndpointLabels { endpoint: endpoint.as_str() });
        }
        metrics
    }

    /// A session was admitted (registered) on `endpoint`.
    pub fn opened(&self, endpoint: SocketEndpoint) {
        let labels = EndpointLabels { endpoint: endpoint.as_str() };
        self.connects.get_or_create(&labels).inc();
        self.open.get_or_create(&labels).inc();
    }

    /// An admitted session left.
    pub fn left(&self, endpoint: SocketEndpoint) {
        self.open.get_or_create(&EndpointLabels { endpoint: endpoint.as_str() }).dec();
    }

    /// A connection on `endpoint` ended with close `code` (sent by either side; 1006 when the
    /// connection dropped without one). Also for connections refused before they were admitted.
    pub fn closed(&self, endpoint: SocketEndpoint, code: u16) {
        let code = KNOWN_CLOSE_CODES.iter().find(|(known, _)| *known == code).map_or("other", |(_, text)| text);
        self.closes.get_or_create(&CloseLabels { endpoint: endpoint.as_str(), code }).inc();
    }

    pub fn resumed(&self, result: ResumeResult) {
        self.resumes.get_or_create(&ResumeLabels { result: result.as_str() }).inc();
    }

    pub fn ping_answered(&self, round_trip: std::time::Duration) {
        self.ping_rtt.observe(round_trip.as_secs_f64());
    }

    /// A frame of `kind` was relayed; kinds that are not relayed are not counted.
    pub fn relayed(&self, kind: &str) {
        if let Some(index) = RELAYED_TYPES.iter().position(|known| *known == kind) {
            self.relayed[index].inc();
        }
    }

    pub fn refused_frame(&self, code: ErrorCode) {
        self.refused_frames.get_or_create(&CodeLabels { code: code.as_str() }).inc();
    }

    pub fn slow_consumer(&self) {
        self.slow_consumers.inc();
    }
}
