//! [`SqlCallRepository`]: calls in SQL, with atomic compare-and-set transitions.
//!
//! Two rules keep concurrent writers honest, on SQLite and PostgreSQL alike:
//! - a transition is one `UPDATE … WHERE id = ? AND status = <status it was computed from>`;
//!   the loser of a race updates no row and gets `Conflict`;
//! - a new call claims a `busy_lines` row per party (primary key: the user) inside its own
//!   insert, through a trigger the migrations install; a user already on a line makes the
//!   insert fail and nothing is stored. A finishing update frees the lines the same way. Lines
//!   are claimed in user-id order so that two crossing calls (A→B, B→A) wait on each other
//!   instead of deadlocking.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ringline_domain::{
    Call, CallId, CallListFilter, CallMoment, CallParts, CallQuality, CallRepository, CallStatus, DeviceClaim,
    DeviceId, NewCall, Page, PageRequest, RepositoryError, Timestamp, Transition, UserId,
};
use sea_orm::sea_query::{Expr, IntoCondition, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, SqlErr, TransactionTrait,
};

use crate::entity::{busy_line, call};
use crate::{Connections, statement, storage_failure};

/// The call repository over a sea-orm connection.
#[derive(Debug, Clone)]
pub struct SqlCallRepository {
    db: Connections,
}

/// A stored row that the domain refuses (hand-edited, or written by a newer schema).
#[derive(Debug, thiserror::Error)]
#[error("stored call {id} is unreadable: {reason}")]
struct CorruptRow {
    id: i64,
    reason: String,
}

impl SqlCallRepository {
    pub(crate) fn new(db: Connections) -> Self {
        Self { db }
    }
}

fn party_of(user: &UserId) -> Condition {
    Condition::any().add(call::Column::CallerId.eq(user.as_str())).add(call::Column::ReceiverId.eq(user.as_str()))
}

fn statuses(filter: impl Fn(CallStatus) -> bool) -> Vec<&'static str> {
    CallStatus::ALL.iter().copied().filter(|status| filter(*status)).map(CallStatus::as_str).collect()
}

fn to_call(row: call::Model) -> Result<Call, RepositoryError> {
    let id = row.id;
    let corrupt = |reason: String| storage_failure(CorruptRow { id, reason });
    let parts = CallParts {
        id: CallId::new(row.id).map_err(|e| corrupt(e.to_string()))?,
        conversation: row
            .conversation_id
            .map(ringline_domain::ConversationId::new)
            .transpose()
            .map_err(|e| corrupt(e.to_string()))?,
        caller: UserId::parse(row.caller_id).map_err(|e| corrupt(e.to_string()))?,
        receiver: UserId::parse(row.receiver_id).map_err(|e| corrupt(e.to_string()))?,
        call_type: row.call_type.parse().map_err(|e: ringline_domain::InvalidValue| corrupt(e.to_string()))?,
        status: row.status.parse().map_err(|e: ringline_domain::InvalidValue| corrupt(e.to_string()))?,
        started_at: row.started_at.into(),
        answered_at: row.answered_at.map(Timestamp::from),
        ended_at: row.ended_at.map(Timestamp::from),
        duration_seconds: row
            .duration_seconds
            .map(u32::try_from)
            .transpose()
            .map_err(|_| corrupt("negative duration".to_owned()))?,
        end_reason: row
            .end_reason
            .map(|reason| reason.parse())
            .transpose()
            .map_err(|e: ringline_domain::InvalidValue| corrupt(e.to_string()))?,
        created_at: row.created_at.into(),
        updated_at: row.updated_at.into(),
        callee_device: row
            .callee_device
            .map(|device| device.parse())
            .transpose()
            .map_err(|e: ringline_domain::InvalidValue| corrupt(e.to_string()))?,
        quality: row
            .quality
            .map(|text| serde_json::from_str::<CallQuality>(&text).map(std::sync::Arc::new))
            .transpose()
            .map_err(|e| corrupt(format!("quality: {e}")))?,
        silenced: row.silenced,
        rang_at: row.rang_at.map(Timestamp::from),
        video_at: row.video_at.map(Timestamp::from),
        waiting: row.waiting,
    };
    Call::restore(parts).map_err(storage_failure)
}

/// A quality summary as the `quality` column holds it.
fn quality_text(quality: &CallQuality) -> Result<String, RepositoryError> {
    serde_json::to_string(quality).map_err(storage_failure)
}

fn to_rows(rows: Vec<call::Model>) -> Result<Vec<Call>, RepositoryError> {
    rows.into_iter().map(to_call).collect()
}

fn datetime(timestamp: Timestamp) -> DateTime<Utc> {
    timestamp.as_datetime()
}

fn duration_column(seconds: Option<u32>) -> Option<i32> {
    // Durations over i32::MAX seconds (68 years) cannot happen; saturate rather than fail.
    seconds.map(|s| i32::try_from(s).unwrap_or(i32::MAX))
}

/// The row of a call about to ring.
fn new_row(new_call: &NewCall) -> call::ActiveModel {
    let started_at = datetime(new_call.started_at());
    call::ActiveModel {
        conversation_id: Set(new_call.conversation().map(i64::from)),
        caller_id: Set(new_call.caller().as_str().to_owned()),
        receiver_id: Set(new_call.receiver().as_str().to_owned()),
        call_type: Set(new_call.call_type().as_str().to_owned()),
        status: Set(CallStatus::Ringing.as_str().to_owned()),
        started_at: Set(started_at),
        answered_at: Set(None),
        ended_at: Set(None),
        duration_seconds: Set(None),
        end_reason: Set(None),
        silenced: Set(new_call.is_silenced()),
        waiting: Set(new_call.is_waiting()),
        created_at: Set(started_at),
        updated_at: Set(started_at),
        ..Default::default()
    }
}

#[async_trait]
impl CallRepository for SqlCallRepository {
    async fn create(&self, new_call: NewCall) -> Result<Call, RepositoryError> {
        let row = new_row(&new_call);
        // One statement: the database's trigger claims both parties' lines inside it
        // (migration `m20261203_000005_lines_follow_calls`), so a busy line fails the insert
        // and nothing is stored.
        let inserted = self
            .db
            .write
            .write(move |db| {
                Box::pin(async move {
                    match row.insert(db).await {
                        Ok(row) => Ok(Some(row)),
                        // Expected: one of the parties is on a line (found out below).
                        Err(error) if matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => Ok(None),
                        Err(error) => Err(error),
                    }
                })
            })
            .await
            .map_err(storage_failure)?;
        let Some(row) = inserted else {
            let mut parties = [new_call.caller(), new_call.receiver()];
            parties.sort();
            return Err(self.busy_party(parties).await);
        };
        let id = CallId::new(row.id).map_err(storage_failure)?;
        Ok(new_call.into_call(id))
    }

    async fn create_waiting(&self, new_call: NewCall) -> Result<Option<Call>, RepositoryError> {
        let receiver = new_call.receiver().as_str().to_owned();
        let backend = self.db.write_pool.get_database_backend();
        let transaction = self.db.write_pool.begin().await.map_err(storage_failure)?;
        // A write first: it locks the receiver's line row (PostgreSQL), so that their active
        // call cannot end between the check and the insert (its trigger, which hands a waiting
        // call the line, then runs after this commits and sees it); on SQLite it takes the
        // write lock at once.
        let locked = transaction
            .execute(statement(
                backend,
                "UPDATE busy_lines SET call_id = call_id WHERE user_id = ?",
                vec![receiver.clone().into()],
            ))
            .await
            .map_err(storage_failure)?;
        let held_by = if locked.rows_affected() == 0 {
            None
        } else {
            transaction
                .query_one(statement(
                    backend,
                    "SELECT c.status FROM busy_lines b JOIN calls c ON c.id = b.call_id WHERE b.user_id = ?",
                    vec![receiver.into()],
                ))
                .await
                .map_err(storage_failure)?
                .map(|row| row.try_get::<String>("", "status"))
                .transpose()
                .map_err(storage_failure)?
        };
        if held_by.as_deref() != Some(CallStatus::Active.as_str()) {
            transaction.rollback().await.map_err(storage_failure)?;
            return Ok(None);
        }
        match new_row(&new_call).insert(&transaction).await {
            Ok(row) => {
                transaction.commit().await.map_err(storage_failure)?;
                let id = CallId::new(row.id).map_err(storage_failure)?;
                Ok(Some(new_call.into_call(id)))
            }
            Err(error) if matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                transaction.rollback().await.map_err(storage_failure)?;
                // The caller is on a line, or a call already waits for the receiver.
                Err(self.busy_party([new_call.caller(), new_call.receiver()]).await)
            }
            Err(error) => Err(storage_failure(error)),
        }
    }

    async fn switch(&self, ended: &Transition, accepted: &Transition) -> Result<bool, RepositoryError> {
        let transaction = self.db.write_pool.begin().await.map_err(storage_failure)?;
        // The ending first: its trigger frees the receiver's line and hands it to the waiting
        // call, which the accept then finds on it.
        let switched = update_if_unchanged(&transaction, ended, None).await.map_err(storage_failure)? > 0;
        if update_if_unchanged(&transaction, accepted, None).await.map_err(storage_failure)? == 0 {
            transaction.rollback().await.map_err(storage_failure)?;
            let current = self.get(accepted.call.id()).await?.ok_or(RepositoryError::NotFound)?;
            return Err(RepositoryError::Conflict { current: current.status() });
        }
        transaction.commit().await.map_err(storage_failure)?;
        Ok(switched)
    }

    async fn get(&self, id: CallId) -> Result<Option<Call>, RepositoryError> {
        let row = call::Entity::find_by_id(id.get()).one(&self.db.read).await.map_err(storage_failure)?;
        row.map(to_call).transpose()
    }

    async fn list_for_user(
        &self,
        user: &UserId,
        filter: &CallListFilter,
        page: PageRequest,
    ) -> Result<Page<Call>, RepositoryError> {
        let mut condition = party_of(user);
        if let Some(other) = &filter.with_user {
            condition = Condition::all().add(condition).add(party_of(other));
        }
        let query = call::Entity::find().filter(condition);
        let total = query.clone().count(&self.db.read).await.map_err(storage_failure)?;
        let rows = query
            .order_by_desc(call::Column::StartedAt)
            .order_by_desc(call::Column::Id)
            .offset(page.offset())
            .limit(u64::from(page.per_page))
            .all(&self.db.read)
            .await
            .map_err(storage_failure)?;
        Ok(Page { items: to_rows(rows)?, total })
    }

    async fn open_calls_of(&self, user: &UserId) -> Result<Vec<Call>, RepositoryError> {
        let rows = call::Entity::find()
            .filter(party_of(user))
            .filter(call::Column::Status.is_in(statuses(CallStatus::is_open)))
            .order_by_asc(call::Column::StartedAt)
            .all(&self.db.read)
            .await
            .map_err(storage_failure)?;
        to_rows(rows)
    }

    async fn unanswered_started_before(&self, cutoff: Timestamp, limit: u32) -> Result<Vec<Call>, RepositoryError> {
        self.oldest_before(statuses(CallStatus::is_unanswered), call::Column::StartedAt, cutoff, limit).await
    }

    async fn apply(&self, transition: &Transition) -> Result<(), RepositoryError> {
        self.compare_and_set(transition, None).await
    }

    async fn newest_call_of(&self, user: &UserId) -> Result<Option<Call>, RepositoryError> {
        let row = call::Entity::find()
            .filter(party_of(user))
            .order_by_desc(call::Column::Id)
            .one(&self.db.read)
            .await
            .map_err(storage_failure)?;
        row.map(to_call).transpose()
    }

    async fn users_on_lines(&self) -> Result<Vec<UserId>, RepositoryError> {
        let ids: Vec<String> = busy_line::Entity::find()
            .select_only()
            .column(busy_line::Column::UserId)
            .into_tuple()
            .all(&self.db.read)
            .await
            .map_err(storage_failure)?;
        ids.into_iter().map(|id| UserId::parse(id).map_err(storage_failure)).collect()
    }

    async fn mark_seen(&self, users: &[UserId], at: Timestamp) -> Result<(), RepositoryError> {
        // Bounded statements: SQLite allows 32,766 bound values, and a smaller batch keeps each
        // write short.
        let at = datetime(at);
        let batches: Vec<Vec<String>> = users
            .chunks(MARK_SEEN_BATCH)
            .map(|batch| batch.iter().map(|user| user.as_str().to_owned()).collect())
            .collect();
        self.db
            .write
            .write(move |db| {
                Box::pin(async move {
                    for batch in batches {
                        busy_line::Entity::update_many()
                            .col_expr(busy_line::Column::LastSeenAt, Expr::value(at))
                            .filter(busy_line::Column::UserId.is_in(batch))
                            // Never backwards: another instance may have reported a later moment.
                            .filter(
                                Condition::any()
                                    .add(busy_line::Column::LastSeenAt.is_null())
                                    .add(busy_line::Column::LastSeenAt.lt(at)),
                            )
                            .exec(db)
                            .await?;
                    }
                    Ok(())
                })
            })
            .await
            .map_err(storage_failure)
    }

    async fn abandoned_calls(
        &self,
        seen_before: Timestamp,
        limit: u32,
    ) -> Result<Vec<(Call, Timestamp)>, RepositoryError> {
        let rows = call::Entity::find()
            .filter(
                Condition::any()
                    .add(
                        Condition::all()
                            .add(call::Column::Status.eq(CallStatus::Active.as_str()))
                            .add(nobody_seen_since(seen_before, false)),
                    )
                    .add(
                        Condition::all()
                            .add(call::Column::Status.is_in(statuses(CallStatus::is_unanswered)))
                            .add(nobody_seen_since(seen_before, true)),
                    ),
            )
            .order_by_asc(call::Column::Id)
            .limit(u64::from(limit))
            .all(&self.db.read)
            .await
            .map_err(storage_failure)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let lines = busy_line::Entity::find()
            .filter(busy_line::Column::CallId.is_in(rows.iter().map(|row| row.id)))
            .all(&self.db.read)
            .await
            .map_err(storage_failure)?;
        rows.into_iter()
            .map(|row| {
                let id = row.id;
                let call = to_call(row)?;
                // The parties that keep the call: both once answered, the caller while ringing.
                let counts = |line: &&busy_line::Model| {
                    line.call_id == id
                        && (call.status() == CallStatus::Active || line.user_id == call.caller().as_str())
                };
                // A line never seen counts from the answer (or the start): its party was there.
                let last_seen = lines
                    .iter()
                    .filter(counts)
                    .filter_map(|line| line.last_seen_at.map(Timestamp::from))
                    .fold(call.answered_at().unwrap_or(call.started_at()), Timestamp::max);
                Ok((call, last_seen))
            })
            .collect()
    }

    async fn active_answered_before(&self, cutoff: Timestamp, limit: u32) -> Result<Vec<Call>, RepositoryError> {
        self.oldest_before(vec![CallStatus::Active.as_str()], call::Column::AnsweredAt, cutoff, limit).await
    }

    async fn apply_if_abandoned(&self, transition: &Transition, seen_before: Timestamp) -> Result<(), RepositoryError> {
        let caller_only = transition.from.is_unanswered();
        self.compare_and_set(transition, Some(nobody_seen_since(seen_before, caller_only))).await
    }

    async fn claim_callee_device(
        &self,
        id: CallId,
        device: DeviceId,
        replacing: Option<DeviceId>,
    ) -> Result<DeviceClaim, RepositoryError> {
        let mut claimable = Condition::any()
            .add(call::Column::CalleeDevice.is_null())
            .add(call::Column::CalleeDevice.eq(device.to_string()));
        if let Some(gone) = replacing {
            claimable = claimable.add(call::Column::CalleeDevice.eq(gone.to_string()));
        }
        let current = self
            .db
            .write
            .write(move |db| {
                Box::pin(async move {
                    let claimed = call::Entity::update_many()
                        .col_expr(call::Column::CalleeDevice, Expr::value(device.to_string()))
                        .filter(call::Column::Id.eq(id.get()))
                        .filter(call::Column::Status.eq(CallStatus::Active.as_str()))
                        .filter(claimable)
                        .exec(db)
                        .await?;
                    if claimed.rows_affected > 0 {
                        return Ok(None);
                    }
                    let current: Option<(String, Option<String>)> = call::Entity::find_by_id(id.get())
                        .select_only()
                        .column(call::Column::Status)
                        .column(call::Column::CalleeDevice)
                        .into_tuple()
                        .one(db)
                        .await?;
                    Ok(Some(current))
                })
            })
            .await
            .map_err(storage_failure)?;
        let Some(current) = current else { return Ok(DeviceClaim::Granted) };
        let (status, holder) = current.ok_or(RepositoryError::NotFound)?;
        let status: CallStatus = status.parse().map_err(storage_failure)?;
        match holder.map(|holder| holder.parse::<DeviceId>()).transpose().map_err(storage_failure)? {
            Some(holder) if status == CallStatus::Active => Ok(DeviceClaim::HeldBy(holder)),
            _ => Ok(DeviceClaim::NotActive(status)),
        }
    }

    async fn set_quality(
        &self,
        id: CallId,
        current: Option<&CallQuality>,
        next: &CallQuality,
    ) -> Result<bool, RepositoryError> {
        // The stored text is always this serializer's output, so equal summaries are equal text.
        let unchanged = match current.map(quality_text).transpose()? {
            Some(text) => call::Column::Quality.eq(text),
            None => call::Column::Quality.is_null(),
        };
        self.set_column_if(id, call::Column::Quality, quality_text(next)?.into(), unchanged.into_condition()).await
    }

    async fn record_moment(&self, id: CallId, moment: CallMoment, at: Timestamp) -> Result<bool, RepositoryError> {
        let (column, status) = match moment {
            CallMoment::Rang => (call::Column::RangAt, CallStatus::Ringing),
            CallMoment::VideoStarted => (call::Column::VideoAt, CallStatus::Active),
        };
        let unset_in_status = Condition::all().add(call::Column::Status.eq(status.as_str())).add(column.is_null());
        self.set_column_if(id, column, datetime(at).into(), unset_in_status).await
    }

    async fn release_callee_device(&self, id: CallId, device: DeviceId) -> Result<(), RepositoryError> {
        self.db
            .write
            .write(move |db| {
                Box::pin(async move {
                    call::Entity::update_many()
                        .col_expr(call::Column::CalleeDevice, Expr::value(Option::<String>::None))
                        .filter(call::Column::Id.eq(id.get()))
                        .filter(call::Column::Status.eq(CallStatus::Active.as_str()))
                        .filter(call::Column::CalleeDevice.eq(device.to_string()))
                        .exec(db)
                        .await?;
                    Ok(())
                })
            })
            .await
            .map_err(storage_failure)
    }
}

/// Users per `mark_seen` statement.
const MARK_SEEN_BATCH: usize = 500;

/// No line of the call (with `caller_only`, not the caller's line) was seen at or after
/// `seen_before`.
fn nobody_seen_since(seen_before: Timestamp, caller_only: bool) -> Condition {
    let mut seen_since = Query::select()
        .expr(Expr::value(1))
        .from(busy_line::Entity)
        .and_where(Expr::col((busy_line::Entity, busy_line::Column::CallId)).equals((call::Entity, call::Column::Id)))
        .and_where(Expr::col((busy_line::Entity, busy_line::Column::LastSeenAt)).gte(datetime(seen_before)))
        .to_owned();
    if caller_only {
        seen_since.and_where(
            Expr::col((busy_line::Entity, busy_line::Column::UserId)).equals((call::Entity, call::Column::CallerId)),
        );
    }
    Condition::all().add(Expr::exists(seen_since).not())
}

impl SqlCallRepository {
    /// How many calls ring and how many are active now, in the whole deployment (a metrics
    /// gauge: one `GROUP BY` over the (status, started_at) index).
    ///
    /// # Errors
    /// `Storage` when the store fails.
    pub async fn count_open(&self) -> Result<(i64, i64), RepositoryError> {
        let counts: Vec<(String, i64)> = call::Entity::find()
            .select_only()
            .column(call::Column::Status)
            .column_as(call::Column::Id.count(), "open")
            .filter(call::Column::Status.is_in(statuses(CallStatus::is_open)))
            .group_by(call::Column::Status)
            .into_tuple()
            .all(&self.db.read)
            .await
            .map_err(storage_failure)?;
        let count_of = |status: CallStatus| {
            counts.iter().find(|(stored, _)| stored == status.as_str()).map_or(0, |(_, count)| *count)
        };
        Ok((count_of(CallStatus::Ringing) + count_of(CallStatus::Initiating), count_of(CallStatus::Active)))
    }

    /// Which of `parties` (in user-id order) holds a line, after claiming both failed.
    /// `UPDATE calls SET <column> = <value> WHERE id = <id> AND <only_if>`, for what is recorded
    /// on a call without changing its status; whether the row changed.
    async fn set_column_if(
        &self,
        id: CallId,
        column: call::Column,
        value: sea_orm::Value,
        only_if: Condition,
    ) -> Result<bool, RepositoryError> {
        let updated = self
            .db
            .write
            .write(move |db| {
                Box::pin(async move {
                    call::Entity::update_many()
                        .col_expr(column, Expr::value(value))
                        .filter(call::Column::Id.eq(id.get()))
                        .filter(only_if)
                        .exec(db)
                        .await
                })
            })
            .await
            .map_err(storage_failure)?;
        Ok(updated.rows_affected > 0)
    }

    async fn busy_party(&self, parties: [&UserId; 2]) -> RepositoryError {
        let held: Result<Vec<String>, _> = busy_line::Entity::find()
            .select_only()
            .column(busy_line::Column::UserId)
            .filter(busy_line::Column::UserId.is_in(parties.map(UserId::as_str)))
            .into_tuple()
            .all(&self.db.read)
            .await;
        match held {
            Ok(held) => {
                // Freed again meanwhile: either will do, the service decides on fresh data.
                let busy =
                    parties.into_iter().find(|user| held.iter().any(|id| id == user.as_str())).unwrap_or(parties[0]);
                RepositoryError::LineBusy { user: busy.clone() }
            }
            Err(error) => storage_failure(error),
        }
    }

    /// Up to `limit` calls in one of `statuses` whose `moment` is before `cutoff`, oldest first:
    /// what a sweep is due to settle.
    async fn oldest_before(
        &self,
        statuses: Vec<&'static str>,
        moment: call::Column,
        cutoff: Timestamp,
        limit: u32,
    ) -> Result<Vec<Call>, RepositoryError> {
        let rows = call::Entity::find()
            .filter(call::Column::Status.is_in(statuses))
            .filter(moment.lt(datetime(cutoff)))
            .order_by_asc(moment)
            .limit(u64::from(limit))
            .all(&self.db.read)
            .await
            .map_err(storage_failure)?;
        to_rows(rows)
    }

    /// Writes `transition.call` if the stored status is still `transition.from` (and `guard`
    /// holds). One statement: when it finishes the call, the database's trigger frees both
    /// lines inside it. When it changes nothing, the call is read on the same connection (it
    /// may have been changed by a write committed together with this one).
    async fn compare_and_set(&self, transition: &Transition, guard: Option<Condition>) -> Result<(), RepositoryError> {
        let transition = transition.clone();
        let missed = self
            .db
            .write
            .write(move |db| {
                Box::pin(async move {
                    if update_if_unchanged(db, &transition, guard).await? > 0 {
                        return Ok(None);
                    }
                    let current = call::Entity::find_by_id(transition.call.id().get()).one(db).await?;
                    Ok(Some(current))
                })
            })
            .await
            .map_err(storage_failure)?;
        match missed {
            None => Ok(()),
            // `Conflict` with the status unchanged means the guard failed (for a liveness end:
            // a party was seen meanwhile).
            Some(Some(current)) => Err(RepositoryError::Conflict { current: to_call(current)?.status() }),
            Some(None) => Err(RepositoryError::NotFound),
        }
    }
}

/// `UPDATE calls SET … WHERE id = ? AND status = <from> [AND guard]`; the rows it changed.
async fn update_if_unchanged<C: ConnectionTrait>(
    db: &C,
    transition: &Transition,
    guard: Option<Condition>,
) -> Result<u64, sea_orm::DbErr> {
    let next = &transition.call;
    let mut compare_and_set = Condition::all()
        .add(call::Column::Id.eq(next.id().get()))
        .add(call::Column::Status.eq(transition.from.as_str()));
    if let Some(guard) = guard {
        compare_and_set = compare_and_set.add(guard);
    }
    // An accept decided on a copy that did not know the call waits (call waiting) would leave
    // its receiver in two active calls: it loses, and the caller re-reads and switches.
    if transition.from.is_unanswered() && next.status() == CallStatus::Active && !next.is_waiting() {
        compare_and_set = compare_and_set.add(call::Column::Waiting.eq(false));
    }
    let updated = call::Entity::update_many()
        .col_expr(call::Column::Status, Expr::value(next.status().as_str()))
        .col_expr(call::Column::AnsweredAt, Expr::value(next.answered_at().map(datetime)))
        .col_expr(call::Column::EndedAt, Expr::value(next.ended_at().map(datetime)))
        .col_expr(call::Column::DurationSeconds, Expr::value(duration_column(next.duration_seconds())))
        .col_expr(call::Column::EndReason, Expr::value(next.end_reason().map(|r| r.as_str())))
        .col_expr(call::Column::UpdatedAt, Expr::value(datetime(next.updated_at())));
    // Written only by the accept that names it: a later change computed from a copy that
    // missed a claim must not clear the claim.
    let updated = match next.callee_device() {
        Some(device) => updated.col_expr(call::Column::CalleeDevice, Expr::value(device.to_string())),
        None => updated,
    };
    let updated = updated.filter(compare_and_set.into_condition()).exec(db).await?;
    Ok(updated.rows_affected)
}
