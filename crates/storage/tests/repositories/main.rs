//! The repositories against real databases (SQLite and PostgreSQL), as one test binary (one link
//! instead of one per file).

#[macro_use]
mod common;
mod contract;
mod mobile_push_outbox;
mod races;
mod webhook_outbox;
