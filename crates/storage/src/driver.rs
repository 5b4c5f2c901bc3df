//! Running sea-orm statements on sqlx connections of our own, outside sea-orm's pools (see
//! `direct_pool.rs` and `writer.rs` for why), with values bound and rows and errors
//! returned exactly as sea-orm's own driver does.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use futures_util::future::BoxFuture;
use sea_orm::sea_query::Values;
use sea_orm::sqlx;
use sea_orm::{DbBackend, DbErr, ExecResult, QueryResult, RuntimeErr, Statement};
use sea_query_binder::SqlxValues;

/// Calls a function for every statement run on connections outside sea-orm's pools (see
/// `Storage::on_statement`); sea-orm's own pools have their metric callback instead.
#[derive(Clone, Default)]
pub(crate) struct StatementCounter(Arc<RwLock<Option<OnStatement>>>);

/// What `Storage::on_statement` was given.
pub(crate) type OnStatement = Arc<dyn Fn() + Send + Sync>;

impl StatementCounter {
    /// Calls `on_statement` for every statement from now on.
    pub(crate) fn set(&self, on_statement: OnStatement) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(on_statement);
    }

    pub(crate) fn count(&self) {
        if let Some(on_statement) = self.0.read().unwrap_or_else(PoisonError::into_inner).as_ref() {
            on_statement();
        }
    }
}

impl fmt::Debug for StatementCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StatementCounter")
    }
}

/// A sqlx database whose connections can run sea-orm statements.
pub(crate) trait Driver: sqlx::Database {
    const BACKEND: DbBackend;

    fn execute<'c>(
        connection: &'c mut Self::Connection,
        stmt: &'c Statement,
    ) -> BoxFuture<'c, Result<ExecResult, DbErr>>;

    fn execute_unprepared<'c>(
        connection: &'c mut Self::Connection,
        sql: &'c str,
    ) -> BoxFuture<'c, Result<ExecResult, DbErr>>;

    fn query_one<'c>(
        connection: &'c mut Self::Connection,
        stmt: &'c Statement,
    ) -> BoxFuture<'c, Result<Option<QueryResult>, DbErr>>;

    fn query_all<'c>(
        connection: &'c mut Self::Connection,
        stmt: &'c Statement,
    ) -> BoxFuture<'c, Result<Vec<QueryResult>, DbErr>>;
}

/// Whether `error` came from the database itself (a constraint, a syntax error): the
/// connection is then in a known state, ready for the next statement.
pub(crate) fn is_database_error(error: &DbErr) -> bool {
    matches!(
        error,
        DbErr::Exec(RuntimeErr::SqlxError(sqlx::Error::Database(_)))
            | DbErr::Query(RuntimeErr::SqlxError(sqlx::Error::Database(_)))
    )
}

/// Whether `error` says the database could not be reached rather than that it refused a
/// statement: no connection (refused, reset, timed out, none free in time), or a server that
/// is shutting down, starting up or dropped the connection (PostgreSQL's class 08 and
/// 57P01-57P03). Retrying later can succeed; nothing about the request was wrong.
pub(crate) fn is_unavailable(error: &DbErr) -> bool {
    let sqlx_error = match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Exec(RuntimeErr::SqlxError(error)) | DbErr::Query(RuntimeErr::SqlxError(error)) => error,
        _ => return false,
    };
    match sqlx_error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(error) => {
            error.code().is_some_and(|code| code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03"))
        }
        _ => false,
    }
}

fn values(stmt: &Statement) -> SqlxValues {
    SqlxValues(stmt.values.clone().unwrap_or(Values(Vec::new())))
}

fn exec_error(error: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(error))
}

fn query_error(error: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(error))
}

// One implementation per database, written by a macro: the same code over a generic sqlx
// database needs higher-ranked `Executor` bounds that async code cannot satisfy.
macro_rules! driver {
    ($database:ty, $backend:expr) => {
        impl Driver for $database {
            const BACKEND: DbBackend = $backend;

            fn execute<'c>(
                connection: &'c mut Self::Connection,
                stmt: &'c Statement,
            ) -> BoxFuture<'c, Result<ExecResult, DbErr>> {
                Box::pin(async move {
                    let query = sqlx::query_with(&stmt.sql, values(stmt));
                    query.execute(connection).await.map(ExecResult::from).map_err(exec_error)
                })
            }

            fn execute_unprepared<'c>(
                connection: &'c mut Self::Connection,
                sql: &'c str,
            ) -> BoxFuture<'c, Result<ExecResult, DbErr>> {
                Box::pin(async move {
                    sqlx::Executor::execute(connection, sql).await.map(ExecResult::from).map_err(exec_error)
                })
            }

            fn query_one<'c>(
                connection: &'c mut Self::Connection,
                stmt: &'c Statement,
            ) -> BoxFuture<'c, Result<Option<QueryResult>, DbErr>> {
                Box::pin(async move {
                    let query = sqlx::query_with(&stmt.sql, values(stmt));
                    query.fetch_optional(connection).await.map(|row| row.map(QueryResult::from)).map_err(query_error)
                })
            }

            fn query_all<'c>(
                connection: &'c mut Self::Connection,
                stmt: &'c Statement,
            ) -> BoxFuture<'c, Result<Vec<QueryResult>, DbErr>> {
                Box::pin(async move {
                    let query = sqlx::query_with(&stmt.sql, values(stmt));
                    let rows = query.fetch_all(connection).await.map_err(query_error)?;
                    Ok(rows.into_iter().map(QueryResult::from).collect())
                })
            }
        }
    };
}

driver!(sqlx::Postgres, DbBackend::Postgres);
driver!(sqlx::Sqlite, DbBackend::Sqlite);
