//! `calls.rang_at` and `calls.video_at`: moments recorded once on a call without changing its
//! status (`CallRepository::record_moment`). `rang_at`: the first of the receiver's devices
//! showed the call (`call.ringing`); `video_at`: video first flowed, by a party's
//! `call.media-state`. On the call's row, so every read has them; no trigger fires for them
//! (they all watch `status`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for column in [Calls::RangAt, Calls::VideoAt] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Calls::Table)
                        .add_column(ColumnDef::new(column).timestamp_with_time_zone().null())
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Calls::RangAt, Calls::VideoAt] {
            manager.alter_table(Table::alter().table(Calls::Table).drop_column(column).to_owned()).await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Calls {
    Table,
    RangAt,
    VideoAt,
}
