//! Request and response bodies, shaped exactly as the original app's clients read them.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type};
use poem_openapi::{Enum, Object};
use ringline_domain::{Call, Timestamp, UserId, UserProfile};
use serde_json::Value;

/// Implements poem-openapi's `Type` for a `(pub String)` newtype that the document describes
/// with `$schema` (and registers with `register`), but that takes text the schema refuses too:
/// its handler judges it, with its own stable error code.
macro_rules! text_type {
    ($type:ty, $name:expr, $schema:expr $(, register = $register:path)?) => {
        impl Type for $type {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> Cow<'static, str> {
                $name.into()
            }

            fn schema_ref() -> MetaSchemaRef {
                $schema
            }

            $(fn register(registry: &mut Registry) {
                $register(registry);
            })?

            fn as_raw_value(&self) -> Option<&Self::RawValueType> {
                Some(self)
            }

            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }
    };
}

/// A [`text_type!`] taken from a path or query parameter: any text.
macro_rules! parameter_text {
    ($type:ty) => {
        impl ParseFromParameter for $type {
            fn parse_from_parameter(value: &str) -> ParseResult<Self> {
                Ok(Self(value.to_owned()))
            }
        }
    };
}

/// A [`text_type!`] taken from a JSON body: a JSON string, and nothing else (poem-openapi's
/// `String` also takes numbers and booleans, turning `false` into `"false"`).
macro_rules! json_text {
    ($type:ty) => {
        impl ParseFromJSON for $type {
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                match value {
                    Some(Value::String(text)) => Ok(Self(text)),
                    other => Err(ParseError::expected_type(other.unwrap_or_default())),
                }
            }
        }

        impl ToJSON for $type {
            fn to_json(&self) -> Option<Value> {
                Some(Value::String(self.0.clone()))
            }
        }
    };
}

text_type!(IntegerParam, "integer_id", positive_integer_schema());
parameter_text!(IntegerParam);
text_type!(UserIdParam, "user_id", user_id_schema());
parameter_text!(UserIdParam);
text_type!(UserIdFilter, "user_id_or_empty", user_id_filter_schema());
parameter_text!(UserIdFilter);

/// A field the schema marks required whose absence the handler reports with its own stable
/// code (`receiver_id_required`, as the original app's message), rather than as a generic
/// parse error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Required<T>(pub Option<T>);

impl<T: Type> Type for Required<T> {
    const IS_REQUIRED: bool = true;
    type RawValueType = T::RawValueType;
    type RawElementValueType = T::RawElementValueType;

    fn name() -> Cow<'static, str> {
        T::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        self.0.as_ref().and_then(Type::as_raw_value)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        match &self.0 {
            Some(value) => value.raw_element_iter(),
            None => Box::new(std::iter::empty()),
        }
    }
}

/// An id a client may send as a JSON string or a number (`"42"` and `42` are the same id),
/// as the original app's clients do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlexibleId(pub String);

text_type!(
    FlexibleId,
    "string_or_integer",
    MetaSchemaRef::Inline(Box::new(MetaSchema {
        one_of: vec![user_id_schema(), i64::schema_ref()],
        ..MetaSchema::ANY
    }))
);

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

/// What a user id may be, as a schema: 1 to 64 characters without whitespace or control
/// characters (the rule of [`UserId::parse`]).
fn user_id_schema() -> MetaSchemaRef {
    MetaSchemaRef::Inline(Box::new(MetaSchema {
        min_length: Some(1),
        max_length: Some(UserId::MAX_LEN),
        pattern: Some(USER_ID_PATTERN.to_owned()),
        ..MetaSchema::new("string")
    }))
}

/// `user_id` in `GET /api/calls/?user_id=`: a user id, or empty for none (the original app
/// ignored an empty filter, and its clients may send one).
fn user_id_filter_schema() -> MetaSchemaRef {
    MetaSchemaRef::Inline(Box::new(MetaSchema {
        max_length: Some(UserId::MAX_LEN),
        pattern: Some(r"^[^\s\x00-\x1F\x7F-\x9F]*$".to_owned()),
        ..MetaSchema::new("string")
    }))
}

/// No whitespace (`\s` covers Unicode's) and no C0 or C1 control character.
const USER_ID_PATTERN: &str = r"^[^\s\x00-\x1F\x7F-\x9F]+$";

/// A database id (a call's, a notification's, a conversation's): a positive integer, also
/// when sent as a string of digits, as the original app's clients do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlexibleNumber(pub String);

text_type!(
    FlexibleNumber,
    "positive_integer_or_digits",
    MetaSchemaRef::Inline(Box::new(MetaSchema {
        one_of: vec![positive_integer_schema(), digits_schema()],
        ..MetaSchema::ANY
    }))
);

impl ParseFromJSON for FlexibleNumber {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        FlexibleId::parse_from_json(value).map(|id| Self(id.0)).map_err(ParseError::propagate)
    }
}

impl ToJSON for FlexibleNumber {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

fn positive_integer_schema() -> MetaSchemaRef {
    MetaSchemaRef::Inline(Box::new(MetaSchema {
        minimum: Some(1.0),
        ..MetaSchema::new_with_format("integer", "int64")
    }))
}

/// Digits of a positive 64-bit integer, at most 18 so that every match fits; or empty, which
/// the original app took as "none" and its clients may send.
fn digits_schema() -> MetaSchemaRef {
    MetaSchemaRef::Inline(Box::new(MetaSchema {
        pattern: Some("^([1-9][0-9]{0,17})?$".to_owned()),
        ..MetaSchema::new("string")
    }))
}

/// A path parameter documented as a positive integer (`/api/calls/{id}/`). Any text is taken
/// and judged by the handler, which answers a non-number `404`, as Django's `<int:pk>` routes
/// did: no resource has that id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegerParam(pub String);

/// A path or query parameter documented as a user id ([`user_id_schema`]). Any text is
/// taken and judged by the handler, with its own error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIdParam(pub String);

/// A query parameter documented as a user id or empty ([`user_id_filter_schema`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIdFilter(pub String);

impl<T: ParseFromJSON> ParseFromJSON for Required<T> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value.unwrap_or_default() {
            Value::Null => Ok(Self(None)),
            value => T::parse_from_json(Some(value)).map(|value| Self(Some(value))).map_err(ParseError::propagate),
        }
    }
}

impl<T: ToJSON> ToJSON for Required<T> {
    fn to_json(&self) -> Option<Value> {
        self.0.as_ref().map_or(Some(Value::Null), ToJSON::to_json)
    }
}

/// A username in a request: documented as 1 to 150 characters with at least one that is not
/// whitespace, taken as any string and judged by the handler (400 `invalid_username`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsernameField(pub String);

text_type!(UsernameField, "username", username_schema());
json_text!(UsernameField);

fn username_schema() -> MetaSchemaRef {
    MetaSchemaRef::Inline(Box::new(MetaSchema {
        min_length: Some(1),
        max_length: Some(MAX_USERNAME_CHARS),
        // Unanchored: somewhere a character that is not whitespace.
        pattern: Some(r"\S".to_owned()),
        ..MetaSchema::new("string")
    }))
}

/// A string field that takes only JSON strings (poem-openapi's `String` also takes numbers
/// and booleans, turning `false` into `"false"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonText(pub String);

text_type!(JsonText, "string", String::schema_ref());
json_text!(JsonText);

/// The longest username, in characters (Django's `AbstractUser.username`).
pub const MAX_USERNAME_CHARS: usize = 150;

/// `call_type` in a request: documented as [`CallTypeJson`] (`voice` or `video`), taken as
/// any string and judged by the handler (400 `invalid_call_type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallTypeField(pub String);

text_type!(CallTypeField, CallTypeJson::name(), CallTypeJson::schema_ref(), register = CallTypeJson::register);
json_text!(CallTypeField);

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
    /// The user to call: a string or a number.
    pub receiver_id: Required<FlexibleId>,
    /// `voice` or `video`; `null` or absent: `voice`.
    #[oai(nullable)]
    pub call_type: Option<CallTypeField>,
    /// The conversation the call belongs to, if any; both users must be its participants.
    /// `null` or `""`: none.
    #[oai(nullable)]
    pub conversation_id: Option<FlexibleNumber>,
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
    /// A party answered a waiting call (call waiting), which ended this one.
    SwitchedCall,
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
    /// What the parties' clients reported about the media (`POST /api/calls/{id}/quality/`),
    /// summarised with the server's MOS and tags; null until a report arrives (and for a call
    /// that ended for `ice_failed` with no report, only the tag).
    #[oai(nullable)]
    pub quality: Option<crate::quality::QualityJson>,
    /// When the first of the receiver's devices showed the call ringing (`call.ringing`, or
    /// `POST /api/calls/{id}/ringing/`); null if none said so (older clients never do).
    #[oai(nullable)]
    pub rang_at: Option<UtcTime>,
    /// When video first flowed in the call, by a party's `call.media-state`: a voice call
    /// turned video keeps its `call_type` and has this ("voice call, video from 1:20"); null
    /// if no video was reported.
    #[oai(nullable)]
    pub video_at: Option<UtcTime>,
    /// The call rang its receiver while they were in another, active call (call waiting).
    pub waiting: bool,
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
                ringline_domain::EndReason::SwitchedCall => EndReasonJson::SwitchedCall,
            }),
            created_at: UtcTime(call.created_at()),
            updated_at: UtcTime(call.updated_at()),
            quality: match (call.quality(), call.end_reason()) {
                (Some(quality), reason) => Some(crate::quality::QualityJson::new(quality, reason)),
                (None, Some(reason @ ringline_domain::EndReason::IceFailed)) => {
                    Some(crate::quality::QualityJson::new(&ringline_domain::CallQuality::default(), Some(reason)))
                }
                (None, _) => None,
            },
            rang_at: call.rang_at().map(UtcTime),
            video_at: call.video_at().map(UtcTime),
            waiting: call.is_waiting(),
        }
    }
}

/// The people you may call from a contact list.
#[derive(Debug, Object)]
pub struct ContactList {
    /// The other participants of your conversations, each once, ordered by username (at most
    /// 200).
    pub results: Vec<UserJson>,
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

/// Which candidates a client's `RTCPeerConnection` may use (`iceTransportPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum IceTransportPolicyJson {
    /// Any: direct, through NAT, or relayed.
    All,
    /// Relayed only: the other party sees the TURN server's address, never yours.
    Relay,
}

/// Body of `GET /api/turn/ice-servers/`.
#[derive(Debug, Object)]
pub struct IceServersJson {
    pub ice_servers: Vec<IceServerJson>,
    /// Pass it to `RTCPeerConnection` as `iceTransportPolicy`. `relay` when you (or the
    /// server) chose relay-only calls: use only relay candidates, and send no others.
    pub ice_transport_policy: IceTransportPolicyJson,
    /// When the TURN credentials stop being accepted; ask again before (`null` without TURN).
    #[oai(nullable)]
    pub expires_at: Option<UtcTime>,
}
