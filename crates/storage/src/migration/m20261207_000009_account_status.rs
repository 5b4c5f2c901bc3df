//! Whether a user may still use the service: `is_active` (the operator may turn a user off
//! and on) and `removed_at` (a deleted user's row stays, emptied, so that a token that outlived
//! them cannot register them again from its claims), with a partial index on the refused ones.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column a statement: SQLite alters a table one change at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(ColumnDef::new(Users::IsActive).boolean().not_null().default(true))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(ColumnDef::new(Users::RemovedAt).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await?;
        // Every instance reads the refused users every few seconds: a partial index holds just
        // them (the same statement on SQLite and PostgreSQL).
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX users_refused ON users (id) WHERE is_active = false OR removed_at IS NOT NULL",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared("DROP INDEX users_refused").await?;
        manager.alter_table(Table::alter().table(Users::Table).drop_column(Users::RemovedAt).to_owned()).await?;
        manager.alter_table(Table::alter().table(Users::Table).drop_column(Users::IsActive).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    IsActive,
    RemovedAt,
}
