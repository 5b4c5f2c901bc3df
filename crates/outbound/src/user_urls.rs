//! The rules for every URL a user (not the operator) can make the server fetch: today the
//! endpoints of Web Push subscriptions.
//!
//! Such a URL is an attack on the network behind the server (server-side request forgery):
//! `http://127.0.0.1:6379/`, the cloud's metadata service at `169.254.169.254`, an admin panel
//! on `10.0.0.1`, or a name that resolves to one of them. So a user's URL must:
//! - be `https://`, with no credentials in it;
//! - name a host on the allowed list ([`AllowedHosts`]: by default the browsers' push
//!   services);
//! - lead only to public addresses: neither written as, nor resolving to, a loopback, private,
//!   link-local, unique-local, carrier-grade NAT, multicast, reserved, documentation or
//!   unspecified address, in any of their IPv4, IPv6, IPv4-mapped, NAT64 or 6to4 spellings.
//!
//! The resolved addresses are checked when the request is sent, by the HTTP client's own
//! resolver ([`UserUrlRules::resolver`]): the client connects only to the addresses that
//! passed, so a name that resolves to a public address when checked and to `127.0.0.1` a
//! moment later (DNS rebinding) gains nothing. Redirects are never followed and proxies from
//! the environment are not used ([`UserUrlRules::client`]).
//!
//! Tests run push-service stand-ins on loopback: `RINGLINE_WEB_PUSH_ALLOW_LOOPBACK=true` lets
//! loopback addresses (and plain `http://` to them, on any port) through. The server refuses to
//! start with it in production.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use ringline_domain::UserUrlPolicy;

/// Why a user's URL is refused, for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    #[error("must be an https:// URL")]
    NotHttps,
    #[error("must not carry a user name or password")]
    Credentials,
    #[error("must name a push service's host")]
    HostNotAllowed,
    #[error("must not lead to a loopback, private, link-local or otherwise non-public address")]
    NotPublic,
}

/// Hosts a user's URL may name: each entry matches itself and its subdomains; `*` matches any
/// host (the address rules still apply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    /// The push services of the browsers in use: Chrome, Edge and most others (Firebase Cloud
    /// Messaging), Firefox (Mozilla's autopush), Safari (Apple) and Edge on Windows (WNS).
    pub const BROWSER_PUSH_SERVICES: [&'static str; 4] =
        ["fcm.googleapis.com", "push.services.mozilla.com", "push.apple.com", "notify.windows.com"];

    pub fn new(hosts: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self(hosts.into_iter().map(|host| host.into().trim().trim_matches('.').to_ascii_lowercase()).collect())
    }

    pub fn browser_push_services() -> Self {
        Self::new(Self::BROWSER_PUSH_SERVICES)
    }

    fn allows_any(&self) -> bool {
        self.0.iter().any(|allowed| allowed == "*")
    }

    fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.0.iter().any(|allowed| {
            allowed == "*"
                || host.eq_ignore_ascii_case(allowed)
                || host.len() > allowed.len()
                    && host.is_char_boundary(host.len() - allowed.len() - 1)
                    && host[host.len() - allowed.len() - 1..].eq_ignore_ascii_case(&format!(".{allowed}"))
        })
    }
}

impl Default for AllowedHosts {
    fn default() -> Self {
        Self::browser_push_services()
    }
}

/// The rules of the module documentation, as configured.
#[derive(Debug, Clone, Default)]
pub struct UserUrlRules {
    pub allowed_hosts: AllowedHosts,
    /// Loopback addresses are let through (and `http://` to them): push-service stand-ins in
    /// tests. Never in production.
    pub allow_loopback: bool,
}

impl UserUrlRules {
    /// Checks `url` as written.
    ///
    /// # Errors
    /// [`UrlRefusal`] saying which rule it breaks.
    pub fn check(&self, url: &Url) -> Result<(), UrlRefusal> {
        let loopback = self.allow_loopback && names_loopback(url);
        if !(url.scheme() == "https" || loopback && url.scheme() == "http") {
            return Err(UrlRefusal::NotHttps);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlRefusal::Credentials);
        }
        if loopback {
            return Ok(());
        }
        match url.host() {
            Some(url::Host::Ipv4(v4)) if !is_public(IpAddr::V4(v4)) => Err(UrlRefusal::NotPublic),
            Some(url::Host::Ipv6(v6)) if !is_public(IpAddr::V6(v6)) => Err(UrlRefusal::NotPublic),
            Some(url::Host::Domain(name)) if is_local_name(name) => Err(UrlRefusal::NotPublic),
            Some(url::Host::Domain(name)) if !self.allowed_hosts.allows(name) => Err(UrlRefusal::HostNotAllowed),
            Some(url::Host::Domain(_)) => Ok(()),
            // An address written as one is no push service's.
            Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) if !self.allowed_hosts.allows_any() => {
                Err(UrlRefusal::HostNotAllowed)
            }
            Some(_) => Ok(()),
            None => Err(UrlRefusal::NotHttps),
        }
    }

    /// Whether the server may connect to `address` for a user's URL.
    pub fn may_connect(&self, address: IpAddr) -> bool {
        is_public(address) || self.allow_loopback && address.to_canonical().is_loopback()
    }

    /// A resolver that hands the HTTP client only the addresses [`UserUrlRules::may_connect`]
    /// allows, and fails a name that resolves to none of them.
    pub fn resolver(&self) -> Arc<PublicResolver> {
        Arc::new(PublicResolver { rules: self.clone() })
    }

    /// An HTTP client for users' URLs: the checking resolver, no redirects, no proxy from the
    /// environment (it would be resolved instead of the URL's host), and `timeout` for each
    /// request.
    ///
    /// # Errors
    /// When the client cannot be built.
    pub fn client(&self, timeout: Duration) -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .dns_resolver(self.resolver())
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("Ringline/", env!("CARGO_PKG_VERSION")))
            .build()
    }
}

/// The check when a user gives a URL (the api crate asks it through the domain's port).
impl UserUrlPolicy for UserUrlRules {
    fn check(&self, url: &str) -> Result<(), String> {
        let url = Url::parse(url).map_err(|_| "must be an absolute URL".to_owned())?;
        UserUrlRules::check(self, &url).map_err(|refusal| refusal.to_string())
    }
}

/// `localhost` and its subdomains (RFC 6761), which resolve to loopback without asking DNS.
fn is_local_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Whether `url` is written with a loopback address or `localhost`.
fn names_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(v4)) => v4.is_loopback(),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6).to_canonical().is_loopback(),
        Some(url::Host::Domain(name)) => is_local_name(name),
        None => false,
    }
}

/// Resolves a user's URL's host, keeping only the addresses the rules allow.
#[derive(Debug)]
pub struct PublicResolver {
    rules: UserUrlRules,
}

/// A name led only to addresses the server may not connect to.
#[derive(Debug, thiserror::Error)]
#[error("the host resolves to no public address")]
pub struct NoPublicAddress;

impl Resolve for PublicResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let rules = self.rules.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = resolved.filter(|address| rules.may_connect(address.ip())).collect();
            if allowed.is_empty() {
                return Err(Box::new(NoPublicAddress) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Whether `address` is a public unicast address: reachable on the internet, and none of the
/// server's own network.
pub fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(address: Ipv4Addr) -> bool {
    let [a, b, c, _] = address.octets();
    !(a == 0                                  // "this network", 0.0.0.0
        || a == 10                            // private
        || a == 127                           // loopback
        || a == 100 && (64..128).contains(&b) // carrier-grade NAT
        || a == 169 && b == 254               // link-local, cloud metadata
        || a == 172 && (16..32).contains(&b)  // private
        || a == 192 && b == 0 && c == 0       // IETF protocol assignments
        || a == 192 && b == 0 && c == 2       // documentation
        || a == 192 && b == 88 && c == 99     // 6to4 relays
        || a == 192 && b == 168               // private
        || a == 198 && (18..20).contains(&b)  // benchmarking
        || a == 198 && b == 51 && c == 100    // documentation
        || a == 203 && b == 0 && c == 113     // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(address: Ipv6Addr) -> bool {
    if let Some(v4) = address.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = address.segments();
    let embedded_v4 = |high: u16, low: u16| {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    match segments {
        // NAT64 (RFC 6052): the IPv4 address it translates to decides.
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => is_public_v4(embedded_v4(high, low)),
        // 6to4: likewise.
        [0x2002, high, low, ..] => is_public_v4(embedded_v4(high, low)),
        // Teredo, ORCHID, benchmarking, documentation: no host of the internet.
        [0x2001, 0, ..] | [0x2001, 0x10..=0x2f, ..] | [0x2001, 2, 0, ..] | [0x2001, 0xdb8, ..] => false,
        // Only global unicast (2000::/3) is left; that also rules out ::, ::1, the deprecated
        // IPv4-compatible form, unique-local fc00::/7, link-local fe80::/10, multicast ff00::/8
        // and the local-use NAT64 prefix 64:ff9b:1::/48.
        [first, ..] => first & 0xe000 == 0x2000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).expect("a URL")
    }

    #[test]
    fn internal_addresses_in_every_spelling_are_not_public() {
        for address in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "2001:db8::1",
            "2001::1",
        ] {
            assert!(!is_public(address.parse().expect("an address")), "{address} is not public");
        }
        for address in [
            "8.8.8.8",
            "142.250.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2a00:1450:4001::1",
            "2002:808:808::1",
            "64:ff9b::808:808",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(address.parse().expect("an address")), "{address} is public");
        }
    }

    #[test]
    fn a_users_url_must_be_https_to_an_allowed_host() {
        let rules = UserUrlRules::default();
        assert_eq!(rules.check(&url("https://fcm.googleapis.com/fcm/send/abc")), Ok(()));
        assert_eq!(rules.check(&url("https://updates.push.services.mozilla.com/wpush/v2/x")), Ok(()));
        assert_eq!(rules.check(&url("https://web.push.apple.com/QGx")), Ok(()));
        assert_eq!(rules.check(&url("https://wns2-par02p.notify.windows.com/w/?token=x")), Ok(()));
        for (bad, why) in [
            ("http://fcm.googleapis.com/fcm/send/abc", UrlRefusal::NotHttps),
            ("ftp://fcm.googleapis.com/x", UrlRefusal::NotHttps),
            ("https://user:pw@fcm.googleapis.com/x", UrlRefusal::Credentials),
            ("https://evilfcm.googleapis.com.attacker.example/x", UrlRefusal::HostNotAllowed),
            ("https://notfcm.googleapis.com.evil/x", UrlRefusal::HostNotAllowed),
            ("https://xfcm.googleapis.com/x", UrlRefusal::HostNotAllowed),
            ("https://metadata.google.internal/", UrlRefusal::HostNotAllowed),
            ("https://localhost/x", UrlRefusal::NotPublic),
            ("https://push.localhost/x", UrlRefusal::NotPublic),
            ("https://127.0.0.1/x", UrlRefusal::NotPublic),
            ("https://2130706433/x", UrlRefusal::NotPublic),
            ("https://0x7f.1/x", UrlRefusal::NotPublic),
            ("https://[::1]/x", UrlRefusal::NotPublic),
            ("https://[::ffff:7f00:1]/x", UrlRefusal::NotPublic),
            ("https://169.254.169.254/latest/meta-data/", UrlRefusal::NotPublic),
            ("https://10.0.0.1/x", UrlRefusal::NotPublic),
            ("https://[fd00::1]/x", UrlRefusal::NotPublic),
            ("https://8.8.8.8/x", UrlRefusal::HostNotAllowed),
            ("http://127.0.0.1:6379/", UrlRefusal::NotHttps),
        ] {
            assert_eq!(rules.check(&url(bad)), Err(why), "{bad}");
        }
    }

    #[test]
    fn any_host_may_be_allowed_but_never_an_internal_address() {
        let rules = UserUrlRules { allowed_hosts: AllowedHosts::new(["*"]), allow_loopback: false };
        assert_eq!(rules.check(&url("https://push.example.org/x")), Ok(()));
        assert_eq!(rules.check(&url("https://8.8.8.8/x")), Ok(()));
        assert_eq!(rules.check(&url("https://192.168.0.1/x")), Err(UrlRefusal::NotPublic));
        assert_eq!(rules.check(&url("https://localhost/x")), Err(UrlRefusal::NotPublic));
    }

    #[test]
    fn loopback_is_let_through_only_when_allowed() {
        let rules = UserUrlRules { allow_loopback: true, ..UserUrlRules::default() };
        assert_eq!(rules.check(&url("http://127.0.0.1:40000/push/x")), Ok(()));
        assert_eq!(rules.check(&url("http://localhost:40000/push/x")), Ok(()));
        assert_eq!(rules.check(&url("http://[::1]:40000/push/x")), Ok(()));
        assert_eq!(rules.check(&url("http://10.0.0.1/x")), Err(UrlRefusal::NotHttps), "only loopback");
        assert!(rules.may_connect("127.0.0.1".parse().expect("ip")));
        assert!(!rules.may_connect("192.168.0.1".parse().expect("ip")));
        assert!(!UserUrlRules::default().may_connect("127.0.0.1".parse().expect("ip")));
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_leads_nowhere() {
        let resolver = UserUrlRules::default().resolver();
        let name: Name = "localhost".parse().expect("a name");
        let error = resolver.resolve(name).await.err().expect("no address allowed");
        assert!(error.to_string().contains("no public address"), "{error}");
        let allowing = UserUrlRules { allow_loopback: true, ..UserUrlRules::default() }.resolver();
        let addresses: Vec<SocketAddr> =
            allowing.resolve("localhost".parse().expect("a name")).await.expect("resolved").collect();
        assert!(!addresses.is_empty() && addresses.iter().all(|address| address.ip().is_loopback()));
    }
}
