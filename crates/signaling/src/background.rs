//! [`Background`]: the work a process running Ringline does beside its requests, started and
//! stopped the same way by the server binary, `crates/api/examples/embed.rs` and any
//! application that embeds the call API.
//!
//! Without it nothing expires: unanswered calls would ring for ever and keep both users busy,
//! and calls whose parties vanished would never end. So [`Background::start`] runs the ring
//! timer and the liveness sweep, and reads the refused users again every few seconds
//! ([`ringline_domain::Accounts::reload`]: changes made to the directory outside Ringline);
//! further work (the server's SQLite checkpoints, a bus
//! subscriber) joins with [`Background::spawn`]. On shutdown, [`Background::begin_shutdown`]
//! asks every WebSocket session to close (1001: clients reconnect, to another instance if
//! there is one) as soon as the signal arrives, and [`Background::shutdown`] waits for the
//! sessions, then stops the background work and waits for it.
//!
//! ```no_run
//! # async fn example(signaling: std::sync::Arc<ringline_signaling::Signaling>) {
//! use std::time::Duration;
//! let background = ringline_signaling::Background::start(signaling);
//! // ... serve requests until a shutdown signal, calling background.begin_shutdown() on it ...
//! background.shutdown(Duration::from_secs(5)).await;
//! # }
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use ringline_domain::Accounts;

use crate::hub::Signaling;
use crate::throttle::OncePerSecond;
use crate::{liveness, ring_timer};

/// Reads the refused users every [`Accounts::RELOAD_EVERY`] (the first read is the caller's,
/// before serving).
async fn reload_accounts(signaling: Arc<Signaling>, stop: CancellationToken) {
    let failed_logged = OncePerSecond::new();
    let mut ticker = tokio::time::interval(Accounts::RELOAD_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        if let Err(error) = signaling.accounts().reload().await
            && failed_logged.due()
        {
            tracing::warn!(%error, "cannot read the refused users; keeping what was known");
        }
    }
}

/// The background work of one process; see the module documentation.
#[derive(Debug)]
pub struct Background {
    signaling: Arc<Signaling>,
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Background {
    /// Starts the ring timer and the liveness sweep for `signaling`.
    pub fn start(signaling: Arc<Signaling>) -> Self {
        let background = Self::without_sweeps(signaling);
        let signaling = &background.signaling;
        background.spawn({
            let signaling = signaling.clone();
            |stop| ring_timer::run(signaling, stop)
        });
        background.spawn({
            let signaling = signaling.clone();
            |stop| liveness::run(signaling, stop)
        });
        background.spawn({
            let signaling = signaling.clone();
            |stop| reload_accounts(signaling, stop)
        });
        background
    }

    /// Starts nothing: calls never expire or end by themselves. For tests that count the
    /// database work of single requests; sessions are still closed on shutdown.
    pub fn without_sweeps(signaling: Arc<Signaling>) -> Self {
        Self { signaling, stop: CancellationToken::new(), tasks: Mutex::default() }
    }

    /// Runs `work` until shutdown: it is given the token that is cancelled when it must stop,
    /// and [`Background::shutdown`] waits for it to return.
    pub fn spawn<F, Fut>(&self, work: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let task = tokio::spawn(work(self.stop.child_token()));
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner).push(task);
    }

    /// Asks every WebSocket session to close (code 1001) and refuses new ones. Returns at once:
    /// call it when the shutdown signal arrives, before waiting for requests to finish.
    pub fn begin_shutdown(&self) {
        self.signaling.begin_shutdown();
    }

    /// Waits up to `grace` for the sessions to close, then stops the background work and waits
    /// for it. Returns whether every session closed in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        let drained = self.signaling.drain(grace).await;
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "a background task failed");
            }
        }
        drained
    }
}
