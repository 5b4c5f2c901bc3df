//! Serving until shutdown, and draining. poem's graceful shutdown waits for every connection,
//! and a client stalled in the middle of its request headers never finishes one: it held the
//! exit for the whole grace period. So the wait ends as soon as no request is in progress
//! (counted by [`InFlight`]), after a moment for the last responses to be written.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use poem::{Endpoint, EndpointExt, IntoResponse, Server};
use ringline_signaling::CancellationToken;

use crate::listener::ConnectionAcceptor;

/// Time for responses handed to their connections to be written once no request is in
/// progress.
const RESPONSE_FLUSH: Duration = Duration::from_millis(200);

/// Serves `app` on `acceptor` until `shutdown` resolves; then stops accepting and returns once
/// no request is in progress, or after `grace` at most. WebSocket sessions are not requests
/// (poem detaches them): whoever owns them closes them when `shutdown` resolves.
///
/// # Errors
/// When the server fails to run.
pub async fn serve(
    acceptor: ConnectionAcceptor,
    app: impl Endpoint + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let signalled = CancellationToken::new();
    let shutdown = {
        let signalled = signalled.clone();
        async move {
            shutdown.await;
            signalled.cancel();
        }
    };
    let in_flight = InFlight::default();
    let app = in_flight.counting(app);
    tokio::select! {
        served = Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(app, shutdown, Some(grace)) => served,
        () = in_flight.drained_after(signalled) => Ok(()),
    }
}

/// How many requests are being handled, so that shutdown waits for those and not for idle or
/// stalled connections.
#[derive(Debug, Clone, Default)]
struct InFlight(Arc<AtomicUsize>);

/// Counts one request while it lives (also when its future is dropped midway).
struct Handling(Arc<AtomicUsize>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlight {
    fn counting(&self, app: impl Endpoint + 'static) -> impl Endpoint + 'static {
        let count = Arc::clone(&self.0);
        app.around(move |endpoint, req| {
            count.fetch_add(1, Ordering::AcqRel);
            let handling = Handling(Arc::clone(&count));
            async move {
                let response = endpoint.call(req).await.map(IntoResponse::into_response);
                drop(handling);
                response
            }
        })
    }

    /// Resolves once `signalled` is cancelled and then no request is in progress (checked every
    /// 20 ms), after a moment for the last responses to be written.
    async fn drained_after(&self, signalled: CancellationToken) {
        signalled.cancelled().await;
        while self.0.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(RESPONSE_FLUSH).await;
    }
}
