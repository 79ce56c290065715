use std::net::IpAddr;

use http::HeaderMap;

use super::forwarded::{self, Hop};
use super::ip::{self, no_peer};
use super::{IpNet, Key, KeyExtractor};
use crate::error::KeyError;

/// The most hops of a forwarded chain read before giving up on it.
const MAX_HOPS: usize = 64;

const NO_PEER: &str = no_peer!("ClientIp");

/// The client's IP address as the proxies in front of the server report it:
/// the key for a server behind a load balancer or reverse proxy, where
/// [`PeerIp`](super::PeerIp) would see only the proxy.
///
/// # Why the proxies must be named
///
/// `X-Forwarded-For` and its kin are plain request headers: any client can
/// send them, naming a new address on every request and so never being
/// limited. Only a proxy you run can be believed, and only about the hop it
/// saw. So `ClientIp` reads the header only when the connection's peer is a
/// trusted proxy, and otherwise keys by the peer itself, as `PeerIp` does:
///
/// - [`ClientIp::trusting(networks)`](ClientIp::trusting): the peer is trusted
///   when its address is in one of `networks` (your proxies' subnets).
/// - [`ClientIp::one_trusted_hop()`](ClientIp::one_trusted_hop): every peer is
///   one trusted proxy, whatever its address, such as a server reachable only
///   through one load balancer.
///
/// # Which address
///
/// Each proxy appends the address it received the request from, so the
/// chain is read from the right: addresses of trusted proxies are skipped,
/// and the first address that is not one is the client. Everything to its
/// left was written by the client or by proxies you do not run, and is never
/// read. With `one_trusted_hop` the rightmost address is the client.
///
/// The peer's own address is the key instead when the peer is not trusted,
/// when the header is missing, when every hop is a trusted proxy, or when the
/// hop where the client would be is not an address (`unknown`, an obfuscated
/// `_name`, garbage, a port in `X-Forwarded-For`, bytes that are not UTF-8).
/// No more than 64 hops are read, nor more than 1 KiB per hop, so a huge
/// header costs no more than a short one; past that the peer is the key.
///
/// # Which header
///
/// By default only `X-Forwarded-For` is read: it is what load balancers and
/// reverse proxies set. Name the header your proxy sets with
/// [`header`](ClientIp::header); when you name several, the first of them
/// present on a request is read, and the rest are ignored even if it yields
/// no address. Name only headers your proxy sets or strips: a header it
/// passes through untouched comes straight from the client, and if it is
/// read first, the client chooses its key.
///
/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) count as IPv4, both when
/// matching trusted networks and as keys. IPv6 keys are grouped by their
/// first 64 bits, as with `PeerIp` ([`ipv6_prefix`](ClientIp::ipv6_prefix)).
///
/// The peer's address comes from the same places as for `PeerIp`: axum's
/// `ConnectInfo<SocketAddr>` (feature `axum`), tonic's `TcpConnectInfo`
/// (feature `tonic`) or a `SocketAddr` request extension; without one,
/// extraction fails with a [`KeyError`] naming the fix.
///
/// ```
/// use std::net::{IpAddr, SocketAddr};
/// use tower_ratelimit::key::{ClientIp, Key, KeyExtractor};
///
/// let key = ClientIp::trusting(["10.0.0.0/8".parse().unwrap()]);
/// let request = |peer: &str, xff: &str| {
///     let mut req = http::Request::builder()
///         .header("x-forwarded-for", xff)
///         .body(())
///         .unwrap();
///     req.extensions_mut().insert(peer.parse::<SocketAddr>().unwrap());
///     req
/// };
/// let ip = |s: &str| Some(Key::from(s.parse::<IpAddr>().unwrap()));
///
/// // Through the load balancer at 10.0.0.5: the client it saw, skipping
/// // the trusted 10.0.0.9 and ignoring what the client wrote itself.
/// let via_proxy = request("10.0.0.5:4000", "198.51.100.1, 203.0.113.7, 10.0.0.9");
/// assert_eq!(key.extract(&via_proxy).unwrap(), ip("203.0.113.7"));
///
/// // Straight from the internet: the header is the client's word, ignored.
/// let spoofed = request("192.0.2.66:4000", "203.0.113.7");
/// assert_eq!(key.extract(&spoofed).unwrap(), ip("192.0.2.66"));
/// ```
///
/// On a layer:
///
/// ```
/// use tower_ratelimit::key::{ClientIp, ProxyHeader};
/// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
///
/// let layer = RateLimitLayer::builder()
///     .policy(Policy::new("per-client", Quota::per_minute(60)))
///     .key(ClientIp::trusting(["10.0.0.0/8".parse().unwrap()]).header(ProxyHeader::Forwarded))
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct ClientIp {
    trust: Trust,
    /// Empty for the default, `X-Forwarded-For` alone.
    headers: Vec<ProxyHeader>,
    ipv6_prefix: u8,
}

#[derive(Debug, Clone)]
enum Trust {
    /// Peers and hops in these networks are trusted proxies.
    Networks(Box<[IpNet]>),
    /// The peer is the one trusted proxy.
    PeerOnly,
}

/// A header in which proxies name the client, for [`ClientIp::header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProxyHeader {
    /// `Forwarded` (RFC 7239): the `for=` parameter of each element, such as
    /// `for=192.0.2.1`, `for="192.0.2.1:80"` or `for="[2001:db8::1]:4711"`.
    Forwarded,
    /// `X-Forwarded-For`: comma-separated addresses, without ports.
    XForwardedFor,
    /// `X-Real-IP`: one address, set by the proxy in front of the server.
    XRealIp,
}

impl ProxyHeader {
    const fn name(self) -> &'static str {
        match self {
            ProxyHeader::Forwarded => "forwarded",
            ProxyHeader::XForwardedFor => "x-forwarded-for",
            ProxyHeader::XRealIp => "x-real-ip",
        }
    }
}

impl ClientIp {
    /// Trusts peers, and hops of the forwarded chain, whose address is in
    /// one of `networks`: your proxies' subnets.
    ///
    /// ```
    /// use tower_ratelimit::key::ClientIp;
    ///
    /// let key = ClientIp::trusting([
    ///     "10.0.0.0/8".parse().unwrap(),
    ///     "fd00::/8".parse().unwrap(),
    /// ]);
    /// # let _ = key;
    /// ```
    #[must_use]
    pub fn trusting(networks: impl IntoIterator<Item = IpNet>) -> Self {
        Self::with(Trust::Networks(networks.into_iter().collect()))
    }

    /// Trusts the peer, whatever its address, as the one proxy in front of
    /// the server, and takes the rightmost address of the chain as the
    /// client. Use it only where clients cannot reach the server but through
    /// that proxy.
    ///
    /// ```
    /// use std::net::{IpAddr, SocketAddr};
    /// use tower_ratelimit::key::{ClientIp, Key, KeyExtractor};
    ///
    /// let mut req = http::Request::builder()
    ///     .header("x-forwarded-for", "198.51.100.1, 203.0.113.7")
    ///     .body(())
    ///     .unwrap();
    /// req.extensions_mut().insert("172.31.4.4:4000".parse::<SocketAddr>().unwrap());
    /// let key = ClientIp::one_trusted_hop().extract(&req).unwrap();
    /// assert_eq!(key, Some(Key::from("203.0.113.7".parse::<IpAddr>().unwrap())));
    /// ```
    #[must_use]
    pub fn one_trusted_hop() -> Self {
        Self::with(Trust::PeerOnly)
    }

    fn with(trust: Trust) -> Self {
        Self {
            trust,
            headers: Vec::new(),
            ipv6_prefix: 64,
        }
    }

    /// Reads `header` instead of `X-Forwarded-For`. Called again, adds a
    /// header of lower precedence: of the headers named, the first present
    /// on a request is the one read.
    ///
    /// ```
    /// use std::net::{IpAddr, SocketAddr};
    /// use tower_ratelimit::key::{ClientIp, Key, KeyExtractor, ProxyHeader};
    ///
    /// let key = ClientIp::trusting(["10.0.0.0/8".parse().unwrap()])
    ///     .header(ProxyHeader::Forwarded)
    ///     .header(ProxyHeader::XRealIp);
    /// let mut req = http::Request::builder()
    ///     .header("forwarded", r#"for="[2001:db8::7]:4711";proto=https"#)
    ///     .header("x-real-ip", "203.0.113.7")
    ///     .body(())
    ///     .unwrap();
    /// req.extensions_mut().insert("10.0.0.5:4000".parse::<SocketAddr>().unwrap());
    /// // `Forwarded` comes first; the IPv6 client is grouped by its /64.
    /// let client: IpAddr = "2001:db8::".parse().unwrap();
    /// assert_eq!(key.extract(&req).unwrap(), Some(Key::from(client)));
    /// ```
    #[must_use]
    pub fn header(mut self, header: ProxyHeader) -> Self {
        if !self.headers.contains(&header) {
            self.headers.push(header);
        }
        self
    }

    /// Groups IPv6 addresses by their first `bits` bits (at most 128;
    /// default 64).
    ///
    /// ```
    /// use tower_ratelimit::key::ClientIp;
    ///
    /// let each_address = ClientIp::one_trusted_hop().ipv6_prefix(128);
    /// # let _ = each_address;
    /// ```
    #[must_use]
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits.min(128);
        self
    }

    /// The client's address for a request from `peer` with `headers`, before
    /// IPv6 grouping: the address the key is made from, to log the same
    /// address the limit counts.
    ///
    /// ```
    /// use std::net::IpAddr;
    /// use tower_ratelimit::key::ClientIp;
    ///
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("x-forwarded-for", "203.0.113.7, 10.0.0.9".parse().unwrap());
    /// let peer: IpAddr = "10.0.0.5".parse().unwrap();
    /// let key = ClientIp::trusting(["10.0.0.0/8".parse().unwrap()]);
    /// assert_eq!(key.client_addr(peer, &headers), "203.0.113.7".parse::<IpAddr>().unwrap());
    /// ```
    #[must_use]
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = ip::canonical(peer);
        if !self.trusts_peer(peer) {
            return peer;
        }
        let named = if self.headers.is_empty() {
            &[ProxyHeader::XForwardedFor][..]
        } else {
            &self.headers
        };
        let Some(header) = named.iter().find(|h| headers.contains_key(h.name())) else {
            return peer;
        };
        let values = headers.get_all(header.name());
        let client = match header {
            ProxyHeader::Forwarded => self.walk(forwarded::forwarded(values)),
            ProxyHeader::XForwardedFor => self.walk(forwarded::x_forwarded_for(values)),
            ProxyHeader::XRealIp => self.walk(std::iter::once(forwarded::x_real_ip(values))),
        };
        client.unwrap_or(peer)
    }

    /// The first hop, from the right, that is not a trusted proxy, if it is
    /// an address.
    fn walk(&self, hops: impl Iterator<Item = Hop>) -> Option<IpAddr> {
        for hop in hops.take(MAX_HOPS) {
            match hop {
                Hop::Addr(ip) if self.is_trusted_hop(ip) => {}
                Hop::Addr(ip) => return Some(ip),
                Hop::Unusable => return None,
            }
        }
        None
    }

    fn trusts_peer(&self, peer: IpAddr) -> bool {
        match &self.trust {
            Trust::Networks(networks) => networks.iter().any(|n| n.contains(peer)),
            Trust::PeerOnly => true,
        }
    }

    fn is_trusted_hop(&self, ip: IpAddr) -> bool {
        match &self.trust {
            Trust::Networks(networks) => networks.iter().any(|n| n.contains(ip)),
            Trust::PeerOnly => false,
        }
    }
}

impl<B> KeyExtractor<http::Request<B>> for ClientIp {
    fn extract(&self, req: &http::Request<B>) -> Result<Option<Key>, KeyError> {
        let peer = ip::peer_ip(req.extensions()).ok_or(KeyError::new(NO_PEER))?;
        let client = self.client_addr(peer, req.headers());
        Ok(Some(Key::from(ip::group(client, self.ipv6_prefix))))
    }
}
