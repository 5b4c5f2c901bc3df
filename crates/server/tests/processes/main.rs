//! The `ringline` binary as separate processes: its commands, a database outage, instances joined
//! over Redis. One test binary (one link instead of one per file).

mod binary;
mod common;
mod database_outage;
mod deploy;
mod instances;
