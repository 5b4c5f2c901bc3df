//! `call_settings.relay_only`: a user whose calls connect only through a TURN relay (their
//! clients are told `ice_transport_policy: relay`), so that the other party never learns their
//! IP address from a candidate.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(CallSettings::Table)
                    .add_column(ColumnDef::new(CallSettings::RelayOnly).boolean().not_null().default(false))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(CallSettings::Table).drop_column(CallSettings::RelayOnly).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum CallSettings {
    Table,
    RelayOnly,
}
