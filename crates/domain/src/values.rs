//! Identifiers and value types. Each is parsed from outside data exactly once; inside the
//! domain a value of one of these types is valid by construction.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SubsecRound, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// A value from outside the domain that does not parse. The text names the field and the rule,
/// and never echoes the rejected value (it may be a token pasted in the wrong place).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct InvalidValue {
    pub field: &'static str,
    pub rule: &'static str,
}

impl InvalidValue {
    pub(crate) const fn new(field: &'static str, rule: &'static str) -> Self {
        Self { field, rule }
    }
}

/// A user, identified by an opaque string (the original app uses UUIDs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    /// Longest id accepted, in characters (as the databases' `varchar(64)` counts, and the
    /// OpenAPI document's `maxLength`); comfortably above a UUID or a numeric database id.
    pub const MAX_LEN: usize = 64;

    /// Parses a user id: 1 to 64 characters, none of them whitespace or control characters.
    ///
    /// # Errors
    /// [`InvalidValue`] when the text breaks one of those rules.
    pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidValue> {
        let raw = raw.into();
        if raw.is_empty() {
            return Err(InvalidValue::new("user_id", "must not be empty"));
        }
        if raw.chars().count() > Self::MAX_LEN {
            return Err(InvalidValue::new("user_id", "must be at most 64 characters"));
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InvalidValue::new("user_id", "must not contain whitespace or control characters"));
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = InvalidValue;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(raw)
    }
}

impl From<UserId> for String {
    fn from(id: UserId) -> Self {
        id.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! positive_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "i64", into = "i64")]
        pub struct $name(i64);

        impl $name {
            /// # Errors
            /// [`InvalidValue`] unless the number is positive (database ids start at 1).
            pub fn new(raw: i64) -> Result<Self, InvalidValue> {
                if raw > 0 { Ok(Self(raw)) } else { Err(InvalidValue::new($field, "must be a positive integer")) }
            }

            pub const fn get(self) -> i64 {
                self.0
            }
        }

        impl TryFrom<i64> for $name {
            type Error = InvalidValue;
            fn try_from(raw: i64) -> Result<Self, Self::Error> {
                Self::new(raw)
            }
        }

        impl From<$name> for i64 {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            /// Parses the decimal form WebSocket payloads and URL paths carry.
            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                raw.trim().parse::<i64>().map_err(|_| InvalidValue::new($field, "must be a positive integer")).and_then(Self::new)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

positive_id!(
    /// A call's id: an integer (a number in REST, a decimal string inside WebSocket payloads).
    CallId,
    "call_id"
);
positive_id!(
    /// A conversation's id.
    ConversationId,
    "conversation_id"
);

/// Implements `as_str`, `Display` and `FromStr` over a fixed table of snake_case names, so the
/// wire and database spelling of each enum is written once.
macro_rules! named_enum {
    ($name:ident, $field:literal, $rule:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::values::InvalidValue;
            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                match raw {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::values::InvalidValue::new($field, $rule)),
                }
            }
        }
    };
}
pub(crate) use named_enum;

/// Voice or video. Voice is the default when a client names none, as in the original app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallType {
    #[default]
    Voice,
    Video,
}
named_enum!(CallType, "call_type", "must be 'voice' or 'video'", { Voice => "voice", Video => "video" });

/// Where a call is in its life. `Initiating` is kept for wire compatibility with the original
/// app's records; Ringline itself creates calls directly in `Ringing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Initiating,
    Ringing,
    Active,
    Ended,
    Missed,
    Rejected,
    Cancelled,
}
named_enum!(CallStatus, "status", "is not a call status", {
    Initiating => "initiating",
    Ringing => "ringing",
    Active => "active",
    Ended => "ended",
    Missed => "missed",
    Rejected => "rejected",
    Cancelled => "cancelled",
});

impl CallStatus {
    /// Not answered yet and not over: the callee's devices are (or are about to be) ringing.
    pub const fn is_unanswered(self) -> bool {
        matches!(self, Self::Initiating | Self::Ringing)
    }

    /// Still occupying both parties' lines: ringing or in progress.
    pub const fn is_open(self) -> bool {
        matches!(self, Self::Initiating | Self::Ringing | Self::Active)
    }

    /// Over for good: a finished call never changes again.
    pub const fn is_finished(self) -> bool {
        !self.is_open()
    }

    /// How far along its life a call in this status is: 0 not answered yet, 1 in progress,
    /// 2 finished. A call only ever moves to a later stage, so of two copies of one call the
    /// one at the later stage is the newer (a copy read before a change never overwrites it).
    pub const fn stage(self) -> u8 {
        match self {
            Self::Initiating | Self::Ringing => 0,
            Self::Active => 1,
            Self::Ended | Self::Missed | Self::Rejected | Self::Cancelled => 2,
        }
    }
}

/// Why a call finished. Recorded beside the status so that history and analytics can tell a
/// hang-up from a timeout without guessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// A party hung up an answered call.
    UserHangup,
    /// The caller gave up before the callee answered.
    CallerCancelled,
    /// The callee declined.
    Declined,
    /// Nobody answered within the ring timeout.
    InviteTimeout,
    /// A party reported that the media path failed (ICE could not connect or reconnect).
    IceFailed,
    /// A party reported that its camera or microphone failed.
    UserMediaFailed,
    /// Neither party had a live socket for the liveness grace period: both apps were closed,
    /// crashed or lost their network. Decided by the server.
    ConnectionLost,
    /// The call reached the configured maximum length. Decided by the server.
    MaxDuration,
    /// A party took a waiting call (call waiting), which ended this one.
    SwitchedCall,
}
named_enum!(EndReason, "end_reason", "is not an end reason", {
    UserHangup => "user_hangup",
    CallerCancelled => "caller_cancelled",
    Declined => "declined",
    InviteTimeout => "invite_timeout",
    IceFailed => "ice_failed",
    UserMediaFailed => "user_media_failed",
    ConnectionLost => "connection_lost",
    MaxDuration => "max_duration",
    SwitchedCall => "switched_call",
});

/// Why a party hangs up an answered call: the end reasons a client may report. The others
/// are the server's to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HangupReason {
    #[default]
    UserHangup,
    IceFailed,
    UserMediaFailed,
}
named_enum!(HangupReason, "reason", "is not a reason a client may give (user_hangup, ice_failed, user_media_failed)", {
    UserHangup => "user_hangup",
    IceFailed => "ice_failed",
    UserMediaFailed => "user_media_failed",
});

impl From<HangupReason> for EndReason {
    fn from(reason: HangupReason) -> Self {
        match reason {
            HangupReason::UserHangup => Self::UserHangup,
            HangupReason::IceFailed => Self::IceFailed,
            HangupReason::UserMediaFailed => Self::UserMediaFailed,
        }
    }
}

/// The type of an ICE candidate (RTCIceCandidateType): a device's own address, one a STUN
/// server saw (server- or peer-reflexive), or a TURN relay's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidateType {
    Host,
    Srflx,
    Prflx,
    Relay,
}
named_enum!(CandidateType, "candidate_type", "must be host, srflx, prflx or relay", {
    Host => "host",
    Srflx => "srflx",
    Prflx => "prflx",
    Relay => "relay",
});

/// The transport of the selected ICE candidate pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportProtocol {
    Udp,
    Tcp,
}
named_enum!(TransportProtocol, "protocol", "must be udp or tcp", { Udp => "udp", Tcp => "tcp" });

/// What the server concluded about a call's quality from its parties' reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QualityTag {
    /// Round trips over 400 ms.
    HighRtt,
    /// Jitter over 30 ms.
    HighJitter,
    /// More than 3 % of packets lost.
    HighPacketLoss,
    /// A MOS under 3.5.
    LowMos,
    /// The call ended because its media path failed (`ice_failed`).
    IceFailure,
    /// The media went through a TURN relay.
    Relayed,
}
named_enum!(QualityTag, "tag", "is not a quality tag", {
    HighRtt => "high_rtt",
    HighJitter => "high_jitter",
    HighPacketLoss => "high_packet_loss",
    LowMos => "low_mos",
    IceFailure => "ice_failure",
    Relayed => "relayed",
});

/// Who may ring a user (their call privacy). `Conversations` admits users who share a
/// conversation with them in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhoCanCall {
    #[default]
    Everyone,
    Conversations,
    Nobody,
}
named_enum!(WhoCanCall, "who_can_call", "must be 'everyone', 'conversations' or 'nobody'", {
    Everyone => "everyone",
    Conversations => "conversations",
    Nobody => "nobody",
});

/// What a notification says happened. The wire names are the original app's verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotificationVerb {
    IncomingVoiceCall,
    IncomingVideoCall,
    MissedVoiceCall,
    MissedVideoCall,
}
named_enum!(NotificationVerb, "verb", "is not a notification verb", {
    IncomingVoiceCall => "incoming_voice_call",
    IncomingVideoCall => "incoming_video_call",
    MissedVoiceCall => "missed_voice_call",
    MissedVideoCall => "missed_video_call",
});

impl NotificationVerb {
    pub const fn incoming(call_type: CallType) -> Self {
        match call_type {
            CallType::Voice => Self::IncomingVoiceCall,
            CallType::Video => Self::IncomingVideoCall,
        }
    }

    pub const fn missed(call_type: CallType) -> Self {
        match call_type {
            CallType::Voice => Self::MissedVoiceCall,
            CallType::Video => Self::MissedVideoCall,
        }
    }

    /// The notification a call's entering `status` causes for its receiver: ringing rings
    /// them (incoming), missed tells them they missed it; nothing else notifies.
    pub const fn caused_by(status: CallStatus, call_type: CallType) -> Option<Self> {
        match status {
            CallStatus::Ringing => Some(Self::incoming(call_type)),
            CallStatus::Missed => Some(Self::missed(call_type)),
            _ => None,
        }
    }

    /// Whether it tells of a missed call (stored when the call was missed, not when it rang).
    pub const fn is_missed(self) -> bool {
        matches!(self, Self::MissedVoiceCall | Self::MissedVideoCall)
    }

    pub const fn call_type(self) -> CallType {
        match self {
            Self::IncomingVoiceCall | Self::MissedVoiceCall => CallType::Voice,
            Self::IncomingVideoCall | Self::MissedVideoCall => CallType::Video,
        }
    }
}

/// One live connection of a user: a browser tab, a phone. Unique across every instance of a
/// deployment: the random id its instance picked when it started, and the connection's serial
/// number there (an event sent to "every device of a user but this one" may be delivered by
/// another instance, which must not mistake one of its own devices for the origin).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId {
    instance: u64,
    serial: u64,
}

impl DeviceId {
    pub const fn new(instance: u64, serial: u64) -> Self {
        Self { instance, serial }
    }

    /// The random id of the instance the connection is on.
    pub const fn instance(self) -> u64 {
        self.instance
    }

    /// The connection's serial number on its instance.
    pub const fn serial(self) -> u64 {
        self.serial
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.instance, self.serial)
    }
}

/// Reads what [`DeviceId`]'s `Display` writes (a storage layer keeps device ids as text).
impl FromStr for DeviceId {
    type Err = InvalidValue;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let invalid =
            || InvalidValue::new("device", "must be a 16-digit hexadecimal instance, '-', and a serial number");
        let (instance, serial) = raw.split_once('-').ok_or_else(invalid)?;
        if instance.len() != 16 {
            return Err(invalid());
        }
        let instance = u64::from_str_radix(instance, 16).map_err(|_| invalid())?;
        let serial = serial.parse().map_err(|_| invalid())?;
        Ok(Self { instance, serial })
    }
}

/// What a user (or the server's timer) tried to do to a call; named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Accept,
    Reject,
    End,
    Expire,
    /// The server ends a call whose parties both went away, or that ran too long.
    Abandon,
    /// The receiver's device says it shows the ringing call (`call.ringing`).
    ConfirmRinging,
    /// A party says its video is on (`call.media-state`).
    ReportVideo,
}
impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Reject => "reject",
            Self::End => "end",
            Self::Expire => "expire",
            Self::Abandon => "abandon",
            Self::ConfirmRinging => "confirm_ringing",
            Self::ReportVideo => "report_video",
        }
    }
}

/// A point in time, UTC, at microsecond precision.
///
/// Truncated to microseconds on construction because that is what PostgreSQL stores: a value
/// read back from the database then compares equal to the one written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "DateTime<Utc>", into = "DateTime<Utc>")]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    pub fn as_datetime(self) -> DateTime<Utc> {
        self.0
    }

    /// The time `micros` microseconds after the Unix epoch; `None` when out of chrono's range.
    pub fn from_unix_micros(micros: i64) -> Option<Self> {
        Utc.timestamp_micros(micros).single().map(Self)
    }

    pub fn unix_micros(self) -> i64 {
        self.0.timestamp_micros()
    }

    /// Whole seconds from `earlier` to `self`, floored, and zero if `earlier` is later.
    pub fn whole_seconds_since(self, earlier: Timestamp) -> u32 {
        let seconds = (self.0 - earlier.0).num_seconds();
        u32::try_from(seconds.max(0)).unwrap_or(u32::MAX)
    }

    /// `self` plus a duration, saturating at chrono's maximum date.
    pub fn plus(self, duration: std::time::Duration) -> Self {
        chrono::TimeDelta::from_std(duration)
            .ok()
            .and_then(|delta| self.0.checked_add_signed(delta))
            .map_or(Self(DateTime::<Utc>::MAX_UTC), Self::from)
    }

    /// `self` minus a duration, saturating at chrono's minimum date.
    pub fn minus(self, duration: std::time::Duration) -> Self {
        chrono::TimeDelta::from_std(duration)
            .ok()
            .and_then(|delta| self.0.checked_sub_signed(delta))
            .map_or(Self(DateTime::<Utc>::MIN_UTC), Self::from)
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(value: DateTime<Utc>) -> Self {
        Self(value.trunc_subsecs(6))
    }
}

impl From<Timestamp> for DateTime<Utc> {
    fn from(value: Timestamp) -> Self {
        value.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_checked_once_at_the_boundary() {
        assert!(UserId::parse("5b1c7d2e-8f0a-4e7b-9a51-0c2d3e4f5a6b").is_ok());
        assert_eq!(UserId::parse("").unwrap_err().rule, "must not be empty");
        assert!(UserId::parse("a b").is_err());
        assert!(UserId::parse("a\u{0}").is_err());
        assert!(UserId::parse("x".repeat(65)).is_err());
        assert!(UserId::parse("x".repeat(64)).is_ok());
        // Characters, not bytes, as PostgreSQL's varchar(64) and the schema's maxLength count.
        assert!(UserId::parse("é".repeat(64)).is_ok());
        assert!(UserId::parse("é".repeat(65)).is_err());
    }

    #[test]
    fn numeric_ids_must_be_positive_and_parse_from_strings() {
        assert_eq!("42".parse::<CallId>().map(CallId::get), Ok(42));
        assert!("0".parse::<CallId>().is_err());
        assert!("-3".parse::<ConversationId>().is_err());
        assert!("4x".parse::<ConversationId>().is_err());
        assert!(CallId::new(0).is_err());
    }

    #[test]
    fn enums_round_trip_through_their_wire_names() {
        for status in CallStatus::ALL {
            assert_eq!(status.as_str().parse::<CallStatus>(), Ok(*status));
        }
        for reason in EndReason::ALL {
            assert_eq!(reason.as_str().parse::<EndReason>(), Ok(*reason));
        }
        assert_eq!("video".parse::<CallType>(), Ok(CallType::Video));
        assert_eq!("VIDEO".parse::<CallType>().unwrap_err().rule, "must be 'voice' or 'video'");
        assert_eq!(serde_json::to_string(&CallStatus::Cancelled).ok().as_deref(), Some("\"cancelled\""));
    }

    #[test]
    fn timestamps_keep_microseconds_only() {
        let nanos = Utc.timestamp_opt(1_700_000_000, 123_456_789).single().map(Timestamp::from);
        assert_eq!(nanos.map(Timestamp::unix_micros), Some(1_700_000_000_123_456));
    }

    #[test]
    fn durations_are_whole_seconds_and_never_negative() {
        let start = Timestamp::from_unix_micros(1_000_000).unwrap_or_else(|| unreachable!());
        assert_eq!(start.plus(std::time::Duration::from_millis(2_999)).whole_seconds_since(start), 2);
        assert_eq!(start.whole_seconds_since(start.plus(std::time::Duration::from_secs(5))), 0);
    }
}
