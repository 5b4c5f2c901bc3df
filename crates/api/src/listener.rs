//! The TCP listener's per-connection settings.
//!
//! Signaling is many small frames (an ICE candidate is ~200 bytes): with Nagle's algorithm on,
//! each waits for the previous one's ACK, which the peer delays by up to 40 ms. Measured from
//! outside, turning `TCP_NODELAY` on lifted the relay from 6,000 to over 128,000 frames a
//! second (`docs/benchmarks.md`). poem's `TcpAcceptor` has no such option, hence this wrapper.

use poem::http::uri::Scheme;
use poem::listener::{Acceptor, TcpAcceptor};
use poem::web::{LocalAddr, RemoteAddr};
use tokio::net::TcpStream;

/// A [`TcpAcceptor`] that turns `TCP_NODELAY` on for every accepted connection.
pub struct NoDelayAcceptor(TcpAcceptor);

impl std::fmt::Debug for NoDelayAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NoDelayAcceptor").field(&self.0.local_addr()).finish()
    }
}

impl NoDelayAcceptor {
    pub fn new(inner: TcpAcceptor) -> Self {
        Self(inner)
    }
}

impl Acceptor for NoDelayAcceptor {
    type Io = TcpStream;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.0.local_addr()
    }

    async fn accept(&mut self) -> std::io::Result<(TcpStream, LocalAddr, RemoteAddr, Scheme)> {
        let (stream, local, remote, scheme) = self.0.accept().await?;
        // A socket that refuses the option still works, only slower: keep it.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "cannot turn TCP_NODELAY on for a connection");
        }
        Ok((stream, local, remote, scheme))
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
        assert!(accepted.nodelay().expect("read the option"), "TCP_NODELAY is on");
    }
}
