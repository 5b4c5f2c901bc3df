//! Web Push: the browsers' push subscriptions (several per user; one per endpoint), and the
//! server's VAPID key pair, generated on the first start and shared by every instance.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PushSubscriptions::Table)
                    .col(ColumnDef::new(PushSubscriptions::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(PushSubscriptions::UserId).string_len(64).not_null())
                    .col(ColumnDef::new(PushSubscriptions::Endpoint).string_len(2048).not_null().unique_key())
                    .col(ColumnDef::new(PushSubscriptions::P256dh).string_len(128).not_null())
                    .col(ColumnDef::new(PushSubscriptions::Auth).string_len(64).not_null())
                    .col(ColumnDef::new(PushSubscriptions::CreatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("push_subscriptions_user")
                    .table(PushSubscriptions::Table)
                    .col(PushSubscriptions::UserId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(VapidKeys::Table)
                    .col(ColumnDef::new(VapidKeys::Id).integer().not_null().primary_key())
                    .col(ColumnDef::new(VapidKeys::PrivateKey).text().not_null())
                    .col(ColumnDef::new(VapidKeys::PublicKey).string_len(128).not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(VapidKeys::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(PushSubscriptions::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum PushSubscriptions {
    Table,
    Id,
    UserId,
    Endpoint,
    P256dh,
    Auth,
    CreatedAt,
}

#[derive(DeriveIden)]
enum VapidKeys {
    Table,
    Id,
    PrivateKey,
    PublicKey,
}
