//! Liveness of open calls: each held line records when its user was last known to have a live
//! socket, so any server instance can tell from the database alone that both parties of an
//! active call are gone (`docs/architecture.md`, "Liveness").

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(BusyLines::Table)
                    .add_column(ColumnDef::new(BusyLines::LastSeenAt).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await?;
        // Calls open during the upgrade get a whole grace period from now, rather than being
        // ended at once for a silence that only predates the column.
        manager
            .exec_stmt(
                Query::update().table(BusyLines::Table).value(BusyLines::LastSeenAt, chrono::Utc::now()).to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(BusyLines::Table).drop_column(BusyLines::LastSeenAt).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum BusyLines {
    Table,
    LastSeenAt,
}
