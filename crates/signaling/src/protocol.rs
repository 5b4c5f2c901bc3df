//! The wire protocol: frames clients send, events the server sends, close codes and error
//! codes. `docs/protocol.md` is the reader's version of this file.
//!
//! Frames are parsed once into [`ClientFrame`]; SDP offers and answers and ICE candidates stay
//! raw JSON (`&RawValue`) from the incoming frame to the outgoing event, so relaying them never
//! re-parses or re-serialises them. Every event is encoded once and shared by all recipients.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use ringline_domain::{CallId, CallStatus, ErrorCode, HangupReason};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

/// WebSocket close codes Ringline uses (4000–4999 are application codes).
pub mod close {
    /// The chat socket's conversation id is not a positive integer.
    pub const BAD_CONVERSATION: u16 = 4400;
    /// No token, or an invalid or expired one.
    pub const NOT_AUTHENTICATED: u16 = 4401;
    /// Not a participant of the chat socket's conversation (or no such conversation).
    pub const NOT_A_PARTICIPANT: u16 = 4403;
    /// Nothing received from the peer (not even a pong) for [`crate::settings::Keepalive::idle_timeout`].
    pub const IDLE_TIMEOUT: u16 = 4408;
    /// The peer did not read its events fast enough and its outgoing queue filled up.
    pub const SLOW_CONSUMER: u16 = 4409;
    /// The user already has as many sockets open on this instance as it allows
    /// (`RINGLINE_WS_MAX_PER_USER`); the newest is refused.
    pub const TOO_MANY_SOCKETS: u16 = 4429;
    /// The server is shutting down; reconnect (to another instance).
    pub const GOING_AWAY: u16 = 1001;
    /// Never sent: what a connection that ended without a Close frame counts as (RFC 6455's
    /// "abnormal closure").
    pub const ABNORMAL: u16 = 1006;
    /// A frame over [`super::MAX_CONNECTION_FRAME_BYTES`] (the WebSocket standard's "message too big").
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// A text frame that is not UTF-8 (the standard's "invalid frame payload data").
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame that breaks the WebSocket protocol (unmasked, reserved bits set, …).
    pub const PROTOCOL_ERROR: u16 = 1002;
}

/// The largest text frame the server acts on. Larger frames get a `frame_too_large` error
/// (the connection itself refuses frames over [`MAX_CONNECTION_FRAME_BYTES`]).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Frames above this size close the connection (WebSocket code 1009) before they are read.
pub const MAX_CONNECTION_FRAME_BYTES: usize = 1024 * 1024;

/// A call id as clients send it: `"42"` (the web client) or `42` (the mobile client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireCallId(pub CallId);

impl<'de> Deserialize<'de> for WireCallId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = WireCallId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a call id (a positive integer, or a string holding one)")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<WireCallId, E> {
                i64::try_from(value)
                    .ok()
                    .and_then(|v| CallId::new(v).ok())
                    .map(WireCallId)
                    .ok_or_else(|| E::custom("bad call id"))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<WireCallId, E> {
                CallId::new(value).map(WireCallId).map_err(|_| E::custom("bad call id"))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<WireCallId, E> {
                value.parse().map(WireCallId).map_err(|_| E::custom("bad call id"))
            }
        }
        deserializer.deserialize_any(IdVisitor)
    }
}

/// Every field any client frame may carry; [`ClientFrame::parse`] checks which are required.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    call_id: Option<WireCallId>,
    #[serde(borrow)]
    offer: Option<&'a RawValue>,
    #[serde(borrow)]
    answer: Option<&'a RawValue>,
    #[serde(borrow)]
    candidate: Option<&'a RawValue>,
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
    audio: Option<bool>,
    video: Option<bool>,
    screen: Option<bool>,
}

/// A frame from a client. Fields the server decides (who is speaking, the call's parties, its
/// conversation and type) are deliberately not read from the client.
#[derive(Debug, Clone, Copy)]
pub enum ClientFrame<'a> {
    Ping,
    Offer {
        call: CallId,
        offer: &'a RawValue,
    },
    Answer {
        call: CallId,
        answer: &'a RawValue,
    },
    IceCandidate {
        call: CallId,
        candidate: &'a RawValue,
    },
    /// A hang-up; `reason` is what the party reports (`ice_failed` when media died).
    End {
        call: CallId,
        reason: HangupReason,
    },
    /// The sender's microphone, camera and screen share are on or off.
    MediaState {
        call: CallId,
        media: MediaState,
    },
    /// One of the receiver's devices shows the ringing call.
    Ringing {
        call: CallId,
    },
    TypingStart,
    TypingStop,
}

/// What a `call.media-state` says of the sender's media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaState {
    /// The microphone is on.
    pub audio: bool,
    /// Video is on: the camera, or a shared screen.
    pub video: bool,
    /// The video is a shared screen (absent from older clients: `false`).
    pub screen: bool,
}

/// Why a frame was refused; sent back as `{"type": "error", "code", "detail"}`. A refusal from
/// the domain's catalogue, as REST answers them.
pub type FrameError = ringline_domain::Refusal;

impl<'a> ClientFrame<'a> {
    /// # Errors
    /// `malformed_frame` for invalid JSON or field types, `missing_field`, `unknown_type`.
    pub fn parse(text: &'a str) -> Result<Self, FrameError> {
        let raw: RawFrame<'a> = serde_json::from_str(text).map_err(|error| {
            // serde_json's message names the line and column, never the content.
            FrameError::with_detail(
                ErrorCode::MalformedFrame,
                format!("The frame is not a valid JSON object: {error}."),
            )
        })?;
        let kind =
            raw.kind.ok_or_else(|| FrameError::with_detail(ErrorCode::MissingField, "The frame has no \"type\"."))?;
        let call = || raw.call_id.map(|id| id.0).ok_or_else(|| missing("call_id"));
        Ok(match kind.as_ref() {
            "ping" => Self::Ping,
            "call.offer" => Self::Offer { call: call()?, offer: raw.offer.ok_or_else(|| missing("offer"))? },
            "call.answer" => Self::Answer { call: call()?, answer: raw.answer.ok_or_else(|| missing("answer"))? },
            "call.ice-candidate" => {
                Self::IceCandidate { call: call()?, candidate: raw.candidate.ok_or_else(|| missing("candidate"))? }
            }
            "call.end" => Self::End {
                call: call()?,
                reason: match raw.reason.as_deref() {
                    None => HangupReason::UserHangup,
                    Some(reason) => reason.parse().map_err(|_| {
                        FrameError::with_detail(
                            ErrorCode::InvalidReason,
                            "\"reason\" must be one of user_hangup, ice_failed, user_media_failed.",
                        )
                    })?,
                },
            },
            "call.media-state" => Self::MediaState {
                call: call()?,
                media: MediaState {
                    audio: raw.audio.ok_or_else(|| missing("audio"))?,
                    video: raw.video.ok_or_else(|| missing("video"))?,
                    screen: raw.screen.unwrap_or(false),
                },
            },
            "call.ringing" => Self::Ringing { call: call()? },
            "typing.start" => Self::TypingStart,
            "typing.stop" => Self::TypingStop,
            _ => return Err(FrameError::new(ErrorCode::UnknownType)),
        })
    }

    /// The frame's type, for logs (never its content).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Offer { .. } => "call.offer",
            Self::Answer { .. } => "call.answer",
            Self::IceCandidate { .. } => "call.ice-candidate",
            Self::End { .. } => "call.end",
            Self::MediaState { .. } => "call.media-state",
            Self::Ringing { .. } => "call.ringing",
            Self::TypingStart => "typing.start",
            Self::TypingStop => "typing.stop",
        }
    }
}

fn missing(field: &'static str) -> FrameError {
    FrameError::with_detail(ErrorCode::MissingField, format!("The frame needs \"{field}\"."))
}

/// Unique event ids: a random per-process prefix and a counter, so that ids from different
/// server instances never collide and minting one costs no randomness.
///
/// These are the ids of events that are not part of a user's stream (`connection.ack`,
/// `pong`, `error`, `resync`, typing indicators). They contain a `.`, which no stream id
/// ([`crate::replay`]) does, so a client can tell the two apart and a resume from one of these
/// is recognised as no position at all.
#[derive(Debug)]
pub struct EventIds {
    prefix: String,
    next: AtomicU64,
}

impl Default for EventIds {
    fn default() -> Self {
        let random = uuid::Uuid::new_v4().simple().to_string();
        Self { prefix: format!("{}.", &random[..12]), next: AtomicU64::new(1) }
    }
}

impl EventIds {
    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}{n:x}", self.prefix)
    }
}

/// Encodes `event` as JSON. Serialising plain structs of strings and raw JSON cannot fail; if
/// it ever did, the error is logged and the recipients get an error event instead.
pub fn encode<T: Serialize>(event: &T) -> String {
    serde_json::to_string(event).unwrap_or_else(|error| {
        tracing::error!(%error, "failed to encode an event");
        // By hand: encoding the error event cannot be allowed to fail in turn.
        format!(
            r#"{{"type":"error","code":"{}","detail":"The server failed to encode an event."}}"#,
            ErrorCode::InternalError.as_str()
        )
    })
}

/// `{"type": "error", "event_id", "code", "detail"}`, with the call id when the frame named one.
pub fn error_event(event_id: &str, error: &FrameError, call: Option<CallId>) -> String {
    #[derive(Serialize)]
    struct ErrorEvent<'a> {
        r#type: &'static str,
        event_id: &'a str,
        code: &'a str,
        detail: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        call_id: Option<String>,
    }
    encode(&ErrorEvent {
        r#type: "error",
        event_id,
        code: error.code.as_str(),
        detail: &error.detail,
        call_id: call.map(|id| id.to_string()),
    })
}

/// Whether a party may send `frame` in `status` (see `docs/protocol.md`, "Who may send what").
pub fn allowed_in(status: CallStatus, frame: &ClientFrame<'_>, sender_is_caller: bool) -> bool {
    match frame {
        // The caller offers while ringing; either side may renegotiate once the call is up.
        ClientFrame::Offer { .. } => match status {
            CallStatus::Initiating | CallStatus::Ringing => sender_is_caller,
            CallStatus::Active => true,
            _ => false,
        },
        // The receiver's answer to a ringing call accepts it; answers to renegotiations are
        // relayed while active. The caller has nothing to answer before the call is up.
        ClientFrame::Answer { .. } => match status {
            CallStatus::Initiating | CallStatus::Ringing => !sender_is_caller,
            CallStatus::Active => true,
            _ => false,
        },
        ClientFrame::IceCandidate { .. } | ClientFrame::MediaState { .. } => status.is_open(),
        // Only while the call rings (the relay refuses the caller with `receiver_only` first).
        ClientFrame::Ringing { .. } => !sender_is_caller && status.is_unanswered(),
        ClientFrame::End { .. } | ClientFrame::Ping | ClientFrame::TypingStart | ClientFrame::TypingStop => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

    #[test]
    fn call_ids_may_be_strings_or_numbers() {
        for text in [r#"{"type":"call.end","call_id":"7"}"#, r#"{"type":"call.end","call_id":7}"#] {
            match ClientFrame::parse(text) {
                Ok(ClientFrame::End { call, reason }) => {
                    assert_eq!(call.get(), 7);
                    assert_eq!(reason, HangupReason::UserHangup);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn payloads_stay_raw_and_sender_fields_are_ignored() {
        let text =
            r#"{"type":"call.offer","call_id":"3","caller_id":"mallory","offer":{"type":"offer","sdp":"v=0\r\n"}}"#;
        match ClientFrame::parse(text) {
            Ok(ClientFrame::Offer { call, offer }) => {
                assert_eq!(call.get(), 3);
                assert_eq!(offer.get(), r#"{"type":"offer","sdp":"v=0\r\n"}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_frames_get_specific_codes() {
        let code = |text: &str| ClientFrame::parse(text).err().map(|e| e.code.as_str());
        assert_eq!(code("not json"), Some("malformed_frame"));
        assert_eq!(code("[1,2]"), Some("malformed_frame"));
        assert_eq!(code(r#"{"call_id":"1"}"#), Some("missing_field"));
        assert_eq!(code(r#"{"type":"call.answer","call_id":"1"}"#), Some("missing_field"));
        assert_eq!(code(r#"{"type":"call.answer","call_id":"1","answer":null}"#), Some("missing_field"));
        assert_eq!(code(r#"{"type":"call.end","call_id":"-4"}"#), Some("malformed_frame"));
        assert_eq!(code(r#"{"type":"call.end","call_id":{"x":1}}"#), Some("malformed_frame"));
        assert_eq!(code(r#"{"type":"chat.message"}"#), Some("unknown_type"));
        assert_eq!(code(r#"{"type":"call.end"}"#), Some("missing_field"));
        assert_eq!(code(r#"{"type":"call.end","call_id":1,"reason":"bored"}"#), Some("invalid_reason"));
        assert_eq!(code(r#"{"type":"call.media-state","call_id":1,"audio":true}"#), Some("missing_field"));
        assert_eq!(code(r#"{"type":"call.media-state","call_id":1,"audio":1,"video":true}"#), Some("malformed_frame"));
    }

    #[test]
    fn ringing_names_a_call_and_media_state_may_say_screen() {
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"call.ringing","call_id":"5"}"#),
            Ok(ClientFrame::Ringing { call }) if call.get() == 5
        ));
        assert_eq!(
            ClientFrame::parse(r#"{"type":"call.ringing"}"#).err().map(|e| e.code),
            Some(ErrorCode::MissingField)
        );
        let media = |text| match ClientFrame::parse(text) {
            Ok(ClientFrame::MediaState { media, .. }) => Some(media),
            _ => None,
        };
        let older = media(r#"{"type":"call.media-state","call_id":1,"audio":true,"video":true}"#);
        assert_eq!(older, Some(MediaState { audio: true, video: true, screen: false }), "older clients say no screen");
        let sharing = media(r#"{"type":"call.media-state","call_id":1,"audio":false,"video":true,"screen":true}"#);
        assert_eq!(sharing, Some(MediaState { audio: false, video: true, screen: true }));
        assert!(media(r#"{"type":"call.media-state","call_id":1,"audio":true,"video":true,"screen":"yes"}"#).is_none());
    }

    #[test]
    fn malformed_frames_do_not_echo_their_content() {
        let error = ClientFrame::parse(r#"{"type": "call.offer", "offer": "secret-sdp"#).expect_err("truncated");
        assert!(!error.detail.contains("secret"), "{}", error.detail);
    }

    #[test]
    fn event_ids_are_unique() {
        let ids = EventIds::default();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert_ne!(EventIds::default().next(), a, "another process, another prefix");
    }

    proptest::proptest! {
        #[test]
        fn no_text_makes_the_parser_panic(text in ".{0,300}") {
            let _ = ClientFrame::parse(&text);
        }

        #[test]
        fn no_frame_shaped_json_makes_the_parser_panic(
            kind in proptest::prop_oneof![
                proptest::strategy::Just("call.offer".to_owned()),
                proptest::strategy::Just("call.answer".to_owned()),
                proptest::strategy::Just("call.ice-candidate".to_owned()),
                proptest::strategy::Just("call.end".to_owned()),
                ".{0,12}",
            ],
            call_id in proptest::prop_oneof![
                proptest::num::i64::ANY.prop_map(|n| n.to_string()),
                proptest::num::i64::ANY.prop_map(|n| format!("\"{n}\"")),
                proptest::strategy::Just("null".to_owned()),
                proptest::strategy::Just("[1]".to_owned()),
                proptest::strategy::Just("1e400".to_owned()),
            ],
            payload in "[a-z0-9{}\\[\\]\":, ]{0,40}",
        ) {
            let text = format!(r#"{{"type":{kind:?},"call_id":{call_id},"offer":{payload},"answer":{payload},"candidate":{payload}}}"#);
            let _ = ClientFrame::parse(&text);
        }
    }
}
