//! Mobile push (the domain's `mobile_push`): `device_tokens` (as the original app's
//! `DeviceToken`, plus the push service), `push_providers` (the services this deployment
//! sends through), and `mobile_pushes`, the outbox.
//!
//! The pushes are written by triggers inside the call's own statement, as the webhook outbox's
//! events are: a ring per token of the receiver when a call that is not silenced rings, and an
//! end of the ring per Expo or FCM token when it stops ringing. With no active service, or a
//! receiver with no token, they write nothing. Scheduling columns are integers (microseconds
//! since the epoch, 0 = now), as in the webhook outbox.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// One push of `kind` per token of the call's receiver whose service is active (and, for the
/// end of a ring, takes one: `PushProvider::takes_stop_ringing`).
fn insert_pushes(kind: &str, providers: &str) -> String {
    format!(
        "INSERT INTO mobile_pushes (call_id, token_id, kind)
           SELECT NEW.id, t.id, '{kind}' FROM device_tokens t
           JOIN push_providers p ON p.name = t.provider AND p.active
           WHERE t.user_id = NEW.receiver_id{providers};"
    )
}

const STOP_PROVIDERS: &str = " AND t.provider IN ('expo', 'fcm')";
const ANY_ACTIVE: &str = "EXISTS (SELECT 1 FROM push_providers WHERE active)";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(DeviceTokens::Table)
                    .col(ColumnDef::new(DeviceTokens::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(DeviceTokens::UserId).string_len(64).not_null())
                    .col(ColumnDef::new(DeviceTokens::Token).string_len(512).not_null().unique_key())
                    .col(ColumnDef::new(DeviceTokens::Platform).string_len(10).not_null())
                    .col(ColumnDef::new(DeviceTokens::Provider).string_len(16).not_null())
                    .col(ColumnDef::new(DeviceTokens::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(DeviceTokens::LastSeenAt).timestamp_with_time_zone().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_device_tokens_user")
                            .from(DeviceTokens::Table, DeviceTokens::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_device_tokens_user")
                    .table(DeviceTokens::Table)
                    .col(DeviceTokens::UserId)
                    .col(DeviceTokens::LastSeenAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PushProviders::Table)
                    .col(ColumnDef::new(PushProviders::Name).string_len(16).not_null().primary_key())
                    .col(ColumnDef::new(PushProviders::Active).boolean().not_null().default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(MobilePushes::Table)
                    .col(ColumnDef::new(MobilePushes::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(MobilePushes::CallId).big_integer().not_null())
                    .col(ColumnDef::new(MobilePushes::TokenId).big_integer().not_null())
                    .col(ColumnDef::new(MobilePushes::Kind).string_len(16).not_null())
                    .col(ColumnDef::new(MobilePushes::State).string_len(16).not_null().default("pending"))
                    .col(ColumnDef::new(MobilePushes::Attempts).integer().not_null().default(0))
                    .col(ColumnDef::new(MobilePushes::NextAttemptAt).big_integer().not_null().default(0))
                    .col(ColumnDef::new(MobilePushes::LeasedUntil).big_integer().not_null().default(0))
                    .col(ColumnDef::new(MobilePushes::LeasedBy).string_len(128).null())
                    .col(ColumnDef::new(MobilePushes::LastStatus).integer().null())
                    .col(ColumnDef::new(MobilePushes::LastError).string_len(512).null())
                    .col(ColumnDef::new(MobilePushes::FinishedAt).big_integer().null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_mobile_pushes_token")
                            .from(MobilePushes::Table, MobilePushes::TokenId)
                            .to(DeviceTokens::Table, DeviceTokens::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, columns) in [
            ("idx_mobile_pushes_due", &[MobilePushes::State, MobilePushes::NextAttemptAt][..]),
            ("idx_mobile_pushes_token_call", &[MobilePushes::TokenId, MobilePushes::CallId][..]),
        ] {
            let mut index = Index::create();
            index.name(name).table(MobilePushes::Table);
            for column in columns {
                index.col(column.clone());
            }
            manager.create_index(index.to_owned()).await?;
        }

        let (ring, stop) = (insert_pushes("ring", ""), insert_pushes("stop_ringing", STOP_PROVIDERS));
        let statements = match manager.get_database_backend() {
            DbBackend::Sqlite => vec![
                format!(
                    "CREATE TRIGGER calls_mobile_push_ring AFTER INSERT ON calls
                     WHEN NEW.status = 'ringing' AND NOT NEW.silenced AND {ANY_ACTIVE}
                     BEGIN {ring} END"
                ),
                format!(
                    "CREATE TRIGGER calls_mobile_push_stop AFTER UPDATE OF status ON calls
                     WHEN OLD.status = 'ringing' AND NEW.status <> 'ringing' AND NOT NEW.silenced AND {ANY_ACTIVE}
                     BEGIN {stop} END"
                ),
            ],
            DbBackend::Postgres => vec![
                format!(
                    "CREATE FUNCTION ringline_mobile_push() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN
                       IF NOT {ANY_ACTIVE} THEN RETURN NULL; END IF;
                       IF TG_OP = 'INSERT' THEN
                         {ring}
                       ELSE
                         {stop}
                       END IF;
                       RETURN NULL;
                     END $$"
                ),
                // The conditions are the triggers' own: most call changes never call the function.
                "CREATE TRIGGER calls_mobile_push_ring AFTER INSERT ON calls
                 FOR EACH ROW WHEN (NEW.status = 'ringing' AND NOT NEW.silenced)
                 EXECUTE FUNCTION ringline_mobile_push()"
                    .to_owned(),
                "CREATE TRIGGER calls_mobile_push_stop AFTER UPDATE OF status ON calls
                 FOR EACH ROW WHEN (OLD.status = 'ringing' AND NEW.status <> 'ringing' AND NOT NEW.silenced)
                 EXECUTE FUNCTION ringline_mobile_push()"
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
                "DROP TRIGGER IF EXISTS calls_mobile_push_ring ON calls",
                "DROP TRIGGER IF EXISTS calls_mobile_push_stop ON calls",
                "DROP FUNCTION IF EXISTS ringline_mobile_push()",
            ],
            _ => &["DROP TRIGGER IF EXISTS calls_mobile_push_ring", "DROP TRIGGER IF EXISTS calls_mobile_push_stop"],
        };
        for statement in statements {
            db.execute_unprepared(statement).await?;
        }
        for table in
            [MobilePushes::Table.into_iden(), PushProviders::Table.into_iden(), DeviceTokens::Table.into_iden()]
        {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone)]
enum DeviceTokens {
    Table,
    Id,
    UserId,
    Token,
    Platform,
    Provider,
    CreatedAt,
    LastSeenAt,
}

#[derive(DeriveIden, Clone)]
enum PushProviders {
    Table,
    Name,
    Active,
}

#[derive(DeriveIden, Clone)]
enum MobilePushes {
    Table,
    Id,
    CallId,
    TokenId,
    Kind,
    State,
    Attempts,
    NextAttemptAt,
    LeasedUntil,
    LeasedBy,
    LastStatus,
    LastError,
    FinishedAt,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}

#[cfg(test)]
mod tests {
    use ringline_domain::{MobilePushKind, PushProvider};

    /// The triggers name the kinds and the services that take a ring's end as the domain does.
    /// A migration is a frozen snapshot, so a new service needs a new migration; this says when.
    #[test]
    fn the_triggers_pushes_are_the_domains() {
        assert_eq!(MobilePushKind::parse("ring"), Some(MobilePushKind::Ring));
        assert_eq!(MobilePushKind::parse("stop_ringing"), Some(MobilePushKind::StopRinging));
        let takers: Vec<&str> =
            PushProvider::ALL.into_iter().filter(|p| p.takes_stop_ringing()).map(PushProvider::as_str).collect();
        assert_eq!(super::STOP_PROVIDERS, format!(" AND t.provider IN ('{}')", takers.join("', '")));
    }
}
