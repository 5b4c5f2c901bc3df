//! Requests that come through a proxy: whose forwarding headers are believed, and the cap on
//! what one client behind a trusted proxy may hold.
//!
//! A trusted proxy (`RINGLINE_TRUSTED_PROXIES`) connects on behalf of many clients, so the
//! listener does not count its connections per address; instead each request it forwards takes
//! a place for the client it names (`X-Forwarded-For`, or `Forwarded: for=`) for as long as the
//! request runs, and a WebSocket for as long as its session lives. Anyone else's forwarding
//! headers are removed before routing: links built from `X-Forwarded-Host` would otherwise
//! point wherever a client says, and a client could name itself anyone.

use std::net::IpAddr;
use std::sync::Arc;

use poem::{IntoResponse, Request, Response};

use crate::listener::{AddressCap, AddressPlace};

const FORWARDING_HEADERS: [&str; 4] = ["x-forwarded-host", "x-forwarded-proto", "x-forwarded-for", "forwarded"];

/// Trusted proxies, and the cap per client behind them.
#[derive(Debug, Clone)]
pub(crate) struct Forwarding {
    trusted_proxies: Arc<[IpAddr]>,
    clients: Arc<AddressCap>,
}

/// A place a forwarded client holds while its request runs; a WebSocket upgrade keeps it for
/// the session's life.
#[derive(Debug, Clone)]
pub(crate) struct ClientPlace(#[allow(dead_code)] Arc<AddressPlace>);

impl Forwarding {
    /// Believes `trusted_proxies`, and lets each client behind them hold `max_per_client`
    /// requests and WebSockets at once.
    pub(crate) fn new(trusted_proxies: Vec<IpAddr>, max_per_client: usize) -> Self {
        let trusted_proxies: Arc<[IpAddr]> =
            trusted_proxies.into_iter().map(|address| address.to_canonical()).collect();
        Self { clients: Arc::new(AddressCap::new(max_per_client, trusted_proxies.iter().copied())), trusted_proxies }
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.trusted_proxies.contains(&address.to_canonical())
    }

    /// Removes an untrusted peer's forwarding headers; for a trusted proxy's request, takes a
    /// place for the client it names (into the request's extensions), or refuses it.
    ///
    /// # Errors
    /// [`ClientOverCap`] when that client holds its cap.
    pub(crate) fn admit(&self, req: &mut Request) -> Result<(), ClientOverCap> {
        let peer = req.remote_addr().as_socket_addr().map(std::net::SocketAddr::ip);
        self.admit_from(peer, req)
    }

    /// [`Forwarding::admit`] of a request from `peer`.
    fn admit_from(&self, peer: Option<IpAddr>, req: &mut Request) -> Result<(), ClientOverCap> {
        if !peer.is_some_and(|peer| self.trusts(peer)) {
            for name in FORWARDING_HEADERS {
                req.headers_mut().remove(name);
            }
            return Ok(());
        }
        let Some(client) = self.forwarded_client(req) else { return Ok(()) };
        match self.clients.take(client) {
            Ok(Some(place)) => {
                req.extensions_mut().insert(ClientPlace(Arc::new(place)));
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(()) => Err(ClientOverCap),
        }
    }

    /// The client a trusted proxy forwards for: the last address in the forwarding chain that
    /// is not one of the trusted proxies (earlier ones are whatever the client wrote).
    fn forwarded_client(&self, req: &Request) -> Option<IpAddr> {
        let headers = req.headers();
        let chain: Vec<IpAddr> = if let Some(value) = headers.get("x-forwarded-for") {
            value.to_str().ok()?.split(',').filter_map(parse_node).collect()
        } else {
            let value = headers.get("forwarded")?.to_str().ok()?;
            value
                .split(',')
                .filter_map(|element| {
                    element.split(';').find_map(|pair| {
                        let (name, node) = pair.trim().split_once('=')?;
                        name.eq_ignore_ascii_case("for").then(|| parse_node(node)).flatten()
                    })
                })
                .collect()
        };
        chain.into_iter().rev().find(|address| !self.trusts(*address))
    }
}

/// An address as proxies write it: `192.0.2.7`, `192.0.2.7:4711`, `[2001:db8::1]:4711`,
/// `"[2001:db8::1]"`, `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Ok(address) = node.parse() {
        return Some(address);
    }
    if let Ok(socket) = node.parse::<std::net::SocketAddr>() {
        return Some(socket.ip());
    }
    node.strip_prefix('[')?.split_once(']')?.0.parse().ok()
}

/// A client behind a trusted proxy holds its cap: answered `429
/// too_many_connections_from_address`, as the listener answers a direct client.
#[derive(Debug)]
pub(crate) struct ClientOverCap;

impl IntoResponse for ClientOverCap {
    fn into_response(self) -> Response {
        crate::error::refusal_response(&ringline_domain::Refusal::new(
            ringline_domain::ErrorCode::TooManyConnectionsFromAddress,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder();
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.finish()
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().expect("an address"))
    }

    #[test]
    fn the_client_is_the_last_untrusted_address_of_the_chain() {
        let forwarding = Forwarding::new(vec!["10.0.0.5".parse().expect("ip"), "10.0.0.6".parse().expect("ip")], 2);
        for (headers, client) in [
            (vec![("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.6")], "198.51.100.7"),
            (vec![("x-forwarded-for", "198.51.100.7:4711")], "198.51.100.7"),
            (vec![("forwarded", "for=6.6.6.6, for=\"[2001:db8::1]:4711\";proto=https")], "2001:db8::1"),
        ] {
            let req = request(&headers);
            assert_eq!(forwarding.forwarded_client(&req), Some(client.parse().expect("ip")), "{headers:?}");
        }
    }

    #[test]
    fn a_client_behind_a_trusted_proxy_holds_its_cap_and_anyone_elses_headers_are_removed() {
        let forwarding = Forwarding::new(vec!["10.0.0.5".parse().expect("ip")], 2);
        let proxy = ip("10.0.0.5");
        let via_proxy = |client: &str| request(&[("x-forwarded-for", client)]);
        let mut first = via_proxy("198.51.100.7");
        let mut second = via_proxy("198.51.100.7");
        assert!(forwarding.admit_from(proxy, &mut first).is_ok() && forwarding.admit_from(proxy, &mut second).is_ok());
        let refused = forwarding.admit_from(proxy, &mut via_proxy("198.51.100.7")).expect_err("the third is refused");
        assert_eq!(refused.into_response().status(), poem::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(forwarding.admit_from(proxy, &mut via_proxy("198.51.100.8")).is_ok(), "another client is not");
        drop(first);
        assert!(
            forwarding.admit_from(proxy, &mut via_proxy("198.51.100.7")).is_ok(),
            "a finished request frees its place"
        );

        let mut spoofed = request(&[("x-forwarded-for", "198.51.100.7")]);
        for _ in 0..5 {
            let outsider = ip("203.0.113.9");
            assert!(
                forwarding.admit_from(outsider, &mut spoofed).is_ok(),
                "not a proxy: not counted by what it claims"
            );
        }
        assert!(spoofed.headers().get("x-forwarded-for").is_none(), "its forwarding headers are gone");
    }
}
