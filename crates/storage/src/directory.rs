//! [`SqlDirectory`]: the standalone server's users and conversations.

use async_trait::async_trait;
use ringline_domain::{AccountStatus, ConversationId, Directory, DirectoryError, Timestamp, UserId, UserProfile};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    Set, TransactionTrait,
};

use crate::Connections;
use crate::entity::{conversation, participant, user};

/// Users and conversations kept in Ringline's own database.
#[derive(Debug, Clone)]
pub struct SqlDirectory {
    db: Connections,
}

fn lookup_failed(error: impl std::error::Error + Send + Sync + 'static) -> DirectoryError {
    DirectoryError(crate::classified(error))
}

fn to_profile(row: user::Model) -> Result<UserProfile, DirectoryError> {
    Ok(UserProfile {
        id: UserId::parse(row.id).map_err(lookup_failed)?,
        username: row.username,
        first_name: row.first_name,
        last_name: row.last_name,
        profile_image_url: row.profile_image_url,
    })
}

impl SqlDirectory {
    pub(crate) fn new(db: Connections) -> Self {
        Self { db }
    }

    /// Creates the user, or updates every profile field of an existing one; either way the
    /// user is active (an operator's act: it restores a removed or deactivated user).
    ///
    /// # Errors
    /// `DirectoryError` when the write fails.
    pub async fn upsert_user(&self, profile: &UserProfile, now: Timestamp) -> Result<(), DirectoryError> {
        let row = user::ActiveModel {
            id: Set(profile.id.as_str().to_owned()),
            username: Set(profile.username.clone()),
            first_name: Set(profile.first_name.clone()),
            last_name: Set(profile.last_name.clone()),
            profile_image_url: Set(profile.profile_image_url.clone()),
            created_at: Set(now.as_datetime()),
            updated_at: Set(now.as_datetime()),
            is_active: Set(true),
            removed_at: Set(None),
        };
        user::Entity::insert(row)
            .on_conflict(
                OnConflict::column(user::Column::Id)
                    .update_columns([
                        user::Column::Username,
                        user::Column::FirstName,
                        user::Column::LastName,
                        user::Column::ProfileImageUrl,
                        user::Column::UpdatedAt,
                        user::Column::IsActive,
                        user::Column::RemovedAt,
                    ])
                    .to_owned(),
            )
            .exec(&self.db.write_pool)
            .await
            .map_err(lookup_failed)?;
        Ok(())
    }

    /// Up to `limit` users, ordered by username (for the development sign-in page).
    ///
    /// # Errors
    /// `DirectoryError` when the lookup fails.
    pub async fn list_users(&self, limit: u64) -> Result<Vec<UserProfile>, DirectoryError> {
        use sea_orm::{QueryOrder, QuerySelect};
        let rows = user::Entity::find()
            .filter(user::Column::RemovedAt.is_null())
            .order_by_asc(user::Column::Username)
            .limit(limit)
            .all(&self.db.read)
            .await
            .map_err(lookup_failed)?;
        rows.into_iter().map(to_profile).collect()
    }

    /// Removes a user: their profile is emptied, their conversation memberships and push
    /// subscriptions are deleted, and they can no longer sign in. Their row stays as a marker,
    /// so that a token that outlived them cannot register them again; their call history
    /// stays. [`SqlDirectory::upsert_user`] brings them back.
    ///
    /// # Errors
    /// `DirectoryWriteError::Storage` when the write fails. Returns whether the user existed (and
    /// was not removed already).
    pub async fn delete_user(&self, id: &UserId, now: Timestamp) -> Result<bool, DirectoryWriteError> {
        let txn = self.db.write_pool.begin().await.map_err(write_failed)?;
        let removed = user::Entity::update_many()
            .col_expr(user::Column::Username, Expr::value(""))
            .col_expr(user::Column::FirstName, Expr::value(""))
            .col_expr(user::Column::LastName, Expr::value(""))
            .col_expr(user::Column::ProfileImageUrl, Expr::value(Option::<String>::None))
            .col_expr(user::Column::IsActive, Expr::value(false))
            .col_expr(user::Column::RemovedAt, Expr::value(now.as_datetime()))
            .col_expr(user::Column::UpdatedAt, Expr::value(now.as_datetime()))
            .filter(user::Column::Id.eq(id.as_str()))
            .filter(user::Column::RemovedAt.is_null())
            .exec(&txn)
            .await
            .map_err(write_failed)?;
        participant::Entity::delete_many()
            .filter(participant::Column::UserId.eq(id.as_str()))
            .exec(&txn)
            .await
            .map_err(write_failed)?;
        txn.execute(crate::statement(
            txn.get_database_backend(),
            "DELETE FROM push_subscriptions WHERE user_id = ?",
            vec![id.as_str().into()],
        ))
        .await
        .map_err(write_failed)?;
        txn.commit().await.map_err(write_failed)?;
        Ok(removed.rows_affected > 0)
    }

    /// Turns a known user off (`false`: they can no longer sign in; their profile, history and
    /// memberships stay) or on again. Returns whether such a user exists (and is not removed).
    ///
    /// # Errors
    /// `DirectoryWriteError::Storage` when the write fails.
    pub async fn set_active(&self, id: &UserId, active: bool, now: Timestamp) -> Result<bool, DirectoryWriteError> {
        let changed = user::Entity::update_many()
            .col_expr(user::Column::IsActive, Expr::value(active))
            .col_expr(user::Column::UpdatedAt, Expr::value(now.as_datetime()))
            .filter(user::Column::Id.eq(id.as_str()))
            .filter(user::Column::RemovedAt.is_null())
            .exec(&self.db.write_pool)
            .await
            .map_err(write_failed)?;
        Ok(changed.rows_affected > 0)
    }

    /// Creates conversation `id` if needed and makes `participants` exactly its members.
    ///
    /// # Errors
    /// `UnknownUser` when a participant is not a known user (nothing is changed);
    /// `Storage` when the write fails.
    pub async fn set_conversation(
        &self,
        id: ConversationId,
        participants: &[UserId],
        now: Timestamp,
    ) -> Result<(), DirectoryWriteError> {
        let txn = self.db.write_pool.begin().await.map_err(write_failed)?;
        require_known_users(&txn, participants).await?;
        conversation::Entity::insert(conversation::ActiveModel {
            id: Set(id.get()),
            created_at: Set(now.as_datetime()),
        })
        .on_conflict(OnConflict::column(conversation::Column::Id).do_nothing().to_owned())
        .exec_without_returning(&txn)
        .await
        .map_err(write_failed)?;
        participant::Entity::delete_many()
            .filter(participant::Column::ConversationId.eq(id.get()))
            .filter(participant::Column::UserId.is_not_in(participants.iter().map(UserId::as_str)))
            .exec(&txn)
            .await
            .map_err(write_failed)?;
        insert_participants(&txn, id, participants).await?;
        txn.commit().await.map_err(write_failed)
    }

    /// Adds `participants` to an existing conversation (members already in it are kept).
    ///
    /// # Errors
    /// `UnknownConversation`, `UnknownUser`, or `Storage`.
    pub async fn add_participants(
        &self,
        id: ConversationId,
        participants: &[UserId],
    ) -> Result<(), DirectoryWriteError> {
        let txn = self.db.write_pool.begin().await.map_err(write_failed)?;
        if conversation::Entity::find_by_id(id.get()).one(&txn).await.map_err(write_failed)?.is_none() {
            return Err(DirectoryWriteError::UnknownConversation);
        }
        require_known_users(&txn, participants).await?;
        insert_participants(&txn, id, participants).await?;
        txn.commit().await.map_err(write_failed)
    }

    /// Removes one participant. Returns whether they were a member.
    ///
    /// # Errors
    /// `Storage` when the write fails.
    pub async fn remove_participant(&self, id: ConversationId, user_id: &UserId) -> Result<bool, DirectoryWriteError> {
        let deleted = participant::Entity::delete_many()
            .filter(participant::Column::ConversationId.eq(id.get()))
            .filter(participant::Column::UserId.eq(user_id.as_str()))
            .exec(&self.db.write_pool)
            .await
            .map_err(write_failed)?;
        Ok(deleted.rows_affected > 0)
    }
}

/// A directory write that was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryWriteError {
    #[error("unknown user {0}")]
    UnknownUser(UserId),
    #[error("unknown conversation")]
    UnknownConversation,
    #[error("directory write failed: {0}")]
    Storage(#[source] sea_orm::DbErr),
}

fn write_failed(error: sea_orm::DbErr) -> DirectoryWriteError {
    DirectoryWriteError::Storage(error)
}

async fn require_known_users(txn: &DatabaseTransaction, users: &[UserId]) -> Result<(), DirectoryWriteError> {
    let known: Vec<String> = user::Entity::find()
        .filter(user::Column::Id.is_in(users.iter().map(UserId::as_str)))
        .filter(user::Column::RemovedAt.is_null())
        .all(txn)
        .await
        .map_err(write_failed)?
        .into_iter()
        .map(|row| row.id)
        .collect();
    match users.iter().find(|user| !known.iter().any(|id| id == user.as_str())) {
        Some(unknown) => Err(DirectoryWriteError::UnknownUser(unknown.clone())),
        None => Ok(()),
    }
}

async fn insert_participants(
    txn: &DatabaseTransaction,
    id: ConversationId,
    participants: &[UserId],
) -> Result<(), DirectoryWriteError> {
    for user_id in participants {
        let row =
            participant::ActiveModel { conversation_id: Set(id.get()), user_id: Set(user_id.as_str().to_owned()) };
        participant::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([participant::Column::ConversationId, participant::Column::UserId])
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await
            .map_err(write_failed)?;
    }
    Ok(())
}

#[async_trait]
impl Directory for SqlDirectory {
    async fn user(&self, id: &UserId) -> Result<Option<UserProfile>, DirectoryError> {
        let row = user::Entity::find_by_id(id.as_str())
            .filter(user::Column::RemovedAt.is_null())
            .one(&self.db.read)
            .await
            .map_err(lookup_failed)?;
        row.map(to_profile).transpose()
    }

    async fn refused_accounts(&self) -> Result<Vec<(UserId, AccountStatus)>, DirectoryError> {
        // Answered from the partial index `users_refused` (migration 9), not a scan of users.
        let rows = user::Entity::find()
            .select_only()
            .column(user::Column::Id)
            .column(user::Column::RemovedAt)
            .filter(user::Column::IsActive.eq(false).or(user::Column::RemovedAt.is_not_null()))
            .into_tuple::<(String, Option<chrono::DateTime<chrono::Utc>>)>()
            .all(&self.db.read)
            .await
            .map_err(lookup_failed)?;
        rows.into_iter()
            .map(|(id, removed)| {
                let status = if removed.is_some() { AccountStatus::Removed } else { AccountStatus::Inactive };
                Ok((UserId::parse(id).map_err(lookup_failed)?, status))
            })
            .collect()
    }

    async fn account_status(&self, id: &UserId) -> Result<AccountStatus, DirectoryError> {
        let row = user::Entity::find_by_id(id.as_str())
            .select_only()
            .column(user::Column::IsActive)
            .column(user::Column::RemovedAt)
            .into_tuple::<(bool, Option<chrono::DateTime<chrono::Utc>>)>()
            .one(&self.db.read)
            .await
            .map_err(lookup_failed)?;
        Ok(match row {
            None => AccountStatus::Unknown,
            Some((_, Some(_removed))) => AccountStatus::Removed,
            Some((false, None)) => AccountStatus::Inactive,
            Some((true, None)) => AccountStatus::Active,
        })
    }

    async fn users(&self, ids: &[UserId]) -> Result<Vec<UserProfile>, DirectoryError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = user::Entity::find()
            .filter(user::Column::Id.is_in(ids.iter().map(UserId::as_str)))
            .filter(user::Column::RemovedAt.is_null())
            .all(&self.db.read)
            .await
            .map_err(lookup_failed)?;
        rows.into_iter().map(to_profile).collect()
    }

    async fn conversation_participants(&self, id: ConversationId) -> Result<Option<Vec<UserId>>, DirectoryError> {
        let exists = conversation::Entity::find_by_id(id.get()).one(&self.db.read).await.map_err(lookup_failed)?;
        if exists.is_none() {
            return Ok(None);
        }
        let rows = participant::Entity::find()
            .filter(participant::Column::ConversationId.eq(id.get()))
            .all(&self.db.read)
            .await
            .map_err(lookup_failed)?;
        rows.into_iter()
            .map(|row| UserId::parse(row.user_id).map_err(lookup_failed))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    async fn contacts_of(&self, user: &UserId, limit: u32) -> Result<Vec<UserProfile>, DirectoryError> {
        // Users with a participation in one of `user`'s conversations: one query, answered from
        // the participants' primary key (conversation, user) and its user index.
        let shared = participant::Entity::find()
            .select_only()
            .column(participant::Column::ConversationId)
            .filter(participant::Column::UserId.eq(user.as_str()))
            .into_query();
        let others = participant::Entity::find()
            .select_only()
            .column(participant::Column::UserId)
            .filter(participant::Column::ConversationId.in_subquery(shared))
            .filter(participant::Column::UserId.ne(user.as_str()))
            .into_query();
        let rows = user::Entity::find()
            .filter(user::Column::Id.in_subquery(others))
            .order_by_asc(user::Column::Username)
            .order_by_asc(user::Column::Id)
            .limit(u64::from(limit))
            .all(&self.db.read)
            .await
            .map_err(lookup_failed)?;
        rows.into_iter().map(to_profile).collect()
    }
}
