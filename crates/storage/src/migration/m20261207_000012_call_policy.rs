//! Who may ring whom (the domain's `policy`): `call_settings` (one row per user who changed
//! a default), `call_blocks` (who blocks whom), and `calls.silenced` (a call placed while its
//! receiver was in do-not-disturb, so that a receiver who connects while it rings is not shown
//! it). The policy reads them all, with the caller's recent calls, in one statement; the
//! reverse index lets it find a block in either direction.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

fn user_reference(name: &str, from: (CallBlocks, CallBlocks)) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(from.0, from.1)
        .to(Users::Table, Users::Id)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(CallSettings::Table)
                    .col(ColumnDef::new(CallSettings::UserId).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(CallSettings::WhoCanCall).string_len(16).not_null().default("everyone"))
                    .col(ColumnDef::new(CallSettings::DoNotDisturb).boolean().not_null().default(false))
                    .col(ColumnDef::new(CallSettings::DoNotDisturbUntil).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(CallSettings::UpdatedAt).timestamp_with_time_zone().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_call_settings_user")
                            .from(CallSettings::Table, CallSettings::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(CallBlocks::Table)
                    .col(ColumnDef::new(CallBlocks::BlockerId).string_len(64).not_null())
                    .col(ColumnDef::new(CallBlocks::BlockedId).string_len(64).not_null())
                    .col(ColumnDef::new(CallBlocks::CreatedAt).timestamp_with_time_zone().not_null())
                    .primary_key(Index::create().col(CallBlocks::BlockerId).col(CallBlocks::BlockedId))
                    .foreign_key(&mut user_reference(
                        "fk_call_blocks_blocker",
                        (CallBlocks::Table, CallBlocks::BlockerId),
                    ))
                    .foreign_key(&mut user_reference(
                        "fk_call_blocks_blocked",
                        (CallBlocks::Table, CallBlocks::BlockedId),
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_call_blocks_blocked")
                    .table(CallBlocks::Table)
                    .col(CallBlocks::BlockedId)
                    .col(CallBlocks::BlockerId)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Calls::Table)
                    .add_column(ColumnDef::new(Calls::Silenced).boolean().not_null().default(false))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Calls::Table).drop_column(Calls::Silenced).to_owned()).await?;
        manager.drop_table(Table::drop().table(CallBlocks::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(CallSettings::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum CallSettings {
    Table,
    UserId,
    WhoCanCall,
    DoNotDisturb,
    DoNotDisturbUntil,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum CallBlocks {
    Table,
    BlockerId,
    BlockedId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Calls {
    Table,
    Silenced,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}
