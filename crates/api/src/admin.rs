//! `/api/admin/…`: how the standalone server learns its users and conversations.
//!
//! Guarded by a separate operator token (`RINGLINE_ADMIN_TOKEN`); with none configured the
//! admin API answers 403 `admin_disabled`. An application embedding Ringline with its own
//! directory does not mount this at all.

use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use ringline_domain::{AccountStatus, Clock, ConversationId, Directory, ErrorCode, UserId, UserProfile};
use ringline_signaling::Signaling;
use ringline_storage::{DirectoryWriteError, SqlDirectory};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use subtle::ConstantTimeEq;

use crate::ApiTags;
use crate::error::ApiError;
use crate::models::{FlexibleId, IntegerParam, JsonText, MAX_USERNAME_CHARS, UserIdParam, UserJson, UsernameField};
use crate::security::AdminToken;

/// Body of `PUT /api/admin/users/{id}/`.
#[derive(Debug, Object)]
pub struct AdminUserBody {
    pub username: UsernameField,
    /// `null` or absent: empty.
    #[oai(default, nullable)]
    pub first_name: JsonText,
    /// `null` or absent: empty.
    #[oai(default, nullable)]
    pub last_name: JsonText,
    #[oai(nullable)]
    pub profile_image_url: Option<JsonText>,
    /// Whether the user may sign in; `null` or absent: `true`. `false` closes their sockets,
    /// ends their ringing and active calls, and refuses their tokens (`user_inactive`) until set
    /// back.
    #[oai(nullable)]
    pub is_active: Option<bool>,
}

/// A user as the admin API shows them.
#[derive(Debug, Object)]
pub struct AdminUserJson {
    #[oai(flatten)]
    pub user: UserJson,
    /// Whether the user may sign in.
    pub is_active: bool,
}

/// Body of `PUT /api/admin/conversations/{id}/`.
#[derive(Debug, Object)]
pub struct ConversationBody {
    /// Exactly the users who belong to the conversation (all must be known users).
    pub participants: Vec<FlexibleId>,
}

/// Body of `POST /api/admin/conversations/{id}/participants/`.
#[derive(Debug, Object)]
pub struct ParticipantsBody {
    /// Users to add (kept if already members); at least one.
    #[oai(validator(min_items = 1))]
    pub user_ids: Vec<FlexibleId>,
}

/// Body of `PUT /api/admin/users/{id}/call-blocks/`.
#[derive(Debug, Object)]
pub struct CallBlocksBody {
    /// Exactly the users the user blocks (all must be known users; none: unblock everyone).
    #[oai(validator(max_items = 10000))]
    pub user_ids: Vec<FlexibleId>,
}

/// Whom a user blocks, as stored.
#[derive(Debug, Object)]
pub struct CallBlocksJson {
    pub user_id: String,
    pub user_ids: Vec<String>,
}

#[derive(Debug, Object)]
pub struct ConversationJson {
    pub id: i64,
    pub participants: Vec<String>,
}

/// Where a user is connected, on every instance together.
#[derive(Debug, Object)]
pub struct PresenceJson {
    /// Whether the user has at least one socket open.
    pub online: bool,
    /// How many sockets (tabs, phones) the user has open.
    pub devices: u64,
}

#[derive(Debug, ApiResponse)]
pub enum Deleted {
    /// Removed.
    #[oai(status = 204)]
    Done,
}

#[derive(Debug)]
pub struct AdminApi {
    directory: SqlDirectory,
    token: Option<SecretString>,
    clock: Arc<dyn Clock>,
    signaling: Arc<Signaling>,
}

impl AdminApi {
    pub fn new(
        directory: SqlDirectory,
        token: Option<SecretString>,
        clock: Arc<dyn Clock>,
        signaling: Arc<Signaling>,
    ) -> Self {
        Self { directory, token, clock, signaling }
    }

    fn check(&self, presented: &AdminToken) -> Result<(), ApiError> {
        let Some(expected) = &self.token else {
            return Err(ApiError::new(ErrorCode::AdminDisabled));
        };
        let matches: bool = presented.0.token.as_bytes().ct_eq(expected.expose_secret().as_bytes()).into();
        if matches { Ok(()) } else { Err(ApiError::new(ErrorCode::AdminTokenInvalid)) }
    }

    /// What follows a change of `user`'s account: every instance learns it; a removed or
    /// deactivated user's sockets are closed everywhere and their calls end.
    async fn account_changed(&self, user: &UserId, status: AccountStatus) -> Result<(), ApiError> {
        let ended = self.signaling.account_changed(user, status).await?;
        if status.is_refused() {
            tracing::info!(%user, ended_calls = ended, "a user was removed or deactivated");
        }
        Ok(())
    }

    async fn conversation_json(&self, id: ConversationId) -> Result<Json<ConversationJson>, ApiError> {
        let participants = self
            .directory
            .conversation_participants(id)
            .await
            .map_err(|error| ApiError::internal(&error))?
            .ok_or_else(|| ApiError::new(ErrorCode::ConversationNotFound))?;
        let mut participants: Vec<String> = participants.into_iter().map(String::from).collect();
        participants.sort();
        Ok(Json(ConversationJson { id: id.get(), participants }))
    }
}

fn user_id(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw)
        .map_err(|error| ApiError::with_detail(ErrorCode::InvalidUserId, format!("Invalid user id: {}.", error.rule)))
}

fn user_ids(raw: Vec<FlexibleId>) -> Result<Vec<UserId>, ApiError> {
    raw.into_iter().map(|id| user_id(&id.0)).collect()
}

fn conversation_id(raw: &str) -> Result<ConversationId, ApiError> {
    raw.parse().map_err(|_| ApiError::new(ErrorCode::ConversationNotFound))
}

fn write_error(error: DirectoryWriteError) -> ApiError {
    match error {
        DirectoryWriteError::UnknownUser(user) => {
            // 409: the request is fine; the directory lacks the user it refers to yet.
            ApiError::with_detail(ErrorCode::UnknownUser, format!("Unknown user {user}: create it first."))
        }
        DirectoryWriteError::UnknownConversation => ApiError::new(ErrorCode::ConversationNotFound),
        DirectoryWriteError::Storage(error) => ApiError::internal(&error),
    }
}

#[OpenApi(tag = "ApiTags::Admin")]
impl AdminApi {
    /// Create or update a user
    #[oai(path = "/api/admin/users/:id/", method = "put", operation_id = "admin_put_user")]
    async fn put_user(
        &self,
        auth: AdminToken,
        id: Path<UserIdParam>,
        body: Json<AdminUserBody>,
    ) -> Result<Json<AdminUserJson>, ApiError> {
        self.check(&auth)?;
        let body = body.0;
        // The limit applies to what was sent, as the schema says; the name kept is trimmed.
        let username = body.username.0.trim();
        if username.is_empty() || body.username.0.chars().count() > MAX_USERNAME_CHARS {
            return Err(ApiError::new(ErrorCode::InvalidUsername));
        }
        let profile = UserProfile {
            id: user_id(&id.0.0)?,
            username: username.to_owned(),
            first_name: body.first_name.0,
            last_name: body.last_name.0,
            profile_image_url: body.profile_image_url.map(|url| url.0).filter(|url| !url.is_empty()),
        };
        let now = self.clock.now();
        self.directory.upsert_user(&profile, now).await.map_err(|error| ApiError::internal(&error))?;
        let is_active = body.is_active.unwrap_or(true);
        if !is_active {
            self.directory.set_active(&profile.id, false, now).await.map_err(write_error)?;
        }
        let status = if is_active { AccountStatus::Active } else { AccountStatus::Inactive };
        self.account_changed(&profile.id, status).await?;
        Ok(Json(AdminUserJson { user: UserJson::from_profile(&profile), is_active }))
    }

    /// Read a user
    #[oai(path = "/api/admin/users/:id/", method = "get", operation_id = "admin_get_user")]
    async fn get_user(&self, auth: AdminToken, id: Path<UserIdParam>) -> Result<Json<AdminUserJson>, ApiError> {
        self.check(&auth)?;
        let id = user_id(&id.0.0)?;
        let profile = self.directory.user(&id).await.map_err(|error| ApiError::internal(&error))?;
        let profile = profile.ok_or_else(|| ApiError::new(ErrorCode::UserNotFound))?;
        let status = self.directory.account_status(&id).await.map_err(|error| ApiError::internal(&error))?;
        Ok(Json(AdminUserJson { user: UserJson::from_profile(&profile), is_active: status == AccountStatus::Active }))
    }

    /// Replace whom a user blocks
    ///
    /// For a host application that keeps its own block list (the original app's
    /// `BlockedUsers`): `user_ids` becomes exactly the users `id` blocks, in one step. A call
    /// from a newly blocked user that is ringing `id` ends as declined. 404 `user_not_found`
    /// for an unknown `id`; 409 `unknown_user` for an unknown listed user; 400
    /// `cannot_block_self`.
    #[oai(path = "/api/admin/users/:id/call-blocks/", method = "put", operation_id = "admin_put_call_blocks")]
    async fn put_call_blocks(
        &self,
        auth: AdminToken,
        id: Path<UserIdParam>,
        body: Json<CallBlocksBody>,
    ) -> Result<Json<CallBlocksJson>, ApiError> {
        self.check(&auth)?;
        let user = user_id(&id.0.0)?;
        let mut blocked = user_ids(body.0.user_ids)?;
        blocked.sort();
        blocked.dedup();
        if blocked.contains(&user) {
            return Err(ApiError::new(ErrorCode::CannotBlockSelf));
        }
        let store = self.signaling.service().policy().map(|policy| policy.store().clone());
        let store = store.ok_or_else(|| ApiError::new(ErrorCode::NotFound))?;
        let everyone: Vec<UserId> = std::iter::once(user.clone()).chain(blocked.iter().cloned()).collect();
        let known = self.directory.users(&everyone).await.map_err(|error| ApiError::internal(&error))?;
        let is_known = |id: &UserId| known.iter().any(|profile| &profile.id == id);
        if !is_known(&user) {
            return Err(ApiError::new(ErrorCode::UserNotFound));
        }
        if let Some(unknown) = blocked.iter().find(|id| !is_known(id)) {
            return Err(write_error(DirectoryWriteError::UnknownUser(unknown.clone())));
        }
        store.replace_blocks(&user, &blocked, self.clock.now()).await.map_err(|error| ApiError::internal(&error))?;
        self.signaling.decline_calls_from(&user, &blocked).await?;
        Ok(Json(CallBlocksJson {
            user_id: user.to_string(),
            user_ids: blocked.into_iter().map(String::from).collect(),
        }))
    }

    /// Where a user is connected
    ///
    /// Sockets the user has open on every instance together (with several instances, counted
    /// through Redis; an instance that died stops counting within 30 s). For a host
    /// application deciding whether to push a call to a phone.
    #[oai(path = "/api/admin/users/:id/presence/", method = "get", operation_id = "admin_user_presence")]
    async fn presence(&self, auth: AdminToken, id: Path<UserIdParam>) -> Result<Json<PresenceJson>, ApiError> {
        self.check(&auth)?;
        let devices = self.signaling.devices_online(&user_id(&id.0.0)?).await;
        Ok(Json(PresenceJson { online: devices > 0, devices: u64::try_from(devices).unwrap_or(u64::MAX) }))
    }

    /// Delete a user
    ///
    /// Removes the user: their profile, conversation memberships and push subscriptions go;
    /// their sockets are closed (4401) on every instance, their ringing and active calls end,
    /// and their tokens are refused from now on (`user_not_found`), also for first-use
    /// registration. Their call history stays. `PUT` brings them back. Deleting a user again
    /// answers 404 (after making sure the removal is complete).
    #[oai(path = "/api/admin/users/:id/", method = "delete", operation_id = "admin_delete_user")]
    async fn delete_user(&self, auth: AdminToken, id: Path<UserIdParam>) -> Result<Deleted, ApiError> {
        self.check(&auth)?;
        let id = user_id(&id.0.0)?;
        let deleted = self.directory.delete_user(&id, self.clock.now()).await.map_err(write_error)?;
        let status = self.directory.account_status(&id).await.map_err(|error| ApiError::internal(&error))?;
        if status == AccountStatus::Removed {
            self.account_changed(&id, status).await?;
        }
        match deleted {
            true => Ok(Deleted::Done),
            false => Err(ApiError::new(ErrorCode::UserNotFound)),
        }
    }

    /// Create a conversation or set its participants
    #[oai(path = "/api/admin/conversations/:id/", method = "put", operation_id = "admin_put_conversation")]
    async fn put_conversation(
        &self,
        auth: AdminToken,
        id: Path<IntegerParam>,
        body: Json<ConversationBody>,
    ) -> Result<Json<ConversationJson>, ApiError> {
        self.check(&auth)?;
        let id = conversation_id(&id.0.0)?;
        let participants = user_ids(body.0.participants)?;
        let before = self.directory.conversation_participants(id).await.map_err(|error| ApiError::internal(&error))?;
        self.directory.set_conversation(id, &participants, self.clock.now()).await.map_err(write_error)?;
        for removed in before.unwrap_or_default().iter().filter(|user| !participants.contains(user)) {
            self.signaling.left_conversation(removed, id);
        }
        self.conversation_json(id).await
    }

    /// Read a conversation
    #[oai(path = "/api/admin/conversations/:id/", method = "get", operation_id = "admin_get_conversation")]
    async fn get_conversation(
        &self,
        auth: AdminToken,
        id: Path<IntegerParam>,
    ) -> Result<Json<ConversationJson>, ApiError> {
        self.check(&auth)?;
        self.conversation_json(conversation_id(&id.0.0)?).await
    }

    /// Add participants
    #[oai(
        path = "/api/admin/conversations/:id/participants/",
        method = "post",
        operation_id = "admin_add_participants"
    )]
    async fn add_participants(
        &self,
        auth: AdminToken,
        id: Path<IntegerParam>,
        body: Json<ParticipantsBody>,
    ) -> Result<Json<ConversationJson>, ApiError> {
        self.check(&auth)?;
        let id = conversation_id(&id.0.0)?;
        self.directory.add_participants(id, &user_ids(body.0.user_ids)?).await.map_err(write_error)?;
        self.conversation_json(id).await
    }

    /// Remove a participant
    #[oai(
        path = "/api/admin/conversations/:id/participants/:user_id/",
        method = "delete",
        operation_id = "admin_remove_participant"
    )]
    async fn remove_participant(
        &self,
        auth: AdminToken,
        id: Path<IntegerParam>,
        user_id: Path<IntegerParam>,
    ) -> Result<Deleted, ApiError> {
        self.check(&auth)?;
        let (conversation, user) = (conversation_id(&id.0.0)?, self::user_id(&user_id.0.0)?);
        let removed = self.directory.remove_participant(conversation, &user).await.map_err(write_error)?;
        if removed {
            self.signaling.left_conversation(&user, conversation);
            Ok(Deleted::Done)
        } else {
            Err(ApiError::new(ErrorCode::ParticipantNotFound))
        }
    }
}
