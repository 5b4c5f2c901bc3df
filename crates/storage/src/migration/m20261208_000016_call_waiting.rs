//! Call waiting: `calls.waiting` (the call rang a receiver who was in an active call),
//! `call_settings.call_waiting` (the user turned it on) and `waiting_lines`, each user's one
//! place for a waiting call, kept by the same triggers as `busy_lines`
//! (`m20261203_000005_lines_follow_calls`), now:
//!
//! - inserting an open call that is not waiting claims both parties' lines, as before;
//! - inserting a waiting call claims the caller's line and the receiver's waiting place (the
//!   receiver's line stays with their active call); a second waiting call fails on the
//!   primary key as a busy line does;
//! - finishing a call frees its lines and its waiting place, and a party of it who has a call
//!   waiting gets that call on their line (so a waiting call whose receiver's active call ended
//!   is an ordinary ringing call, and the receiver is busy with it).
//!
//! All inside the statement that writes the call, so a call and its lines never disagree.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The statuses of an open call, as the first lines migration has them (its test checks them
/// against the domain's).
use super::m20261203_000005_lines_follow_calls::OPEN;

/// A finished call's waiting places go, and its parties' waiting calls take their lines.
const FREE_AND_PROMOTE: &str = "
    DELETE FROM busy_lines WHERE call_id = NEW.id;
    DELETE FROM waiting_lines WHERE call_id = NEW.id;
    INSERT INTO busy_lines (user_id, call_id, last_seen_at)
      SELECT w.user_id, w.call_id, NEW.updated_at FROM waiting_lines w
      WHERE w.user_id IN (NEW.caller_id, NEW.receiver_id)
        AND NOT EXISTS (SELECT 1 FROM busy_lines b WHERE b.user_id = w.user_id);
    DELETE FROM waiting_lines
      WHERE user_id IN (NEW.caller_id, NEW.receiver_id)
        AND EXISTS (SELECT 1 FROM busy_lines b
                    WHERE b.user_id = waiting_lines.user_id AND b.call_id = waiting_lines.call_id);";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Calls::Table)
                    .add_column(ColumnDef::new(Calls::Waiting).boolean().not_null().default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(CallSettings::Table)
                    .add_column(ColumnDef::new(CallSettings::CallWaiting).boolean().not_null().default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WaitingLines::Table)
                    .col(ColumnDef::new(WaitingLines::UserId).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(WaitingLines::CallId).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("waiting_lines_call")
                    .table(WaitingLines::Table)
                    .col(WaitingLines::CallId)
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        let statements = match manager.get_database_backend() {
            DbBackend::Sqlite => vec![
                "DROP TRIGGER calls_claim_lines".to_owned(),
                "DROP TRIGGER calls_free_lines".to_owned(),
                format!(
                    "CREATE TRIGGER calls_claim_lines AFTER INSERT ON calls
                     WHEN NEW.status IN {OPEN} AND NOT NEW.waiting BEGIN
                       INSERT INTO busy_lines (user_id, call_id, last_seen_at) VALUES
                         (min(NEW.caller_id, NEW.receiver_id), NEW.id, NEW.started_at),
                         (max(NEW.caller_id, NEW.receiver_id), NEW.id, NEW.started_at);
                     END"
                ),
                format!(
                    "CREATE TRIGGER calls_claim_waiting_place AFTER INSERT ON calls
                     WHEN NEW.status IN {OPEN} AND NEW.waiting BEGIN
                       INSERT INTO busy_lines (user_id, call_id, last_seen_at) VALUES (NEW.caller_id, NEW.id, NEW.started_at);
                       INSERT INTO waiting_lines (user_id, call_id) VALUES (NEW.receiver_id, NEW.id);
                     END"
                ),
                format!(
                    "CREATE TRIGGER calls_free_lines AFTER UPDATE OF status ON calls
                     WHEN NEW.status NOT IN {OPEN} BEGIN {FREE_AND_PROMOTE}
                     END"
                ),
            ],
            DbBackend::Postgres => vec![
                format!(
                    "CREATE OR REPLACE FUNCTION ringline_claim_lines() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN
                       IF NEW.status IN {OPEN} AND NOT NEW.waiting THEN
                         INSERT INTO busy_lines (user_id, call_id, last_seen_at) VALUES
                           (LEAST(NEW.caller_id, NEW.receiver_id), NEW.id, NEW.started_at),
                           (GREATEST(NEW.caller_id, NEW.receiver_id), NEW.id, NEW.started_at);
                       ELSIF NEW.status IN {OPEN} THEN
                         INSERT INTO busy_lines (user_id, call_id, last_seen_at) VALUES (NEW.caller_id, NEW.id, NEW.started_at);
                         INSERT INTO waiting_lines (user_id, call_id) VALUES (NEW.receiver_id, NEW.id);
                       END IF;
                       RETURN NULL;
                     END $$"
                ),
                format!(
                    "CREATE OR REPLACE FUNCTION ringline_free_lines() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN
                       IF NEW.status NOT IN {OPEN} THEN {FREE_AND_PROMOTE}
                       END IF;
                       RETURN NULL;
                     END $$"
                ),
            ],
            DbBackend::MySql => return Err(DbErr::Migration("MySQL is not supported".to_owned())),
        };
        for statement in statements {
            db.execute_unprepared(&statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let statements: Vec<String> = match manager.get_database_backend() {
            DbBackend::Postgres => vec![
                format!(
                    "CREATE OR REPLACE FUNCTION ringline_claim_lines() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN
                       IF NEW.status IN {OPEN} THEN
                         INSERT INTO busy_lines (user_id, call_id, last_seen_at) VALUES
                           (LEAST(NEW.caller_id, NEW.receiver_id), NEW.id, NEW.started_at),
                           (GREATEST(NEW.caller_id, NEW.receiver_id), NEW.id, NEW.started_at);
                       END IF;
                       RETURN NULL;
                     END $$"
                ),
                format!(
                    "CREATE OR REPLACE FUNCTION ringline_free_lines() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN
                       IF NEW.status NOT IN {OPEN} THEN
                         DELETE FROM busy_lines WHERE call_id = NEW.id;
                       END IF;
                       RETURN NULL;
                     END $$"
                ),
            ],
            _ => vec![
                "DROP TRIGGER IF EXISTS calls_claim_waiting_place".to_owned(),
                "DROP TRIGGER IF EXISTS calls_claim_lines".to_owned(),
                "DROP TRIGGER IF EXISTS calls_free_lines".to_owned(),
                format!(
                    "CREATE TRIGGER calls_claim_lines AFTER INSERT ON calls WHEN NEW.status IN {OPEN} BEGIN
                       INSERT INTO busy_lines (user_id, call_id, last_seen_at) VALUES
                         (min(NEW.caller_id, NEW.receiver_id), NEW.id, NEW.started_at),
                         (max(NEW.caller_id, NEW.receiver_id), NEW.id, NEW.started_at);
                     END"
                ),
                format!(
                    "CREATE TRIGGER calls_free_lines AFTER UPDATE OF status ON calls
                     WHEN NEW.status NOT IN {OPEN} BEGIN
                       DELETE FROM busy_lines WHERE call_id = NEW.id;
                     END"
                ),
            ],
        };
        for statement in statements {
            db.execute_unprepared(&statement).await?;
        }
        manager.drop_table(Table::drop().table(WaitingLines::Table).to_owned()).await?;
        manager
            .alter_table(Table::alter().table(CallSettings::Table).drop_column(CallSettings::CallWaiting).to_owned())
            .await?;
        manager.alter_table(Table::alter().table(Calls::Table).drop_column(Calls::Waiting).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Calls {
    Table,
    Waiting,
}

#[derive(DeriveIden)]
enum CallSettings {
    Table,
    CallWaiting,
}

#[derive(DeriveIden)]
enum WaitingLines {
    Table,
    UserId,
    CallId,
}
