//! The one error envelope of the HTTP API: `{"detail": "<human text>", "code": "<stable code>"}`.
//!
//! `detail` keeps Django REST Framework's wording where the original app had one, so its
//! clients show the same messages; `code` is new, snake_case, and never changes once
//! published. Codes, statuses and messages come from the domain's catalogue
//! ([`ringline_domain::ErrorCode`]); this is the only place that turns them into HTTP
//! responses. Internal causes are logged here, once, and never sent to the client.

use poem::http::StatusCode;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};
use std::borrow::Cow;

use ringline_domain::{CallServiceError, ErrorCode, Refusal, is_store_unavailable};

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

impl ApiError {
    /// `code` with its catalogue message.
    pub fn new(code: ErrorCode) -> Self {
        Refusal::new(code).into()
    }

    /// `code` with a more specific `detail`.
    pub fn with_detail(code: ErrorCode, detail: impl Into<Cow<'static, str>>) -> Self {
        Refusal::with_detail(code, detail).into()
    }

    /// Logs `cause` and answers a generic 500, or `503 database_unavailable` when the cause is
    /// a store that could not be reached (nothing is wrong with the request or the server; the
    /// client should retry shortly).
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        if is_store_unavailable(cause) {
            log_outage(cause);
            return Self::new(ErrorCode::DatabaseUnavailable);
        }
        tracing::error!(error = %cause, "request failed on an internal error");
        Self::new(ErrorCode::InternalError)
    }

    /// A request that poem-openapi could not parse (bad JSON, wrong types, missing token).
    fn from_request_error(error: poem::Error) -> Self {
        let status = error.status();
        if status.is_server_error() {
            return Self::internal(&error);
        }
        refusal_for(status, &error.to_string()).into()
    }
}

/// The first refusal of each second is logged: under load an outage fails thousands.
fn log_outage(cause: &dyn std::fmt::Display) {
    if ringline_signaling::throttle::database_outage_log_due() {
        tracing::warn!(error = %cause, "request refused: the database is unavailable");
    }
}

/// The envelope of `refusal`, for an operation that declares a status of its own (a 429).
pub(crate) fn body_of(refusal: &Refusal) -> Json<ErrorBody> {
    Json(ErrorBody { detail: refusal.detail.clone().into_owned(), code: refusal.code.as_str().to_owned() })
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        let status = refusal.code.http_status();
        let body = Json(ErrorBody { detail: refusal.detail.into_owned(), code: refusal.code.as_str().to_owned() });
        match status {
            400 => Self::BadRequest(body),
            401 => Self::Unauthorized(body, WWW_AUTHENTICATE.to_owned()),
            403 => Self::Forbidden(body),
            404 => Self::NotFound(body),
            409 => Self::Conflict(body),
            413 => Self::PayloadTooLarge(body),
            415 => Self::UnsupportedMediaType(body),
            503 => Self::Unavailable(body, RETRY_AFTER_SECS),
            500..=599 => Self::Internal(body),
            // The client errors no operation declares (405: routing's; 429: the listener's,
            // and the operations that declare their own) keep the request-error status they
            // always had here.
            _ => Self::BadRequest(body),
        }
    }
}

impl From<CallServiceError> for ApiError {
    fn from(error: CallServiceError) -> Self {
        let refusal = Refusal::from(&error);
        match refusal.code {
            ErrorCode::DatabaseUnavailable => log_outage(&error),
            ErrorCode::InternalError => tracing::error!(%error, "request failed on an internal error"),
            _ => {}
        }
        refusal.into()
    }
}

/// What `WWW-Authenticate` says on a 401.
const WWW_AUTHENTICATE: &str = "Bearer realm=\"api\"";

/// The refusal for an error poem raised outside our handlers (routing, parsing, limits).
pub(crate) fn refusal_for(status: StatusCode, text: &str) -> Refusal {
    match status {
        StatusCode::UNAUTHORIZED => Refusal::new(ErrorCode::NotAuthenticated),
        StatusCode::NOT_FOUND => Refusal::new(ErrorCode::NotFound),
        StatusCode::METHOD_NOT_ALLOWED => Refusal::new(ErrorCode::MethodNotAllowed),
        StatusCode::PAYLOAD_TOO_LARGE => Refusal::new(ErrorCode::PayloadTooLarge),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Refusal::new(ErrorCode::UnsupportedMediaType),
        status if status.is_server_error() => Refusal::new(ErrorCode::InternalError),
        // Parse errors name the field and what was expected, never echo the value.
        _ => Refusal::with_detail(ErrorCode::ParseError, format!("Malformed request: {}", without_values(text))),
    }
}

/// A whole response for `refusal`, for the places outside poem-openapi's operations (routing
/// errors, CORS, connection caps): the same envelope with the catalogue's status, and the
/// headers that status calls for (`Retry-After` on 429 and 503, `WWW-Authenticate` on 401).
pub fn refusal_response(refusal: &Refusal) -> poem::Response {
    let status = StatusCode::from_u16(refusal.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response =
        poem::Response::builder().status(status).content_type("application/json").body(envelope_json(refusal));
    let headers = response.headers_mut();
    if status == StatusCode::UNAUTHORIZED {
        headers.insert("www-authenticate", poem::http::HeaderValue::from_static(WWW_AUTHENTICATE));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        headers.insert("retry-after", poem::http::HeaderValue::from(RETRY_AFTER_SECS));
    }
    response
}

/// `{"detail": …, "code": …}` as JSON text.
pub fn envelope_json(refusal: &Refusal) -> String {
    serde_json::json!({ "detail": refusal.detail, "code": refusal.code.as_str() }).to_string()
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
