//! [`DirectPool`]: connections handed out and taken back without a round trip.
//!
//! sqlx pings every connection given back to its pool (unconditionally in sqlx 0.8): on
//! PostgreSQL a second round trip per single-statement operation, to a server that on one
//! machine competes for the same cores; on SQLite a second hand-off to the connection's worker
//! thread. This pool (deadpool) takes connections back as they are. What the ping protected
//! against is handled where it arises: a connection whose statement was abandoned half-way
//! (its caller went away) or failed for any reason but a database error is closed, not reused.
//!
//! Only single statements run here; transactions stay on sea-orm's pool.

use std::fmt;
use std::time::Duration;

use deadpool::managed::{self, Manager, Metrics, Object, RecycleResult};
use sea_orm::sqlx::{self, ConnectOptions as _};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, ExecResult, QueryResult, RuntimeErr, Statement};

use crate::driver::{Driver, OnStatement, StatementCounter, is_database_error};

/// The options to open a connection to `D`.
type Options<D> = <<D as sqlx::Database>::Connection as sqlx::Connection>::Options;

/// Opens connections for the pool.
struct Connector<D: Driver> {
    options: Options<D>,
}

impl<D: Driver> Manager for Connector<D> {
    type Type = D::Connection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<D::Connection, sqlx::Error> {
        self.options.connect().await
    }

    async fn recycle(&self, _: &mut D::Connection, _: &Metrics) -> RecycleResult<sqlx::Error> {
        // No round trip: connections that may be unusable never come back (see `Checkout`).
        Ok(())
    }
}

/// A pool of connections to `D` that runs sea-orm statements.
pub(crate) struct DirectPool<D: Driver> {
    pool: managed::Pool<Connector<D>>,
    counter: StatementCounter,
}

impl<D: Driver> Clone for DirectPool<D> {
    fn clone(&self) -> Self {
        Self { pool: self.pool.clone(), counter: self.counter.clone() }
    }
}

impl<D: Driver> fmt::Debug for DirectPool<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectPool").field("backend", &D::BACKEND).field("status", &self.pool.status()).finish()
    }
}

/// A connection out of the pool. It goes back only when its statement finished with success
/// or a database error (the connection is then ready for the next one); dropped half-way, or
/// after an I/O or protocol error, the connection is closed instead.
struct Checkout<D: Driver> {
    object: Option<Object<Connector<D>>>,
    reusable: bool,
}

impl<D: Driver> Drop for Checkout<D> {
    fn drop(&mut self) {
        if let (Some(object), false) = (self.object.take(), self.reusable) {
            drop(Object::take(object));
        }
    }
}

impl<D: Driver> Checkout<D> {
    fn connection(&mut self) -> &mut D::Connection {
        self.object.as_mut().expect("present until dropped")
    }

    fn settle<T>(&mut self, result: Result<T, DbErr>) -> Result<T, DbErr> {
        self.reusable = result.as_ref().map_or_else(is_database_error, |_| true);
        result
    }
}

impl<D: Driver> DirectPool<D> {
    /// A pool of up to `max_connections` opened with `options`; none opened yet.
    /// A statement waits up to `acquire_timeout` for a connection (and a new connection as long
    /// for the server).
    pub(crate) fn new(options: Options<D>, max_connections: usize, acquire_timeout: Duration) -> Self {
        let pool = managed::Pool::builder(Connector { options })
            .max_size(max_connections)
            .wait_timeout(Some(acquire_timeout))
            .create_timeout(Some(acquire_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("a runtime is set, so the timeouts are valid");
        Self { pool, counter: StatementCounter::default() }
    }

    async fn checkout(&self) -> Result<Checkout<D>, DbErr> {
        let object = self.pool.get().await.map_err(|error| DbErr::Conn(RuntimeErr::Internal(error.to_string())))?;
        Ok(Checkout { object: Some(object), reusable: false })
    }

    /// Calls `on_statement` for every statement this pool runs from now on.
    pub(crate) fn count_statements(&self, on_statement: OnStatement) {
        self.counter.set(on_statement);
    }

    /// Closes the pool: connections out are closed when they come back.
    pub(crate) fn close(&self) {
        self.pool.close();
    }
}

#[async_trait::async_trait]
impl<D: Driver> ConnectionTrait for DirectPool<D> {
    fn get_database_backend(&self) -> DbBackend {
        D::BACKEND
    }

    // PostgreSQL has `RETURNING`, and so has SQLite since 3.35 (2021; the bundled library is newer).
    fn support_returning(&self) -> bool {
        true
    }

    async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.counter.count();
        let mut checkout = self.checkout().await?;
        let result = D::execute(checkout.connection(), &stmt).await;
        checkout.settle(result)
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.counter.count();
        let mut checkout = self.checkout().await?;
        let result = D::execute_unprepared(checkout.connection(), sql).await;
        checkout.settle(result)
    }

    async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.counter.count();
        let mut checkout = self.checkout().await?;
        let result = D::query_one(checkout.connection(), &stmt).await;
        checkout.settle(result)
    }

    async fn query_all(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.counter.count();
        let mut checkout = self.checkout().await?;
        let result = D::query_all(checkout.connection(), &stmt).await;
        checkout.settle(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::DEFAULT_TEST_POSTGRES_URL;

    /// A pool of one connection to the test server.
    fn pool_of_one() -> DirectPool<sqlx::Postgres> {
        let url = std::env::var("RINGLINE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_TEST_POSTGRES_URL.to_owned());
        DirectPool::new(url.parse().expect("a PostgreSQL URL"), 1, Duration::from_secs(10))
    }

    async fn backend_pid(pool: &DirectPool<sqlx::Postgres>) -> i32 {
        let row = pool.query_one(Statement::from_string(DbBackend::Postgres, "SELECT pg_backend_pid()")).await;
        row.expect("the server answers").expect("a row").try_get_by_index(0).expect("a pid")
    }

    /// A statement the database refuses leaves its connection ready for the next one, which
    /// reuses it (no round trip to check it).
    #[tokio::test]
    async fn a_refused_statement_gives_its_connection_back() {
        let pool = pool_of_one();
        let before = backend_pid(&pool).await;
        let refused = pool.execute_unprepared("SELECT * FROM no_such_table").await;
        assert!(refused.expect_err("no such table").to_string().contains("no_such_table"));
        assert_eq!(backend_pid(&pool).await, before, "the same connection, reused");
        pool.close();
    }

    /// A statement abandoned half-way (its caller went away) may leave its connection in the
    /// middle of a reply: the connection is closed, and the next statement gets a fresh one.
    #[tokio::test]
    async fn an_abandoned_statement_closes_its_connection() {
        let pool = pool_of_one();
        let before = backend_pid(&pool).await;
        let slow = pool.execute_unprepared("SELECT pg_sleep(5)");
        assert!(tokio::time::timeout(Duration::from_millis(200), slow).await.is_err(), "abandoned");
        let started = std::time::Instant::now();
        assert_ne!(backend_pid(&pool).await, before, "a new connection");
        assert!(started.elapsed() < Duration::from_secs(4), "without waiting for the abandoned statement");
        pool.close();
    }
}
