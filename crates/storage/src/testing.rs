//! Test support (feature `testing`): a fresh, migrated database per test, on SQLite or
//! PostgreSQL, so tests never share state and can run in parallel.
//!
//! PostgreSQL is reached through `RINGLINE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, the CI machine's trust-auth server). Each
//! test creates its own database `ringline_test_<random>` there and drops it in
//! [`TestDatabase::cleanup`]; `.ci/run` removes any a crashed test left behind.

use crate::Storage;

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The server used for PostgreSQL tests when `RINGLINE_TEST_POSTGRES_URL` is unset.
pub const DEFAULT_TEST_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDatabase {
    storage: Storage,
    url: String,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    SqliteFile(std::path::PathBuf),
    PostgresDatabase { admin_url: String, name: String },
}

fn with_database(server_url: &str, database: &str) -> String {
    let (base, query) = server_url.split_once('?').map_or((server_url, None), |(b, q)| (b, Some(q)));
    let (server, _) = base.rsplit_once('/').unwrap_or((base, ""));
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

impl TestDatabase {
    /// Creates and migrates a fresh database. Panics on failure: this is test set-up.
    pub async fn new(backend: Backend) -> Self {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let (url, cleanup) = match backend {
            Backend::Sqlite => {
                let path = std::env::temp_dir().join(format!("ringline_test_{unique}.db"));
                (format!("sqlite://{}?mode=rwc", path.display()), Cleanup::SqliteFile(path))
            }
            Backend::Postgres => {
                let admin_url = std::env::var("RINGLINE_TEST_POSTGRES_URL")
                    .unwrap_or_else(|_| DEFAULT_TEST_POSTGRES_URL.to_owned());
                let name = format!("ringline_test_{unique}");
                let admin = Storage::connect(&admin_url).await.unwrap_or_else(|error| {
                    panic!("PostgreSQL at RINGLINE_TEST_POSTGRES_URL is unreachable ({error}); start it or run .ci/run")
                });
                use sea_orm::ConnectionTrait;
                admin
                    .connections
                    .write_pool
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .expect("CREATE DATABASE for a test");
                admin.close().await.expect("close the admin connection");
                (with_database(&admin_url, &name), Cleanup::PostgresDatabase { admin_url, name })
            }
        };
        let storage = Storage::connect(&url).await.expect("connect to the test database");
        storage.migrate().await.expect("migrate the test database");
        Self { storage, url, cleanup }
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The URL of this test's database, for starting a server process on it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops a PostgreSQL test database while servers still use it, to test how they fail.
    ///
    /// # Panics
    /// On SQLite (an open file cannot be taken away) or when the drop fails.
    pub async fn drop_while_in_use(&self) {
        let Cleanup::PostgresDatabase { admin_url, name } = &self.cleanup else {
            panic!("drop_while_in_use needs a PostgreSQL test database");
        };
        use sea_orm::ConnectionTrait;
        let admin = Storage::connect(admin_url).await.expect("connect as admin");
        admin
            .connections
            .write_pool
            .execute_unprepared(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
            .await
            .expect("drop the database");
        admin.close().await.expect("close the admin connection");
    }

    /// Runs `sql` on the test database (to break it in a way a test needs, say).
    ///
    /// # Panics
    /// When the statement fails.
    pub async fn execute(&self, sql: &str) {
        use sea_orm::ConnectionTrait;
        self.storage.connections.write_pool.execute_unprepared(sql).await.expect("the statement runs");
    }

    /// The number `sql` (a query of one integer column, one row) answers on the test database.
    ///
    /// # Panics
    /// When the query fails or answers no number.
    pub async fn count(&self, sql: &str) -> i64 {
        use sea_orm::ConnectionTrait;
        let statement =
            sea_orm::Statement::from_string(self.storage.connections.write_pool.get_database_backend(), sql);
        let row = self.storage.connections.write_pool.query_one(statement).await.expect("the query runs");
        row.and_then(|row| row.try_get_by_index::<i64>(0).ok()).expect("a number")
    }

    /// Closes the connections and removes the database.
    pub async fn cleanup(self) {
        self.storage.close().await.expect("close the test database");
        match self.cleanup {
            Cleanup::SqliteFile(path) => remove_sqlite_files(&path),
            Cleanup::PostgresDatabase { admin_url, name } => {
                use sea_orm::ConnectionTrait;
                let admin = Storage::connect(&admin_url).await.expect("reconnect to drop the test database");
                admin
                    .connections
                    .write_pool
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
                    .expect("DROP DATABASE for a test");
                admin.close().await.expect("close the admin connection");
            }
        }
    }
}

/// Removes a SQLite database file and its `-wal` and `-shm` companions, if present.
pub fn remove_sqlite_files(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.to_path_buf().into_os_string();
        file.push(suffix);
        // Missing files are fine: WAL companions exist only while the database is open.
        let _ = std::fs::remove_file(file);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_database_name_replaces_the_servers_default_one() {
        assert_eq!(
            super::with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(super::with_database("postgres://h/db?sslmode=disable", "t2"), "postgres://h/t2?sslmode=disable");
    }
}
