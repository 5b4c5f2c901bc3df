//! The TCP listener's per-connection settings and bounds.
//!
//! Signaling is many small frames (an ICE candidate is ~200 bytes): with Nagle's algorithm on,
//! each waits for the previous one's ACK, which the peer delays by up to 40 ms. Measured from
//! outside, turning `TCP_NODELAY` on lifted the relay from 6,000 to over 128,000 frames a
//! second (`docs/benchmarks.md`). poem's `TcpAcceptor` has no such option, hence this wrapper,
//! which also bounds what one client may hold:
//! - a deadline for a request's headers, counted from its first byte (from the accept for a
//!   connection's first request), however slowly they trickle in: a slowloris client sending a
//!   byte every few seconds never reaches the idle timeout, which each byte restarts;
//! - an idle timeout (nothing read or written);
//! - a cap on open connections (answered `503 too_many_connections` beyond it), so that the
//!   process keeps descriptors for its database and its health probes;
//! - a lower cap per client address (answered `429 too_many_connections_from_address`), so
//!   that one address cannot take every place of the first;
//! - a lingering close: a connection closed with bytes still unread (a WebSocket frame over
//!   the size limit, sent whole before the server read its header) would answer them with a
//!   TCP reset, which makes the client drop the Close frame it was sent before reading it.
//!   Such a connection is shut down for writing and drained for a moment instead.
//!
//! Which bytes are headers is read off the stream itself, without parsing HTTP: a request's
//! head ends at its first empty line; a response starting `HTTP/1.x 101` (a WebSocket upgrade)
//! or anything but HTTP/1 (HTTP/2) hands the connection over to its own protocol, whose
//! keepalive then guards it.

mod addresses;
mod phase;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::{Acceptor, TcpAcceptor};
use poem::web::{LocalAddr, RemoteAddr};
use ringline_domain::ErrorCode;
use ringline_signaling::throttle::OncePerSecond;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

pub use addresses::{AddressCap, AddressPlace};
use phase::Phase;

/// Refusals being written at once; beyond, a connection over a cap is closed without an answer.
const REFUSALS_IN_FLIGHT: usize = 64;

/// How long a refused connection is given to take its answer.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a connection closed with unread bytes is drained before it is dropped: long
/// enough for the peer to read what it was sent and close, short enough to cost little.
const LINGER: Duration = Duration::from_secs(2);

/// Why a connection is refused at the door.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// The server holds its cap of connections.
    Full,
    /// The client's address holds its share.
    AddressFull,
}

impl Refusal {
    /// The answer, after which the connection is closed. Written by hand: the connection is
    /// refused before any HTTP is read, so no HTTP stack answers it.
    fn response(self) -> String {
        let code = match self {
            Self::Full => ErrorCode::TooManyConnections,
            Self::AddressFull => ErrorCode::TooManyConnectionsFromAddress,
        };
        let status =
            poem::http::StatusCode::from_u16(code.http_status()).unwrap_or(poem::http::StatusCode::SERVICE_UNAVAILABLE);
        let body = crate::error::envelope_json(&ringline_domain::Refusal::new(code));
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: {}\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{body}",
            crate::error::RETRY_AFTER_SECS,
            body.len()
        )
    }
}

/// A [`TcpAcceptor`] that turns `TCP_NODELAY` on for every accepted connection and applies the
/// bounds of the module documentation.
pub struct ConnectionAcceptor {
    inner: TcpAcceptor,
    idle_timeout: Option<Duration>,
    header_timeout: Option<Duration>,
    /// One permit per open connection, when capped.
    connections: Option<Arc<Semaphore>>,
    addresses: Option<Arc<AddressCap>>,
    refusals: Arc<Semaphore>,
    /// One WARN a second at most, however many connections are refused.
    refusals_logged: OncePerSecond,
}

impl std::fmt::Debug for ConnectionAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionAcceptor").field("local_addr", &self.inner.local_addr()).finish_non_exhaustive()
    }
}

/// Where the server listens and the bounds of the module documentation, as configured.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub bind: std::net::SocketAddr,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    /// Connections kept open at most.
    pub max_connections: usize,
    /// Connections one client address may hold; behind a trusted proxy, one forwarded client.
    pub max_per_address: usize,
    /// Addresses not counted per address (the server's own machine, the trusted proxies).
    pub exempt: Vec<std::net::IpAddr>,
}

impl ConnectionAcceptor {
    /// Binds `settings.bind` with every bound of `settings`.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(settings: &ListenerSettings) -> std::io::Result<Self> {
        use poem::listener::Listener;
        let inner = poem::listener::TcpListener::bind(settings.bind).into_acceptor().await?;
        Ok(Self::new(inner)
            .with_idle_timeout(settings.idle_timeout)
            .with_header_timeout(settings.header_timeout)
            .with_max_connections(settings.max_connections)
            .with_address_cap(AddressCap::new(settings.max_per_address, settings.exempt.iter().copied())))
    }

    /// Connections one client address may hold (`None`: no cap per address).
    pub fn max_per_address(&self) -> Option<usize> {
        self.addresses.as_ref().map(|cap| cap.max())
    }

    /// The address bound (useful with port 0).
    pub fn local_socket_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.local_addr().first().and_then(|addr| addr.as_socket_addr().copied())
    }

    pub fn new(inner: TcpAcceptor) -> Self {
        Self {
            inner,
            idle_timeout: None,
            header_timeout: None,
            connections: None,
            addresses: None,
            refusals: Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT)),
            refusals_logged: OncePerSecond::new(),
        }
    }

    /// Closes connections idle for `timeout` (nothing read or written). poem's own idle
    /// timeout only asks the connection to finish gracefully, which a client stalled in the
    /// middle of its request headers never does: it would be held for ever, and delay
    /// shutdown. Here the connection's next read fails instead, and it is dropped.
    #[must_use]
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Closes a connection whose request headers (a WebSocket upgrade's included) are not all
    /// in within `timeout` of their first byte (of the accept, for the first request).
    #[must_use]
    pub fn with_header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = Some(timeout);
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

    /// Keeps at most as many connections from one client address open as `cap` allows; one
    /// more is answered `429 too_many_connections_from_address` and closed.
    #[must_use]
    pub fn with_address_cap(mut self, cap: AddressCap) -> Self {
        self.addresses = Some(Arc::new(cap));
        self
    }

    /// Answers a connection over a cap, off the accept loop.
    fn refuse(&mut self, stream: TcpStream, refusal: Refusal) {
        if self.refusals_logged.due() {
            match refusal {
                Refusal::Full => {
                    tracing::warn!("refusing a connection: too many are open (RINGLINE_MAX_CONNECTIONS)");
                }
                Refusal::AddressFull => tracing::warn!(
                    "refusing a connection: too many are open from its address (RINGLINE_MAX_CONNECTIONS_PER_ADDRESS)"
                ),
            }
        }
        let Ok(permit) = Arc::clone(&self.refusals).try_acquire_owned() else { return };
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(REFUSAL_TIMEOUT, answer_refused(stream, refusal)).await;
        });
    }

    /// The places an accepted connection from `remote` takes, or why it gets none.
    fn admit(&self, remote: &RemoteAddr) -> Result<Places, Refusal> {
        let address = match &self.addresses {
            None => None,
            Some(cap) => match remote.as_socket_addr() {
                Some(peer) => cap.take(peer.ip()).map_err(|()| Refusal::AddressFull)?,
                None => None,
            },
        };
        let connection = match &self.connections {
            None => None,
            Some(connections) => Some(Arc::clone(connections).try_acquire_owned().map_err(|_| Refusal::Full)?),
        };
        Ok(Places { _connection: connection, _address: address })
    }
}

/// Reads the request's head, writes the refusal, then reads on until the client closes. An
/// answer before the request confuses HTTP clients (hyper's reports an unexpected message),
/// and closing with the request unread would reset the connection, losing the answer.
async fn answer_refused(mut stream: TcpStream, refusal: Refusal) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < MAX_REFUSED_HEAD {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..read]);
    }
    stream.write_all(refusal.response().as_bytes()).await?;
    stream.shutdown().await?;
    while stream.read(&mut chunk).await? > 0 {}
    Ok(())
}

/// How much of a refused connection's request is read before answering it.
const MAX_REFUSED_HEAD: usize = 16 * 1024;

impl Acceptor for ConnectionAcceptor {
    type Io = BoundedConnection;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> std::io::Result<(BoundedConnection, LocalAddr, RemoteAddr, Scheme)> {
        loop {
            let (stream, local, remote, scheme) = self.inner.accept().await?;
            let places = match self.admit(&remote) {
                Ok(places) => places,
                Err(refusal) => {
                    self.refuse(stream, refusal);
                    continue;
                }
            };
            // A socket that refuses the option still works, only slower: keep it.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::warn!(%error, "cannot turn TCP_NODELAY on for a connection");
            }
            let connection = BoundedConnection::new(stream, self.idle_timeout, self.header_timeout, places);
            return Ok((connection, local, remote, scheme));
        }
    }
}

/// The places a connection holds under the caps while it lives (its lingering close included).
#[derive(Debug)]
struct Places {
    _connection: Option<OwnedSemaphorePermit>,
    _address: Option<AddressPlace>,
}

/// An accepted connection whose reads fail once it has been idle for its idle timeout, or once
/// a request's headers took longer than their deadline. Holds its places under the caps.
pub struct BoundedConnection {
    /// `None` only once dropped.
    stream: Option<TcpStream>,
    /// Armed for the earlier of the two deadlines, or later: when it fires, the deadlines are
    /// looked at again (activity only records when it happened, which is cheaper than moving a
    /// timer on every relayed frame).
    timer: Option<Pin<Box<Sleep>>>,
    idle_timeout: Option<Duration>,
    last_active: Instant,
    phase: Phase,
    places: Option<Places>,
}

impl std::fmt::Debug for BoundedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedConnection").field("phase", &self.phase).finish_non_exhaustive()
    }
}

impl BoundedConnection {
    fn new(
        stream: TcpStream,
        idle_timeout: Option<Duration>,
        header_timeout: Option<Duration>,
        places: Places,
    ) -> Self {
        let now = Instant::now();
        let phase = Phase::new(header_timeout, now);
        let mut connection =
            Self { stream: Some(stream), timer: None, idle_timeout, last_active: now, phase, places: Some(places) };
        connection.timer = connection.deadline().map(|deadline| Box::pin(tokio::time::sleep_until(deadline)));
        connection
    }

    fn stream(&mut self) -> &mut TcpStream {
        // Taken only in `drop`.
        #[allow(clippy::unwrap_used)]
        self.stream.as_mut().unwrap()
    }

    /// When the connection is closed if nothing happens meanwhile.
    fn deadline(&self) -> Option<Instant> {
        let idle = self.idle_timeout.map(|timeout| self.last_active + timeout);
        match (idle, self.phase.header_deadline()) {
            (Some(idle), Some(headers)) => Some(idle.min(headers)),
            (idle, headers) => idle.or(headers),
        }
    }

    /// Whether a deadline has passed; otherwise the timer is armed for the next one.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let Some(timer) = &mut self.timer else { return false };
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            match self.deadline() {
                Some(deadline) if deadline <= Instant::now() => return true,
                Some(deadline) => {
                    if let Some(timer) = &mut self.timer {
                        timer.as_mut().reset(deadline);
                    }
                }
                // No idle timeout, and the headers are in: nothing to wait for.
                None => {
                    self.timer = None;
                    return false;
                }
            }
        }
    }

    /// A header deadline that just began must not wait for a timer armed for the idle one (or
    /// for none, without an idle timeout).
    fn arm_for_headers(&mut self) {
        let Some(headers) = self.phase.header_deadline() else { return };
        match &mut self.timer {
            Some(timer) if headers < timer.deadline() => timer.as_mut().reset(headers),
            Some(_) => {}
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(headers))),
        }
    }
}

impl AsyncRead for BoundedConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(self.stream()).poll_read(cx, buf) {
            Poll::Ready(result) => {
                let now = Instant::now();
                self.last_active = now;
                if self.phase.read(&buf.filled()[before..], now) {
                    self.arm_for_headers();
                }
                Poll::Ready(result)
            }
            Poll::Pending if self.expired(cx) => {
                Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connection deadline passed")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for BoundedConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(self.stream()).poll_write(cx, buf);
        if let Poll::Ready(Ok(count)) = written {
            self.last_active = Instant::now();
            self.phase.wrote(&buf[..count]);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.stream()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.stream()).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(self.stream()).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut count)) = written {
            self.last_active = Instant::now();
            for buf in bufs {
                let taken = count.min(buf.len());
                self.phase.wrote(&buf[..taken]);
                count -= taken;
                if count == 0 {
                    break;
                }
            }
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(TcpStream::is_write_vectored)
    }
}

impl Drop for BoundedConnection {
    fn drop(&mut self) {
        let (Some(stream), Ok(runtime)) = (self.stream.take(), tokio::runtime::Handle::try_current()) else { return };
        // Closed by the peer already, or broken: closing now resets nothing. Otherwise bytes
        // are unread, or may still come, and each would be answered with a reset.
        let mut probe = [0u8; 1];
        match stream.try_read(&mut probe) {
            Ok(0) => return,
            Err(error) if error.kind() != std::io::ErrorKind::WouldBlock => return,
            _ => {}
        }
        let places = self.places.take();
        runtime.spawn(async move {
            let _places = places;
            let _ = tokio::time::timeout(LINGER, linger(stream)).await;
        });
    }
}

/// Sends FIN after what was written, then reads and discards until the peer closes.
async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {}
}

#[cfg(test)]
mod tests {
    use poem::listener::{Listener, TcpListener};

    use super::*;

    async fn acceptor() -> (ConnectionAcceptor, std::net::SocketAddr) {
        let acceptor = ConnectionAcceptor::new(TcpListener::bind("127.0.0.1:0").into_acceptor().await.expect("bind"));
        let address = acceptor.local_addr()[0].as_socket_addr().copied().expect("a socket address");
        (acceptor, address)
    }

    #[tokio::test]
    async fn accepted_connections_have_nodelay_on() {
        let (mut acceptor, address) = acceptor().await;
        let _client = TcpStream::connect(address).await.expect("connect");
        let (mut accepted, ..) = acceptor.accept().await.expect("accept");
        assert!(accepted.stream().nodelay().expect("read the option"), "TCP_NODELAY is on");
    }

    /// A client and the server's side of its connection, whose headers are due within
    /// `header_timeout` (the idle timeout is a minute).
    async fn connected(header_timeout: Duration) -> (TcpStream, BoundedConnection) {
        let (acceptor, address) = acceptor().await;
        let mut acceptor = acceptor.with_idle_timeout(Duration::from_secs(60)).with_header_timeout(header_timeout);
        let client = TcpStream::connect(address).await.expect("connect");
        let (accepted, ..) = acceptor.accept().await.expect("accept");
        (client, accepted)
    }

    #[tokio::test]
    async fn headers_trickled_past_their_deadline_fail_the_read_though_each_byte_was_in_time() {
        let (mut client, mut accepted) = connected(Duration::from_millis(600)).await;
        let trickle = tokio::spawn(async move {
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\n" {
                if client.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            client
        });
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let failed = loop {
            match accepted.read(&mut buf).await {
                Ok(0) => panic!("the client did not close"),
                Ok(_) => {}
                Err(error) => break error,
            }
        };
        assert_eq!(failed.kind(), std::io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(550) && took < Duration::from_millis(1500), "{took:?}");
        drop(trickle);
    }

    #[tokio::test]
    async fn a_websocket_after_its_upgrade_is_not_held_to_the_header_deadline() {
        let (mut client, mut accepted) = connected(Duration::from_millis(300)).await;
        client.write_all(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 256];
        let _ = accepted.read(&mut buf).await.expect("the head");
        accepted.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").await.expect("upgrade");
        // Frames trickle in for well past the header deadline.
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(b"x").await.expect("write");
            assert_eq!(accepted.read(&mut buf).await.expect("still open"), 1);
        }
    }

    #[tokio::test]
    async fn without_an_idle_timeout_only_the_headers_have_a_deadline() {
        let (acceptor, address) = acceptor().await;
        let mut acceptor = acceptor.with_header_timeout(Duration::from_millis(200));
        let mut client = TcpStream::connect(address).await.expect("connect");
        let (mut accepted, ..) = acceptor.accept().await.expect("accept");
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 64];
        let _ = accepted.read(&mut buf).await.expect("the head");
        accepted.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.expect("answer");
        tokio::time::sleep(Duration::from_millis(400)).await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        assert!(accepted.read(&mut buf).await.expect("still open") > 0, "quiet between requests is fine");
        accepted.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.expect("answer");
        client.write_all(b"G").await.expect("write");
        assert_eq!(accepted.read(&mut buf).await.expect("the next head begins"), 1);
        let failed = accepted.read(&mut buf).await.expect_err("and has its deadline");
        assert_eq!(failed.kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_keep_alive_connections_next_request_gets_its_own_header_deadline() {
        let (mut client, mut accepted) = connected(Duration::from_millis(400)).await;
        client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 256];
        let _ = accepted.read(&mut buf).await.expect("the first head");
        accepted.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.expect("answer");
        // Quiet for longer than the header deadline: keep-alive waits are the idle timeout's.
        tokio::time::sleep(Duration::from_millis(600)).await;
        client.write_all(b"G").await.expect("write");
        assert_eq!(accepted.read(&mut buf).await.expect("still open"), 1);
        let started = Instant::now();
        let failed = accepted.read(&mut buf).await.expect_err("the second head never ends");
        assert_eq!(failed.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
    }
}
