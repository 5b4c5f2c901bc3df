//! [`SqlPushSubscriptions`]: browsers' Web Push subscriptions (the domain's
//! `PushSubscriptions`), and the server's VAPID key pair ([`SqlPushSubscriptions::vapid_keys`]).

use async_trait::async_trait;
use ringline_domain::{
    MAX_PUSH_SUBSCRIPTIONS_PER_USER, PushSubscription, PushSubscriptions, RepositoryError, Timestamp, UserId, VapidKeys,
};
use sea_orm::{ConnectionTrait, Value};

use crate::{Connections, statement, storage_failure};

/// Push subscriptions over a sea-orm connection.
#[derive(Debug, Clone)]
pub struct SqlPushSubscriptions {
    db: Connections,
}

impl SqlPushSubscriptions {
    pub(crate) fn new(db: Connections) -> Self {
        Self { db }
    }
    async fn stored_vapid_keys(&self) -> Result<Option<VapidKeys>, RepositoryError> {
        let db = &self.db.write_pool;
        let row = db
            .query_one(statement(
                db.get_database_backend(),
                "SELECT private_key, public_key FROM vapid_keys WHERE id = 1",
                vec![],
            ))
            .await
            .map_err(storage_failure)?;
        row.map(|row| {
            Ok(VapidKeys {
                private_pkcs8_base64: row.try_get("", "private_key").map_err(storage_failure)?,
                public_key: row.try_get("", "public_key").map_err(storage_failure)?,
            })
        })
        .transpose()
    }
}

#[async_trait]
impl PushSubscriptions for SqlPushSubscriptions {
    async fn vapid_keys(&self, generate: fn() -> VapidKeys) -> Result<VapidKeys, RepositoryError> {
        if let Some(keys) = self.stored_vapid_keys().await? {
            return Ok(keys);
        }
        let keys = generate();
        let db = &self.db.write_pool;
        db.execute(statement(
            db.get_database_backend(),
            "INSERT INTO vapid_keys (id, private_key, public_key) VALUES (1, ?, ?) ON CONFLICT (id) DO NOTHING",
            vec![keys.private_pkcs8_base64.clone().into(), keys.public_key.clone().into()],
        ))
        .await
        .map_err(storage_failure)?;
        Ok(self.stored_vapid_keys().await?.unwrap_or(keys))
    }

    async fn subscribe(
        &self,
        user: &UserId,
        subscription: &PushSubscription,
        now: Timestamp,
    ) -> Result<(), RepositoryError> {
        let values: Vec<Value> = vec![
            user.as_str().into(),
            subscription.endpoint.clone().into(),
            subscription.p256dh.clone().into(),
            subscription.auth.clone().into(),
            now.as_datetime().into(),
        ];
        let keep = i64::try_from(MAX_PUSH_SUBSCRIPTIONS_PER_USER).unwrap_or(i64::MAX);
        let older: Vec<Value> = vec![user.as_str().into(), user.as_str().into(), keep.into()];
        self.db
            .write
            .write(move |db| {
                Box::pin(async move {
                    let backend = db.get_database_backend();
                    let sql = "INSERT INTO push_subscriptions (user_id, endpoint, p256dh, auth, created_at)
                               VALUES (?, ?, ?, ?, ?)
                               ON CONFLICT (endpoint) DO UPDATE SET user_id = excluded.user_id,
                                 p256dh = excluded.p256dh, auth = excluded.auth, created_at = excluded.created_at";
                    db.execute(statement(backend, sql, values)).await?;
                    // Whatever ran meanwhile, the last of these runs after every insert: at most
                    // the cap is left.
                    let sql = "DELETE FROM push_subscriptions WHERE user_id = ? AND id NOT IN (
                                 SELECT id FROM push_subscriptions WHERE user_id = ?
                                 ORDER BY created_at DESC, id DESC LIMIT ?)";
                    db.execute(statement(backend, sql, older)).await?;
                    Ok(())
                })
            })
            .await
            .map_err(storage_failure)
    }

    async fn unsubscribe(&self, user: &UserId, endpoint: &str) -> Result<bool, RepositoryError> {
        let sql = "DELETE FROM push_subscriptions WHERE user_id = ? AND endpoint = ?";
        Ok(self.db.write_one(sql, vec![user.as_str().into(), endpoint.into()]).await? > 0)
    }

    async fn forget(&self, endpoint: &str) -> Result<(), RepositoryError> {
        self.db.write_one("DELETE FROM push_subscriptions WHERE endpoint = ?", vec![endpoint.into()]).await.map(drop)
    }

    async fn of_user(&self, user: &UserId) -> Result<Vec<PushSubscription>, RepositoryError> {
        let backend = self.db.read.get_database_backend();
        let rows = self
            .db
            .read
            .query_all(statement(
                backend,
                "SELECT endpoint, p256dh, auth FROM push_subscriptions WHERE user_id = ? ORDER BY id",
                vec![user.as_str().into()],
            ))
            .await
            .map_err(storage_failure)?;
        rows.iter()
            .map(|row| {
                Ok(PushSubscription {
                    endpoint: row.try_get("", "endpoint").map_err(storage_failure)?,
                    p256dh: row.try_get("", "p256dh").map_err(storage_failure)?,
                    auth: row.try_get("", "auth").map_err(storage_failure)?,
                })
            })
            .collect()
    }
}
