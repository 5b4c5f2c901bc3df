//! `/api/notifications/…`: the signed-in user's notifications about calls (incoming and
//! missed), the same objects `notification.created` events carry.

use std::sync::Arc;

use poem::Request;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use ringline_domain::{ErrorCode, UserId};
use ringline_signaling::Signaling;
use ringline_signaling::events::NotificationPayload;

use crate::ApiTags;
use crate::auth::Authenticator;
use crate::error::ApiError;
use crate::models::{IntegerParam, UserJson};
use crate::pagination;
use crate::security::{BearerAuth, authenticate};

#[derive(Debug, Object)]
pub struct NotificationDataJson {
    #[oai(nullable)]
    pub conversation_id: Option<String>,
    pub call_id: String,
    /// `voice` or `video`.
    pub call_type: String,
}

/// A notification, as the original app's `NotificationSerializer` shows it.
#[derive(Debug, Object)]
pub struct NotificationJson {
    pub id: i64,
    /// Who caused it (the caller); null if no longer known.
    #[oai(nullable)]
    pub actor: Option<UserJson>,
    /// `incoming_voice_call`, `incoming_video_call`, `missed_voice_call` or `missed_video_call`.
    pub verb: String,
    /// Always `call`.
    pub content_type: String,
    /// The call's id.
    pub object_id: i64,
    pub unread: bool,
    pub created_at: String,
    /// Where the original web app shows the call.
    pub target_url: String,
    pub data: NotificationDataJson,
}

impl From<NotificationPayload> for NotificationJson {
    fn from(payload: NotificationPayload) -> Self {
        Self {
            id: payload.id,
            actor: payload.actor.map(|actor| UserJson {
                id: actor.id,
                username: actor.username,
                first_name: actor.first_name,
                last_name: actor.last_name,
                profile_image_url: actor.profile_image_url,
            }),
            verb: payload.verb.to_owned(),
            content_type: payload.content_type.to_owned(),
            object_id: payload.object_id,
            unread: payload.unread,
            created_at: payload.created_at,
            target_url: payload.target_url,
            data: NotificationDataJson {
                conversation_id: payload.data.conversation_id,
                call_id: payload.data.call_id,
                call_type: payload.data.call_type.to_owned(),
            },
        }
    }
}

#[derive(Debug, Object)]
pub struct NotificationPage {
    pub count: u64,
    #[oai(nullable)]
    pub next: Option<String>,
    #[oai(nullable)]
    pub previous: Option<String>,
    pub results: Vec<NotificationJson>,
}

#[derive(Debug, Object)]
pub struct MarkedRead {
    /// `ok`.
    pub status: String,
}

#[derive(Debug, Object)]
pub struct MarkedAllRead {
    /// How many notifications were unread.
    pub updated: u64,
}

#[derive(Debug)]
pub struct NotificationsApi {
    signaling: Arc<Signaling>,
    auth: Arc<dyn Authenticator>,
}

impl NotificationsApi {
    pub fn new(signaling: Arc<Signaling>, auth: Arc<dyn Authenticator>) -> Self {
        Self { signaling, auth }
    }
}

#[OpenApi(tag = "ApiTags::Notifications")]
impl NotificationsApi {
    /// Your notifications
    ///
    /// Newest first, ten a page, paginated like `GET /api/calls/`.
    #[oai(path = "/api/notifications/", method = "get", operation_id = "notifications_list")]
    async fn list(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// 1-based page number.
        page: Query<Option<String>>,
    ) -> Result<Json<NotificationPage>, ApiError> {
        let user = authenticate(self.auth.as_ref(), req, &auth).await?;
        let page = pagination::requested(page.0.as_deref())?;
        let found =
            self.signaling.notifications().list(&user, page).await.map_err(|error| ApiError::internal(&error))?;
        let (next, previous) = pagination::links(req, page, found.total, None)?;
        let mut actors: Vec<UserId> = found.items.iter().filter_map(|n| n.actor.clone()).collect();
        actors.sort();
        actors.dedup();
        let profiles =
            self.signaling.service().directory().users(&actors).await.map_err(|error| ApiError::internal(&error))?;
        let results = found
            .items
            .iter()
            .map(|notification| {
                let actor = notification.actor.as_ref().and_then(|id| profiles.iter().find(|p| &p.id == id));
                NotificationJson::from(NotificationPayload::new(notification, actor))
            })
            .collect();
        Ok(Json(NotificationPage { count: found.total, next, previous, results }))
    }

    /// Mark one notification read
    #[oai(path = "/api/notifications/:id/read/", method = "post", operation_id = "notifications_read")]
    async fn read(
        &self,
        req: &Request,
        auth: BearerAuth,
        id: Path<IntegerParam>,
    ) -> Result<Json<MarkedRead>, ApiError> {
        let user = authenticate(self.auth.as_ref(), req, &auth).await?;
        let not_found = || ApiError::new(ErrorCode::NotificationNotFound);
        let id = id.0.0.parse::<i64>().map_err(|_| not_found())?;
        let marked =
            self.signaling.notifications().mark_read(&user, id).await.map_err(|error| ApiError::internal(&error))?;
        if marked { Ok(Json(MarkedRead { status: "ok".into() })) } else { Err(not_found()) }
    }

    /// Mark all your notifications read
    #[oai(path = "/api/notifications/read-all/", method = "post", operation_id = "notifications_read_all")]
    async fn read_all(&self, req: &Request, auth: BearerAuth) -> Result<Json<MarkedAllRead>, ApiError> {
        let user = authenticate(self.auth.as_ref(), req, &auth).await?;
        let updated =
            self.signaling.notifications().mark_all_read(&user).await.map_err(|error| ApiError::internal(&error))?;
        Ok(Json(MarkedAllRead { updated }))
    }
}
