//! The connection cap: how many connections the listener keeps open, from the open-files limit
//! (raised as far as it may go first: a service manager often starts processes at 1,024, far
//! below what thousands of WebSockets need).

use crate::settings::Settings;

/// The connection cap for `settings`, after raising this process's open-files limit.
pub(crate) fn connection_cap(settings: &Settings) -> usize {
    let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _hard)| soft)
        }
    };
    let cap = settings.connection_cap(open_files);
    if u64::try_from(cap).unwrap_or(u64::MAX) > open_files {
        tracing::warn!(cap, open_files, "RINGLINE_MAX_CONNECTIONS is above the open-files limit");
    }
    tracing::info!(cap, open_files, "connections are capped");
    cap
}
