//! Request and response bodies, shaped exactly as the original app's clients read them.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use poem_openapi::{Enum, Object};
use ringline_domain::{Call, Timestamp, UserId, UserProfile};
use serde_json::Value;

/// An id a client may send as a JSON string or a number (`"42"` and `42` are the same id),
/// as the original app's clients do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlexibleId(pub String);

impl Type for FlexibleId {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string_or_integer".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            one_of: vec![String::schema_ref(), i64::schema_ref()],
            ..MetaSchema::ANY
        }))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for FlexibleId {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(text)) => Ok(Self(text.trim().to_owned())),
            Some(Value::Number(number)) => Ok(Self(number.to_string())),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ToJSON for FlexibleId {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

/// A moment as Django REST Framework writes one: RFC 3339 in UTC with a `Z`
/// (`2026-12-01T21:15:51.123456Z`), never `+00:00`. poem-openapi's own `DateTime<Utc>` writes
/// the offset form; the original clients parse either, but tools that compare strings or
/// parse with a fixed pattern do not. The schema stays a plain `date-time` string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime(pub Timestamp);

impl Type for UtcTime {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string_date-time".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("string", "date-time")))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for UtcTime {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(text)) => DateTime::parse_from_rfc3339(&text)
                .map(|moment| Self(Timestamp::from(moment.with_timezone(&Utc))))
                .map_err(|_| ParseError::custom("expected an RFC 3339 date-time")),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ToJSON for UtcTime {
    fn to_json(&self) -> Option<Value> {
        // `Timestamp`'s display is RFC 3339 with microseconds and `Z`.
        Some(Value::String(self.0.to_string()))
    }
}

/// Body of `POST /api/calls/initiate/`.
#[derive(Debug, Object)]
pub struct InitiateBody {
    /// The user to call (required; a string or a number).
    pub receiver_id: Option<FlexibleId>,
    /// `voice` (default) or `video`.
    pub call_type: Option<String>,
    /// The conversation the call belongs to, if any; both users must be its participants.
    pub conversation_id: Option<FlexibleId>,
}

/// A user as the other party of a call sees them. No email and no phone number.
#[derive(Debug, Clone, Object)]
pub struct UserJson {
    pub id: String,
    pub username: String,
    pub first_name: String,
    pub last_name: String,
    #[oai(nullable)]
    pub profile_image_url: Option<String>,
}

impl UserJson {
    pub fn from_profile(profile: &UserProfile) -> Self {
        Self {
            id: profile.id.to_string(),
            username: profile.username.clone(),
            first_name: profile.first_name.clone(),
            last_name: profile.last_name.clone(),
            profile_image_url: profile.profile_image_url.clone(),
        }
    }

    /// A user the directory no longer knows (removed after the call): the id alone.
    pub fn unknown(id: &UserId) -> Self {
        Self {
            id: id.to_string(),
            username: String::new(),
            first_name: String::new(),
            last_name: String::new(),
            profile_image_url: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum CallTypeJson {
    Voice,
    Video,
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum CallStatusJson {
    Initiating,
    Ringing,
    Active,
    Ended,
    Missed,
    Rejected,
    Cancelled,
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum EndReasonJson {
    UserHangup,
    CallerCancelled,
    Declined,
    InviteTimeout,
    /// A party reported that ICE could not connect or reconnect.
    IceFailed,
    /// A party reported that its camera or microphone failed.
    UserMediaFailed,
    /// Neither party had a live socket for the liveness grace period.
    ConnectionLost,
    /// The call reached the server's maximum call length.
    MaxDuration,
}

/// A call record.
#[derive(Debug, Clone, Object)]
pub struct CallJson {
    pub id: i64,
    /// The conversation id, or null.
    #[oai(nullable)]
    pub conversation: Option<i64>,
    pub caller: UserJson,
    pub receiver: UserJson,
    pub call_type: CallTypeJson,
    pub status: CallStatusJson,
    pub started_at: UtcTime,
    #[oai(nullable)]
    pub answered_at: Option<UtcTime>,
    #[oai(nullable)]
    pub ended_at: Option<UtcTime>,
    /// Whole seconds from answer to end, measured by the server; null until an answered call
    /// ends, and for calls never answered.
    #[oai(nullable)]
    pub duration_seconds: Option<u32>,
    /// Why the call finished; null while it is open.
    #[oai(nullable)]
    pub end_reason: Option<EndReasonJson>,
    pub created_at: UtcTime,
    pub updated_at: UtcTime,
}

impl CallJson {
    /// `profiles` holds whatever the directory knows of the two parties.
    pub fn new(call: &Call, profiles: &[UserProfile]) -> Self {
        let user = |id: &UserId| {
            profiles
                .iter()
                .find(|profile| &profile.id == id)
                .map_or_else(|| UserJson::unknown(id), UserJson::from_profile)
        };
        Self {
            id: call.id().get(),
            conversation: call.conversation().map(i64::from),
            caller: user(call.caller()),
            receiver: user(call.receiver()),
            call_type: match call.call_type() {
                ringline_domain::CallType::Voice => CallTypeJson::Voice,
                ringline_domain::CallType::Video => CallTypeJson::Video,
            },
            status: match call.status() {
                ringline_domain::CallStatus::Initiating => CallStatusJson::Initiating,
                ringline_domain::CallStatus::Ringing => CallStatusJson::Ringing,
                ringline_domain::CallStatus::Active => CallStatusJson::Active,
                ringline_domain::CallStatus::Ended => CallStatusJson::Ended,
                ringline_domain::CallStatus::Missed => CallStatusJson::Missed,
                ringline_domain::CallStatus::Rejected => CallStatusJson::Rejected,
                ringline_domain::CallStatus::Cancelled => CallStatusJson::Cancelled,
            },
            started_at: UtcTime(call.started_at()),
            answered_at: call.answered_at().map(UtcTime),
            ended_at: call.ended_at().map(UtcTime),
            duration_seconds: call.duration_seconds(),
            end_reason: call.end_reason().map(|reason| match reason {
                ringline_domain::EndReason::UserHangup => EndReasonJson::UserHangup,
                ringline_domain::EndReason::CallerCancelled => EndReasonJson::CallerCancelled,
                ringline_domain::EndReason::Declined => EndReasonJson::Declined,
                ringline_domain::EndReason::InviteTimeout => EndReasonJson::InviteTimeout,
                ringline_domain::EndReason::IceFailed => EndReasonJson::IceFailed,
                ringline_domain::EndReason::UserMediaFailed => EndReasonJson::UserMediaFailed,
                ringline_domain::EndReason::ConnectionLost => EndReasonJson::ConnectionLost,
                ringline_domain::EndReason::MaxDuration => EndReasonJson::MaxDuration,
            }),
            created_at: UtcTime(call.created_at()),
            updated_at: UtcTime(call.updated_at()),
        }
    }
}

/// A page of calls, as Django REST Framework's page-number pagination writes it.
#[derive(Debug, Object)]
pub struct CallPage {
    /// How many calls there are in all.
    pub count: u64,
    /// The URL of the next page, or null on the last.
    #[oai(nullable)]
    pub next: Option<String>,
    /// The URL of the previous page, or null on the first.
    #[oai(nullable)]
    pub previous: Option<String>,
    pub results: Vec<CallJson>,
}

/// One entry of an `RTCConfiguration.iceServers` list.
#[derive(Debug, Clone, Object)]
pub struct IceServerJson {
    pub urls: Vec<String>,
    #[oai(skip_serializing_if_is_none)]
    pub username: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub credential: Option<String>,
}

/// Body of `GET /api/turn/ice-servers/`.
#[derive(Debug, Object)]
pub struct IceServersJson {
    pub ice_servers: Vec<IceServerJson>,
}
