//! How many connections each client address holds, against a cap per address.
//!
//! An IPv4 address counts as itself; an IPv6 address as its /64, which is what one host (or
//! one home network) is given, so that an attacker cannot step past the cap by using the
//! addresses of its own prefix. Addresses listed as exempt (the server's own machine, by
//! default, and the trusted proxies, whose clients are counted by their forwarded address)
//! count against the overall cap only.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, PoisonError};

/// What one client is counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Client {
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6Prefix(u64),
}

impl Client {
    fn of(address: IpAddr) -> Self {
        match address.to_canonical() {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => Self::V6Prefix((v6.to_bits() >> 64) as u64),
        }
    }
}

/// A cap on the connections one client address may hold at once.
#[derive(Debug)]
pub struct AddressCap {
    max: usize,
    exempt: Vec<IpAddr>,
    open: Mutex<HashMap<Client, usize>>,
}

impl AddressCap {
    /// Connections one address may hold.
    pub fn max(&self) -> usize {
        self.max
    }

    /// At most `max` connections per address, none counted for the `exempt` addresses.
    pub fn new(max: usize, exempt: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            max: max.max(1),
            exempt: exempt.into_iter().map(|address| address.to_canonical()).collect(),
            open: Mutex::default(),
        }
    }

    /// A place for one more connection from `address`: `Ok(None)` for an exempt address,
    /// `Err(())` when the address holds its cap already.
    #[allow(clippy::result_unit_err)]
    pub fn take(self: &Arc<Self>, address: IpAddr) -> Result<Option<AddressPlace>, ()> {
        if self.exempt.contains(&address.to_canonical()) {
            return Ok(None);
        }
        let client = Client::of(address);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(client).or_insert(0);
        if *count >= self.max {
            return Err(());
        }
        *count += 1;
        Ok(Some(AddressPlace { cap: Arc::clone(self), client }))
    }

    /// Connections open from `address`.
    #[cfg(test)]
    fn open_from(&self, address: IpAddr) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).get(&Client::of(address)).copied().unwrap_or(0)
    }
}

/// One connection's place under an [`AddressCap`], given back when dropped.
#[derive(Debug)]
pub struct AddressPlace {
    cap: Arc<AddressCap>,
    client: Client,
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut open = self.cap.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn an_address_holds_its_cap_and_gets_a_place_back_when_one_closes() {
        let cap = Arc::new(AddressCap::new(2, []));
        let first = cap.take(ip("192.0.2.1")).expect("room");
        let _second = cap.take(ip("192.0.2.1")).expect("room");
        assert!(cap.take(ip("192.0.2.1")).is_err(), "the third is refused");
        assert!(cap.take(ip("192.0.2.2")).is_ok_and(|place| place.is_some()), "another address is not");
        drop(first);
        assert!(cap.take(ip("192.0.2.1")).is_ok(), "a closed connection frees its place");
        assert_eq!(cap.open_from(ip("192.0.2.2")), 0, "an address with none open is forgotten");
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_prefix_and_a_mapped_ipv4_as_itself() {
        let cap = Arc::new(AddressCap::new(1, []));
        let _held = cap.take(ip("2001:db8:1:2::1")).expect("room");
        assert!(cap.take(ip("2001:db8:1:2:ffff::9")).is_err(), "the same /64");
        assert!(cap.take(ip("2001:db8:1:3::1")).is_ok(), "another /64");
        let _v4 = cap.take(ip("198.51.100.7")).expect("room");
        assert!(cap.take(ip("::ffff:198.51.100.7")).is_err(), "the same host");
    }

    #[test]
    fn exempt_addresses_take_no_place() {
        let cap = Arc::new(AddressCap::new(1, [ip("127.0.0.1"), ip("::1")]));
        for _ in 0..10 {
            assert!(cap.take(ip("127.0.0.1")).expect("never refused").is_none());
        }
        assert!(cap.take(ip("::ffff:127.0.0.1")).expect("the same address").is_none());
        let _held = cap.take(ip("127.0.0.2")).expect("room");
        assert!(cap.take(ip("127.0.0.2")).is_err(), "only the listed addresses are exempt");
    }
}
