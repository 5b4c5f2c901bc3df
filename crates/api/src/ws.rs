//! The WebSocket endpoints: `ws/notifications/` (one per signed-in tab or device, open on every
//! page) and `ws/chat/<conversation_id>/` (open while a conversation is on screen).
//!
//! Authentication happens before the upgrade, from `?token=` or `Authorization: Bearer`. A
//! refused connection is still upgraded and then closed with the contract's code (4401 bad
//! token, 4400 bad conversation id, 4403 not a participant), because browsers only show a
//! WebSocket's close code, never an HTTP status. The session itself runs in
//! `ringline_signaling::session`.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use poem::web::websocket::{Message, WebSocket, WebSocketConfig};
use poem::{FromRequest, IntoResponse, Request, Response, Route};
use poem_openapi::types::ToJSON;
use ringline_domain::{Call, ConversationId, UserId};
use ringline_signaling::protocol::{MAX_CONNECTION_FRAME_BYTES, close};
use ringline_signaling::session::{self, Inbound, Outbound, SessionIdentity};
use ringline_signaling::{CallPresenter, SessionKind, Signaling};
use serde_json::value::RawValue;

use crate::auth::{AuthError, Authenticator, bearer_token};
use crate::models::CallJson;

/// Which socket was asked for.
#[derive(Debug, Clone, Copy)]
enum Socket {
    Notifications,
    Chat,
}

/// `/notifications` and `/chat/:conversation_id`, to be nested under `/ws` (trailing slashes
/// optional).
pub fn websocket_routes(signaling: Arc<Signaling>, auth: Arc<dyn Authenticator>) -> Route {
    let endpoint = |socket: Socket| {
        let (signaling, auth) = (Arc::clone(&signaling), Arc::clone(&auth));
        poem::endpoint::make(move |req: Request| {
            let (signaling, auth) = (Arc::clone(&signaling), Arc::clone(&auth));
            async move { upgrade(req, signaling, auth, socket).await }
        })
    };
    Route::new()
        .at("/notifications", endpoint(Socket::Notifications))
        .at("/chat/:conversation_id", endpoint(Socket::Chat))
}

/// A query parameter of the upgrade request.
fn query_param(req: &Request, name: &str) -> Option<String> {
    req.uri().query().and_then(|query| {
        form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
    })
}

fn token(req: &Request) -> Option<String> {
    let from_query = query_param(req, "token");
    from_query.filter(|token| !token.is_empty()).or_else(|| {
        let header = req.headers().get("authorization").and_then(|value| value.to_str().ok());
        bearer_token(header).map(str::to_owned)
    })
}

/// Who the connection is for, or the close code and reason to refuse it with.
async fn admit(
    req: &Request,
    signaling: &Signaling,
    auth: &dyn Authenticator,
    socket: Socket,
) -> Result<SessionIdentity, (u16, &'static str)> {
    let kind = match socket {
        Socket::Notifications => SessionKind::Notifications,
        Socket::Chat => {
            let raw = req.raw_path_param("conversation_id").unwrap_or_default();
            let id = raw.parse::<ConversationId>().map_err(|_| (close::BAD_CONVERSATION, "bad conversation id"))?;
            SessionKind::Chat(id)
        }
    };
    let token = token(req).ok_or((close::NOT_AUTHENTICATED, "authentication required"))?;
    let user: UserId = auth.authenticate(&token).await.map_err(|error| {
        let reason = match error {
            AuthError::UserNotFound => "user not found",
            AuthError::Inactive => "user is inactive",
            _ => "invalid or expired token",
        };
        (close::NOT_AUTHENTICATED, reason)
    })?;
    if let SessionKind::Chat(conversation) = kind {
        match signaling.may_join(&user, conversation).await {
            Ok(true) => {}
            Ok(false) => return Err((close::NOT_A_PARTICIPANT, "not a participant of this conversation")),
            Err(error) => {
                tracing::error!(%error, "cannot check a chat socket's conversation");
                return Err((1011, "server error"));
            }
        }
    }
    // Stream ids are short; anything longer is no position of ours and reads as a gap.
    let resume = query_param(req, "resume").filter(|resume| !resume.is_empty()).map(|mut resume| {
        resume.truncate(MAX_RESUME_LEN);
        resume
    });
    Ok(SessionIdentity { user, kind, resume })
}

async fn upgrade(
    req: Request,
    signaling: Arc<Signaling>,
    auth: Arc<dyn Authenticator>,
    socket: Socket,
) -> poem::Result<Response> {
    let websocket = WebSocket::from_request_without_body(&req).await?;
    let admitted = admit(&req, &signaling, auth.as_ref(), socket).await;
    // A client behind a trusted proxy holds its place for as long as the session lives.
    let client_place = req.extensions().get::<crate::forwarded::ClientPlace>().cloned();
    // The session runs detached from the request: it keeps the request's span (its id).
    let span = tracing::Span::current();
    let upgraded = websocket.config(websocket_config()).on_upgrade(move |stream| async move {
        let _client_place = client_place;
        let (sink, stream) = stream.split();
        let mut sink = sink.with(|out: Outbound| futures_util::future::ready(Ok::<_, std::io::Error>(to_message(out))));
        // A transport error ends the stream: the session then closes. What the peer sent wrong
        // is told apart (poem passes tungstenite's error on as text), so that the session
        // closes with the standard's code rather than dropping the connection; the listener
        // then drains what the peer still sends, so its Close frame is not lost to a reset.
        let mut inbound = Box::pin(
            stream
                .scan(false, |ended, message| {
                    let next = match message {
                        _ if *ended => None,
                        Ok(message) => Some(Some(from_message(message))),
                        Err(error) => {
                            *ended = true;
                            unreadable(&error.to_string()).map(Some)
                        }
                    };
                    futures_util::future::ready(next)
                })
                .filter_map(futures_util::future::ready),
        );
        match admitted {
            Err((code, reason)) => session::close_and_wait(&mut inbound, &mut sink, code, reason).await,
            Ok(identity) => {
                let presenter = RestCallShape { signaling: Arc::clone(&signaling) };
                tracing::Instrument::instrument(session::run(signaling, identity, &presenter, inbound, sink), span)
                    .await;
            }
        }
    });
    Ok(upgraded.into_response())
}

/// Bytes read from a socket at a time. tungstenite's default is 128 KiB, zero-filled before
/// each read: most of an idle socket's memory and a quarter of the CPU of relaying at 10k
/// frames a second. Signaling frames are small (an SDP offer is a few KiB); larger ones are
/// read in several steps.
pub const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Frames are buffered until this many bytes (or a flush) before they are written to the
/// socket. tungstenite's default is 128 KiB; the session flushes after each batch anyway, so a
/// small buffer costs nothing and keeps an idle socket small.
pub const WRITE_BUFFER_BYTES: usize = 4 * 1024;

/// How every accepted WebSocket is configured.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(Some(MAX_CONNECTION_FRAME_BYTES))
        .max_frame_size(Some(MAX_CONNECTION_FRAME_BYTES))
}

/// The longest `resume` value kept (a stream id is about 30 characters).
const MAX_RESUME_LEN: usize = 64;

/// `open_calls` in `connection.ack`: calls exactly as `GET /api/calls/{id}/` shows them.
#[derive(Debug)]
struct RestCallShape {
    signaling: Arc<Signaling>,
}

#[async_trait::async_trait]
impl CallPresenter for RestCallShape {
    async fn present(&self, calls: &[Call]) -> Vec<Box<RawValue>> {
        let mut shown = Vec::with_capacity(calls.len());
        for call in calls {
            let profiles = self.signaling.parties_of(call).await.unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot look up the parties of an open call; showing their ids only");
                Vec::new().into()
            });
            shown.extend(CallJson::new(call, &profiles).to_json());
        }
        shown.into_iter().filter_map(|json| RawValue::from_string(json.to_string()).ok()).collect()
    }
}

/// The close for a read error caused by what the peer sent; `None` for a broken transport.
fn unreadable(error: &str) -> Option<Inbound> {
    if error.starts_with("Space limit exceeded") {
        Some(Inbound::Unreadable(close::MESSAGE_TOO_BIG, "frame too large"))
    } else if error.starts_with("UTF-8 encoding error") {
        Some(Inbound::Unreadable(close::INVALID_PAYLOAD, "text frame is not UTF-8"))
    } else if error.starts_with("WebSocket protocol error") {
        Some(Inbound::Unreadable(close::PROTOCOL_ERROR, "protocol error"))
    } else {
        None
    }
}

fn from_message(message: Message) -> Inbound {
    match message {
        Message::Text(text) => Inbound::Text(text),
        Message::Binary(_) => Inbound::Binary,
        Message::Ping(_) => Inbound::Ping,
        Message::Pong(_) => Inbound::Pong,
        Message::Close(frame) => Inbound::Close(frame.map(|(code, _reason)| u16::from(code))),
    }
}

fn to_message(out: Outbound) -> Message {
    match out {
        Outbound::Text(text) => Message::Text(text),
        Outbound::Ping => Message::Ping(Vec::new()),
        Outbound::Close(code, reason) => Message::close_with(code, reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_peer_sent_wrong_closes_with_the_standards_code() {
        // The texts as poem passes tungstenite's errors on.
        for (error, code) in [
            ("Space limit exceeded: Message too long: 2097152 > 1048576", close::MESSAGE_TOO_BIG),
            ("UTF-8 encoding error: invalid utf-8 sequence of 1 bytes from index 0", close::INVALID_PAYLOAD),
            ("WebSocket protocol error: Received an unmasked frame from client", close::PROTOCOL_ERROR),
        ] {
            assert!(matches!(unreadable(error), Some(Inbound::Unreadable(got, _)) if got == code), "{error}");
        }
        assert!(unreadable("IO error: Connection reset by peer").is_none());
    }

    #[test]
    fn sockets_read_and_write_in_small_buffers_and_refuse_huge_frames() {
        let config = websocket_config();
        assert_eq!(config.read_buffer_size, READ_BUFFER_BYTES);
        assert_eq!(config.write_buffer_size, WRITE_BUFFER_BYTES);
        assert_eq!(config.max_message_size, Some(MAX_CONNECTION_FRAME_BYTES));
        assert_eq!(config.max_frame_size, Some(MAX_CONNECTION_FRAME_BYTES));
    }
}
