//! Ringline's storage: the sea-orm implementation of the domain's [`CallRepository`] and
//! [`Directory`] ports, and the schema migrations.
//!
//! - [`Storage`] opens a database from a URL (`sqlite://…` is the embedded default, in WAL
//!   mode; `postgres://…` is for production) and runs the migrations;
//! - [`SqlCallRepository`] stores calls. Its writes are atomic compare-and-set steps, so when
//!   two devices or two server instances race on one call exactly one wins;
//! - [`SqlDirectory`] holds users and conversations for the standalone server;
//! - [`SqlNotifications`] stores notifications about calls (incoming, missed);
//! - [`SqlMobilePush`] keeps device tokens and reads the mobile pushes' outbox (written by
//!   triggers, as the webhooks' is);
//! - [`SqlWebhookOutbox`] reads the call webhooks' outbox (written by triggers, in the same
//!   statement as each call change) and records their deliveries.
//!
//! Entities are private (module `entity`); database errors are mapped into domain errors here
//! and nowhere else.
//!
//! [`CallRepository`]: ringline_domain::CallRepository
//! [`Directory`]: ringline_domain::Directory

mod calls;
mod direct_pool;
mod directory;
mod driver;
mod entity;
pub mod migration;
mod mobile_push;
mod notifications;
mod policy;
mod push;
#[cfg(feature = "testing")]
pub mod testing;
mod webhooks;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use ringline_domain::StoreUnavailable;
use sea_orm::sqlx::postgres::PgConnectOptions;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::sqlx::{self, ConnectOptions as _};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, ExecResult, QueryResult,
    RuntimeErr, Statement,
};
use sea_orm_migration::MigratorTrait;

pub use calls::SqlCallRepository;
use direct_pool::DirectPool;
pub use directory::{DirectoryWriteError, SqlDirectory};
pub use mobile_push::SqlMobilePush;
pub use notifications::SqlNotifications;
pub use policy::SqlCallPolicy;
pub use push::SqlPushSubscriptions;
pub use ringline_domain::VapidKeys;
pub use webhooks::SqlWebhookOutbox;
use writer::{WriteRoute, Writer};

/// How [`Storage::connect_with`] connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectSettings {
    /// How SQLite trades durability for speed (ignored for PostgreSQL).
    pub sqlite_sync: SqliteSync,
    /// How long a statement waits for a PostgreSQL connection, and a new connection for the
    /// server, before it fails as unavailable (SQLite always waits up to 10 s). Short, so that with the database down requests are answered
    /// `503` at once instead of piling up for as long as the outage lasts.
    pub acquire_timeout: Duration,
}

impl ConnectSettings {
    /// The default [`ConnectSettings::acquire_timeout`].
    pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
}

/// How long a statement waits for a SQLite connection.
const SQLITE_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for ConnectSettings {
    fn default() -> Self {
        Self { sqlite_sync: SqliteSync::default(), acquire_timeout: Self::DEFAULT_ACQUIRE_TIMEOUT }
    }
}

/// The URL used when none is configured: a SQLite file in the working directory, created on
/// first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://ringline.db?mode=rwc";

/// When SQLite makes a commit durable (its `synchronous` setting; the file is in WAL mode).
///
/// - `Normal` (the default here; the server defaults to `Full` in production): a commit is written to the write-ahead log but not forced to
///   disk; the log is synced at checkpoints. Nothing is lost when the process crashes or is
///   killed, and the file is never corrupted; an operating-system crash or a power cut may
///   roll back the last transactions committed before it (SQLite's recommended setting for
///   WAL mode).
/// - `Full`: every commit is forced to disk before it returns, so it survives a power cut
///   too, at the cost of a disk flush per commit (several per call).
///
/// PostgreSQL, the production database, is unaffected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    #[default]
    Normal,
    Full,
}

/// Write-ahead log pages after which a commit checkpoints by itself (SQLite's default is 1,000,
/// 4 MB): a safety net only, see [`Storage::checkpoint`].
const AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// What statements run on: sea-orm's pool (in-memory SQLite), a pool that takes connections
/// back without a round trip (`direct_pool.rs`), or, inside the SQLite writer task, its own
/// connection (`writer.rs`).
#[derive(Debug, Clone)]
pub(crate) enum Connection {
    Pool(DatabaseConnection),
    Postgres(DirectPool<sqlx::Postgres>),
    Sqlite(DirectPool<sqlx::Sqlite>),
    Writer(Arc<writer::OwnConnection>),
}

#[async_trait::async_trait]
impl ConnectionTrait for Connection {
    fn get_database_backend(&self) -> DbBackend {
        match self {
            Self::Pool(db) => db.get_database_backend(),
            Self::Postgres(pool) => pool.get_database_backend(),
            Self::Sqlite(pool) => pool.get_database_backend(),
            Self::Writer(own) => own.get_database_backend(),
        }
    }

    fn support_returning(&self) -> bool {
        match self {
            Self::Pool(db) => db.support_returning(),
            Self::Postgres(pool) => pool.support_returning(),
            Self::Sqlite(pool) => pool.support_returning(),
            Self::Writer(own) => own.support_returning(),
        }
    }

    async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        match self {
            Self::Pool(db) => db.execute(stmt).await,
            Self::Postgres(pool) => pool.execute(stmt).await,
            Self::Sqlite(pool) => pool.execute(stmt).await,
            Self::Writer(own) => own.execute(stmt).await,
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        match self {
            Self::Pool(db) => db.execute_unprepared(sql).await,
            Self::Postgres(pool) => pool.execute_unprepared(sql).await,
            Self::Sqlite(pool) => pool.execute_unprepared(sql).await,
            Self::Writer(own) => own.execute_unprepared(sql).await,
        }
    }

    async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        match self {
            Self::Pool(db) => db.query_one(stmt).await,
            Self::Postgres(pool) => pool.query_one(stmt).await,
            Self::Sqlite(pool) => pool.query_one(stmt).await,
            Self::Writer(own) => own.query_one(stmt).await,
        }
    }

    async fn query_all(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match self {
            Self::Pool(db) => db.query_all(stmt).await,
            Self::Postgres(pool) => pool.query_all(stmt).await,
            Self::Sqlite(pool) => pool.query_all(stmt).await,
            Self::Writer(own) => own.query_all(stmt).await,
        }
    }
}

/// Settings of every connection to a SQLite file (per connection, so set when it opens rather
/// than by one PRAGMA).
fn sqlite_tuning(options: SqliteConnectOptions, sqlite_sync: SqliteSync) -> SqliteConnectOptions {
    options
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match sqlite_sync {
            SqliteSync::Normal => SqliteSynchronous::Normal,
            SqliteSync::Full => SqliteSynchronous::Full,
        })
        // SQLite checkpoints on the commit that crosses the threshold (1,000 pages by default),
        // and a checkpoint flushes the log and the file to disk: a stall of milliseconds inside
        // a request. The server checkpoints every second instead ([`Storage::checkpoint`]); the
        // higher threshold only bounds the log for applications that never call it.
        .pragma("wal_autocheckpoint", AUTOCHECKPOINT_PAGES.to_string())
}

/// Opening, migrating or checking the database failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("unsupported database URL: only sqlite:// and postgres:// are supported")]
    UnsupportedUrl,
    #[error("database error: {0}")]
    Database(#[from] DbErr),
}

/// An open database with Ringline's schema.
#[derive(Debug, Clone)]
pub struct Storage {
    connections: Connections,
}

/// The connections a repository runs its statements on: `read` for queries, `write` for
/// single writes, `write_pool` (sea-orm's pool) for multi-statement transactions off the hot
/// path (directory changes, migrations).
///
/// - SQLite file: `read` is a direct pool of 8, `write` the writer task with its own
///   connection (`writer.rs`), `write_pool` one more connection.
/// - PostgreSQL: `read` and `write` are the same direct pool of 16, `write_pool` up to 4.
/// - In-memory SQLite: one sea-orm pool for all three (each pool would be its own database).
#[derive(Debug, Clone)]
pub(crate) struct Connections {
    pub(crate) read: Connection,
    pub(crate) write_pool: DatabaseConnection,
    pub(crate) write: Writer,
}

impl Connections {
    /// Leases each of `due` to `sender` until `lease_until` with `lease` (`UPDATE … SET
    /// leased_until = ?, leased_by = ? WHERE id = ? AND state = 'pending' AND leased_until <= ?`,
    /// a compare-and-set: of several instances claiming one row, one gets it); the ids leased.
    pub(crate) async fn lease(
        &self,
        lease: &'static str,
        due: Vec<i64>,
        sender: &str,
        lease_until: i64,
        now: i64,
    ) -> Result<Vec<i64>, ringline_domain::RepositoryError> {
        let sender = sender.to_owned();
        self.write
            .write(move |db| {
                Box::pin(async move {
                    let backend = db.get_database_backend();
                    let mut leased = Vec::with_capacity(due.len());
                    for id in due {
                        let values = vec![lease_until.into(), sender.clone().into(), id.into(), now.into()];
                        if db.execute(statement(backend, lease, values)).await?.rows_affected() == 1 {
                            leased.push(id);
                        }
                    }
                    Ok(leased)
                })
            })
            .await
            .map_err(storage_failure)
    }

    /// Runs one writing statement (`?` placeholders) through the writer; how many rows it
    /// changed.
    pub(crate) async fn write_one(
        &self,
        sql: &'static str,
        values: Vec<sea_orm::Value>,
    ) -> Result<u64, ringline_domain::RepositoryError> {
        self.write
            .write(move |db| {
                Box::pin(async move {
                    Ok(db.execute(statement(db.get_database_backend(), sql, values)).await?.rows_affected())
                })
            })
            .await
            .map_err(storage_failure)
    }
}

impl Storage {
    /// Connects to `url`. For SQLite, switches the file to WAL mode so that readers never wait
    /// for the writer.
    ///
    /// # Errors
    /// `UnsupportedUrl` for other schemes, `Database` when the connection fails.
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        let is_sqlite = url.starts_with("sqlite:");
        if !is_sqlite && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(StorageError::UnsupportedUrl);
        }
        Self::connect_with(url, ConnectSettings::default()).await
    }

    /// [`Storage::connect`] with [`ConnectSettings`]: how SQLite trades durability for speed,
    /// and how soon a PostgreSQL that does not answer fails a statement.
    ///
    /// # Errors
    /// As [`Storage::connect`].
    pub async fn connect_with(url: &str, settings: ConnectSettings) -> Result<Self, StorageError> {
        let is_sqlite = url.starts_with("sqlite:");
        // A SQLite file does not go down: a wait there is for the one writer under load, and
        // failing it early would only turn a slow request into a failed one.
        let settings =
            if is_sqlite { ConnectSettings { acquire_timeout: SQLITE_ACQUIRE_TIMEOUT, ..settings } } else { settings };
        let ConnectSettings { sqlite_sync, acquire_timeout } = settings;
        if !is_sqlite && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(StorageError::UnsupportedUrl);
        }
        let sqlite_file = is_sqlite && !url.contains(":memory:") && !url.contains("mode=memory");
        let invalid_url = |e| DbErr::Conn(RuntimeErr::SqlxError(e));
        let (read, write_pool, write) = if !is_sqlite {
            let options = url.parse::<PgConnectOptions>().map_err(invalid_url)?;
            let read = Connection::Postgres(DirectPool::new(
                options.log_statements(tracing::log::LevelFilter::Debug),
                16,
                acquire_timeout,
            ));
            let write_pool = Database::connect(Self::options(url, 4, settings)).await?;
            (read.clone(), write_pool, Writer::pool(read))
        } else if sqlite_file {
            let options = url.parse::<SqliteConnectOptions>().map_err(invalid_url)?;
            let options = sqlite_tuning(options, sqlite_sync).log_statements(tracing::log::LevelFilter::Debug);
            let writer = Writer::group_commit(options.clone()).await?;
            let read = Connection::Sqlite(DirectPool::new(options, 8, acquire_timeout));
            (read, Database::connect(Self::options(url, 1, settings)).await?, writer)
        } else {
            // An in-memory SQLite database exists once per pool, so it keeps a single pool.
            let pool = Database::connect(Self::options(url, 1, settings)).await?;
            (Connection::Pool(pool.clone()), pool.clone(), Writer::pool(Connection::Pool(pool)))
        };
        Ok(Self { connections: Connections { read, write_pool, write } })
    }

    /// The pool settings for `url`, with up to `max_connections`.
    fn options(url: &str, max_connections: u32, settings: ConnectSettings) -> ConnectOptions {
        let ConnectSettings { sqlite_sync, acquire_timeout } = settings;
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .max_connections(max_connections)
            .min_connections(1)
            .connect_timeout(acquire_timeout)
            .acquire_timeout(acquire_timeout)
            // sqlx pings every connection it hands out by default: a round trip per statement
            // or transaction, most of them for nothing. A connection that broke (the database
            // restarted) fails its next statement instead and is replaced.
            .test_before_acquire(false)
            // Statements are logged only at debug level: they can carry user ids.
            .sqlx_logging_level(tracing::log::LevelFilter::Debug)
            // Per connection, so set through the connect options rather than one PRAGMA.
            .map_sqlx_sqlite_opts(move |sqlite| sqlite_tuning(sqlite, sqlite_sync));
        options
    }

    /// Calls `on_statement` for every SQL statement run through this storage from now on (for
    /// tests that hold the number of statements per operation to a budget). Storage handed
    /// out before (repositories) is not affected.
    pub fn on_statement(&mut self, on_statement: impl Fn() + Send + Sync + 'static) {
        // Each handle keeps its own callback, also when both are the same PostgreSQL pool.
        let on_statement = std::sync::Arc::new(on_statement);
        let on_statement_arc: driver::OnStatement = on_statement.clone();
        let on_write = on_statement.clone();
        let Connections { read, write_pool, write } = &mut self.connections;
        write_pool.set_metric_callback(move |_| on_write());
        match read {
            Connection::Pool(pool) => pool.set_metric_callback(move |_| on_statement()),
            Connection::Postgres(pool) => pool.count_statements(on_statement_arc.clone()),
            Connection::Sqlite(pool) => pool.count_statements(on_statement_arc.clone()),
            Connection::Writer(own) => own.count_statements(on_statement_arc.clone()),
        }
        match &mut write.route {
            // The same handle as `read`, counted once.
            WriteRoute::Pool(pool) => *pool = read.clone(),
            WriteRoute::Queue { .. } => write.count_statements(on_statement_arc),
        }
    }

    /// Times every write (from any repository handed out, before or after) into `metrics`.
    pub fn count_in(&self, metrics: std::sync::Arc<ringline_metrics::Metrics>) {
        self.connections.write.count_in(metrics);
    }

    /// Applies every pending migration.
    ///
    /// # Errors
    /// `Database` when a migration fails; nothing after it is applied.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        migration::Migrator::up(&self.connections.write_pool, None).await?;
        Ok(())
    }

    /// Copies what the write-ahead log holds into the SQLite file, without waiting for readers
    /// or writers (a passive checkpoint), and so keeps the log short. Call it every second or
    /// so, away from requests: the server does. Does nothing on PostgreSQL.
    ///
    /// # Errors
    /// `Database` when the checkpoint fails.
    pub async fn checkpoint(&self) -> Result<(), StorageError> {
        if self.backend() == DbBackend::Sqlite {
            // On the writing connection, between two writes: no write can slip in while it
            // copies, so it copies the whole log and the next write starts the log afresh.
            self.connections
                .write
                .alone(|db| Box::pin(async move { db.execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)").await }))
                .await?;
        }
        Ok(())
    }

    /// Runs [`Storage::checkpoint`] every second until `stop` resolves, so that no request pays
    /// for a checkpoint's disk flushes. Returns at once on PostgreSQL, which needs none.
    pub async fn keep_checkpointing(self, stop: impl std::future::Future<Output = ()>) {
        if self.backend() != DbBackend::Sqlite {
            return;
        }
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = &mut stop => return,
            }
            if let Err(error) = self.checkpoint().await {
                tracing::warn!(%error, "SQLite checkpoint failed; retrying in a second");
            }
        }
    }

    /// Checks that the database answers (for readiness probes).
    ///
    /// # Errors
    /// `Database` when it does not.
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.connections.write_pool.ping().await?;
        Ok(())
    }

    /// Names the backend, for logs: `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend() {
            DbBackend::Sqlite => "sqlite",
            DbBackend::Postgres => "postgres",
            DbBackend::MySql => "mysql",
        }
    }

    fn backend(&self) -> DbBackend {
        self.connections.read.get_database_backend()
    }

    pub fn calls(&self) -> SqlCallRepository {
        SqlCallRepository::new(self.connections.clone())
    }

    pub fn directory(&self) -> SqlDirectory {
        SqlDirectory::new(self.connections.clone())
    }

    pub fn notifications(&self) -> SqlNotifications {
        SqlNotifications::new(self.connections.clone())
    }

    pub fn call_policy(&self) -> SqlCallPolicy {
        SqlCallPolicy::new(self.connections.clone())
    }

    pub fn push_subscriptions(&self) -> SqlPushSubscriptions {
        SqlPushSubscriptions::new(self.connections.clone())
    }

    pub fn mobile_push(&self) -> SqlMobilePush {
        SqlMobilePush::new(self.connections.clone())
    }

    pub fn webhooks(&self) -> SqlWebhookOutbox {
        SqlWebhookOutbox::new(self.connections.clone())
    }

    /// Closes every pooled connection.
    ///
    /// # Errors
    /// `Database` when closing fails.
    pub async fn close(self) -> Result<(), StorageError> {
        let Connections { read, write_pool, write } = self.connections;
        write.close().await;
        match read {
            Connection::Pool(pool) => pool.close().await?,
            Connection::Postgres(pool) => pool.close(),
            Connection::Sqlite(pool) => pool.close(),
            Connection::Writer(_) => {} // Only the writer task holds one.
        }
        // The same pool again on PostgreSQL and in memory: closing it twice is harmless.
        write_pool.close().await?;
        Ok(())
    }
}

/// A statement written with `?` placeholders, numbered (`$1`, `$2`, …) for PostgreSQL: raw SQL
/// for the outbox and push tables, whose queries sea-query would only make longer.
fn statement(backend: DbBackend, sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    if backend != DbBackend::Postgres {
        return Statement::from_sql_and_values(backend, sql, values);
    }
    let mut numbered = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            numbered.push('$');
            numbered.push_str(&n.to_string());
        } else {
            numbered.push(c);
        }
    }
    Statement::from_sql_and_values(backend, numbered, values)
}

/// Wraps a database failure as the domain's opaque storage error.
fn storage_failure(error: impl std::error::Error + Send + Sync + 'static) -> ringline_domain::RepositoryError {
    ringline_domain::RepositoryError::Storage(classified(error))
}

/// `error`, boxed; wrapped in [`StoreUnavailable`] when it says the database could not be
/// reached, so the edge answers "try again shortly" instead of "server fault".
fn classified(error: impl std::error::Error + Send + Sync + 'static) -> Box<dyn std::error::Error + Send + Sync> {
    let unreachable = (&error as &dyn std::any::Any).downcast_ref::<DbErr>().is_some_and(driver::is_unavailable);
    if unreachable { Box::new(StoreUnavailable(Box::new(error))) } else { Box::new(error) }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, Statement};

    use super::*;
    use crate::testing::remove_sqlite_files;

    /// Pooled SQLite connections leave checkpoints to [`Storage::checkpoint`] (up to the raised
    /// threshold), and a checkpoint copies the log into the file: the file alone, read without
    /// its log, lacks what was written before and has it after.
    #[tokio::test]
    async fn sqlite_checkpoints_are_left_to_the_background() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("ringline_test_ckpt_{}.db", std::process::id()));
        let storage = Storage::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.expect("open");
        let pragma = |sql: &str| Statement::from_string(DbBackend::Sqlite, sql.to_owned());
        let threshold =
            storage.connections.write_pool.query_one(pragma("PRAGMA wal_autocheckpoint")).await.expect("pragma");
        let threshold: i64 = threshold.expect("one row").try_get_by_index(0).expect("number");
        assert_eq!(threshold, i64::from(AUTOCHECKPOINT_PAGES));
        storage.migrate().await.expect("migrate: written to the log only");

        // How many migrations a copy of the file alone (no `-wal`) has recorded.
        let migrations_in_file = |copy: &str| {
            let copy = dir.join(format!("ringline_test_ckpt_{}_{copy}.db", std::process::id()));
            std::fs::copy(&path, &copy).expect("copy the file alone");
            async move {
                let url = format!("sqlite://{}?mode=rwc", copy.display());
                let reader = sea_orm::Database::connect(&url).await.expect("open the copy");
                let count = reader.query_one(pragma("SELECT count(*) FROM seaql_migrations")).await;
                let count = count.ok().flatten().and_then(|row| row.try_get_by_index::<i64>(0).ok()).unwrap_or(0);
                reader.close().await.expect("close the copy");
                remove_sqlite_files(&copy);
                count
            }
        };
        assert_eq!(migrations_in_file("before").await, 0, "no commit checkpointed on its own");
        storage.checkpoint().await.expect("checkpoint");
        let expected = i64::try_from(migration::Migrator::migrations().len()).expect("few");
        assert_eq!(migrations_in_file("after").await, expected, "the checkpoint copied the log into the file");
        storage.close().await.expect("close");
        remove_sqlite_files(&path);
    }
}
