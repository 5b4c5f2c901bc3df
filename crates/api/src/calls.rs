//! `/api/calls/…`: the call lifecycle over REST, as the original app's clients use it.

use std::sync::Arc;

use poem::Request;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use ringline_domain::{
    CallAction, CallId, CallListFilter, CallMoment, CallServiceError, CallType, ConversationId, ErrorCode,
    HangupReason, InitiateCommand, Initiated, PolicyRefusal, Refusal, UserId,
};
use ringline_signaling::Signaling;

use crate::ApiTags;
use crate::auth::Authenticator;
use crate::error::{ApiError, ErrorBody};
use crate::models::{CallJson, CallPage, ContactList, InitiateBody, IntegerParam, UserIdFilter, UserJson};
use crate::pagination;
use crate::quality::{QualityJson, QualityReportBody};
use crate::security::{BearerAuth, authenticate};

/// The most contacts `GET /api/users/me/contacts/` lists.
const MAX_CONTACTS: u32 = 200;

/// The call endpoints. Dependencies are fields, so a missing one is a compile error.
#[derive(Debug)]
pub struct CallsApi {
    signaling: Arc<Signaling>,
    auth: Arc<dyn Authenticator>,
}

impl CallsApi {
    pub fn new(signaling: Arc<Signaling>, auth: Arc<dyn Authenticator>) -> Self {
        Self { signaling, auth }
    }

    async fn to_json(&self, call: &ringline_domain::Call) -> Result<CallJson, ApiError> {
        let profiles = self.signaling.parties_of(call).await.map_err(|error| ApiError::internal(&error))?;
        Ok(CallJson::new(call, &profiles))
    }

    async fn act(
        &self,
        req: &Request,
        auth: BearerAuth,
        id: &str,
        action: CallAction,
    ) -> Result<Json<CallJson>, ApiError> {
        let user = authenticate(self.auth.as_ref(), req, &auth).await?;
        let id = parse_call_id(id)?;
        let outcome = self.signaling.act(&user, id, action, None).await?;
        Ok(Json(self.to_json(outcome.call()).await?))
    }
}

/// The call a request names; recorded as the request's `call_id` for its logs.
fn parse_call_id(raw: &str) -> Result<CallId, ApiError> {
    let id: CallId = raw.parse().map_err(|_| ApiError::new(ErrorCode::CallNotFound))?;
    tracing::Span::current().record("call_id", id.get());
    Ok(id)
}

#[derive(Debug, ApiResponse)]
pub enum InitiateResponse {
    /// A new call is ringing the receiver.
    #[oai(status = 201)]
    Created(Json<CallJson>),
    /// Glare: the receiver was already calling you, so that call was answered instead; it is
    /// returned with status `active` (you are its receiver).
    #[oai(status = 200)]
    AnsweredCrossingCall(Json<CallJson>),
    /// `rate_limited`: you started too many calls in the last minute, or this user left too
    /// many of your calls unanswered in the last ten; nothing was created. Try again after the
    /// seconds `Retry-After` gives.
    #[oai(status = 429)]
    RateLimited(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
}

/// What `Retry-After` says on a refused report: the window is a minute; after a few seconds
/// the oldest report in it may have aged out.
const QUALITY_RETRY_AFTER_SECS: u32 = 10;

#[derive(Debug, ApiResponse)]
pub enum QualityAccepted {
    /// Taken: the call's quality summary with it.
    #[oai(status = 202)]
    Accepted(Json<Box<QualityJson>>),
    /// `too_many_quality_reports`: more than 6 reports from you in the last minute (or 2000
    /// for the call); try again after the seconds `Retry-After` gives.
    #[oai(status = 429)]
    TooMany(Json<ErrorBody>, #[oai(header = "Retry-After")] u32),
}

#[OpenApi(tag = "ApiTags::Calls")]
impl CallsApi {
    /// Start a call
    ///
    /// Rings `receiver_id`. Refused when calling yourself (400 `self_call`), when the receiver
    /// does not take your calls (403 `call_not_allowed`: a block either way, their privacy
    /// setting or the host application's policy, indistinguishably), when you call too often
    /// (429 `rate_limited`), when you are already on a call (409 `caller_busy`), or when the
    /// receiver is (409 `user_busy`). A receiver in do-not-disturb is not rung, and you cannot
    /// tell: the call rings for you and ends as missed. If the receiver is already calling you,
    /// their call is answered instead (200).
    #[oai(path = "/api/calls/initiate/", method = "post", operation_id = "calls_initiate")]
    async fn initiate(
        &self,
        req: &Request,
        auth: BearerAuth,
        body: Json<InitiateBody>,
    ) -> Result<InitiateResponse, ApiError> {
        let caller = authenticate(self.auth.as_ref(), req, &auth).await?;
        let body = body.0;
        let receiver = match body.receiver_id.0 {
            Some(id) if !id.0.is_empty() => id.0,
            _ => return Err(ApiError::new(ErrorCode::ReceiverIdRequired)),
        };
        let call_type = match body.call_type {
            None => CallType::default(),
            Some(raw) => raw.0.parse().map_err(|_| ApiError::new(ErrorCode::InvalidCallType))?,
        };
        let conversation = match body.conversation_id {
            Some(id) if !id.0.is_empty() => {
                Some(id.0.parse::<ConversationId>().map_err(|_| ApiError::new(ErrorCode::InvalidConversationId))?)
            }
            _ => None,
        };
        // An id that cannot exist is, to the caller, a receiver that does not exist.
        let receiver = UserId::parse(receiver).map_err(|_| ApiError::new(ErrorCode::ReceiverNotFound))?;
        let command = InitiateCommand { receiver, call_type, conversation };
        let initiated = match self.signaling.initiate(&caller, command).await {
            Ok(initiated) => initiated,
            Err(error @ CallServiceError::Policy(refusal)) => {
                // The reason only: who called whom is not the log's business.
                tracing::info!(reason = refusal.reason(), "call refused by the call policy");
                if let PolicyRefusal::RateLimited { retry_after, .. } = refusal {
                    let body = crate::error::body_of(&Refusal::from(&error));
                    return Ok(InitiateResponse::RateLimited(body, retry_after.as_secs()));
                }
                return Err(error.into());
            }
            Err(error) => return Err(error.into()),
        };
        let json = Json(self.to_json(initiated.call()).await?);
        Ok(match initiated {
            Initiated::Ringing(_) => InitiateResponse::Created(json),
            Initiated::AnsweredCrossingCall(_) => InitiateResponse::AnsweredCrossingCall(json),
        })
    }

    /// Accept a ringing call
    ///
    /// Only the receiver may accept, and only while the call rings.
    #[oai(path = "/api/calls/:id/accept/", method = "post", operation_id = "calls_accept")]
    async fn accept(
        &self,
        req: &Request,
        auth: BearerAuth,
        id: Path<IntegerParam>,
    ) -> Result<Json<CallJson>, ApiError> {
        self.act(req, auth, &id.0.0, CallAction::Accept).await
    }

    /// Say the call rings on this device
    ///
    /// For a callee's device that shows an incoming call without a socket (a phone woken by a
    /// push): the same as the socket's `call.ringing`. The first report is the call's `rang_at`
    /// and the caller's devices get `call.ringing`, once per call; later reports change
    /// nothing. Only the receiver, only while the call rings.
    #[oai(path = "/api/calls/:id/ringing/", method = "post", operation_id = "calls_ringing")]
    async fn ringing(
        &self,
        req: &Request,
        auth: BearerAuth,
        id: Path<IntegerParam>,
    ) -> Result<Json<CallJson>, ApiError> {
        let user = authenticate(self.auth.as_ref(), req, &auth).await?;
        let id = parse_call_id(&id.0.0)?;
        let service = self.signaling.service();
        let call = match service.record_moment(&user, id, CallMoment::Rang, None).await? {
            Some(call) => call,
            None => service.get(&user, id).await?,
        };
        Ok(Json(self.to_json(&call).await?))
    }

    /// Decline a ringing call
    ///
    /// Only the receiver may decline, and only while the call rings. Declining a call that is
    /// already declined succeeds and changes nothing.
    #[oai(path = "/api/calls/:id/reject/", method = "post", operation_id = "calls_reject")]
    async fn reject(
        &self,
        req: &Request,
        auth: BearerAuth,
        id: Path<IntegerParam>,
    ) -> Result<Json<CallJson>, ApiError> {
        self.act(req, auth, &id.0.0, CallAction::Reject).await
    }

    /// Hang up
    ///
    /// Either party. An answered call ends and its duration is measured by the server (a
    /// `duration_seconds` in the body is ignored); a ringing call ended by the caller is
    /// cancelled, by the receiver declined. Ending a call that is already over succeeds and
    /// changes nothing, so clients may retry.
    #[oai(path = "/api/calls/:id/end/", method = "post", operation_id = "calls_end")]
    async fn end(&self, req: &Request, auth: BearerAuth, id: Path<IntegerParam>) -> Result<Json<CallJson>, ApiError> {
        self.act(req, auth, &id.0.0, CallAction::End(HangupReason::UserHangup)).await
    }

    /// List your calls
    ///
    /// The calls you placed or received, newest first, ten a page. `user_id` keeps only the
    /// calls with that user.
    #[oai(path = "/api/calls/", method = "get", operation_id = "calls_list")]
    async fn list(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// 1-based page number.
        page: Query<Option<String>>,
        /// Only calls with this user.
        user_id: Query<Option<UserIdFilter>>,
    ) -> Result<Json<CallPage>, ApiError> {
        let viewer = authenticate(self.auth.as_ref(), req, &auth).await?;
        let page = pagination::requested(page.0.as_deref())?;
        let with_user = match user_id.0.as_ref().map(|id| id.0.as_str()) {
            None | Some("") => None,
            Some(raw) => Some(UserId::parse(raw).map_err(|_| ApiError::new(ErrorCode::InvalidUserId))?),
        };
        let filter = CallListFilter { with_user: with_user.clone() };
        let found = self.signaling.service().list(&viewer, &filter, page).await?;
        let (next, previous) = pagination::links(req, page, found.total, with_user.as_ref())?;
        let mut ids: Vec<UserId> =
            found.items.iter().flat_map(|call| [call.caller().clone(), call.receiver().clone()]).collect();
        ids.sort();
        ids.dedup();
        let profiles =
            self.signaling.service().directory().users(&ids).await.map_err(|error| ApiError::internal(&error))?;
        Ok(Json(CallPage {
            count: found.total,
            next,
            previous,
            results: found.items.iter().map(|call| CallJson::new(call, &profiles)).collect(),
        }))
    }

    /// Who you are
    ///
    /// Your profile as the directory knows it (what the other party of your calls sees), for
    /// a client to show who is signed in.
    #[oai(path = "/api/users/me/", method = "get", operation_id = "users_me")]
    async fn me(&self, req: &Request, auth: BearerAuth) -> Result<Json<UserJson>, ApiError> {
        let viewer = authenticate(self.auth.as_ref(), req, &auth).await?;
        let profile =
            self.signaling.service().directory().user(&viewer).await.map_err(|error| ApiError::internal(&error))?;
        Ok(Json(profile.map_or_else(|| UserJson::unknown(&viewer), |profile| UserJson::from_profile(&profile))))
    }

    /// Your contacts
    ///
    /// The people you share a conversation with, from the directory, for a contact list: each
    /// once, ordered by username, at most 200. Nobody else is listed.
    #[oai(path = "/api/users/me/contacts/", method = "get", operation_id = "users_me_contacts")]
    async fn contacts(&self, req: &Request, auth: BearerAuth) -> Result<Json<ContactList>, ApiError> {
        let viewer = authenticate(self.auth.as_ref(), req, &auth).await?;
        let contacts = self
            .signaling
            .service()
            .directory()
            .contacts_of(&viewer, MAX_CONTACTS)
            .await
            .map_err(|error| ApiError::internal(&error))?;
        Ok(Json(ContactList { results: contacts.iter().map(UserJson::from_profile).collect() }))
    }

    /// Report call quality
    ///
    /// A party's client reports what `RTCPeerConnection.getStats()` says about the call's
    /// media (round trip, jitter, loss, bitrates, the selected candidate pair, setup time, its
    /// own MOS): every few seconds during the call and once at its end. The server keeps a
    /// summary per party with the call, scores it (MOS) and tags it; the call's `quality`
    /// shows them. Only a party (404 otherwise, as for every call), only for an answered call
    /// (409 `call_not_answered`), until 10 minutes after its end (409
    /// `quality_report_too_late`), at most 6 reports a minute per party (429
    /// `too_many_quality_reports`); a field out of range is 400 `invalid_quality_report`.
    #[oai(path = "/api/calls/:id/quality/", method = "post", operation_id = "calls_quality")]
    async fn quality(
        &self,
        req: &Request,
        auth: BearerAuth,
        id: Path<IntegerParam>,
        body: Json<QualityReportBody>,
    ) -> Result<QualityAccepted, ApiError> {
        let reporter = authenticate(self.auth.as_ref(), req, &auth).await?;
        let id = parse_call_id(&id.0.0)?;
        let report = body.0.into_report().map_err(CallServiceError::InvalidReport)?;
        match self.signaling.report_quality(&reporter, id, &report).await {
            Ok(call) => {
                let quality = call.quality().cloned().unwrap_or_default();
                Ok(QualityAccepted::Accepted(Json(Box::new(QualityJson::new(&quality, call.end_reason())))))
            }
            Err(CallServiceError::TooManyReports) => {
                let code = ErrorCode::TooManyQualityReports;
                let body = ErrorBody { detail: code.message().to_owned(), code: code.as_str().to_owned() };
                Ok(QualityAccepted::TooMany(Json(body), QUALITY_RETRY_AFTER_SECS))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// One call
    ///
    /// 404 unless you are its caller or receiver: nobody learns that other calls exist.
    #[oai(path = "/api/calls/:id/", method = "get", operation_id = "calls_get")]
    async fn get(&self, req: &Request, auth: BearerAuth, id: Path<IntegerParam>) -> Result<Json<CallJson>, ApiError> {
        let viewer = authenticate(self.auth.as_ref(), req, &auth).await?;
        let call = self.signaling.service().get(&viewer, parse_call_id(&id.0.0)?).await?;
        Ok(Json(self.to_json(&call).await?))
    }
}
