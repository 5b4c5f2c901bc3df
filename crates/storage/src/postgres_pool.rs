//! [`PostgresPool`]: PostgreSQL connections handed out without a round trip.
//!
//! sqlx pings every connection given back to its pool (unconditionally in sqlx 0.8), which
//! doubles the round trips of a single-statement operation: five statements of a call cycle
//! cost ten trips to a PostgreSQL server that, on one machine, competes for the same cores.
//! This pool (deadpool) gives connections back as they are. What the ping protected against
//! is handled where it arises: a connection whose statement was abandoned half-way (its
//! caller went away) or failed for any reason but a database error is closed, not reused.
//!
//! Only single statements run here; transactions stay on sea-orm's pool.

use std::fmt;
use std::time::Duration;

use deadpool::managed::{self, Manager, Metrics, Object, RecycleResult};
use sea_orm::sea_query::Values;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
use sea_orm::sqlx::{self, Connection as _};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, ExecResult, QueryResult, RuntimeErr, Statement};
use sea_query_binder::SqlxValues;

use crate::writer::StatementCounter;

/// Opens connections for the pool.
struct Connector {
    options: PgConnectOptions,
}

impl Manager for Connector {
    type Type = PgConnection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<PgConnection, sqlx::Error> {
        PgConnection::connect_with(&self.options).await
    }

    async fn recycle(&self, _: &mut PgConnection, _: &Metrics) -> RecycleResult<sqlx::Error> {
        // No round trip: connections that may be unusable never come back (see `Checkout`).
        Ok(())
    }
}

/// A pool of PostgreSQL connections that runs sea-orm statements.
#[derive(Clone)]
pub(crate) struct PostgresPool {
    pool: managed::Pool<Connector>,
    counter: StatementCounter,
}

impl fmt::Debug for PostgresPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresPool").field("status", &self.pool.status()).finish()
    }
}

/// A connection out of the pool. It goes back only when its statement finished with success
/// or a database error (the connection is then ready for the next one); dropped half-way, or
/// after an I/O or protocol error, the connection is closed instead.
struct Checkout {
    object: Option<Object<Connector>>,
    reusable: bool,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let (Some(object), false) = (self.object.take(), self.reusable) {
            drop(Object::take(object));
        }
    }
}

impl Checkout {
    fn connection(&mut self) -> &mut PgConnection {
        self.object.as_mut().expect("present until dropped")
    }

    fn settle<T>(&mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        self.reusable = matches!(&result, Ok(_) | Err(sqlx::Error::Database(_) | sqlx::Error::RowNotFound));
        result
    }
}

impl PostgresPool {
    /// A pool of up to `max_connections` to the server `options` names; none opened yet.
    pub(crate) fn new(options: PgConnectOptions, max_connections: usize, counter: StatementCounter) -> Self {
        let pool = managed::Pool::builder(Connector { options })
            .max_size(max_connections)
            .wait_timeout(Some(ACQUIRE_TIMEOUT))
            .create_timeout(Some(ACQUIRE_TIMEOUT))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("a runtime is set, so the timeouts are valid");
        Self { pool, counter }
    }

    async fn checkout(&self) -> Result<Checkout, DbErr> {
        let object = self.pool.get().await.map_err(|error| DbErr::Conn(RuntimeErr::Internal(error.to_string())))?;
        Ok(Checkout { object: Some(object), reusable: false })
    }

    fn count(&self) {
        let counter = self.counter.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(on_statement) = counter.as_ref() {
            on_statement();
        }
    }

    /// Calls `on_statement` for every statement this pool runs from now on.
    pub(crate) fn count_statements(&self, on_statement: std::sync::Arc<dyn Fn() + Send + Sync>) {
        *self.counter.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(on_statement);
    }

    /// Closes the pool: connections out are closed when they come back.
    pub(crate) fn close(&self) {
        self.pool.close();
    }
}

/// How long a statement waits for a connection (and a new connection for the server).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

fn bound(stmt: &Statement) -> sqlx::query::Query<'_, sqlx::Postgres, SqlxValues> {
    sqlx::query_with(&stmt.sql, SqlxValues(stmt.values.clone().unwrap_or(Values(Vec::new()))))
}

fn exec_error(error: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(error))
}

fn query_error(error: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(error))
}

#[async_trait::async_trait]
impl ConnectionTrait for PostgresPool {
    fn get_database_backend(&self) -> DbBackend {
        DbBackend::Postgres
    }

    async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.count();
        let mut checkout = self.checkout().await?;
        let result = bound(&stmt).execute(checkout.connection()).await;
        checkout.settle(result).map(ExecResult::from).map_err(exec_error)
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.count();
        let mut checkout = self.checkout().await?;
        let result = sqlx::Executor::execute(checkout.connection(), sql).await;
        checkout.settle(result).map(ExecResult::from).map_err(exec_error)
    }

    async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.count();
        let mut checkout = self.checkout().await?;
        let result = bound(&stmt).fetch_optional(checkout.connection()).await;
        checkout.settle(result).map(|row| row.map(QueryResult::from)).map_err(query_error)
    }

    async fn query_all(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.count();
        let mut checkout = self.checkout().await?;
        let result = bound(&stmt).fetch_all(checkout.connection()).await;
        Ok(checkout.settle(result).map_err(query_error)?.into_iter().map(QueryResult::from).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::DEFAULT_TEST_POSTGRES_URL;

    /// A pool of one connection to the test server.
    fn pool_of_one() -> PostgresPool {
        let url = std::env::var("RINGLINE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_TEST_POSTGRES_URL.to_owned());
        PostgresPool::new(url.parse().expect("a PostgreSQL URL"), 1, StatementCounter::default())
    }

    async fn backend_pid(pool: &PostgresPool) -> i32 {
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
