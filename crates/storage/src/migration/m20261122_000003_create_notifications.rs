//! Persisted notifications (incoming and missed calls), shaped like the original app's.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Notifications::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Notifications::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Notifications::RecipientId).string_len(64).not_null())
                    .col(ColumnDef::new(Notifications::ActorId).string_len(64).null())
                    .col(ColumnDef::new(Notifications::Verb).string_len(64).not_null())
                    .col(ColumnDef::new(Notifications::ObjectId).big_integer().null())
                    .col(ColumnDef::new(Notifications::Data).json().not_null())
                    .col(ColumnDef::new(Notifications::Unread).boolean().not_null().default(true))
                    .col(ColumnDef::new(Notifications::CreatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_notifications_recipient_created")
                    .table(Notifications::Table)
                    .col(Notifications::RecipientId)
                    .col(Notifications::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Notifications::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Notifications {
    Table,
    Id,
    RecipientId,
    ActorId,
    Verb,
    ObjectId,
    Data,
    Unread,
    CreatedAt,
}
