//! `/api/call-settings/` and `/api/call-blocks/`: who may ring the signed-in user (call
//! privacy, do-not-disturb) and whom they block. The rules themselves are the domain's
//! (`ringline_domain::policy`), applied by the call service to every call attempt; these
//! endpoints only read and change what they decide from.

use std::sync::Arc;

use poem::Request;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{MaybeUndefined, ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use ringline_domain::{
    BlockedUser, CallPolicyStore, CallSettings, CallSettingsChange, Clock, ErrorCode, Timestamp, UserId, WhoCanCall,
};
use ringline_signaling::Signaling;
use serde_json::Value;
use std::borrow::Cow;

use crate::ApiTags;
use crate::auth::Authenticator;
use crate::error::ApiError;
use crate::models::{FlexibleId, UserIdParam, UserJson, UtcTime};
use crate::pagination;
use crate::security::{BearerAuth, authenticate};

/// Who may ring you.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum WhoCanCallJson {
    /// Anyone who can find you.
    Everyone,
    /// Only users who share a conversation with you.
    Conversations,
    /// Nobody.
    Nobody,
}

impl From<WhoCanCall> for WhoCanCallJson {
    fn from(who: WhoCanCall) -> Self {
        match who {
            WhoCanCall::Everyone => Self::Everyone,
            WhoCanCall::Conversations => Self::Conversations,
            WhoCanCall::Nobody => Self::Nobody,
        }
    }
}

/// Your call settings.
#[derive(Debug, Object)]
pub struct CallSettingsJson {
    pub who_can_call: WhoCanCallJson,
    /// Calls to you ring none of your devices: the caller hears it ring, and it ends as a
    /// missed call (with its notification) at the ring timeout.
    pub do_not_disturb: bool,
    /// When set, do-not-disturb is on until this moment, whatever `do_not_disturb` says, and
    /// off after it.
    #[oai(nullable)]
    pub do_not_disturb_until: Option<UtcTime>,
    /// Your calls connect only through a TURN relay: the other party never learns your IP
    /// address (`GET /api/turn/ice-servers/` then says `ice_transport_policy: relay`). Calls
    /// may take a moment longer to connect, and need the server's TURN relay.
    pub relay_only: bool,
    /// Call waiting: while you are in an active call, a second call rings you (`call.incoming`
    /// with `"waiting": true`) instead of the caller getting `409 user_busy`; answering it
    /// ends the first call (`end_reason: switched_call`). Off by default.
    pub call_waiting: bool,
}

impl From<CallSettings> for CallSettingsJson {
    fn from(settings: CallSettings) -> Self {
        Self {
            who_can_call: settings.who_can_call.into(),
            do_not_disturb: settings.do_not_disturb,
            do_not_disturb_until: settings.do_not_disturb_until.map(UtcTime),
            relay_only: settings.relay_only,
            call_waiting: settings.call_waiting,
        }
    }
}

/// `who_can_call` in a request: documented as [`WhoCanCallJson`], taken as any string and
/// judged by the handler (400 `invalid_call_settings`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhoCanCallField(pub String);

text_type!(WhoCanCallField, WhoCanCallJson::name(), WhoCanCallJson::schema_ref(), register = WhoCanCallJson::register);
json_text!(WhoCanCallField);

/// A date-time in a request: documented as one, taken as any string and judged by the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateTimeField(pub String);

text_type!(
    DateTimeField,
    "string_date-time",
    MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("string", "date-time")))
);
json_text!(DateTimeField);

/// Body of `PATCH /api/call-settings/`: any of the fields; the others are kept.
#[derive(Debug, Object)]
pub struct CallSettingsPatch {
    pub who_can_call: MaybeUndefined<WhoCanCallField>,
    pub do_not_disturb: MaybeUndefined<bool>,
    /// `null` clears it.
    #[oai(nullable)]
    pub do_not_disturb_until: MaybeUndefined<DateTimeField>,
    pub relay_only: MaybeUndefined<bool>,
    pub call_waiting: MaybeUndefined<bool>,
}

/// A field that may be left out but not set to `null` (only `do_not_disturb_until` clears).
fn not_null<T>(field: MaybeUndefined<T>, name: &'static str) -> Result<Option<T>, ApiError> {
    match field {
        MaybeUndefined::Undefined => Ok(None),
        MaybeUndefined::Null => Err(invalid(name)),
        MaybeUndefined::Value(value) => Ok(Some(value)),
    }
}

/// A user you block.
#[derive(Debug, Object)]
pub struct CallBlockJson {
    pub user: UserJson,
    pub blocked_at: UtcTime,
}

impl From<&BlockedUser> for CallBlockJson {
    fn from(blocked: &BlockedUser) -> Self {
        Self { user: UserJson::from_profile(&blocked.profile), blocked_at: UtcTime(blocked.blocked_at) }
    }
}

/// A page of the users you block, as the call list is paginated.
#[derive(Debug, Object)]
pub struct CallBlockPage {
    pub count: u64,
    #[oai(nullable)]
    pub next: Option<String>,
    #[oai(nullable)]
    pub previous: Option<String>,
    pub results: Vec<CallBlockJson>,
}

/// Body of `POST /api/call-blocks/`.
#[derive(Debug, Object)]
pub struct CallBlockBody {
    /// The user to block: a string or a number.
    pub user_id: FlexibleId,
}

#[derive(Debug, ApiResponse)]
pub enum Blocked {
    /// Blocked (also when they already were).
    #[oai(status = 201)]
    Created(Json<CallBlockJson>),
}

#[derive(Debug, ApiResponse)]
pub enum Unblocked {
    /// Not blocked any more (also when they were not).
    #[oai(status = 204)]
    Done,
}

/// The settings and block endpoints.
#[derive(Debug)]
pub struct CallPolicyApi {
    signaling: Arc<Signaling>,
    auth: Arc<dyn Authenticator>,
    clock: Arc<dyn Clock>,
}

impl CallPolicyApi {
    pub fn new(signaling: Arc<Signaling>, auth: Arc<dyn Authenticator>, clock: Arc<dyn Clock>) -> Self {
        Self { signaling, auth, clock }
    }

    /// Where settings and blocks are kept: the call service's policy. A host application that
    /// built its service without one has no such endpoints (404).
    fn store(&self) -> Result<&Arc<dyn CallPolicyStore>, ApiError> {
        self.signaling.service().policy().map(|policy| policy.store()).ok_or_else(|| ApiError::new(ErrorCode::NotFound))
    }

    /// A user someone names: 400 for an id that cannot exist, 404 for one the directory does
    /// not know (said only to the one who asked; the user named learns nothing).
    async fn known_user(&self, raw: &str) -> Result<ringline_domain::UserProfile, ApiError> {
        let id = UserId::parse(raw.trim()).map_err(|_| ApiError::new(ErrorCode::InvalidUserId))?;
        let found = self.signaling.service().directory().users(std::slice::from_ref(&id)).await;
        let found = found.map_err(|error| ApiError::internal(&error))?;
        found.into_iter().find(|profile| profile.id == id).ok_or_else(|| ApiError::new(ErrorCode::UserNotFound))
    }
}

fn invalid(detail: &'static str) -> ApiError {
    ApiError::with_detail(ErrorCode::InvalidCallSettings, detail)
}

/// The change a `PATCH` body asks for.
fn change_of(body: CallSettingsPatch) -> Result<CallSettingsChange, ApiError> {
    const WHO: &str = "who_can_call must be 'everyone', 'conversations' or 'nobody'.";
    let who_can_call = not_null(body.who_can_call, WHO)?
        .map(|raw| raw.0.parse::<WhoCanCall>())
        .transpose()
        .map_err(|_| invalid(WHO))?;
    let do_not_disturb = not_null(body.do_not_disturb, "do_not_disturb must be true or false.")?;
    let relay_only = not_null(body.relay_only, "relay_only must be true or false.")?;
    let call_waiting = not_null(body.call_waiting, "call_waiting must be true or false.")?;
    let do_not_disturb_until = match body.do_not_disturb_until {
        MaybeUndefined::Undefined => None,
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Value(raw) => {
            let moment = chrono::DateTime::parse_from_rfc3339(raw.0.trim())
                .map_err(|_| invalid("do_not_disturb_until must be an RFC 3339 date-time or null."))?;
            Some(Some(Timestamp::from(moment.with_timezone(&chrono::Utc))))
        }
    };
    Ok(CallSettingsChange { who_can_call, do_not_disturb, do_not_disturb_until, relay_only, call_waiting })
}

#[OpenApi(tag = "ApiTags::CallPolicy")]
impl CallPolicyApi {
    /// Read your call settings
    ///
    /// Who may ring you, and do-not-disturb. Defaults: everyone, off.
    #[oai(path = "/api/call-settings/", method = "get", operation_id = "call_settings_get")]
    async fn get_settings(&self, req: &Request, auth: BearerAuth) -> Result<Json<CallSettingsJson>, ApiError> {
        let user = authenticate(self.auth.as_ref(), req, &auth).await?;
        let settings = self.store()?.settings(&user).await.map_err(|error| ApiError::internal(&error))?;
        Ok(Json(settings.into()))
    }

    /// Change your call settings
    ///
    /// Any of the fields; the others stay (an empty body changes nothing). 400
    /// `invalid_call_settings` names a bad field; only `do_not_disturb_until` takes `null`.
    /// `who_can_call: conversations` admits only users who share a conversation with you.
    #[oai(path = "/api/call-settings/", method = "patch", operation_id = "call_settings_patch")]
    async fn patch_settings(
        &self,
        req: &Request,
        auth: BearerAuth,
        body: Json<CallSettingsPatch>,
    ) -> Result<Json<CallSettingsJson>, ApiError> {
        let user = authenticate(self.auth.as_ref(), req, &auth).await?;
        let change = change_of(body.0)?;
        let store = self.store()?;
        // An empty change changes nothing: it answers the settings as they are.
        let settings = if change == CallSettingsChange::default() {
            store.settings(&user).await
        } else {
            store.change_settings(&user, &change, self.clock.now()).await
        };
        let settings = settings.map_err(|error| ApiError::internal(&error))?;
        Ok(Json(settings.into()))
    }

    /// List the users you block
    ///
    /// Most recently blocked first, ten a page.
    #[oai(path = "/api/call-blocks/", method = "get", operation_id = "call_blocks_list")]
    async fn list_blocks(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// 1-based page number.
        page: poem_openapi::param::Query<Option<String>>,
    ) -> Result<Json<CallBlockPage>, ApiError> {
        let user = authenticate(self.auth.as_ref(), req, &auth).await?;
        let page = pagination::requested(page.0.as_deref())?;
        let found = self.store()?.blocks(&user, page).await.map_err(|error| ApiError::internal(&error))?;
        let (next, previous) = pagination::links(req, page, found.total, None)?;
        Ok(Json(CallBlockPage {
            count: found.total,
            next,
            previous,
            results: found.items.iter().map(CallBlockJson::from).collect(),
        }))
    }

    /// Block a user
    ///
    /// Neither of you can ring the other any more (the caller is told 403
    /// `call_not_allowed`, as for any call you do not take); a call from them that is ringing
    /// you now ends as declined. Blocking twice is not an error. 400 `cannot_block_self`; 404
    /// `user_not_found`.
    #[oai(path = "/api/call-blocks/", method = "post", operation_id = "call_blocks_create")]
    async fn block(&self, req: &Request, auth: BearerAuth, body: Json<CallBlockBody>) -> Result<Blocked, ApiError> {
        let user = authenticate(self.auth.as_ref(), req, &auth).await?;
        let store = self.store()?;
        let blocked = self.known_user(&body.0.user_id.0).await?;
        if blocked.id == user {
            return Err(ApiError::new(ErrorCode::CannotBlockSelf));
        }
        let since =
            store.block(&user, &blocked.id, self.clock.now()).await.map_err(|error| ApiError::internal(&error))?;
        self.signaling.decline_calls_from(&user, std::slice::from_ref(&blocked.id)).await?;
        Ok(Blocked::Created(Json(CallBlockJson { user: UserJson::from_profile(&blocked), blocked_at: UtcTime(since) })))
    }

    /// Unblock a user
    #[oai(path = "/api/call-blocks/:user_id/", method = "delete", operation_id = "call_blocks_delete")]
    async fn unblock(
        &self,
        req: &Request,
        auth: BearerAuth,
        user_id: Path<UserIdParam>,
    ) -> Result<Unblocked, ApiError> {
        let user = authenticate(self.auth.as_ref(), req, &auth).await?;
        let store = self.store()?;
        let blocked = UserId::parse(user_id.0.0.trim()).map_err(|_| ApiError::new(ErrorCode::InvalidUserId))?;
        store.unblock(&user, &blocked).await.map_err(|error| ApiError::internal(&error))?;
        Ok(Unblocked::Done)
    }
}
