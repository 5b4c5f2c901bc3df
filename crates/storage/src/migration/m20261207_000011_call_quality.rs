//! `calls.quality`: the summary of what the parties' clients reported about the call's media
//! (the domain's `CallQuality` as JSON text), written by `POST /api/calls/{id}/quality/`. On
//! the call's row, so every read of a call has it without another statement; no trigger
//! fires for it (they all watch `status`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter().table(Calls::Table).add_column(ColumnDef::new(Calls::Quality).text().null()).to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Calls::Table).drop_column(Calls::Quality).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Calls {
    Table,
    Quality,
}
