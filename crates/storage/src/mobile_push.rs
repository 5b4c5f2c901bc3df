//! [`SqlMobilePush`]: device tokens (the domain's `DeviceTokens`) and the outbox of mobile
//! pushes (`MobilePushOutbox`). The pushes are written by triggers inside each call change's
//! own statement (migration `m20261207_000014_mobile_push`); this reads them out, leases them
//! as the webhook outbox does (a compare-and-set on `leased_until`, so one instance sends
//! each attempt) and records how each ended.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ringline_domain::{
    CallId, CallRepository, DevicePlatform, DeviceRegistration, DeviceToken, DeviceTokens, MAX_DEVICE_TOKENS_PER_USER,
    MobilePush, MobilePushKind, MobilePushOutbox, MobilePushOutcome, Page, PageRequest, PushProvider, RepositoryError,
    Timestamp, UserId,
};
use sea_orm::{ConnectionTrait, DbErr, QueryResult, TransactionTrait, Value};

use crate::calls::SqlCallRepository;
use crate::{Connections, statement, storage_failure};

/// Device tokens and mobile pushes over a sea-orm connection.
#[derive(Debug, Clone)]
pub struct SqlMobilePush {
    db: Connections,
}

impl SqlMobilePush {
    pub(crate) fn new(db: Connections) -> Self {
        Self { db }
    }
}

const TOKEN_COLUMNS: &str = "t.id, t.user_id, t.token, t.platform, t.provider, t.created_at, t.last_seen_at";

#[derive(Debug, thiserror::Error)]
#[error("stored device token {id} is unreadable: {reason}")]
struct CorruptToken {
    id: i64,
    reason: String,
}

fn get<T: sea_orm::TryGetable>(row: &QueryResult, column: &str) -> Result<T, RepositoryError> {
    row.try_get("", column).map_err(storage_failure)
}

fn to_token(row: &QueryResult) -> Result<DeviceToken, RepositoryError> {
    let id: i64 = get(row, "id")?;
    let corrupt = |reason: String| storage_failure(CorruptToken { id, reason });
    let platform: String = get(row, "platform")?;
    let provider: String = get(row, "provider")?;
    Ok(DeviceToken {
        id,
        user: UserId::parse(get::<String>(row, "user_id")?).map_err(|e| corrupt(e.to_string()))?,
        token: get(row, "token")?,
        platform: DevicePlatform::parse(&platform).ok_or_else(|| corrupt(format!("platform {platform}")))?,
        provider: PushProvider::parse(&provider).ok_or_else(|| corrupt(format!("provider {provider}")))?,
        created_at: Timestamp::from(get::<DateTime<Utc>>(row, "created_at")?),
        last_seen_at: Timestamp::from(get::<DateTime<Utc>>(row, "last_seen_at")?),
    })
}

/// The names of `providers`, as an SQL list of literals (they are the domain's own names).
fn provider_list(providers: &[PushProvider]) -> String {
    providers.iter().map(|provider| format!("'{}'", provider.as_str())).collect::<Vec<_>>().join(", ")
}

#[async_trait]
impl DeviceTokens for SqlMobilePush {
    async fn register(
        &self,
        user: &UserId,
        registration: &DeviceRegistration,
        now: Timestamp,
    ) -> Result<DeviceToken, RepositoryError> {
        let now = now.as_datetime();
        let upsert: Vec<Value> = vec![
            user.as_str().into(),
            registration.token.clone().into(),
            registration.platform.as_str().into(),
            registration.provider.as_str().into(),
            now.into(),
            now.into(),
        ];
        let keep = i64::try_from(MAX_DEVICE_TOKENS_PER_USER).unwrap_or(i64::MAX);
        let older: Vec<Value> = vec![user.as_str().into(), user.as_str().into(), keep.into()];
        let token = registration.token.clone();
        let row = self
            .db
            .write
            .write(move |db| {
                Box::pin(async move {
                    let backend = db.get_database_backend();
                    // A token that moves to another user takes nothing of the last one's with
                    // it: the pushes still waiting for it were about their calls.
                    let sql = "DELETE FROM mobile_pushes WHERE state = 'pending' AND token_id IN (
                                 SELECT id FROM device_tokens WHERE token = ? AND user_id <> ?)";
                    db.execute(statement(backend, sql, vec![token.clone().into(), upsert[0].clone()])).await?;
                    let sql = "INSERT INTO device_tokens (user_id, token, platform, provider, created_at, last_seen_at)
                               VALUES (?, ?, ?, ?, ?, ?)
                               ON CONFLICT (token) DO UPDATE SET user_id = excluded.user_id,
                                 platform = excluded.platform, provider = excluded.provider,
                                 last_seen_at = excluded.last_seen_at";
                    db.execute(statement(backend, sql, upsert)).await?;
                    // Whatever ran meanwhile, the last of these runs after every insert: at most
                    // the cap is left.
                    let sql = "DELETE FROM device_tokens WHERE user_id = ? AND id NOT IN (
                                 SELECT id FROM device_tokens WHERE user_id = ?
                                 ORDER BY last_seen_at DESC, id DESC LIMIT ?)";
                    db.execute(statement(backend, sql, older)).await?;
                    let sql = format!("SELECT {TOKEN_COLUMNS} FROM device_tokens t WHERE t.token = ?");
                    db.query_one(statement(backend, &sql, vec![token.into()])).await
                })
            })
            .await
            .map_err(storage_failure)?;
        let row = row.ok_or_else(|| storage_failure(DbErr::RecordNotFound("the token just stored".to_owned())))?;
        to_token(&row)
    }

    async fn list(&self, user: &UserId, page: PageRequest) -> Result<Page<DeviceToken>, RepositoryError> {
        let backend = self.db.read.get_database_backend();
        let total = self
            .db
            .read
            .query_one(statement(
                backend,
                "SELECT count(*) AS total FROM device_tokens WHERE user_id = ?",
                vec![user.as_str().into()],
            ))
            .await
            .map_err(storage_failure)?
            .map_or(Ok(0), |row| get::<i64>(&row, "total"))?;
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM device_tokens t WHERE t.user_id = ?
             ORDER BY t.last_seen_at DESC, t.id DESC LIMIT ? OFFSET ?"
        );
        let values: Vec<Value> = vec![
            user.as_str().into(),
            i64::from(page.per_page).into(),
            i64::try_from(page.offset()).unwrap_or(i64::MAX).into(),
        ];
        let rows = self.db.read.query_all(statement(backend, &sql, values)).await.map_err(storage_failure)?;
        let items = rows.iter().map(to_token).collect::<Result<Vec<_>, _>>()?;
        Ok(Page { items, total: u64::try_from(total).unwrap_or(0) })
    }

    async fn remove(&self, user: &UserId, id: i64) -> Result<bool, RepositoryError> {
        let values: Vec<Value> = vec![id.into(), user.as_str().into()];
        self.db
            .write
            .write(move |db| {
                Box::pin(async move {
                    let backend = db.get_database_backend();
                    let sql = "DELETE FROM mobile_pushes WHERE token_id IN (
                                 SELECT id FROM device_tokens WHERE id = ? AND user_id = ?)";
                    db.execute(statement(backend, sql, values.clone())).await?;
                    let sql = "DELETE FROM device_tokens WHERE id = ? AND user_id = ?";
                    Ok(db.execute(statement(backend, sql, values)).await?.rows_affected() > 0)
                })
            })
            .await
            .map_err(storage_failure)
    }
}

/// A due push: pending, not leased, for one of the services this sender has, and not behind an
/// older push of the same call to the same token that is in flight.
const DUE: &str = "SELECT d.id FROM mobile_pushes d
     JOIN device_tokens t ON t.id = d.token_id
     WHERE d.state = 'pending' AND d.next_attempt_at <= ? AND d.leased_until <= ?
       AND t.provider IN ({providers})
       AND NOT EXISTS (SELECT 1 FROM mobile_pushes e
                       WHERE e.token_id = d.token_id AND e.call_id = d.call_id AND e.id < d.id
                         AND e.state = 'pending' AND e.leased_until > ?)
     ORDER BY d.id LIMIT ?";

const LEASE: &str = "UPDATE mobile_pushes SET leased_until = ?, leased_by = ?
     WHERE id = ? AND state = 'pending' AND leased_until <= ?";

#[async_trait]
impl MobilePushOutbox for SqlMobilePush {
    async fn set_providers(&self, providers: &[PushProvider]) -> Result<(), RepositoryError> {
        let db = &self.db.write_pool;
        let backend = db.get_database_backend();
        let now = Timestamp::from(Utc::now()).unix_micros();
        let transaction = db.begin().await.map_err(storage_failure)?;
        let run = async {
            for provider in PushProvider::ALL {
                transaction
                    .execute(statement(
                        backend,
                        "INSERT INTO push_providers (name, active) VALUES (?, ?)
                         ON CONFLICT (name) DO UPDATE SET active = excluded.active",
                        vec![provider.as_str().into(), providers.contains(&provider).into()],
                    ))
                    .await?;
            }
            // What a service that is off now was still to send is dropped.
            transaction
                .execute(statement(
                    backend,
                    "UPDATE mobile_pushes SET state = 'dropped', finished_at = ?, leased_until = 0,
                       last_error = 'the push service is not configured'
                     WHERE state = 'pending' AND token_id IN (
                       SELECT t.id FROM device_tokens t JOIN push_providers p ON p.name = t.provider
                       WHERE NOT p.active)",
                    vec![now.into()],
                ))
                .await?;
            Ok::<(), DbErr>(())
        };
        run.await.map_err(storage_failure)?;
        transaction.commit().await.map_err(storage_failure)
    }

    async fn claim_due(
        &self,
        sender: &str,
        providers: &[PushProvider],
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<MobilePush>, RepositoryError> {
        if providers.is_empty() {
            return Ok(Vec::new());
        }
        let (now, lease_until) = (now.unix_micros(), lease_until.unix_micros());
        // Looked for on a reading connection: most seconds nothing is due, and then the writer
        // (on SQLite, the only one) is not involved at all. The lease below re-checks each.
        let backend = self.db.read.get_database_backend();
        let due = DUE.replace("{providers}", &provider_list(providers));
        let values: Vec<Value> = vec![now.into(), now.into(), now.into(), i64::from(limit).into()];
        let due = self
            .db
            .read
            .query_all(statement(backend, &due, values))
            .await
            .map_err(storage_failure)?
            .iter()
            .map(|row| get::<i64>(row, "id"))
            .collect::<Result<Vec<i64>, _>>()?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let claimed = self.db.lease(LEASE, due, sender, lease_until, now).await?;
        let calls = SqlCallRepository::new(self.db.clone());
        let mut pushes = Vec::with_capacity(claimed.len());
        let sql = format!(
            "SELECT d.id AS push_id, d.kind, d.attempts, d.call_id, {TOKEN_COLUMNS}
             FROM mobile_pushes d JOIN device_tokens t ON t.id = d.token_id WHERE d.id = ?"
        );
        for id in claimed {
            let Some(row) =
                self.db.read.query_one(statement(backend, &sql, vec![id.into()])).await.map_err(storage_failure)?
            else {
                continue; // Its token was deleted meanwhile, and the push with it.
            };
            let kind: String = get(&row, "kind")?;
            let call_id = CallId::new(get(&row, "call_id")?).map_err(storage_failure)?;
            let Some(call) = calls.get(call_id).await? else {
                continue;
            };
            pushes.push(MobilePush {
                id: get(&row, "push_id")?,
                kind: MobilePushKind::parse(&kind)
                    .ok_or_else(|| storage_failure(DbErr::Type(format!("mobile push kind {kind}"))))?,
                token: to_token(&row)?,
                call,
                attempts: u32::try_from(get::<i32>(&row, "attempts")?).unwrap_or(0),
            });
        }
        Ok(pushes)
    }

    async fn finish(
        &self,
        push: &MobilePush,
        outcome: &MobilePushOutcome,
        now: Timestamp,
    ) -> Result<(), RepositoryError> {
        let now = now.unix_micros();
        let (status, error, next): (Option<u16>, Option<String>, i64) = match outcome {
            MobilePushOutcome::Sent => (None, None, 0),
            MobilePushOutcome::TokenGone { reason } | MobilePushOutcome::Dropped { reason } => {
                (None, Some(reason.clone()), 0)
            }
            MobilePushOutcome::RetryAt { at, status, error } => (*status, Some(error.clone()), at.unix_micros()),
            MobilePushOutcome::Failed { status, error } => (*status, Some(error.clone()), 0),
        };
        let state = outcome.state();
        let finished = (state != "pending").then_some(now);
        // The service's own words are cut short: they are kept for an operator, not as data.
        let error = error.map(|error| error.chars().take(500).collect::<String>());
        let values: Vec<Value> = vec![
            state.into(),
            status.map(i32::from).into(),
            error.into(),
            next.into(),
            finished.into(),
            push.id.into(),
        ];
        let gone = matches!(outcome, MobilePushOutcome::TokenGone { .. }).then_some(push.token.id);
        self.db
            .write
            .write(move |db| {
                Box::pin(async move {
                    let backend = db.get_database_backend();
                    let sql = "UPDATE mobile_pushes SET state = ?, attempts = attempts + 1, last_status = ?,
                                 last_error = ?, next_attempt_at = ?, finished_at = ?, leased_until = 0,
                                 leased_by = NULL
                               WHERE id = ?";
                    db.execute(statement(backend, sql, values)).await?;
                    if let Some(token) = gone {
                        // The token's other pushes go with it (no service takes them any more).
                        let sql = "DELETE FROM mobile_pushes WHERE token_id = ?";
                        db.execute(statement(backend, sql, vec![token.into()])).await?;
                        let sql = "DELETE FROM device_tokens WHERE id = ?";
                        db.execute(statement(backend, sql, vec![token.into()])).await?;
                    }
                    Ok(())
                })
            })
            .await
            .map_err(storage_failure)
    }

    async fn release_leases(&self, sender: &str) -> Result<u64, RepositoryError> {
        let sql =
            "UPDATE mobile_pushes SET leased_until = 0, leased_by = NULL WHERE leased_by = ? AND state = 'pending'";
        self.db.write_one(sql, vec![sender.into()]).await
    }

    async fn prune(&self, before: Timestamp) -> Result<u64, RepositoryError> {
        let sql = "DELETE FROM mobile_pushes WHERE state <> 'pending' AND finished_at < ?";
        self.db.write_one(sql, vec![before.unix_micros().into()]).await
    }
}
