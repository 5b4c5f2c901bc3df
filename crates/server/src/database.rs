//! Opening the configured database, migrated, for the server and the commands alike.

use anyhow::Context;
use ringline_storage::Storage;

use crate::Settings;

/// Opens the configured database and applies pending migrations.
///
/// # Errors
/// When the database cannot be opened or migrated.
pub async fn open_storage(settings: &Settings) -> anyhow::Result<Storage> {
    let storage = Storage::connect_with(&settings.database.database_url, settings.connect()).await;
    let storage = storage.context("cannot open the database")?;
    storage.migrate().await.context("cannot migrate the database")?;
    Ok(storage)
}
