//! A call's notifications are written by the statement that changes the call: the receiver's
//! incoming-call notification with the insert of a ringing call, the missed-call notification
//! with the update that makes it missed. Triggers do it on both databases, as for the webhook
//! outbox, so a change is stored with its notification or not at all, and a client that reads
//! its notifications after any event of the change finds it. Before this, the notification was
//! inserted after the event was sent: a reader could miss it, and a crash lost it.
//!
//! `object_id` gets an index: the announcer reads the stored notification back, by call, to send
//! it as `notification.created`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The columns of the notification, from the call row `NEW`, for `verb` (an SQL expression).
/// The verb is `<incoming|missed>_<call_type>_call` (`NotificationVerb`'s names).
fn insert_notification(verb_prefix: &str, at: &str, data: &str) -> String {
    format!(
        "INSERT INTO notifications (recipient_id, actor_id, verb, object_id, data, unread, created_at)
           VALUES (NEW.receiver_id, NEW.caller_id, '{verb_prefix}_' || NEW.call_type || '_call', NEW.id, {data}, true, {at});"
    )
}

const DATA_KEYS: &str = "'conversation_id', NEW.conversation_id, 'call_id', NEW.id, 'call_type', NEW.call_type";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_notifications_object")
                    .table(Notifications::Table)
                    .col(Notifications::ObjectId)
                    .to_owned(),
            )
            .await?;
        let statements = match manager.get_database_backend() {
            DbBackend::Sqlite => {
                let data = format!("json_object({DATA_KEYS})");
                vec![
                    format!(
                        "CREATE TRIGGER calls_notify_ringing AFTER INSERT ON calls WHEN NEW.status = 'ringing'
                         BEGIN {} END",
                        insert_notification("incoming", "NEW.created_at", &data)
                    ),
                    format!(
                        "CREATE TRIGGER calls_notify_missed AFTER UPDATE OF status ON calls
                         WHEN NEW.status = 'missed' AND OLD.status <> 'missed'
                         BEGIN {} END",
                        insert_notification("missed", "NEW.updated_at", &data)
                    ),
                ]
            }
            DbBackend::Postgres => {
                let data = format!("json_build_object({DATA_KEYS})");
                vec![
                    format!(
                        "CREATE FUNCTION ringline_call_notification() RETURNS trigger LANGUAGE plpgsql AS $$
                         BEGIN
                           IF TG_OP = 'INSERT' THEN
                             {}
                           ELSE
                             {}
                           END IF;
                           RETURN NULL;
                         END $$",
                        insert_notification("incoming", "NEW.created_at", &data),
                        insert_notification("missed", "NEW.updated_at", &data)
                    ),
                    // The conditions are the triggers' own: the function is not even called for
                    // the accepts and hang-ups that make up most updates.
                    "CREATE TRIGGER calls_notify_insert AFTER INSERT ON calls
                     FOR EACH ROW WHEN (NEW.status = 'ringing') EXECUTE FUNCTION ringline_call_notification()"
                        .to_owned(),
                    "CREATE TRIGGER calls_notify_update AFTER UPDATE OF status ON calls
                     FOR EACH ROW WHEN (NEW.status = 'missed' AND OLD.status <> 'missed')
                     EXECUTE FUNCTION ringline_call_notification()"
                        .to_owned(),
                ]
            }
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
                "DROP TRIGGER IF EXISTS calls_notify_insert ON calls",
                "DROP TRIGGER IF EXISTS calls_notify_update ON calls",
                "DROP FUNCTION IF EXISTS ringline_call_notification()",
            ],
            _ => &["DROP TRIGGER IF EXISTS calls_notify_ringing", "DROP TRIGGER IF EXISTS calls_notify_missed"],
        };
        for statement in statements {
            db.execute_unprepared(statement).await?;
        }
        manager.drop_index(Index::drop().name("idx_notifications_object").table(Notifications::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Notifications {
    Table,
    ObjectId,
}

#[cfg(test)]
mod tests {
    use ringline_domain::{CallStatus, CallType, NotificationVerb};

    /// The triggers notify on the statuses the domain says cause a notification, and spell each
    /// verb as the domain does. A migration is a frozen snapshot, so a new verb, status or call
    /// type needs a new migration; this says when.
    #[test]
    fn the_triggers_notifications_are_the_domains() {
        for status in CallStatus::ALL {
            for call_type in CallType::ALL {
                let ours = match status {
                    CallStatus::Ringing => Some(format!("incoming_{}_call", call_type.as_str())),
                    CallStatus::Missed => Some(format!("missed_{}_call", call_type.as_str())),
                    _ => None,
                };
                let domain = NotificationVerb::caused_by(*status, *call_type).map(|verb| verb.as_str().to_owned());
                assert_eq!(ours, domain, "{status} {call_type}");
            }
        }
    }
}
