//! [`SqlWebhookOutbox`]: the outbox of call webhooks (the domain's `WebhookOutbox`). The
//! events themselves are written by triggers, inside each call change's own statement
//! (migration `m20261204_000006_webhook_outbox`); this reads them out and records deliveries.
//!
//! Several instances share the outbox: a delivery is leased with a compare-and-set on
//! `leased_until` before it is sent, so one instance sends it, and another takes it over only
//! once the lease has run out (the sender died).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ringline_domain::{
    Call, CallParts, DeliveryOutcome, RepositoryError, Timestamp, WebhookDelivery, WebhookEvent, WebhookEventType,
    WebhookOutbox,
};
use sea_orm::{ConnectionTrait, DbErr, QueryResult, TransactionTrait, Value};

use crate::{Connections, statement, storage_failure};

/// The outbox over a sea-orm connection.
#[derive(Debug, Clone)]
pub struct SqlWebhookOutbox {
    db: Connections,
}

impl SqlWebhookOutbox {
    pub(crate) fn new(db: Connections) -> Self {
        Self { db }
    }

    /// When the oldest change whose webhook is still to be delivered happened, if one waits
    /// (a metrics gauge: how far behind the receivers are).
    ///
    /// # Errors
    /// `Storage` when the store fails.
    pub async fn oldest_pending_since(&self) -> Result<Option<Timestamp>, RepositoryError> {
        let backend = self.db.read.get_database_backend();
        let row = self
            .db
            .read
            .query_one(statement(
                backend,
                "SELECT e.updated_at FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
                 WHERE d.state = 'pending' ORDER BY e.updated_at LIMIT 1",
                Vec::new(),
            ))
            .await
            .map_err(storage_failure)?;
        row.map(|row| row.try_get::<DateTime<Utc>>("", "updated_at").map(Timestamp::from))
            .transpose()
            .map_err(storage_failure)
    }
}

/// A due delivery: pending, not leased, its subscription on, and no older event of the same
/// call still pending for the same subscription (a call's events go out in order).
const DUE: &str = "SELECT d.id FROM webhook_deliveries d
     JOIN webhook_subscriptions s ON s.id = d.subscription_id
     WHERE d.state = 'pending' AND d.next_attempt_at <= ? AND d.leased_until <= ? AND s.active
       AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e
                       WHERE e.subscription_id = d.subscription_id AND e.call_id = d.call_id
                         AND e.state = 'pending' AND e.event_id < d.event_id)
     ORDER BY d.id LIMIT ?";

const LEASE: &str = "UPDATE webhook_deliveries SET leased_until = ?, leased_by = ?
     WHERE id = ? AND state = 'pending' AND leased_until <= ?";

const CLAIMED: &str = "SELECT d.id AS delivery_id, d.attempts, s.url, e.id AS event_row, e.public_id, e.kind,
            e.call_id, e.conversation_id, e.caller_id, e.receiver_id, e.call_type, e.status, e.started_at,
            e.answered_at, e.ended_at, e.duration_seconds, e.end_reason, e.call_created_at, e.updated_at,
            e.receiver_online, c.quality
     FROM webhook_deliveries d
     JOIN webhook_events e ON e.id = d.event_id
     JOIN webhook_subscriptions s ON s.id = d.subscription_id
     LEFT JOIN calls c ON c.id = e.call_id
     WHERE d.id = ?";

fn micros(timestamp: Timestamp) -> i64 {
    timestamp.unix_micros()
}

#[derive(Debug, thiserror::Error)]
#[error("stored webhook event {row} is unreadable: {reason}")]
struct CorruptEvent {
    row: i64,
    reason: String,
}

fn to_delivery(row: &QueryResult) -> Result<WebhookDelivery, RepositoryError> {
    let get_err = |error: DbErr| storage_failure(error);
    let event_row: i64 = row.try_get("", "event_row").map_err(get_err)?;
    let corrupt = |reason: String| storage_failure(CorruptEvent { row: event_row, reason });
    let text = |column: &str| row.try_get::<String>("", column).map_err(get_err);
    let time = |column: &str| row.try_get::<DateTime<Utc>>("", column).map(Timestamp::from).map_err(get_err);
    let optional_time = |column: &str| {
        row.try_get::<Option<DateTime<Utc>>>("", column).map(|t| t.map(Timestamp::from)).map_err(get_err)
    };
    let kind = text("kind")?;
    let kind = WebhookEventType::parse(&kind).ok_or_else(|| corrupt(format!("unknown kind {kind}")))?;
    let parts = CallParts {
        id: ringline_domain::CallId::new(row.try_get("", "call_id").map_err(get_err)?)
            .map_err(|e| corrupt(e.to_string()))?,
        conversation: row
            .try_get::<Option<i64>>("", "conversation_id")
            .map_err(get_err)?
            .map(ringline_domain::ConversationId::new)
            .transpose()
            .map_err(|e| corrupt(e.to_string()))?,
        caller: ringline_domain::UserId::parse(text("caller_id")?).map_err(|e| corrupt(e.to_string()))?,
        receiver: ringline_domain::UserId::parse(text("receiver_id")?).map_err(|e| corrupt(e.to_string()))?,
        call_type: text("call_type")?.parse().map_err(|e: ringline_domain::InvalidValue| corrupt(e.to_string()))?,
        status: text("status")?.parse().map_err(|e: ringline_domain::InvalidValue| corrupt(e.to_string()))?,
        started_at: time("started_at")?,
        answered_at: optional_time("answered_at")?,
        ended_at: optional_time("ended_at")?,
        duration_seconds: row
            .try_get::<Option<i32>>("", "duration_seconds")
            .map_err(get_err)?
            .map(u32::try_from)
            .transpose()
            .map_err(|_| corrupt("negative duration".to_owned()))?,
        end_reason: row
            .try_get::<Option<String>>("", "end_reason")
            .map_err(get_err)?
            .map(|reason| reason.parse())
            .transpose()
            .map_err(|e: ringline_domain::InvalidValue| corrupt(e.to_string()))?,
        created_at: time("call_created_at")?,
        updated_at: time("updated_at")?,
        // Not part of a webhook's payload.
        callee_device: None,
        // The parties' reports as they stand when the event is sent (not a snapshot of the
        // change: reports arrive during the call and after it).
        quality: row
            .try_get::<Option<String>>("", "quality")
            .map_err(get_err)?
            .map(|text| serde_json::from_str(&text).map(std::sync::Arc::new))
            .transpose()
            .map_err(|e| corrupt(format!("quality: {e}")))?,
        // Not part of a webhook's payload either (the host application learns of
        // do-not-disturb from its own users' settings).
        silenced: false,
        // Nor the moments (they do not change the status, and no event is sent for them).
        rang_at: None,
        video_at: None,
        waiting: false,
    };
    let call = Call::restore(parts).map_err(storage_failure)?;
    Ok(WebhookDelivery {
        id: row.try_get("", "delivery_id").map_err(get_err)?,
        url: text("url")?,
        attempts: u32::try_from(row.try_get::<i32>("", "attempts").map_err(get_err)?).unwrap_or(0),
        event: WebhookEvent {
            id: text("public_id")?,
            kind,
            created_at: call.updated_at(),
            call,
            receiver_online: row.try_get::<Option<bool>>("", "receiver_online").map_err(get_err)?,
            row: event_row,
        },
    })
}

#[async_trait]
impl WebhookOutbox for SqlWebhookOutbox {
    async fn set_subscriptions(&self, urls: &[String]) -> Result<(), RepositoryError> {
        let urls = urls.to_vec();
        let db = &self.db.write_pool;
        let backend = db.get_database_backend();
        let now = micros(Timestamp::from(Utc::now()));
        let transaction = db.begin().await.map_err(storage_failure)?;
        let run = async {
            transaction
                .execute(statement(backend, "UPDATE webhook_subscriptions SET active = ?", vec![false.into()]))
                .await?;
            for url in urls {
                transaction
                    .execute(statement(
                        backend,
                        "INSERT INTO webhook_subscriptions (url, active) VALUES (?, ?)
                         ON CONFLICT (url) DO UPDATE SET active = excluded.active",
                        vec![url.into(), true.into()],
                    ))
                    .await?;
            }
            // What a removed subscription was still to receive is dropped.
            transaction
                .execute(statement(
                    backend,
                    "UPDATE webhook_deliveries SET state = 'dropped', finished_at = ?, leased_until = 0
                     WHERE state = 'pending'
                       AND subscription_id IN (SELECT id FROM webhook_subscriptions WHERE NOT active)",
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
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, RepositoryError> {
        let (now, lease_until) = (micros(now), micros(lease_until));
        // Looked for on a reading connection: most seconds nothing is due, and then the writer
        // (on SQLite, the only one) is not involved at all. The lease below re-checks each.
        let backend = self.db.read.get_database_backend();
        let due = self
            .db
            .read
            .query_all(statement(backend, DUE, vec![now.into(), now.into(), i64::from(limit).into()]))
            .await
            .map_err(storage_failure)?
            .iter()
            .map(|row| row.try_get::<i64>("", "id"))
            .collect::<Result<Vec<i64>, DbErr>>()
            .map_err(storage_failure)?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let claimed = self.db.lease(LEASE, due, sender, lease_until, now).await?;
        let backend = self.db.read.get_database_backend();
        let mut deliveries = Vec::with_capacity(claimed.len());
        for id in claimed {
            let row =
                self.db.read.query_one(statement(backend, CLAIMED, vec![id.into()])).await.map_err(storage_failure)?;
            if let Some(row) = row {
                deliveries.push(to_delivery(&row)?);
            }
        }
        Ok(deliveries)
    }

    async fn set_receiver_online(&self, event_row: i64, online: bool) -> Result<(), RepositoryError> {
        let sql = "UPDATE webhook_events SET receiver_online = ? WHERE id = ? AND receiver_online IS NULL";
        self.db.write_one(sql, vec![online.into(), event_row.into()]).await.map(drop)
    }

    async fn finish(&self, delivery: i64, outcome: &DeliveryOutcome, now: Timestamp) -> Result<(), RepositoryError> {
        let now = micros(now);
        let (state, status, error, next): (&str, Option<u16>, Option<String>, i64) = match outcome {
            DeliveryOutcome::Delivered { status } => ("delivered", Some(*status), None, 0),
            DeliveryOutcome::Gone => ("gone", Some(410), None, 0),
            DeliveryOutcome::Expired { status, error } => ("expired", *status, Some(error.clone()), 0),
            DeliveryOutcome::GaveUp { status, error } => ("failed", *status, Some(error.clone()), 0),
            DeliveryOutcome::RetryAt { at, status, error } => ("pending", *status, Some(error.clone()), micros(*at)),
        };
        let finished = (state != "pending").then_some(now);
        // The receiver's own words are cut short: they are kept for an operator, not as data.
        let error = error.map(|error| error.chars().take(500).collect::<String>());
        let values: Vec<Value> = vec![
            state.into(),
            status.map(i32::from).into(),
            error.into(),
            next.into(),
            finished.into(),
            delivery.into(),
        ];
        self.db
            .write
            .write(move |db| {
                Box::pin(async move {
                    let sql = "UPDATE webhook_deliveries SET state = ?, attempts = attempts + 1, last_status = ?,
                                 last_error = ?, next_attempt_at = ?, finished_at = ?, leased_until = 0,
                                 leased_by = NULL
                               WHERE id = ?";
                    db.execute(statement(db.get_database_backend(), sql, values)).await?;
                    Ok(())
                })
            })
            .await
            .map_err(storage_failure)
    }

    async fn release_leases(&self, sender: &str) -> Result<u64, RepositoryError> {
        let sql = "UPDATE webhook_deliveries SET leased_until = 0, leased_by = NULL
                   WHERE leased_by = ? AND state = 'pending'";
        self.db.write_one(sql, vec![sender.into()]).await
    }

    async fn due_now(&self, now: Timestamp) -> Result<u64, RepositoryError> {
        let sql = "UPDATE webhook_deliveries SET next_attempt_at = 0 WHERE state = 'pending' AND next_attempt_at > ?";
        self.db.write_one(sql, vec![micros(now).into()]).await
    }

    async fn prune(&self, before: Timestamp) -> Result<u64, RepositoryError> {
        // Their deliveries go with them (`ON DELETE CASCADE`).
        let sql = "DELETE FROM webhook_events WHERE id IN (
                     SELECT event_id FROM webhook_deliveries GROUP BY event_id
                     HAVING SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END) = 0 AND MAX(finished_at) < ?)";
        self.db.write_one(sql, vec![micros(before).into()]).await
    }
}
