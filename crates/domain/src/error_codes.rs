//! The catalogue of every error Ringline answers with: [`ErrorCode`], each with its stable
//! `code`, the HTTP status a REST response carries, and the message sent when nothing more
//! specific is said; and [`Refusal`], one refusal (a code and its `detail`), with the one mapping
//! from the domain's errors that REST responses and socket error frames share.
//!
//! A code is a contract: clients branch on it, so it never changes once published. Every code
//! is documented in `docs/api.md` (REST) or `docs/protocol.md` (socket error frames); a test
//! (`tests/tests/end_to_end/error_codes.rs`) checks that, and that no code is written as a
//! string anywhere else in the sources.

use std::borrow::Cow;

use crate::call::TransitionError;
use crate::policy::{PolicyRefusal, RateCap};
use crate::ports::is_store_unavailable;
use crate::rules::InitiateRefusal;
use crate::service::CallServiceError;
use crate::values::Action;

macro_rules! catalogue {
    ($($(#[$doc:meta])* $variant:ident => ($code:literal, $status:literal, $message:literal),)+) => {
        /// Every error code, with its HTTP status and default message.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)+
        }

        impl ErrorCode {
            /// Every entry, in catalogue order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),+];

            /// The stable snake_case code clients read.
            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)+ }
            }

            /// The status of a REST response with this code. Codes only sockets send carry
            /// the status that would fit, for the catalogue's sake; sockets send no status.
            pub const fn http_status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)+ }
            }

            /// The `detail` when the place that refuses has nothing more specific to say.
            pub const fn message(self) -> &'static str {
                match self { $(ErrorCode::$variant => $message,)+ }
            }
        }
    };
}

catalogue! {
    // --- a request or frame the server cannot read ---
    /// Malformed JSON or wrong field types in a REST request.
    ParseError => ("parse_error", 400, "Malformed request."),
    /// A frame that is not a JSON object, or has a field of the wrong type.
    MalformedFrame => ("malformed_frame", 400, "The frame is not a valid JSON object."),
    /// A frame without `type` or a field its type requires.
    MissingField => ("missing_field", 400, "The frame lacks a field it needs."),
    /// A frame `type` the server does not know.
    UnknownType => ("unknown_type", 400, "Unknown frame type."),
    /// A binary frame.
    UnsupportedFrame => ("unsupported_frame", 415, "Send JSON text frames."),
    /// A text frame over the size sockets accept.
    FrameTooLarge => ("frame_too_large", 413, "The frame is too large."),
    /// A `call.end` reason the server does not know.
    InvalidReason => ("invalid_reason", 400, "reason must be user_hangup, ice_failed or user_media_failed."),
    /// A typing indicator on a notification socket.
    WrongSocket => ("wrong_socket", 400, "Typing indicators belong on a chat socket."),
    PayloadTooLarge => ("payload_too_large", 413, "Request body is too large."),
    UnsupportedMediaType => ("unsupported_media_type", 415, "Unsupported media type; send application/json."),
    MethodNotAllowed => ("method_not_allowed", 405, "Method not allowed."),
    NotFound => ("not_found", 404, "Not found."),
    InvalidPage => ("invalid_page", 404, "Invalid page."),

    // --- starting a call ---
    ReceiverIdRequired => ("receiver_id_required", 400, "receiver_id is required."),
    InvalidCallType => ("invalid_call_type", 400, "call_type must be 'voice' or 'video'."),
    InvalidConversationId => ("invalid_conversation_id", 400, "conversation_id must be a positive integer."),
    SelfCall => ("self_call", 400, "You cannot call yourself."),
    ReceiverNotInConversation => (
        "receiver_not_in_conversation", 400, "The receiver is not a participant in this conversation."
    ),
    NotConversationParticipant => (
        "not_conversation_participant", 403, "You are not a participant in this conversation."
    ),
    ReceiverNotFound => ("receiver_not_found", 404, "Receiver not found."),
    ConversationNotFound => ("conversation_not_found", 404, "Conversation not found."),
    UserBusy => ("user_busy", 409, "The user is busy on another call."),
    /// A block (either way), the callee's privacy or the host application's policy: one code
    /// and one message for every reason, so the caller cannot tell which.
    CallNotAllowed => ("call_not_allowed", 403, "You cannot call this user."),
    CallerBusy => ("caller_busy", 409, "You are already in a call."),

    // --- acting on a call ---
    /// No such call, or one the user is not a party of (indistinguishable on purpose).
    CallNotFound => ("call_not_found", 404, "Not found."),
    InvalidCallState => ("invalid_call_state", 400, "The call's state does not allow that."),
    ReceiverOnly => ("receiver_only", 403, "Only the receiver may do that."),
    CallConflict => ("call_conflict", 409, "The call changed while it was being updated; try again."),
    /// The call was answered on another of the callee's devices (sockets only).
    AnsweredElsewhere => ("answered_elsewhere", 409, "The call was answered on another of your devices."),
    /// Too many frames on a socket, or too many calls started (REST, with `Retry-After`).
    RateLimited => ("rate_limited", 429, "Too many frames; some were dropped. Slow down."),

    // --- call quality reports ---
    /// A quality report with a field out of its range, an unknown candidate type or nothing in it.
    InvalidQualityReport => ("invalid_quality_report", 400, "The quality report is not valid."),
    /// A quality report for a call that was never answered: no media flowed.
    CallNotAnswered => ("call_not_answered", 409, "The call was never answered; there is no media to report on."),
    /// A quality report long after the call ended.
    QualityReportTooLate => (
        "quality_report_too_late", 409, "The call ended too long ago to take quality reports."
    ),
    /// More quality reports than a party may send.
    TooManyQualityReports => (
        "too_many_quality_reports", 429, "Too many quality reports for this call; send at most 6 a minute."
    ),

    // --- who is asking ---
    NotAuthenticated => ("not_authenticated", 401, "Authentication credentials were not provided."),
    TokenNotValid => ("token_not_valid", 401, "Given token not valid for any token type"),
    /// The token's user was removed (or is unknown, and first-use registration is off).
    AccountNotFound => ("user_not_found", 401, "User not found"),
    /// The token's user was turned off by the operator.
    UserInactive => ("user_inactive", 401, "User is inactive"),
    OriginNotAllowed => (
        "origin_not_allowed", 403, "Requests from this origin are not allowed (RINGLINE_CORS_ALLOWED_ORIGINS)."
    ),

    // --- the rest of the API ---
    InvalidUserId => ("invalid_user_id", 400, "user_id is not a valid user id."),
    InvalidUsername => ("invalid_username", 400, "username must be 1 to 150 characters."),
    InvalidPushSubscription => ("invalid_push_subscription", 400, "The push subscription is not valid."),
    /// A call setting with a value it cannot take, or a change that names none.
    InvalidCallSettings => ("invalid_call_settings", 400, "The call settings are not valid."),
    CannotBlockSelf => ("cannot_block_self", 400, "You cannot block yourself."),
    /// A device token, platform or provider that cannot be registered.
    InvalidDeviceToken => ("invalid_device_token", 400, "The device token is not valid."),
    /// A user the request names does not exist (admin and demo endpoints).
    UserNotFound => ("user_not_found", 404, "User not found."),
    NotificationNotFound => ("notification_not_found", 404, "Not found."),
    PushSubscriptionNotFound => (
        "push_subscription_not_found", 404, "You have no push subscription at this endpoint."
    ),
    ParticipantNotFound => ("participant_not_found", 404, "Not a participant."),
    /// No device token of yours has this id (another user's is not yours to see).
    DeviceTokenNotFound => ("device_token_not_found", 404, "Not found."),
    DemoDisabled => (
        "demo_disabled", 404, "Demo sign-in is off: it exists only with the development JWT secret."
    ),
    /// Adding an unknown user to a conversation (admin).
    UnknownUser => ("unknown_user", 409, "Unknown user: create it first."),
    AdminTokenInvalid => ("admin_token_invalid", 401, "Invalid admin token."),
    AdminDisabled => ("admin_disabled", 403, "The admin API is disabled: set RINGLINE_ADMIN_TOKEN to enable it."),

    // --- the server ---
    /// Details are in the server log only.
    InternalError => ("internal_error", 500, "A server error occurred."),
    /// The database does not answer; nothing was done; retry shortly.
    DatabaseUnavailable => ("database_unavailable", 503, "The database is not reachable; try again shortly."),
    /// The user directory could not vouch for a token's user.
    ServiceUnavailable => ("service_unavailable", 503, "Service temporarily unavailable."),
    TooManyConnections => (
        "too_many_connections", 503, "The server has too many open connections; try again shortly."
    ),
    TooManyConnectionsFromAddress => (
        "too_many_connections_from_address", 429,
        "Too many connections are open from your address; close some and try again."
    ),
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One refusal: what went wrong for programs (`code`) and for people (`detail`). REST answers
/// it as `{"detail", "code"}` with the code's status; a socket as an error frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub detail: Cow<'static, str>,
}

impl Refusal {
    /// `code` with its catalogue message.
    pub const fn new(code: ErrorCode) -> Self {
        Self { code, detail: Cow::Borrowed(code.message()) }
    }

    /// `code` with a more specific `detail`.
    pub fn with_detail(code: ErrorCode, detail: impl Into<Cow<'static, str>>) -> Self {
        Self { code, detail: detail.into() }
    }

    /// Whether the refusal hides a failure the server should log (the client is told only
    /// that it happened).
    pub const fn is_server_failure(&self) -> bool {
        matches!(self.code, ErrorCode::InternalError | ErrorCode::DatabaseUnavailable)
    }
}

impl From<ErrorCode> for Refusal {
    fn from(code: ErrorCode) -> Self {
        Self::new(code)
    }
}

impl From<&TransitionError> for Refusal {
    fn from(error: &TransitionError) -> Self {
        match error {
            TransitionError::SelfCall => Self::new(ErrorCode::SelfCall),
            TransitionError::NotAParty => Self::new(ErrorCode::CallNotFound),
            TransitionError::ReceiverOnly(action) => {
                let verb = match action {
                    Action::Accept => "accept",
                    Action::Reject => "reject",
                    Action::ConfirmRinging => "report ringing for",
                    Action::End | Action::Expire | Action::Abandon | Action::ReportVideo => "end",
                };
                Self::with_detail(
                    ErrorCode::ReceiverOnly,
                    format!("You can only {verb} calls where you are the receiver."),
                )
            }
            TransitionError::InvalidState { status, .. } => {
                Self::with_detail(ErrorCode::InvalidCallState, format!("Call is already {status}."))
            }
            TransitionError::NotYetDue => Self::with_detail(ErrorCode::InvalidCallState, "The call is still ringing."),
        }
    }
}

/// The one mapping of the call use cases' errors, for REST and sockets alike. A failure of the
/// store or directory becomes `database_unavailable` when the store could not be reached, and
/// `internal_error` otherwise; the caller logs those ([`Refusal::is_server_failure`]).
impl From<&CallServiceError> for Refusal {
    fn from(error: &CallServiceError) -> Self {
        match error {
            CallServiceError::ReceiverNotFound => Self::new(ErrorCode::ReceiverNotFound),
            CallServiceError::ConversationNotFound => Self::new(ErrorCode::ConversationNotFound),
            CallServiceError::NotInConversation => Self::new(ErrorCode::NotConversationParticipant),
            CallServiceError::ReceiverNotInConversation => Self::new(ErrorCode::ReceiverNotInConversation),
            CallServiceError::Refused(InitiateRefusal::SelfCall) => Self::new(ErrorCode::SelfCall),
            CallServiceError::Refused(InitiateRefusal::CallerBusy) => Self::new(ErrorCode::CallerBusy),
            CallServiceError::Refused(InitiateRefusal::ReceiverBusy) => Self::new(ErrorCode::UserBusy),
            CallServiceError::Policy(PolicyRefusal::NotAllowed(_)) => Self::new(ErrorCode::CallNotAllowed),
            CallServiceError::Policy(PolicyRefusal::RateLimited { cap, retry_after }) => {
                let what = match cap {
                    RateCap::CallsPerMinute => "You are starting calls too often",
                    RateCap::UnansweredPerCallee => "This user has not answered your recent calls",
                };
                Self::with_detail(
                    ErrorCode::RateLimited,
                    format!("{what}; try again in {} seconds.", retry_after.as_secs()),
                )
            }
            CallServiceError::CallNotFound => Self::new(ErrorCode::CallNotFound),
            CallServiceError::Transition(transition) => transition.into(),
            CallServiceError::StillRacing => Self::new(ErrorCode::CallConflict),
            CallServiceError::InvalidReport(invalid) => {
                Self::with_detail(ErrorCode::InvalidQualityReport, format!("{invalid}."))
            }
            CallServiceError::NotAnswered => Self::new(ErrorCode::CallNotAnswered),
            CallServiceError::ReportTooLate => Self::new(ErrorCode::QualityReportTooLate),
            CallServiceError::TooManyReports => Self::new(ErrorCode::TooManyQualityReports),
            other if is_store_unavailable(other) => Self::new(ErrorCode::DatabaseUnavailable),
            CallServiceError::Repository(_) | CallServiceError::Directory(_) => Self::new(ErrorCode::InternalError),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    /// A code names one kind of error: two entries share a code only when they are the same
    /// error answered at two statuses (a token's user and a named user, both `user_not_found`).
    #[test]
    fn codes_are_snake_case_and_statuses_are_errors() {
        for code in ErrorCode::ALL {
            let text = code.as_str();
            assert!(text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{text}");
            assert!((400..600).contains(&code.http_status()), "{text}");
            assert!(code.message().len() > 5, "{text}");
        }
        let shared: Vec<_> = ErrorCode::ALL
            .iter()
            .filter(|code| ErrorCode::ALL.iter().filter(|other| other.as_str() == code.as_str()).count() > 1)
            .map(|code| code.as_str())
            .collect();
        assert_eq!(shared, ["user_not_found", "user_not_found"]);
    }
}
