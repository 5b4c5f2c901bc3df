//! [`SqlCallPolicy`]: users' call settings and blocks (the domain's `CallPolicyStore`), and the
//! one read the policy decides every call attempt from.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ringline_domain::{
    BlockedUser, CallPolicyStore, CallSettings, CallSettingsChange, CallStatus, CountedCalls, Page, PageRequest,
    PolicyFacts, RecentCalls, RepositoryError, Timestamp, UserId, UserProfile, WhoCanCall,
};
use sea_orm::{ConnectionTrait, DbErr, QueryResult, TransactionTrait, Value};

use crate::{Connections, statement, storage_failure};

/// Call settings and blocks over a sea-orm connection.
#[derive(Debug, Clone)]
pub struct SqlCallPolicy {
    db: Connections,
}

impl SqlCallPolicy {
    pub(crate) fn new(db: Connections) -> Self {
        Self { db }
    }
}

/// The statuses of a call its callee never answered.
const UNANSWERED: [CallStatus; 3] = [CallStatus::Missed, CallStatus::Cancelled, CallStatus::Rejected];

/// Everything the policy needs, in one statement: each part a scalar subquery on an index
/// (`call_blocks`' primary key and its reverse index, `call_settings`' key, the participants'
/// user index, `calls (caller_id, started_at)`). The two counts read the most recent calls
/// only up to their cap (`LIMIT`), and nothing when it is zero (the cap is off): a caller's
/// history never makes a call attempt slower.
const FACTS: &str = "WITH
    recent AS (SELECT started_at FROM calls WHERE caller_id = ? AND started_at > ?
               ORDER BY started_at DESC LIMIT ?),
    unanswered AS (SELECT started_at FROM calls WHERE caller_id = ? AND receiver_id = ? AND started_at > ?
                   AND status IN (?, ?, ?) ORDER BY started_at DESC LIMIT ?)
SELECT
    EXISTS (SELECT 1 FROM call_blocks
            WHERE (blocker_id = ? AND blocked_id = ?) OR (blocker_id = ? AND blocked_id = ?)) AS blocked,
    (SELECT who_can_call FROM call_settings WHERE user_id = ?) AS who_can_call,
    (SELECT do_not_disturb FROM call_settings WHERE user_id = ?) AS do_not_disturb,
    (SELECT do_not_disturb_until FROM call_settings WHERE user_id = ?) AS do_not_disturb_until,
    (SELECT relay_only FROM call_settings WHERE user_id = ?) AS relay_only,
    (SELECT call_waiting FROM call_settings WHERE user_id = ?) AS call_waiting,
    EXISTS (SELECT 1 FROM conversation_participants mine
            JOIN conversation_participants theirs ON theirs.conversation_id = mine.conversation_id
            WHERE mine.user_id = ? AND theirs.user_id = ?) AS share_conversation,
    (SELECT count(*) FROM recent) AS recent_count,
    (SELECT min(started_at) FROM recent) AS recent_oldest,
    (SELECT count(*) FROM unanswered) AS unanswered_count,
    (SELECT min(started_at) FROM unanswered) AS unanswered_oldest";

fn get<T: sea_orm::TryGetable>(row: &QueryResult, column: &str) -> Result<T, RepositoryError> {
    row.try_get("", column).map_err(storage_failure)
}

fn count(row: &QueryResult, column: &str) -> Result<u32, RepositoryError> {
    Ok(u32::try_from(get::<i64>(row, column)?.max(0)).unwrap_or(u32::MAX))
}

fn who_can_call(text: Option<String>) -> Result<WhoCanCall, RepositoryError> {
    text.map_or(Ok(WhoCanCall::default()), |text| text.parse().map_err(storage_failure))
}

fn settings_of(row: &QueryResult) -> Result<CallSettings, RepositoryError> {
    Ok(CallSettings {
        who_can_call: who_can_call(get(row, "who_can_call")?)?,
        do_not_disturb: get::<Option<bool>>(row, "do_not_disturb")?.unwrap_or(false),
        do_not_disturb_until: get::<Option<DateTime<Utc>>>(row, "do_not_disturb_until")?.map(Timestamp::from),
        relay_only: get::<Option<bool>>(row, "relay_only")?.unwrap_or(false),
        call_waiting: get::<Option<bool>>(row, "call_waiting")?.unwrap_or(false),
    })
}

#[async_trait]
impl CallPolicyStore for SqlCallPolicy {
    async fn facts(
        &self,
        caller: &UserId,
        callee: &UserId,
        caller_recent: CountedCalls,
        unanswered: CountedCalls,
    ) -> Result<PolicyFacts, RepositoryError> {
        let (me, them) = (Value::from(caller.as_str()), Value::from(callee.as_str()));
        let limit = |counted: CountedCalls| Value::from(i64::from(counted.limit));
        let mut values = vec![me.clone(), caller_recent.since.as_datetime().into(), limit(caller_recent)];
        values.extend([me.clone(), them.clone(), unanswered.since.as_datetime().into()]);
        values.extend(UNANSWERED.map(|status| Value::from(status.as_str())));
        values.push(limit(unanswered));
        values.extend([them.clone(), me.clone(), me.clone(), them.clone()]);
        values.extend([them.clone(), them.clone(), them.clone(), them.clone(), them.clone(), me, them]);
        let backend = self.db.read.get_database_backend();
        let row = self
            .db
            .read
            .query_one(statement(backend, FACTS, values))
            .await
            .map_err(storage_failure)?
            .ok_or_else(|| storage_failure(DbErr::RecordNotFound("the policy's facts".to_owned())))?;
        let recent = |count_column, oldest_column| -> Result<RecentCalls, RepositoryError> {
            Ok(RecentCalls {
                count: count(&row, count_column)?,
                oldest: get::<Option<DateTime<Utc>>>(&row, oldest_column)?.map(Timestamp::from),
            })
        };
        Ok(PolicyFacts {
            blocked: get(&row, "blocked")?,
            callee_settings: settings_of(&row)?,
            share_conversation: get(&row, "share_conversation")?,
            caller_recent: recent("recent_count", "recent_oldest")?,
            unanswered_to_callee: recent("unanswered_count", "unanswered_oldest")?,
        })
    }

    async fn settings(&self, user: &UserId) -> Result<CallSettings, RepositoryError> {
        let backend = self.db.read.get_database_backend();
        let row = self
            .db
            .read
            .query_one(statement(
                backend,
                "SELECT who_can_call, do_not_disturb, do_not_disturb_until, relay_only, call_waiting FROM call_settings
                 WHERE user_id = ?",
                vec![user.as_str().into()],
            ))
            .await
            .map_err(storage_failure)?;
        row.map_or(Ok(CallSettings::default()), |row| settings_of(&row))
    }

    async fn change_settings(
        &self,
        user: &UserId,
        change: &CallSettingsChange,
        at: Timestamp,
    ) -> Result<CallSettings, RepositoryError> {
        // One upsert that sets only the fields the change names: two changes at once to
        // different fields both hold. A first change starts from the defaults.
        let first = CallSettings::default().changed_by(change);
        let mut updates = Vec::new();
        if change.who_can_call.is_some() {
            updates.push("who_can_call = excluded.who_can_call");
        }
        if change.do_not_disturb.is_some() {
            updates.push("do_not_disturb = excluded.do_not_disturb");
        }
        if change.do_not_disturb_until.is_some() {
            updates.push("do_not_disturb_until = excluded.do_not_disturb_until");
        }
        if change.relay_only.is_some() {
            updates.push("relay_only = excluded.relay_only");
        }
        if change.call_waiting.is_some() {
            updates.push("call_waiting = excluded.call_waiting");
        }
        updates.push("updated_at = excluded.updated_at");
        let sql = format!(
            "INSERT INTO call_settings
               (user_id, who_can_call, do_not_disturb, do_not_disturb_until, relay_only, call_waiting, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (user_id) DO UPDATE SET {}
             RETURNING who_can_call, do_not_disturb, do_not_disturb_until, relay_only, call_waiting",
            updates.join(", ")
        );
        let values: Vec<Value> = vec![
            user.as_str().into(),
            first.who_can_call.as_str().into(),
            first.do_not_disturb.into(),
            Value::ChronoDateTimeUtc(first.do_not_disturb_until.map(|until| Box::new(until.as_datetime()))),
            first.relay_only.into(),
            first.call_waiting.into(),
            at.as_datetime().into(),
        ];
        let row = self
            .db
            .write
            .write(move |db| {
                Box::pin(async move { db.query_one(statement(db.get_database_backend(), &sql, values)).await })
            })
            .await
            .map_err(storage_failure)?
            .ok_or_else(|| storage_failure(DbErr::RecordNotFound("the changed settings".to_owned())))?;
        settings_of(&row)
    }

    async fn blocks(&self, user: &UserId, page: PageRequest) -> Result<Page<BlockedUser>, RepositoryError> {
        let backend = self.db.read.get_database_backend();
        let total = self
            .db
            .read
            .query_one(statement(
                backend,
                "SELECT count(*) AS total FROM call_blocks WHERE blocker_id = ?",
                vec![user.as_str().into()],
            ))
            .await
            .map_err(storage_failure)?
            .map_or(Ok(0), |row| get::<i64>(&row, "total"))?;
        let rows = self
            .db
            .read
            .query_all(statement(
                backend,
                "SELECT u.id, u.username, u.first_name, u.last_name, u.profile_image_url, b.created_at
                 FROM call_blocks b JOIN users u ON u.id = b.blocked_id
                 WHERE b.blocker_id = ?
                 ORDER BY b.created_at DESC, u.id LIMIT ? OFFSET ?",
                vec![
                    user.as_str().into(),
                    i64::from(page.per_page).into(),
                    i64::try_from(page.offset()).unwrap_or(i64::MAX).into(),
                ],
            ))
            .await
            .map_err(storage_failure)?;
        let items = rows
            .iter()
            .map(|row| {
                Ok(BlockedUser {
                    profile: UserProfile {
                        id: UserId::parse(get::<String>(row, "id")?).map_err(storage_failure)?,
                        username: get(row, "username")?,
                        first_name: get(row, "first_name")?,
                        last_name: get(row, "last_name")?,
                        profile_image_url: get(row, "profile_image_url")?,
                    },
                    blocked_at: get::<DateTime<Utc>>(row, "created_at")?.into(),
                })
            })
            .collect::<Result<_, RepositoryError>>()?;
        Ok(Page { items, total: u64::try_from(total).unwrap_or(0) })
    }

    async fn block(&self, blocker: &UserId, blocked: &UserId, at: Timestamp) -> Result<Timestamp, RepositoryError> {
        let values: Vec<Value> = vec![blocker.as_str().into(), blocked.as_str().into(), at.as_datetime().into()];
        let row = self
            .db
            .write
            .write(move |db| {
                Box::pin(async move {
                    // The no-op update makes a repeat return the row it found: the first moment.
                    let sql = "INSERT INTO call_blocks (blocker_id, blocked_id, created_at) VALUES (?, ?, ?)
                               ON CONFLICT (blocker_id, blocked_id) DO UPDATE SET created_at = call_blocks.created_at
                               RETURNING created_at";
                    db.query_one(statement(db.get_database_backend(), sql, values)).await
                })
            })
            .await
            .map_err(storage_failure)?
            .ok_or_else(|| storage_failure(DbErr::RecordNotFound("the block".to_owned())))?;
        Ok(get::<DateTime<Utc>>(&row, "created_at")?.into())
    }

    async fn unblock(&self, blocker: &UserId, blocked: &UserId) -> Result<bool, RepositoryError> {
        let values: Vec<Value> = vec![blocker.as_str().into(), blocked.as_str().into()];
        self.db
            .write
            .write(move |db| {
                Box::pin(async move {
                    let sql = "DELETE FROM call_blocks WHERE blocker_id = ? AND blocked_id = ?";
                    Ok(db.execute(statement(db.get_database_backend(), sql, values)).await?.rows_affected() > 0)
                })
            })
            .await
            .map_err(storage_failure)
    }

    async fn replace_blocks(&self, user: &UserId, blocked: &[UserId], at: Timestamp) -> Result<(), RepositoryError> {
        // A transaction of its own (rare, admin-driven): the list is never seen half-replaced.
        let txn = self.db.write_pool.begin().await.map_err(storage_failure)?;
        let backend = txn.get_database_backend();
        let keep: Vec<Value> = std::iter::once(Value::from(user.as_str()))
            .chain(blocked.iter().map(|id| Value::from(id.as_str())))
            .collect();
        let placeholders = vec!["?"; blocked.len()].join(", ");
        let delete = if blocked.is_empty() {
            "DELETE FROM call_blocks WHERE blocker_id = ?".to_owned()
        } else {
            format!("DELETE FROM call_blocks WHERE blocker_id = ? AND blocked_id NOT IN ({placeholders})")
        };
        txn.execute(statement(backend, &delete, keep)).await.map_err(storage_failure)?;
        for id in blocked {
            txn.execute(statement(
                backend,
                "INSERT INTO call_blocks (blocker_id, blocked_id, created_at) VALUES (?, ?, ?)
                 ON CONFLICT (blocker_id, blocked_id) DO NOTHING",
                vec![user.as_str().into(), id.as_str().into(), at.as_datetime().into()],
            ))
            .await
            .map_err(storage_failure)?;
        }
        txn.commit().await.map_err(storage_failure)
    }
}
