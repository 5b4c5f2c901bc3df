//! [`SqlNotifications`]: persisted notifications about calls, in the original app's shape
//! (`recipient, actor, verb, object_id, data, unread, created_at`; `data` holds
//! `conversation_id`, `call_id` and `call_type`).

use async_trait::async_trait;
use ringline_domain::{
    Call, CallId, ConversationId, NewNotification, Notification, NotificationRepository, NotificationVerb, Page,
    PageRequest, RepositoryError, Timestamp, UserId,
};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    Set,
};
use serde_json::json;

use crate::entity::notification;
use crate::{Connections, statement, storage_failure};

/// The notification repository over a sea-orm connection.
#[derive(Debug, Clone)]
pub struct SqlNotifications {
    db: Connections,
}

impl SqlNotifications {
    pub(crate) fn new(db: Connections) -> Self {
        Self { db }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("stored notification {id} is unreadable: {reason}")]
struct CorruptNotification {
    id: i64,
    reason: String,
}

fn to_notification(row: notification::Model) -> Result<Notification, RepositoryError> {
    let id = row.id;
    let corrupt = |reason: String| storage_failure(CorruptNotification { id, reason });
    let call = row.object_id.ok_or_else(|| corrupt("no object id".into()))?;
    let conversation = row.data.get("conversation_id").and_then(serde_json::Value::as_i64);
    Ok(Notification {
        id,
        recipient: UserId::parse(row.recipient_id).map_err(|e| corrupt(e.to_string()))?,
        actor: row.actor_id.map(UserId::parse).transpose().map_err(|e| corrupt(e.to_string()))?,
        verb: row.verb.parse().map_err(|e: ringline_domain::InvalidValue| corrupt(e.to_string()))?,
        call: CallId::new(call).map_err(|e| corrupt(e.to_string()))?,
        conversation: conversation.map(ConversationId::new).transpose().map_err(|e| corrupt(e.to_string()))?,
        unread: row.unread,
        created_at: Timestamp::from(row.created_at),
    })
}

#[async_trait]
impl NotificationRepository for SqlNotifications {
    async fn create(&self, new: NewNotification) -> Result<Notification, RepositoryError> {
        let data = json!({
            "conversation_id": new.conversation.map(i64::from),
            "call_id": new.call.get(),
            "call_type": new.verb.call_type().as_str(),
        });
        let row = notification::ActiveModel {
            recipient_id: Set(new.recipient.as_str().to_owned()),
            actor_id: Set(new.actor.as_ref().map(|actor| actor.as_str().to_owned())),
            verb: Set(new.verb.as_str().to_owned()),
            object_id: Set(Some(new.call.get())),
            data: Set(data),
            unread: Set(true),
            created_at: Set(new.created_at.as_datetime()),
            ..Default::default()
        };
        let row = self.db.write.write(move |db| Box::pin(row.insert(db))).await.map_err(storage_failure)?;
        to_notification(row)
    }

    async fn caused_by(
        &self,
        recipient: &UserId,
        call: &Call,
        verb: NotificationVerb,
    ) -> Result<Option<Notification>, RepositoryError> {
        // The call's insert or update wrote it (m20261207_000010_notifications_follow_calls),
        // from the call's own columns: only its id and whether it was read since are not the
        // call's. A fixed statement (prepared once per connection) that decodes two columns,
        // because every ringing call pays for it. The newest, should a store hold several (an
        // operator's repair).
        let row = self
            .db
            .read
            .query_one(statement(
                self.db.read.get_database_backend(),
                "SELECT id, unread FROM notifications WHERE object_id = ? AND recipient_id = ? AND verb = ?
                 ORDER BY id DESC LIMIT 1",
                vec![call.id().get().into(), recipient.as_str().into(), verb.as_str().into()],
            ))
            .await
            .map_err(storage_failure)?;
        let Some(row) = row else { return Ok(None) };
        let created_at = if verb.is_missed() { call.updated_at() } else { call.created_at() };
        Ok(Some(Notification {
            id: row.try_get_by_index(0).map_err(storage_failure)?,
            recipient: recipient.clone(),
            actor: Some(call.caller().clone()),
            verb,
            call: call.id(),
            conversation: call.conversation(),
            unread: row.try_get_by_index(1).map_err(storage_failure)?,
            created_at,
        }))
    }

    async fn list(&self, recipient: &UserId, page: PageRequest) -> Result<Page<Notification>, RepositoryError> {
        let query = notification::Entity::find().filter(notification::Column::RecipientId.eq(recipient.as_str()));
        let total = query.clone().count(&self.db.read).await.map_err(storage_failure)?;
        let rows = query
            .order_by_desc(notification::Column::CreatedAt)
            .order_by_desc(notification::Column::Id)
            .offset(page.offset())
            .limit(u64::from(page.per_page))
            .all(&self.db.read)
            .await
            .map_err(storage_failure)?;
        Ok(Page { items: rows.into_iter().map(to_notification).collect::<Result<_, _>>()?, total })
    }

    async fn mark_read(&self, recipient: &UserId, id: i64) -> Result<bool, RepositoryError> {
        let updated = notification::Entity::update_many()
            .col_expr(notification::Column::Unread, Expr::value(false))
            .filter(notification::Column::Id.eq(id))
            .filter(notification::Column::RecipientId.eq(recipient.as_str()))
            .exec(&self.db.write_pool)
            .await
            .map_err(storage_failure)?;
        Ok(updated.rows_affected > 0)
    }

    async fn mark_all_read(&self, recipient: &UserId) -> Result<u64, RepositoryError> {
        let updated = notification::Entity::update_many()
            .col_expr(notification::Column::Unread, Expr::value(false))
            .filter(notification::Column::RecipientId.eq(recipient.as_str()))
            .filter(notification::Column::Unread.eq(true))
            .exec(&self.db.write_pool)
            .await
            .map_err(storage_failure)?;
        Ok(updated.rows_affected)
    }
}
