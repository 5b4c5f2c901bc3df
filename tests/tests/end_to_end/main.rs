//! Black-box tests of Ringline against real servers on 127.0.0.1, as one test binary: one link of
//! the whole stack instead of one per file.

mod api_surface;
mod call_moments;
mod call_policy;
mod call_waiting;
mod calls_api;
mod device_races;
mod embedding;
mod error_codes;
mod health;
mod joined_instances;
mod liveness;
mod metrics;
mod mobile_push;
mod notifications;
mod observers;
mod old_clients;
mod openapi;
mod quality;
mod relay_reads;
mod resume;
mod schemathesis;
mod signaling;
mod statement_budget;
mod turn;
mod web_push;
mod webhooks;
