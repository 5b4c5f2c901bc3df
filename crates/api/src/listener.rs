//! The TCP listener's per-connection settings and bounds.
//!
//! Signaling is many small frames (an ICE candidate is ~200 bytes): with Nagle's algorithm on,
//! each waits for the previous one's ACK, which the peer delays by up to 40 ms. Measured from
//! outside, turning `TCP_NODELAY` on lifted the relay from 6,000 to over 128,000 frames a
//! second (`docs/benchmarks.md`). poem's `TcpAcceptor` has no such option, hence this wrapper,
//! which also bounds what connections may hold: an idle timeout (a client stalled mid-request
//! is dropped), a cap on open connections (answered `503 too_many_connections` beyond it, so
//! that the process keeps descriptors for its database and its health probes).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::{Acceptor, TcpAcceptor};
use poem::web::{LocalAddr, RemoteAddr};
use ringline_signaling::throttle::OncePerSecond;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Refusals (`503 too_many_connections`) being written at once; beyond, a connection over the
/// cap is closed without an answer.
const REFUSALS_IN_FLIGHT: usize = 64;

/// How long a refused connection is given to take its answer.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// The answer to a connection over the cap; the connection is closed after it.
fn refusal() -> String {
    let body = serde_json::json!({
        "detail": "The server has too many open connections; try again shortly.",
        "code": "too_many_connections",
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {}\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        crate::error::RETRY_AFTER_SECS,
        body.len()
    )
}

/// A [`TcpAcceptor`] that turns `TCP_NODELAY` on for every accepted connection, closes a
/// connection on which nothing was read or written for its idle timeout, and refuses
/// connections over a cap.
pub struct ConnectionAcceptor {
    inner: TcpAcceptor,
    idle_timeout: Option<Duration>,
    /// One permit per open connection, when capped.
    connections: Option<Arc<Semaphore>>,
    refusals: Arc<Semaphore>,
    /// One WARN a second at most, however many connections are refused.
    refusals_logged: OncePerSecond,
}

impl std::fmt::Debug for ConnectionAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionAcceptor").field("local_addr", &self.inner.local_addr()).finish_non_exhaustive()
    }
}

impl ConnectionAcceptor {
    pub fn new(inner: TcpAcceptor) -> Self {
        Self {
            inner,
            idle_timeout: None,
            connections: None,
            refusals: Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT)),
            refusals_logged: OncePerSecond::new(),
        }
    }

    /// Closes connections idle for `timeout` (nothing read or written). poem's own idle
    /// timeout only asks the connection to finish gracefully, which a client stalled in the
    /// middle of its request headers never does: it would be held for ever (slowloris), and
    /// delay shutdown. Here the connection's next read fails instead, and it is dropped.
    #[must_use]
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Keeps at most `max` connections (HTTP and WebSocket) open; one more is answered `503
    /// too_many_connections` with `Retry-After` and closed. 1,100 half-open connections once
    /// used up a 1,024-descriptor limit, and the health probes and the API stopped answering.
    #[must_use]
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.connections = Some(Arc::new(Semaphore::new(max.max(1))));
        self
    }

    /// Answers a connection over the cap, off the accept loop.
    fn refuse(&mut self, stream: TcpStream, remote: &RemoteAddr) {
        if self.refusals_logged.due() {
            tracing::warn!(%remote, "refusing a connection: too many are open (RINGLINE_MAX_CONNECTIONS)");
        }
        let Ok(permit) = Arc::clone(&self.refusals).try_acquire_owned() else { return };
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(REFUSAL_TIMEOUT, answer_refused(stream)).await;
        });
    }
}

/// Reads the request's head, writes [`refusal`], then reads on until the client closes. An
/// answer before the request confuses HTTP clients (hyper's reports an unexpected message),
/// and closing with the request unread would reset the connection, losing the answer.
async fn answer_refused(mut stream: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < MAX_REFUSED_HEAD {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..read]);
    }
    stream.write_all(refusal().as_bytes()).await?;
    stream.shutdown().await?;
    while stream.read(&mut chunk).await? > 0 {}
    Ok(())
}

/// How much of a refused connection's request is read before answering it.
const MAX_REFUSED_HEAD: usize = 16 * 1024;

impl Acceptor for ConnectionAcceptor {
    type Io = IdleClosing;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> std::io::Result<(IdleClosing, LocalAddr, RemoteAddr, Scheme)> {
        loop {
            let (stream, local, remote, scheme) = self.inner.accept().await?;
            let permit = match &self.connections {
                None => None,
                Some(connections) => match Arc::clone(connections).try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        self.refuse(stream, &remote);
                        continue;
                    }
                },
            };
            // A socket that refuses the option still works, only slower: keep it.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::warn!(%error, "cannot turn TCP_NODELAY on for a connection");
            }
            let idle = self.idle_timeout.map(|timeout| (timeout, Box::pin(tokio::time::sleep(timeout))));
            let connection = IdleClosing { stream, idle, _permit: permit };
            return Ok((connection, local, remote, scheme));
        }
    }
}

/// An accepted connection whose reads fail once it has been idle for its timeout. Holds its
/// place under the connection cap.
pub struct IdleClosing {
    stream: TcpStream,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for IdleClosing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleClosing").field("peer", &self.stream.peer_addr().ok()).finish_non_exhaustive()
    }
}

/// Activity moves the deadline at most this often: a relayed frame should not touch the timer.
const DEADLINE_STEP: Duration = Duration::from_secs(1);

impl IdleClosing {
    fn active(&mut self) {
        if let Some((timeout, sleep)) = &mut self.idle {
            let deadline = Instant::now() + *timeout;
            if deadline >= sleep.deadline() + DEADLINE_STEP {
                sleep.as_mut().reset(deadline);
            }
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.idle.as_mut().is_some_and(|(_, sleep)| sleep.as_mut().poll(cx).is_ready())
    }
}

impl AsyncRead for IdleClosing {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                self.active();
                Poll::Ready(result)
            }
            Poll::Pending if self.expired(cx) => {
                Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle connection")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for IdleClosing {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if written.is_ready() {
            self.active();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if written.is_ready() {
            self.active();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use poem::listener::{Listener, TcpListener};

    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nodelay_on() {
        let mut acceptor =
            ConnectionAcceptor::new(TcpListener::bind("127.0.0.1:0").into_acceptor().await.expect("bind"));
        let address = acceptor.local_addr()[0].as_socket_addr().copied().expect("a socket address");
        let _client = TcpStream::connect(address).await.expect("connect");
        let (accepted, ..) = acceptor.accept().await.expect("accept");
        assert!(accepted.stream.nodelay().expect("read the option"), "TCP_NODELAY is on");
    }
}
