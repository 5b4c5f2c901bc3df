//! Which of the receiver's devices an answered call belongs to (`Call::callee_device`): kept
//! with the call, so that every server instance refuses the receiver's other devices alike and
//! the accept that records it is the same compare-and-set that decides who answered.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Calls::Table)
                    // `DeviceId`'s text form: 16 hexadecimal digits, '-', a serial number.
                    .add_column(ColumnDef::new(Calls::CalleeDevice).string_len(40).null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Calls::Table).drop_column(Calls::CalleeDevice).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Calls {
    Table,
    CalleeDevice,
}
