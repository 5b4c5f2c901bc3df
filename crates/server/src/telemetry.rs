//! Logging set-up and the shutdown signal.

use std::io::IsTerminal;

use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt};

use crate::settings::LogFormat;

/// Crates whose logs at debug and trace carry whole frames (SDP, ICE candidates with peer
/// addresses, whatever a client pasted into a frame): never logged, whatever `RUST_LOG` says.
const NEVER_LOGGED: &[&str] = &["tungstenite", "tokio_tungstenite"];

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as text or JSON lines; colours only
/// when stderr is a terminal.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A filter of its own, after the user's: no directive in RUST_LOG can let these through.
    let redact = NEVER_LOGGED.iter().fold(Targets::new().with_default(LevelFilter::TRACE), |targets, name| {
        targets.with_target(*name, LevelFilter::OFF)
    });
    // Both filters decide per call site, once, and together they report the most verbose level
    // anything may log at (`info` by default). So a `debug!` or a `log::trace!` of a
    // dependency that runs per frame costs one comparison, not a lookup per call.
    let filter = filter.and(redact);
    let ansi = std::io::stderr().is_terminal();
    let layer = match format {
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
        LogFormat::Text => fmt::layer().with_ansi(ansi).with_writer(std::io::stderr).boxed(),
    };
    // A second init (tests starting several servers) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(layer.with_filter(filter)).try_init();
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what service managers and Kubernetes send).
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C will stop the server");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
