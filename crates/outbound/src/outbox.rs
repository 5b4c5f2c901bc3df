//! The loop both outbox senders run ([`drain`]): claim what is due (as much as there is room
//! for in flight), send each in its own task, prune now and then, and sleep until woken by a
//! change made here, by a request finishing, or by the next look a second later (changes made
//! on other instances). The webhook and the mobile push senders differ only in their
//! [`OutboxWork`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ringline_domain::RepositoryError;
use ringline_signaling::CancellationToken;
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// How often the outbox is looked at without being woken, and pruned.
const POLL: Duration = Duration::from_secs(1);
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// One outbox's part of [`drain`].
#[async_trait]
pub(crate) trait OutboxWork: Send + Sync + 'static {
    type Item: Send + 'static;

    /// What the log calls this outbox ("webhook", "mobile push").
    const NAME: &'static str;

    /// Leases up to `room` items that are due now.
    async fn claim(&self, room: u32) -> Result<Vec<Self::Item>, RepositoryError>;

    /// Sends one and records how it went.
    async fn deliver(self: Arc<Self>, item: Self::Item);

    /// Deletes what finished long enough ago.
    async fn prune(&self) -> Result<u64, RepositoryError>;
}

/// Sends `work`'s outbox until `stop`, at most `in_flight_max` requests at a time. Requests in
/// flight at `stop` are abandoned: their leases run out (or are released when the sender starts
/// again) and they are sent again.
pub(crate) async fn drain<W: OutboxWork>(work: Arc<W>, wake: &Notify, in_flight_max: usize, stop: CancellationToken) {
    let mut in_flight = JoinSet::new();
    let mut last_prune = tokio::time::Instant::now();
    loop {
        let room = in_flight_max.saturating_sub(in_flight.len());
        if room > 0 {
            match work.claim(u32::try_from(room).unwrap_or(u32::MAX)).await {
                Ok(due) => {
                    let claimed = due.len();
                    for item in due {
                        in_flight.spawn(Arc::clone(&work).deliver(item));
                    }
                    if claimed == room {
                        continue; // More may be due.
                    }
                }
                Err(error) => tracing::warn!(%error, outbox = W::NAME, "cannot read the outbox"),
            }
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = tokio::time::Instant::now();
            if let Err(error) = work.prune().await {
                tracing::warn!(%error, outbox = W::NAME, "cannot prune the outbox");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = wake.notified() => {}
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}
