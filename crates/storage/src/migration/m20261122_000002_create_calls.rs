//! Calls, and the busy lines that make "one open call per user" atomic.
//!
//! Caller and receiver are not foreign keys to `users`: an embedding application keeps its
//! users elsewhere, and a call record must outlive the removal of a user from the directory.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Calls::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Calls::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Calls::ConversationId).big_integer().null())
                    .col(ColumnDef::new(Calls::CallerId).string_len(64).not_null())
                    .col(ColumnDef::new(Calls::ReceiverId).string_len(64).not_null())
                    .col(ColumnDef::new(Calls::CallType).string_len(10).not_null())
                    .col(ColumnDef::new(Calls::Status).string_len(20).not_null())
                    .col(ColumnDef::new(Calls::StartedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Calls::AnsweredAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Calls::EndedAt).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Calls::DurationSeconds).integer().null())
                    .col(ColumnDef::new(Calls::EndReason).string_len(32).null())
                    .col(ColumnDef::new(Calls::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Calls::UpdatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            ("idx_calls_caller_started", Calls::CallerId),
            ("idx_calls_receiver_started", Calls::ReceiverId),
            ("idx_calls_status_started", Calls::Status),
        ] {
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name(name)
                        .table(Calls::Table)
                        .col(column)
                        .col(Calls::StartedAt)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(BusyLines::Table)
                    .if_not_exists()
                    // The primary key is the whole point: a second open call for the same user
                    // fails to insert its row, in every process that shares the database.
                    .col(ColumnDef::new(BusyLines::UserId).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(BusyLines::CallId).big_integer().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_busy_lines_call")
                            .from(BusyLines::Table, BusyLines::CallId)
                            .to(Calls::Table, Calls::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_busy_lines_call")
                    .table(BusyLines::Table)
                    .col(BusyLines::CallId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(BusyLines::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(Calls::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Calls {
    Table,
    Id,
    ConversationId,
    CallerId,
    ReceiverId,
    CallType,
    Status,
    StartedAt,
    AnsweredAt,
    EndedAt,
    DurationSeconds,
    EndReason,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum BusyLines {
    Table,
    UserId,
    CallId,
}
