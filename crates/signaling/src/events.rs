//! Server → client events. Each function returns the encoded JSON; field names and string
//! ids follow the original app (call and conversation ids are strings inside events), and
//! every event carries a unique `event_id`.

use ringline_domain::{Call, Notification, UserId, UserProfile};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::protocol::encode;

/// The fields every call event shares.
#[derive(Serialize)]
struct CallHead<'a> {
    r#type: &'static str,
    event_id: &'a str,
    call_id: String,
    conversation_id: Option<String>,
}

fn head<'a>(kind: &'static str, event_id: &'a str, call: &Call) -> CallHead<'a> {
    CallHead {
        r#type: kind,
        event_id,
        call_id: call.id().to_string(),
        conversation_id: call.conversation().map(|id| id.to_string()),
    }
}

pub fn incoming(event_id: &str, call: &Call, caller_username: &str) -> String {
    #[derive(Serialize)]
    struct Incoming<'a> {
        #[serde(flatten)]
        head: CallHead<'a>,
        caller_id: &'a str,
        caller_username: &'a str,
        call_type: &'static str,
        sender_id: &'a str,
        /// Only on a waiting call (the receiver is in another call): older clients never see it.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        waiting: bool,
    }
    encode(&Incoming {
        head: head("call.incoming", event_id, call),
        caller_id: call.caller().as_str(),
        caller_username,
        call_type: call.call_type().as_str(),
        sender_id: call.caller().as_str(),
        waiting: call.is_waiting(),
    })
}

/// `call.offer` from `sender` (the caller, or either party when renegotiating).
pub fn offer(event_id: &str, call: &Call, sender: &UserId, sender_username: &str, sdp: &RawValue) -> String {
    #[derive(Serialize)]
    struct Offer<'a> {
        #[serde(flatten)]
        head: CallHead<'a>,
        caller_id: &'a str,
        caller_username: &'a str,
        call_type: &'static str,
        offer: &'a RawValue,
        sender_id: &'a str,
    }
    encode(&Offer {
        head: head("call.offer", event_id, call),
        // The original clients read `caller_id` as "who is offering".
        caller_id: sender.as_str(),
        caller_username: sender_username,
        call_type: call.call_type().as_str(),
        offer: sdp,
        sender_id: sender.as_str(),
    })
}

/// `call.answer` from `sender`; `sdp` is `None` when the call was accepted over REST.
pub fn answer(event_id: &str, call: &Call, sender: &UserId, sdp: Option<&RawValue>) -> String {
    #[derive(Serialize)]
    struct Answer<'a> {
        #[serde(flatten)]
        head: CallHead<'a>,
        answer: Option<&'a RawValue>,
        receiver_id: &'a str,
        sender_id: &'a str,
    }
    encode(&Answer {
        head: head("call.answer", event_id, call),
        answer: sdp,
        receiver_id: sender.as_str(),
        sender_id: sender.as_str(),
    })
}

pub fn ice_candidate(event_id: &str, call: &Call, sender: &UserId, candidate: &RawValue) -> String {
    #[derive(Serialize)]
    struct Ice<'a> {
        #[serde(flatten)]
        head: CallHead<'a>,
        user_id: &'a str,
        candidate: &'a RawValue,
        sender_id: &'a str,
    }
    encode(&Ice {
        head: head("call.ice-candidate", event_id, call),
        user_id: sender.as_str(),
        candidate,
        sender_id: sender.as_str(),
    })
}

/// `call.end`; `by` is `None` when the server ended the call (ring timeout).
pub fn end(event_id: &str, call: &Call, by: Option<&UserId>) -> String {
    end_event(event_id, call, by, call.end_reason().map(|reason| reason.as_str()))
}

/// The `call.end` that stops the callee's other devices ringing once `by` answered on one of
/// them. The call itself goes on (`status` stays `active`): the original web client stops
/// ringing only on `call.end`, and `end_reason` tells newer clients why they got one.
pub fn answered_elsewhere(event_id: &str, call: &Call, by: &UserId) -> String {
    end_event(event_id, call, Some(by), Some("answered_elsewhere"))
}

fn end_event(event_id: &str, call: &Call, by: Option<&UserId>, end_reason: Option<&'static str>) -> String {
    #[derive(Serialize)]
    struct End<'a> {
        #[serde(flatten)]
        head: CallHead<'a>,
        user_id: Option<&'a str>,
        status: &'static str,
        end_reason: Option<&'static str>,
        duration_seconds: Option<u32>,
    }
    encode(&End {
        head: head("call.end", event_id, call),
        user_id: by.map(UserId::as_str),
        status: call.status().as_str(),
        end_reason,
        duration_seconds: call.duration_seconds(),
    })
}

/// `call.accepted`, `call.cancelled`: a party acted; the field is `receiver_id` or `user_id`.
pub fn party_event(kind: &'static str, event_id: &str, call: &Call, field: &'static str, user: &UserId) -> String {
    let mut value = serde_json::to_value(head(kind, event_id, call)).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert(field.to_owned(), user.as_str().into());
    }
    encode(&value)
}

pub fn rejected(event_id: &str, call: &Call, by: &UserId, by_username: &str) -> String {
    #[derive(Serialize)]
    struct Rejected<'a> {
        #[serde(flatten)]
        head: CallHead<'a>,
        rejected_by: &'a str,
        rejected_by_username: &'a str,
    }
    encode(&Rejected {
        head: head("call.rejected", event_id, call),
        rejected_by: by.as_str(),
        rejected_by_username: by_username,
    })
}

pub fn missed(event_id: &str, call: &Call) -> String {
    encode(&head("call.missed", event_id, call))
}

/// A user as events and notifications show them: no email, no phone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PublicUser {
    pub id: String,
    pub username: String,
    pub first_name: String,
    pub last_name: String,
    pub profile_image_url: Option<String>,
}

impl From<&UserProfile> for PublicUser {
    fn from(profile: &UserProfile) -> Self {
        Self {
            id: profile.id.to_string(),
            username: profile.username.clone(),
            first_name: profile.first_name.clone(),
            last_name: profile.last_name.clone(),
            profile_image_url: profile.profile_image_url.clone(),
        }
    }
}

/// A notification as the original app's `NotificationSerializer` shows it, restricted to what
/// calls need. `GET /api/notifications/` returns the same objects.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotificationPayload {
    pub id: i64,
    pub actor: Option<PublicUser>,
    pub verb: &'static str,
    pub content_type: &'static str,
    pub object_id: i64,
    pub unread: bool,
    pub created_at: String,
    pub target_url: String,
    pub data: NotificationData,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotificationData {
    pub conversation_id: Option<String>,
    pub call_id: String,
    pub call_type: &'static str,
}

impl NotificationPayload {
    pub fn new(notification: &Notification, actor: Option<&UserProfile>) -> Self {
        let call = notification.call.get();
        let target_url = match notification.conversation {
            Some(conversation) => format!("/app/messages/{conversation}?call={call}"),
            None => format!("/app/messages?call={call}"),
        };
        Self {
            id: notification.id,
            actor: actor.map(PublicUser::from),
            verb: notification.verb.as_str(),
            content_type: "call",
            object_id: call,
            unread: notification.unread,
            created_at: notification.created_at.to_string(),
            target_url,
            data: NotificationData {
                conversation_id: notification.conversation.map(|id| id.to_string()),
                call_id: call.to_string(),
                call_type: notification.verb.call_type().as_str(),
            },
        }
    }
}

pub fn notification_created(event_id: &str, payload: &NotificationPayload) -> String {
    #[derive(Serialize)]
    struct Created<'a> {
        r#type: &'static str,
        event_id: &'a str,
        payload: &'a NotificationPayload,
    }
    encode(&Created { r#type: "notification.created", event_id, payload })
}

pub fn typing(kind: &'static str, event_id: &str, user: &UserId, username: &str, conversation: &str) -> String {
    #[derive(Serialize)]
    struct Typing<'a> {
        r#type: &'static str,
        event_id: &'a str,
        user_id: &'a str,
        username: &'a str,
        conversation_id: &'a str,
    }
    encode(&Typing { r#type: kind, event_id, user_id: user.as_str(), username, conversation_id: conversation })
}

/// `connection.ack`: the original's fields (`user_id`, or `conversation` on a chat socket),
/// plus `open_calls` (the user's ringing or active calls in the REST call shape; empty when
/// idle; left out when they could not be read, so that no client mistakes a database hiccup
/// for "no call") and `resume_from` (the stream position to resume from if no event arrives
/// before the socket drops).
pub fn connection_ack(
    event_id: &str,
    user: &UserId,
    conversation: Option<&str>,
    resume_from: &str,
    open_calls: Option<&[Box<RawValue>]>,
) -> String {
    #[derive(Serialize)]
    struct Ack<'a> {
        r#type: &'static str,
        event_id: &'a str,
        user_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        conversation: Option<&'a str>,
        resume_from: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        open_calls: Option<&'a [Box<RawValue>]>,
    }
    encode(&Ack { r#type: "connection.ack", event_id, user_id: user.as_str(), conversation, resume_from, open_calls })
}

/// `resync`: the events missed since the `resume` position are no longer kept; the client
/// must re-read its calls (`open_calls` in the ack it just got, or the REST API).
pub fn resync(event_id: &str, resume_from: &str) -> String {
    #[derive(Serialize)]
    struct Resync<'a> {
        r#type: &'static str,
        event_id: &'a str,
        resume_from: &'a str,
        detail: &'static str,
    }
    encode(&Resync {
        r#type: "resync",
        event_id,
        resume_from,
        detail: "Some events since your resume position are no longer kept; re-read your calls.",
    })
}

/// `call.media-state`: whether the sender's microphone and camera are on, for the other party
/// to show.
/// `call.media-state` from `sender`: microphone, camera, and whether what its video shows is
/// a shared screen.
pub fn media_state(event_id: &str, call: &Call, sender: &UserId, media: crate::protocol::MediaState) -> String {
    #[derive(Serialize)]
    struct MediaState<'a> {
        #[serde(flatten)]
        head: CallHead<'a>,
        user_id: &'a str,
        audio: bool,
        video: bool,
        screen: bool,
        sender_id: &'a str,
    }
    encode(&MediaState {
        head: head("call.media-state", event_id, call),
        user_id: sender.as_str(),
        audio: media.audio,
        video: media.video,
        screen: media.screen,
        sender_id: sender.as_str(),
    })
}

/// `call.ringing`, to the caller: one of the receiver's devices shows the call (`rang_at`).
pub fn ringing(event_id: &str, call: &Call) -> String {
    #[derive(Serialize)]
    struct Ringing<'a> {
        #[serde(flatten)]
        head: CallHead<'a>,
        receiver_id: &'a str,
        rang_at: Option<ringline_domain::Timestamp>,
    }
    encode(&Ringing {
        head: head("call.ringing", event_id, call),
        receiver_id: call.receiver().as_str(),
        rang_at: call.rang_at(),
    })
}

pub fn pong(event_id: &str) -> String {
    #[derive(Serialize)]
    struct Pong<'a> {
        r#type: &'static str,
        event_id: &'a str,
    }
    encode(&Pong { r#type: "pong", event_id })
}

/// The `event_id` of an event of a user's stream (ids with a `.` are not part of a stream).
pub fn stream_id(payload: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Event<'a> {
        #[serde(borrow)]
        event_id: std::borrow::Cow<'a, str>,
    }
    let event: Event<'_> = serde_json::from_str(payload).ok()?;
    (!event.event_id.contains('.')).then(|| event.event_id.into_owned())
}
