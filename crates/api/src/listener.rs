//! The TCP listener's per-connection settings.
//!
//! Signaling is many small frames (an ICE candidate is ~200 bytes): with Nagle's algorithm on,
//! each waits for the previous one's ACK, which the peer delays by up to 40 ms. Measured from
//! outside, turning `TCP_NODELAY` on lifted the relay from 6,000 to over 128,000 frames a
//! second (`docs/benchmarks.md`). poem's `TcpAcceptor` has no such option, hence this wrapper.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::{Acceptor, TcpAcceptor};
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// A [`TcpAcceptor`] that turns `TCP_NODELAY` on for every accepted connection, and closes a
/// connection on which nothing was read or written for its idle timeout.
pub struct NoDelayAcceptor(TcpAcceptor, Option<Duration>);

impl std::fmt::Debug for NoDelayAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NoDelayAcceptor").field(&self.0.local_addr()).finish()
    }
}

impl NoDelayAcceptor {
    pub fn new(inner: TcpAcceptor) -> Self {
        Self(inner, None)
    }

    /// Closes connections idle for `timeout` (nothing read or written). poem's own idle
    /// timeout only asks the connection to finish gracefully, which a client stalled in the
    /// middle of its request headers never does: it would be held for ever (slowloris), and
    /// delay shutdown. Here the connection's next read fails instead, and it is dropped.
    #[must_use]
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.1 = Some(timeout);
        self
    }
}

impl Acceptor for NoDelayAcceptor {
    type Io = IdleClosing;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.0.local_addr()
    }

    async fn accept(&mut self) -> std::io::Result<(IdleClosing, LocalAddr, RemoteAddr, Scheme)> {
        let (stream, local, remote, scheme) = self.0.accept().await?;
        // A socket that refuses the option still works, only slower: keep it.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "cannot turn TCP_NODELAY on for a connection");
        }
        let idle = self.1.map(|timeout| (timeout, Box::pin(tokio::time::sleep(timeout))));
        Ok((IdleClosing { stream, idle }, local, remote, scheme))
    }
}

/// An accepted connection whose reads fail once it has been idle for its timeout.
pub struct IdleClosing {
    stream: TcpStream,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
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
        let mut acceptor = NoDelayAcceptor::new(TcpListener::bind("127.0.0.1:0").into_acceptor().await.expect("bind"));
        let address = acceptor.local_addr()[0].as_socket_addr().copied().expect("a socket address");
        let _client = TcpStream::connect(address).await.expect("connect");
        let (accepted, ..) = acceptor.accept().await.expect("accept");
        assert!(accepted.stream.nodelay().expect("read the option"), "TCP_NODELAY is on");
    }
}
