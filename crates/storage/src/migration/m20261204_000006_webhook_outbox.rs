//! The outbox of call webhooks. Every status a call enters (its insert, and each update of its
//! status) becomes one `webhook_events` row holding the call as it then was, and one
//! `webhook_deliveries` row per active subscription, written by triggers inside the call's own
//! statement: a change is stored with its events or not at all, so a crash between the change
//! and the delivery loses nothing. With no active subscription the triggers write nothing.
//!
//! Scheduling columns are integers (microseconds since the epoch, 0 = now) so that "due"
//! compares numbers on both databases; a new delivery is due at once.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The event each stored status causes (`WebhookEventType::for_status`).
const KINDS: &[(&str, &str)] = &[
    ("ringing", "call.ringing"),
    ("active", "call.accepted"),
    ("ended", "call.ended"),
    ("missed", "call.missed"),
    ("rejected", "call.rejected"),
    ("cancelled", "call.cancelled"),
];

/// `CASE NEW.status WHEN 'ringing' THEN 'call.ringing' … END`
fn kind_of_new_status() -> String {
    let whens: String = KINDS.iter().map(|(status, kind)| format!(" WHEN '{status}' THEN '{kind}'")).collect();
    format!("CASE NEW.status{whens} END")
}

const EVENT_COLUMNS: &str = "public_id, kind, call_id, conversation_id, caller_id, receiver_id, call_type, status, \
     started_at, answered_at, ended_at, duration_seconds, end_reason, call_created_at, updated_at";
const NEW_CALL: &str = "NEW.id, NEW.conversation_id, NEW.caller_id, NEW.receiver_id, NEW.call_type, NEW.status, \
     NEW.started_at, NEW.answered_at, NEW.ended_at, NEW.duration_seconds, NEW.end_reason, NEW.created_at, NEW.updated_at";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Subscriptions::Table)
                    .col(ColumnDef::new(Subscriptions::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Subscriptions::Url).string_len(2048).not_null().unique_key())
                    .col(ColumnDef::new(Subscriptions::Active).boolean().not_null().default(true))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Events::Table)
                    .col(ColumnDef::new(Events::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Events::PublicId).string_len(64).not_null().unique_key())
                    .col(ColumnDef::new(Events::Kind).string_len(32).not_null())
                    .col(ColumnDef::new(Events::CallId).big_integer().not_null())
                    .col(ColumnDef::new(Events::ConversationId).big_integer().null())
                    .col(ColumnDef::new(Events::CallerId).string_len(64).not_null())
                    .col(ColumnDef::new(Events::ReceiverId).string_len(64).not_null())
                    .col(ColumnDef::new(Events::CallType).string_len(10).not_null())
                    .col(ColumnDef::new(Events::Status).string_len(20).not_null())
                    .col(ColumnDef::new(Events::StartedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Events::AnsweredAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Events::EndedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Events::DurationSeconds).integer().null())
                    .col(ColumnDef::new(Events::EndReason).string_len(32).null())
                    .col(ColumnDef::new(Events::CallCreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Events::UpdatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Events::ReceiverOnline).boolean().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Deliveries::Table)
                    .col(ColumnDef::new(Deliveries::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Deliveries::EventId).big_integer().not_null())
                    .col(ColumnDef::new(Deliveries::SubscriptionId).big_integer().not_null())
                    .col(ColumnDef::new(Deliveries::CallId).big_integer().not_null())
                    .col(ColumnDef::new(Deliveries::State).string_len(16).not_null().default("pending"))
                    .col(ColumnDef::new(Deliveries::Attempts).integer().not_null().default(0))
                    .col(ColumnDef::new(Deliveries::NextAttemptAt).big_integer().not_null().default(0))
                    .col(ColumnDef::new(Deliveries::LeasedUntil).big_integer().not_null().default(0))
                    .col(ColumnDef::new(Deliveries::LeasedBy).string_len(128).null())
                    .col(ColumnDef::new(Deliveries::LastStatus).integer().null())
                    .col(ColumnDef::new(Deliveries::LastError).string_len(512).null())
                    .col(ColumnDef::new(Deliveries::FinishedAt).big_integer().null())
                    .foreign_key(
                        ForeignKey::create()
                            .from(Deliveries::Table, Deliveries::EventId)
                            .to(Events::Table, Events::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Deliveries::Table, Deliveries::SubscriptionId)
                            .to(Subscriptions::Table, Subscriptions::Id),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, columns) in [
            ("webhook_deliveries_due", &[Deliveries::State, Deliveries::NextAttemptAt][..]),
            ("webhook_deliveries_order", &[Deliveries::SubscriptionId, Deliveries::CallId, Deliveries::EventId][..]),
            ("webhook_deliveries_event", &[Deliveries::EventId][..]),
        ] {
            let mut index = Index::create();
            index.name(name).table(Deliveries::Table);
            for column in columns {
                index.col(column.clone());
            }
            manager.create_index(index.to_owned()).await?;
        }

        let kind = kind_of_new_status();
        let statements = match manager.get_database_backend() {
            DbBackend::Sqlite => {
                let body = format!(
                    "BEGIN
                       INSERT INTO webhook_events ({EVENT_COLUMNS})
                         VALUES ('evt_' || lower(hex(randomblob(16))), {kind}, {NEW_CALL});
                       INSERT INTO webhook_deliveries (event_id, subscription_id, call_id)
                         SELECT last_insert_rowid(), id, NEW.id FROM webhook_subscriptions WHERE active;
                     END"
                );
                let when =
                    format!("({kind}) IS NOT NULL AND EXISTS (SELECT 1 FROM webhook_subscriptions WHERE active)");
                vec![
                    format!("CREATE TRIGGER calls_webhook_insert AFTER INSERT ON calls WHEN {when} {body}"),
                    format!(
                        "CREATE TRIGGER calls_webhook_update AFTER UPDATE OF status ON calls
                         WHEN NEW.status <> OLD.status AND {when} {body}"
                    ),
                ]
            }
            DbBackend::Postgres => vec![
                format!(
                    "CREATE FUNCTION ringline_webhook_event() RETURNS trigger LANGUAGE plpgsql AS $$
                     DECLARE
                       event_kind text := {kind};
                       event bigint;
                     BEGIN
                       IF TG_OP = 'UPDATE' AND NEW.status = OLD.status THEN RETURN NULL; END IF;
                       IF event_kind IS NULL OR NOT EXISTS (SELECT 1 FROM webhook_subscriptions WHERE active) THEN
                         RETURN NULL;
                       END IF;
                       INSERT INTO webhook_events ({EVENT_COLUMNS})
                         VALUES ('evt_' || replace(gen_random_uuid()::text, '-', ''), event_kind, {NEW_CALL})
                         RETURNING id INTO event;
                       INSERT INTO webhook_deliveries (event_id, subscription_id, call_id)
                         SELECT event, id, NEW.id FROM webhook_subscriptions WHERE active;
                       RETURN NULL;
                     END $$"
                ),
                "CREATE TRIGGER calls_webhook_insert AFTER INSERT ON calls
                 FOR EACH ROW EXECUTE FUNCTION ringline_webhook_event()"
                    .to_owned(),
                "CREATE TRIGGER calls_webhook_update AFTER UPDATE OF status ON calls
                 FOR EACH ROW EXECUTE FUNCTION ringline_webhook_event()"
                    .to_owned(),
            ],
            DbBackend::MySql => return Err(DbErr::Migration("MySQL is not supported".to_owned())),
        };
        let db = manager.get_connection();
        for statement in statements {
            db.execute_unprepared(&statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let statements: &[&str] = match manager.get_database_backend() {
            DbBackend::Postgres => &[
                "DROP TRIGGER IF EXISTS calls_webhook_insert ON calls",
                "DROP TRIGGER IF EXISTS calls_webhook_update ON calls",
                "DROP FUNCTION IF EXISTS ringline_webhook_event()",
            ],
            _ => &["DROP TRIGGER IF EXISTS calls_webhook_insert", "DROP TRIGGER IF EXISTS calls_webhook_update"],
        };
        for statement in statements {
            db.execute_unprepared(statement).await?;
        }
        for table in [Deliveries::Table.into_iden(), Events::Table.into_iden(), Subscriptions::Table.into_iden()] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone)]
enum Subscriptions {
    #[sea_orm(iden = "webhook_subscriptions")]
    Table,
    Id,
    Url,
    Active,
}

#[derive(DeriveIden, Clone)]
enum Events {
    #[sea_orm(iden = "webhook_events")]
    Table,
    Id,
    PublicId,
    Kind,
    CallId,
    ConversationId,
    CallerId,
    ReceiverId,
    CallType,
    Status,
    StartedAt,
    AnsweredAt,
    EndedAt,
    DurationSeconds,
    EndReason,
    CallCreatedAt,
    UpdatedAt,
    ReceiverOnline,
}

#[derive(DeriveIden, Clone)]
enum Deliveries {
    #[sea_orm(iden = "webhook_deliveries")]
    Table,
    Id,
    EventId,
    SubscriptionId,
    CallId,
    State,
    Attempts,
    NextAttemptAt,
    LeasedUntil,
    LeasedBy,
    LastStatus,
    LastError,
    FinishedAt,
}

#[cfg(test)]
mod tests {
    use ringline_domain::{CallStatus, WebhookEventType};

    /// The triggers name the event of each status as the domain does. A migration is a frozen
    /// snapshot, so a new status needs a new migration; this says when.
    #[test]
    fn the_triggers_events_are_the_domains() {
        let mut domain: Vec<(&str, &str)> = CallStatus::ALL
            .iter()
            .filter_map(|status| WebhookEventType::for_status(*status).map(|kind| (status.as_str(), kind.as_str())))
            .collect();
        let mut ours = super::KINDS.to_vec();
        domain.sort_unstable();
        ours.sort_unstable();
        assert_eq!(ours, domain);
    }
}
