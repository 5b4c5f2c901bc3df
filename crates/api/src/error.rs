//! The one error envelope of the HTTP API: `{"detail": "<human text>", "code": "<stable code>"}`.
//!
//! `detail` keeps Django REST Framework's wording where the original app had one, so its
//! clients show the same messages; `code` is new, snake_case, and never changes once
//! published. This is the only place that turns domain errors into HTTP statuses. Internal
//! causes are logged here, once, and never sent to the client.

use poem::http::StatusCode;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};
use ringline_domain::{Action, CallServiceError, InitiateRefusal, TransitionError, is_store_unavailable};

/// The error body of every non-2xx response.
#[derive(Debug, Clone, Object)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub detail: String,
    /// What went wrong, for programs: a stable snake_case code.
    pub code: String,
}

/// Every error an operation can answer with.
#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "ApiError::from_request_error")]
pub enum ApiError {
    /// The request is malformed or asks for something impossible.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No token, or an invalid, expired or non-access token.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>, #[oai(header = "WWW-Authenticate")] String),
    /// Authenticated, but this user may not do this.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// No such resource, or not one the user may see.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The request conflicts with the current state (busy lines, races).
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The request body is larger than the server accepts.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The request has a body that is not `application/json`, or none where one is required.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// An unexpected server failure; details are in the server log only.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// A dependency (the database) is unavailable; retry after the seconds `Retry-After` gives.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] u32),
}

/// What `Retry-After` says on a 503: long enough for a restarting database or a failover, short
/// enough that a ringing call is not lost to the wait.
pub(crate) const RETRY_AFTER_SECS: u32 = 2;

fn body(detail: impl Into<String>, code: &str) -> Json<ErrorBody> {
    Json(ErrorBody { detail: detail.into(), code: code.to_owned() })
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>, code: &str) -> Self {
        Self::BadRequest(body(detail, code))
    }

    pub fn unauthorized(detail: impl Into<String>, code: &str) -> Self {
        Self::Unauthorized(body(detail, code), "Bearer realm=\"api\"".to_owned())
    }

    pub fn forbidden(detail: impl Into<String>, code: &str) -> Self {
        Self::Forbidden(body(detail, code))
    }

    pub fn not_found(detail: impl Into<String>, code: &str) -> Self {
        Self::NotFound(body(detail, code))
    }

    pub fn conflict(detail: impl Into<String>, code: &str) -> Self {
        Self::Conflict(body(detail, code))
    }

    /// A dependency did not answer: `503` with `code` and a `Retry-After`.
    pub fn unavailable(detail: impl Into<String>, code: &str) -> Self {
        Self::Unavailable(body(detail, code), RETRY_AFTER_SECS)
    }

    /// Logs `cause` and answers a generic 500, or `503 database_unavailable` when the cause is
    /// a store that could not be reached (nothing is wrong with the request or the server; the
    /// client should retry shortly).
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        if is_store_unavailable(cause) {
            // The first refusal of each second: under load an outage fails thousands.
            if ringline_signaling::throttle::database_outage_log_due() {
                tracing::warn!(error = %cause, "request refused: the database is unavailable");
            }
            return Self::unavailable("The database is not reachable; try again shortly.", "database_unavailable");
        }
        tracing::error!(error = %cause, "request failed on an internal error");
        Self::Internal(body("A server error occurred.", "internal_error"))
    }

    /// A request that poem-openapi could not parse (bad JSON, wrong types, missing token).
    fn from_request_error(error: poem::Error) -> Self {
        let status = error.status();
        let text = error.to_string();
        let (detail, code) = envelope_for(status, &text);
        match status {
            StatusCode::UNAUTHORIZED => Self::unauthorized(detail, code),
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge(body(detail, code)),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType(body(detail, code)),
            StatusCode::NOT_FOUND => Self::not_found(detail, code),
            status if status.is_server_error() => Self::internal(&error),
            _ => Self::bad_request(detail, code),
        }
    }
}

/// Detail and code for an error poem raised outside our handlers (routing, parsing, limits).
pub(crate) fn envelope_for(status: StatusCode, text: &str) -> (String, &'static str) {
    match status {
        StatusCode::UNAUTHORIZED => ("Authentication credentials were not provided.".to_owned(), "not_authenticated"),
        StatusCode::NOT_FOUND => ("Not found.".to_owned(), "not_found"),
        StatusCode::METHOD_NOT_ALLOWED => ("Method not allowed.".to_owned(), "method_not_allowed"),
        StatusCode::PAYLOAD_TOO_LARGE => ("Request body is too large.".to_owned(), "payload_too_large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("Unsupported media type; send application/json.".to_owned(), "unsupported_media_type")
        }
        status if status.is_server_error() => ("A server error occurred.".to_owned(), "internal_error"),
        // Parse errors name the field and what was expected, never echo the value.
        _ => (format!("Malformed request: {}", without_values(text)), "parse_error"),
    }
}

/// poem-openapi's parse errors quote the value they rejected (`…, found <value>. (occurred
/// while parsing …)`); a value can be anything a client pasted, tokens included, so cut it.
fn without_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(", found ") {
        out.push_str(&rest[..start]);
        match rest[start..].find(". (") {
            Some(end) => rest = &rest[start + end..],
            None => {
                rest = "";
                out.push('.');
            }
        }
    }
    out.push_str(rest);
    out
}

impl From<CallServiceError> for ApiError {
    fn from(error: CallServiceError) -> Self {
        match error {
            CallServiceError::ReceiverNotFound => Self::not_found("Receiver not found.", "receiver_not_found"),
            CallServiceError::ConversationNotFound => {
                Self::not_found("Conversation not found.", "conversation_not_found")
            }
            CallServiceError::NotInConversation => {
                Self::forbidden("You are not a participant in this conversation.", "not_conversation_participant")
            }
            CallServiceError::ReceiverNotInConversation => Self::bad_request(
                "The receiver is not a participant in this conversation.",
                "receiver_not_in_conversation",
            ),
            CallServiceError::Refused(InitiateRefusal::SelfCall) => {
                Self::bad_request("You cannot call yourself.", "self_call")
            }
            CallServiceError::Refused(InitiateRefusal::CallerBusy) => {
                Self::conflict("You are already in a call.", "caller_busy")
            }
            CallServiceError::Refused(InitiateRefusal::ReceiverBusy) => {
                Self::conflict("The user is busy on another call.", "user_busy")
            }
            CallServiceError::CallNotFound => Self::not_found("Not found.", "call_not_found"),
            CallServiceError::Transition(transition) => transition.into(),
            CallServiceError::StillRacing => {
                Self::conflict("The call changed while it was being updated; try again.", "call_conflict")
            }
            CallServiceError::Repository(error) => Self::internal(&error),
            CallServiceError::Directory(error) => Self::internal(&error),
        }
    }
}

impl From<TransitionError> for ApiError {
    fn from(error: TransitionError) -> Self {
        match error {
            TransitionError::SelfCall => Self::bad_request("You cannot call yourself.", "self_call"),
            TransitionError::NotAParty => Self::not_found("Not found.", "call_not_found"),
            TransitionError::ReceiverOnly(action) => {
                let verb = match action {
                    Action::Accept => "accept",
                    Action::Reject => "reject",
                    Action::End | Action::Expire | Action::Abandon => "end",
                };
                Self::forbidden(format!("You can only {verb} calls where you are the receiver."), "receiver_only")
            }
            TransitionError::InvalidState { status, .. } => {
                Self::bad_request(format!("Call is already {status}."), "invalid_call_state")
            }
            TransitionError::NotYetDue => Self::bad_request("The call is still ringing.", "invalid_call_state"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parse_errors_keep_the_field_but_not_the_value() {
        let text = "parse request payload error: Expected input type \"string\", found {\"secret\":1}. (occurred while parsing \"Body\")";
        let cleaned = super::without_values(text);
        assert_eq!(
            cleaned,
            "parse request payload error: Expected input type \"string\". (occurred while parsing \"Body\")"
        );
        assert_eq!(super::without_values("Expected x, found 12"), "Expected x.");
        assert_eq!(super::without_values("EOF while parsing"), "EOF while parsing");
    }
}
