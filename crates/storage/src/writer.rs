//! [`Writer`]: where the repositories' writes go, and group commit for a SQLite file.
//!
//! SQLite lets one connection write at a time. Writing from several pooled connections makes
//! the losers of each race sleep in SQLite's busy handler, empties every other connection's
//! page cache at each commit, and (under steady writes) keeps any checkpoint from finding the
//! log fully copied, so the log is never restarted and grows by hundreds of megabytes. So on a
//! SQLite file one task owns the only writing connection (its own, outside any pool: sqlx
//! pings each connection given back to a pool, a second trip to SQLite's worker thread per
//! statement) and runs the writes queued for it one after another; when several are waiting,
//! it runs them in one transaction and commits once (group commit): a page that several of
//! them change is written to the log once. A write is acknowledged only after its commit, so
//! nothing acknowledged is lost that a commit of its own would have kept. A write alone in the
//! queue runs without a transaction, as one statement would anyway.
//!
//! PostgreSQL (and in-memory SQLite) writes go straight to the pool: PostgreSQL writes
//! concurrently, and an error inside a PostgreSQL transaction would abort every write in it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sea_orm::sqlx::{self, Connection as _};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, ExecResult, QueryResult, RuntimeErr, Statement};
use tokio::sync::{Mutex, mpsc, oneshot};

use ringline_metrics::Metrics;

use crate::Connection;
use crate::driver::{Driver, OnStatement, StatementCounter};

/// Writes that may wait for the writing connection before callers wait themselves.
const QUEUE_CAPACITY: usize = 1024;

/// The most writes committed together: bounds how long the first of them waits for the last.
const MAX_BATCH: usize = 64;

/// The writer task's connection to the SQLite file, outside any pool. sqlx pings every
/// connection given back to a pool, which on SQLite is a second trip to the connection's
/// worker thread per statement; a connection that is never given back is never pinged.
pub(crate) struct OwnConnection {
    connection: Mutex<SqliteConnection>,
    counter: StatementCounter,
}

impl fmt::Debug for OwnConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OwnConnection")
    }
}

impl OwnConnection {
    async fn open(options: &SqliteConnectOptions, counter: StatementCounter) -> Result<Self, DbErr> {
        let connection =
            SqliteConnection::connect_with(options).await.map_err(|e| DbErr::Conn(RuntimeErr::SqlxError(e)))?;
        Ok(Self { connection: Mutex::new(connection), counter })
    }

    /// Calls `on_statement` for every statement run on this connection from now on.
    pub(crate) fn count_statements(&self, on_statement: OnStatement) {
        self.counter.set(on_statement);
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for OwnConnection {
    fn get_database_backend(&self) -> DbBackend {
        DbBackend::Sqlite
    }

    // SQLite has had `RETURNING` since 3.35 (2021); the bundled library is newer.
    fn support_returning(&self) -> bool {
        true
    }

    async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.counter.count();
        sqlx::Sqlite::execute(&mut *self.connection.lock().await, &stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.counter.count();
        sqlx::Sqlite::execute_unprepared(&mut *self.connection.lock().await, sql).await
    }

    async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.counter.count();
        sqlx::Sqlite::query_one(&mut *self.connection.lock().await, &stmt).await
    }

    async fn query_all(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.counter.count();
        sqlx::Sqlite::query_all(&mut *self.connection.lock().await, &stmt).await
    }
}

/// What the writer task is asked to do, in order.
pub(crate) enum Job {
    /// One write: its statements, and where its result goes once committed. `alone` writes run
    /// outside any transaction (a checkpoint cannot run inside one).
    Write { run: RunJob, alone: bool },
    /// Close the connection (after the writes queued before) and stop; acknowledged when done.
    Close(oneshot::Sender<()>),
}

impl Job {
    /// Whether this job cannot share a transaction with others.
    fn alone(&self) -> bool {
        matches!(self, Self::Write { alone: true, .. } | Self::Close(_))
    }
}

/// A job's statements, run on the writing connection.
type RunJob = Box<dyn for<'c> FnOnce(&'c Connection) -> BoxFuture<'c, Settle> + Send>;

/// Reports a job's result, given whether its commit succeeded.
type Report = Box<dyn FnOnce(Result<(), &DbErr>) + Send>;

/// What a job did, to be reported once its commit is known: `Ok` hands the result over if
/// the commit succeeded (and the error otherwise); `Err` means a statement failed in a way
/// that may have ended the transaction, so the batch is rolled back (the job has already
/// told its caller).
type Settle = Result<Report, DbErr>;

/// Where the repositories' writes go (see the module documentation), timed into the metrics
/// once the application gives some ([`Writer::count_in`]; every clone shares them).
#[derive(Clone)]
pub(crate) struct Writer {
    pub(crate) route: WriteRoute,
    metrics: Arc<OnceLock<Arc<Metrics>>>,
}

/// The pool itself, or the queue to the writing task.
#[derive(Clone)]
pub(crate) enum WriteRoute {
    Pool(Connection),
    Queue { queue: mpsc::Sender<Job>, counter: StatementCounter },
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.route {
            WriteRoute::Pool(_) => "Writer::Pool",
            WriteRoute::Queue { .. } => "Writer::Queue",
        })
    }
}

impl Writer {
    /// Writes straight to `pool`.
    pub(crate) fn pool(pool: Connection) -> Self {
        Self { route: WriteRoute::Pool(pool), metrics: Arc::default() }
    }

    /// Times every write from now on into `metrics` (the first metrics given stay).
    pub(crate) fn count_in(&self, metrics: Arc<Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// Group commit on a connection of its own to the SQLite file `options` names, run by a
    /// task spawned now.
    ///
    /// # Errors
    /// When the connection cannot be opened.
    pub(crate) async fn group_commit(options: SqliteConnectOptions) -> Result<Self, DbErr> {
        let counter = StatementCounter::default();
        let connection = OwnConnection::open(&options, counter.clone()).await?;
        let (queue, jobs) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run_jobs(connection, options, jobs));
        Ok(Self { route: WriteRoute::Queue { queue, counter }, metrics: Arc::default() })
    }

    /// Runs the writes queued so far, then closes the writing connection (so that SQLite folds
    /// its log into the file, as it does when the last connection closes). Writes sent after
    /// this fail with "the database writer has stopped".
    pub(crate) async fn close(&self) {
        if let WriteRoute::Queue { queue, .. } = &self.route {
            let (done, closed) = oneshot::channel();
            if queue.send(Job::Close(done)).await.is_ok() {
                let _ = closed.await;
            }
        }
    }

    /// Calls `on_statement` for every statement this writer runs from now on.
    pub(crate) fn count_statements(&self, on_statement: OnStatement) {
        if let WriteRoute::Queue { counter, .. } = &self.route {
            counter.set(on_statement);
        }
    }

    /// Runs `work` on the writing connection and returns its result once it is committed.
    ///
    /// `work` must turn the errors it expects (a constraint it relies on) into its result: an
    /// `Err` from it rolls back every write committed with it.
    ///
    /// # Errors
    /// The statement's or the commit's error.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T, DbErr>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c Connection) -> BoxFuture<'c, Result<T, DbErr>> + Send + 'static,
    {
        let started = std::time::Instant::now();
        let written = self.submit(work, false).await;
        if let Some(metrics) = self.metrics.get() {
            metrics.dependencies.wrote(started.elapsed(), written.is_err());
        }
        written
    }

    /// Runs `work` on the writing connection outside any transaction (for a checkpoint).
    ///
    /// # Errors
    /// The statement's error.
    pub(crate) async fn alone<T, F>(&self, work: F) -> Result<T, DbErr>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c Connection) -> BoxFuture<'c, Result<T, DbErr>> + Send + 'static,
    {
        self.submit(work, true).await
    }

    async fn submit<T, F>(&self, work: F, alone: bool) -> Result<T, DbErr>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c Connection) -> BoxFuture<'c, Result<T, DbErr>> + Send + 'static,
    {
        let queue = match &self.route {
            WriteRoute::Pool(db) => return work(db).await,
            WriteRoute::Queue { queue, .. } => queue,
        };
        let (done, result) = oneshot::channel();
        let run: RunJob = Box::new(move |connection| {
            Box::pin(async move {
                match work(connection).await {
                    Ok(value) => {
                        let settle: Report = Box::new(move |committed| {
                            // The caller may have gone away (its request was cancelled).
                            let _ = done.send(committed.map(|()| value).map_err(batch_failed));
                        });
                        Ok(settle)
                    }
                    Err(error) => {
                        let summary = DbErr::Custom(error.to_string());
                        let _ = done.send(Err(error));
                        Err(summary)
                    }
                }
            })
        });
        queue
            .send(Job::Write { run, alone })
            .await
            .map_err(|_| DbErr::Custom("the database writer has stopped".to_owned()))?;
        // Dropped unrun (the writer could not open a transaction, or stopped): not written.
        result.await.map_err(|_| DbErr::Custom("the write was not run; see the log".to_owned()))?
    }
}

/// The error a write gets when the batch it was committed with failed.
fn batch_failed(error: &DbErr) -> DbErr {
    DbErr::Custom(format!("the write was not committed: {error}"))
}

/// The writer task: takes the jobs waiting, runs them, commits them together.
async fn run_jobs(connection: OwnConnection, options: SqliteConnectOptions, mut jobs: mpsc::Receiver<Job>) {
    let mut own = Arc::new(connection);
    let mut connection = Connection::Writer(own.clone());
    let mut pending = VecDeque::with_capacity(MAX_BATCH);
    loop {
        if pending.is_empty() {
            match jobs.recv().await {
                Some(job) => pending.push_back(job),
                None => return, // Every handle is gone.
            }
        }
        while pending.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => pending.push_back(job),
                Err(_) => break,
            }
        }
        let failed = if pending.len() == 1 || pending.front().is_some_and(Job::alone) {
            // No transaction to open and commit around a single write. Its caller hears of an error.
            match pending.pop_front().expect("a job") {
                Job::Write { run, .. } => match run(&connection).await {
                    Ok(settle) => {
                        settle(Ok(()));
                        false
                    }
                    Err(_) => true,
                },
                Job::Close(done) => {
                    drop(connection);
                    if let Ok(own) = Arc::try_unwrap(own)
                        && let Err(error) = own.connection.into_inner().close().await
                    {
                        tracing::warn!(%error, "closing the database writer's connection failed");
                    }
                    let _ = done.send(());
                    return; // Writes queued after it are dropped: their callers hear so.
                }
            }
        } else {
            run_batch(&connection, &mut pending).await
        };
        if failed && own.connection.lock().await.ping().await.is_err() {
            // The connection itself broke (its worker thread is gone): open another.
            tracing::warn!("the database writer's connection broke; reopening it");
            match OwnConnection::open(&options, own.counter.clone()).await {
                Ok(reopened) => {
                    own = Arc::new(reopened);
                    connection = Connection::Writer(own.clone());
                }
                Err(error) => tracing::error!(%error, "cannot reopen the database writer's connection"),
            }
        }
    }
}

/// Runs the jobs at the front of `pending` in one transaction, up to the first `alone` one or
/// the first that fails, and tells each whether the commit succeeded. Returns whether one
/// failed.
async fn run_batch(connection: &Connection, pending: &mut VecDeque<Job>) -> bool {
    if let Err(error) = connection.execute_unprepared("BEGIN IMMEDIATE").await {
        tracing::error!(%error, "cannot begin a database transaction; failing the writes waiting");
        pending.clear(); // Their callers hear that nothing was written.
        return true;
    }
    let mut settled = Vec::with_capacity(pending.len());
    let mut failed = None;
    while let Some(Job::Write { alone: false, .. }) = pending.front() {
        let Some(Job::Write { run, .. }) = pending.pop_front() else { break };
        match run(connection).await {
            Ok(settle) => settled.push(settle),
            Err(error) => {
                failed = Some(error);
                break;
            }
        }
    }
    let outcome = match failed {
        None => connection.execute_unprepared("COMMIT").await.map(|_| ()),
        Some(error) => Err(error),
    };
    if let Err(error) = &outcome {
        // The failed statement may have ended the transaction already (SQLite rolls back on
        // some I/O errors): what ran with it is rolled back and reported as failed.
        tracing::warn!(%error, writes = settled.len(), "writes committed together failed; rolling back");
        if let Err(rollback) = connection.execute_unprepared("ROLLBACK").await {
            tracing::debug!(error = %rollback, "no transaction left to roll back");
        }
    }
    for settle in settled {
        settle(outcome.as_ref().map(|_| ()));
    }
    outcome.is_err()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::future::join_all;

    use super::*;
    use crate::Storage;
    use crate::testing::remove_sqlite_files;

    async fn open(name: &str) -> (Storage, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("ringline_test_writer_{name}_{}.db", std::process::id()));
        remove_sqlite_files(&path);
        let storage = Storage::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.expect("open");
        storage.migrate().await.expect("migrate");
        (storage, path)
    }

    fn insert_user(id: &str) -> String {
        format!(
            "INSERT INTO users (id, username, first_name, last_name, created_at, updated_at) \
             VALUES ('{id}', '{id}', '', '', '2026-12-03T00:00:00Z', '2026-12-03T00:00:00Z')"
        )
    }

    async fn users(storage: &Storage) -> i64 {
        let row =
            storage.connections.read.query_one(Statement::from_string(DbBackend::Sqlite, "SELECT count(*) FROM users"));
        row.await.expect("count").expect("a row").try_get_by_index(0).expect("a number")
    }

    /// Writes that wait together are committed by one transaction (one `BEGIN` and one
    /// `COMMIT` around them), and each caller gets its own result once it is committed.
    #[tokio::test]
    async fn writes_waiting_together_are_committed_together() {
        let (mut storage, path) = open("together").await;
        let statements = Arc::new(AtomicUsize::new(0));
        let counter = statements.clone();
        storage.on_statement(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let writer = storage.connections.write.clone();
        // On this single-threaded runtime every write is queued before the writer task runs.
        let writes = (0..10).map(|i| {
            writer.write(move |db| {
                Box::pin(async move { db.execute_unprepared(&insert_user(&format!("u{i}"))).await.map(|_| i) })
            })
        });
        let results: Vec<_> = join_all(writes).await.into_iter().map(|r| r.expect("committed")).collect();
        assert_eq!(results, (0..10).collect::<Vec<_>>(), "each caller got its own result");
        assert_eq!(statements.load(Ordering::SeqCst), 10 + 2, "ten inserts between one BEGIN and one COMMIT");
        assert_eq!(users(&storage).await, 10, "visible to the other connections once acknowledged");
        storage.close().await.expect("close");
        remove_sqlite_files(&path);
    }

    /// Closing the storage runs the writes queued before, then closes the writing connection
    /// even while a repository still holds the writer: SQLite folds its log into the file
    /// (the `-wal` file goes), and a later write fails instead of waiting.
    #[tokio::test]
    async fn closing_stops_the_writer() {
        let (storage, path) = open("close").await;
        let writer = storage.connections.write.clone();
        let insert = |id: &'static str| {
            writer.write(move |db| Box::pin(async move { db.execute_unprepared(&insert_user(id)).await.map(|_| ()) }))
        };
        let queued = insert("queued");
        let (queued, closed) = tokio::join!(queued, storage.close());
        queued.expect("a write queued before the close is committed");
        closed.expect("close");
        let late = insert("late").await.expect_err("the writer has stopped");
        assert!(late.to_string().contains("stopped"), "{late}");
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        // The reading connections close on their own threads; the last one removes the log.
        for _ in 0..100 {
            if !std::path::Path::new(&wal).exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(!std::path::Path::new(&wal).exists(), "every connection closed, the log folded into the file");
        remove_sqlite_files(&path);
    }

    /// A write whose statement fails takes the writes committed with it down (they are rolled
    /// back and told so), the writes after it go into the next transaction, and the writer
    /// goes on.
    #[tokio::test]
    async fn a_failed_write_rolls_back_its_batch_and_the_writer_goes_on() {
        let (storage, path) = open("failed").await;
        let writer = storage.connections.write.clone();
        let insert = |id: &'static str| {
            writer.write(move |db| Box::pin(async move { db.execute_unprepared(&insert_user(id)).await.map(|_| ()) }))
        };
        let broken =
            writer.write(|db| Box::pin(async move { db.execute_unprepared("SELECT * FROM no_such_table").await }));
        let (before, failed, after) = tokio::join!(insert("before"), broken, insert("after"));
        let before = before.expect_err("rolled back with the failed write");
        assert!(before.to_string().contains("not committed"), "{before}");
        assert!(failed.expect_err("its own error").to_string().contains("no_such_table"));
        after.expect("committed in the next transaction");
        assert_eq!(users(&storage).await, 1, "only the write after the failure is stored");
        insert("later").await.expect("the writer goes on");
        assert_eq!(users(&storage).await, 2);
        storage.close().await.expect("close");
        remove_sqlite_files(&path);
    }
}
