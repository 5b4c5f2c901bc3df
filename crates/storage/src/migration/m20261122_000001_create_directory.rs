//! Users, conversations and their participants: the standalone server's own directory.
//! An application that embeds Ringline with its own directory leaves these tables empty.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Users::Id).string_len(64).not_null().primary_key())
                    .col(ColumnDef::new(Users::Username).string_len(150).not_null())
                    .col(ColumnDef::new(Users::FirstName).string_len(150).not_null().default(""))
                    .col(ColumnDef::new(Users::LastName).string_len(150).not_null().default(""))
                    .col(ColumnDef::new(Users::ProfileImageUrl).text().null())
                    .col(ColumnDef::new(Users::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Users::UpdatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Conversations::Table)
                    .if_not_exists()
                    // Ids come from the host application (the original app's conversation ids),
                    // so there is no sequence here.
                    .col(ColumnDef::new(Conversations::Id).big_integer().not_null().primary_key())
                    .col(ColumnDef::new(Conversations::CreatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ConversationParticipants::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(ConversationParticipants::ConversationId).big_integer().not_null())
                    .col(ColumnDef::new(ConversationParticipants::UserId).string_len(64).not_null())
                    .primary_key(
                        Index::create()
                            .col(ConversationParticipants::ConversationId)
                            .col(ConversationParticipants::UserId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_participants_conversation")
                            .from(ConversationParticipants::Table, ConversationParticipants::ConversationId)
                            .to(Conversations::Table, Conversations::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_participants_user")
                            .from(ConversationParticipants::Table, ConversationParticipants::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_participants_user")
                    .table(ConversationParticipants::Table)
                    .col(ConversationParticipants::UserId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(ConversationParticipants::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(Conversations::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(Users::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Username,
    FirstName,
    LastName,
    ProfileImageUrl,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Conversations {
    Table,
    Id,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ConversationParticipants {
    Table,
    ConversationId,
    UserId,
}
