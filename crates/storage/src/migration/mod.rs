//! Schema migrations, in sea-orm-migration's shape: one file per migration, named
//! `mYYYYMMDD_HHMMSS_what.rs` because the file name becomes the recorded migration name.
//!
//! They run on every server start and through `ringline migrate`; each is written to work on
//! both SQLite and PostgreSQL.

use sea_orm_migration::prelude::*;

mod m20261122_000001_create_directory;
mod m20261122_000002_create_calls;
mod m20261122_000003_create_notifications;
mod m20261201_000004_add_line_last_seen;
mod m20261203_000005_lines_follow_calls;
mod m20261204_000006_webhook_outbox;
mod m20261204_000007_web_push;
mod m20261205_000008_callee_device;
mod m20261207_000009_account_status;
mod m20261207_000010_notifications_follow_calls;
mod m20261207_000011_call_quality;
mod m20261207_000012_call_policy;
mod m20261207_000013_relay_only;
mod m20261207_000014_mobile_push;
mod m20261208_000015_call_moments;
mod m20261208_000016_call_waiting;

/// Every migration of the Ringline schema, oldest first.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_directory::Migration),
            Box::new(m20261122_000002_create_calls::Migration),
            Box::new(m20261122_000003_create_notifications::Migration),
            Box::new(m20261201_000004_add_line_last_seen::Migration),
            Box::new(m20261203_000005_lines_follow_calls::Migration),
            Box::new(m20261204_000006_webhook_outbox::Migration),
            Box::new(m20261204_000007_web_push::Migration),
            Box::new(m20261205_000008_callee_device::Migration),
            Box::new(m20261207_000009_account_status::Migration),
            Box::new(m20261207_000010_notifications_follow_calls::Migration),
            Box::new(m20261207_000011_call_quality::Migration),
            Box::new(m20261207_000012_call_policy::Migration),
            Box::new(m20261207_000013_relay_only::Migration),
            Box::new(m20261207_000014_mobile_push::Migration),
            Box::new(m20261208_000015_call_moments::Migration),
            Box::new(m20261208_000016_call_waiting::Migration),
        ]
    }
}
