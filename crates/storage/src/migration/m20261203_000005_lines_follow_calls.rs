//! The database keeps `busy_lines` in step with `calls`: inserting an open call claims both
//! parties' lines, and a status change that finishes a call frees them, each inside the same
//! statement as the call's own write.
//!
//! A statement is atomic on SQLite and PostgreSQL alike, so "a call exists and is open" and
//! "its parties' lines are held" can never disagree, whoever writes, and a new call or a hang-up
//! is one statement instead of a transaction of three or four (each a round trip, and on SQLite
//! a hop to the driver's worker thread while the single write lock is held). A claim that
//! finds a line taken fails the call's insert with the primary-key violation, exactly as the
//! separate insert did. Lines are claimed in user-id order, so two crossing calls (A→B, B→A)
//! queue on the same row instead of deadlocking on PostgreSQL.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The statuses of an open call (`CallStatus::is_open`).
pub(super) const OPEN: &str = "('initiating', 'ringing', 'active')";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let statements = match manager.get_database_backend() {
            DbBackend::Sqlite => vec![
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
            DbBackend::Postgres => vec![
                format!(
                    "CREATE FUNCTION ringline_claim_lines() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN
                       IF NEW.status IN {OPEN} THEN
                         INSERT INTO busy_lines (user_id, call_id, last_seen_at) VALUES
                           (LEAST(NEW.caller_id, NEW.receiver_id), NEW.id, NEW.started_at),
                           (GREATEST(NEW.caller_id, NEW.receiver_id), NEW.id, NEW.started_at);
                       END IF;
                       RETURN NULL;
                     END $$"
                ),
                "CREATE TRIGGER calls_claim_lines AFTER INSERT ON calls
                 FOR EACH ROW EXECUTE FUNCTION ringline_claim_lines()"
                    .to_owned(),
                format!(
                    "CREATE FUNCTION ringline_free_lines() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN
                       IF NEW.status NOT IN {OPEN} THEN
                         DELETE FROM busy_lines WHERE call_id = NEW.id;
                       END IF;
                       RETURN NULL;
                     END $$"
                ),
                "CREATE TRIGGER calls_free_lines AFTER UPDATE OF status ON calls
                 FOR EACH ROW EXECUTE FUNCTION ringline_free_lines()"
                    .to_owned(),
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
        let statements: &[&str] = match manager.get_database_backend() {
            DbBackend::Postgres => &[
                "DROP TRIGGER IF EXISTS calls_claim_lines ON calls",
                "DROP TRIGGER IF EXISTS calls_free_lines ON calls",
                "DROP FUNCTION IF EXISTS ringline_claim_lines()",
                "DROP FUNCTION IF EXISTS ringline_free_lines()",
            ],
            _ => &["DROP TRIGGER IF EXISTS calls_claim_lines", "DROP TRIGGER IF EXISTS calls_free_lines"],
        };
        for statement in statements {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ringline_domain::CallStatus;

    /// The triggers hold a line exactly while the domain calls a status open. A migration is a
    /// frozen snapshot, so a new open status needs a new migration; this says when.
    #[test]
    fn the_triggers_open_statuses_are_the_domains() {
        let open: Vec<String> = CallStatus::ALL
            .iter()
            .filter(|status| status.is_open())
            .map(|status| format!("'{}'", status.as_str()))
            .collect();
        assert_eq!(super::OPEN, format!("({})", open.join(", ")));
    }
}
