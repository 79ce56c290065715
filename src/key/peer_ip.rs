use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::{Key, KeyExtractor};
use crate::error::KeyError;

/// The IP address of the connection's peer, from axum's
/// `ConnectInfo<SocketAddr>` (feature `axum`) or a `SocketAddr` request
/// extension.
///
/// IPv6 addresses are grouped by their leading bits (a /64 by default),
/// since one client usually holds a whole /64.
///
/// Behind a proxy or load balancer every request has the proxy's address;
/// limit by a header the proxy sets instead.
///
/// With axum, serve with connect info, or every request is answered `500`
/// with a message saying so:
///
/// ```no_run
/// # async fn run(app: axum::Router, listener: tokio::net::TcpListener) {
/// use std::net::SocketAddr;
/// axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
///     .await
///     .unwrap();
/// # }
/// ```
///
/// ```
/// use std::net::SocketAddr;
/// use tower_ratelimit::key::{Key, KeyExtractor, PeerIp};
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert("[2001:db8::1]:443".parse::<SocketAddr>().unwrap());
/// let key = PeerIp::new().extract(&req).unwrap();
/// assert_eq!(key, Some(Key::from("2001:db8::".parse::<std::net::IpAddr>().unwrap())));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct PeerIp {
    ipv6_prefix: u8,
}

const NO_PEER: &str = "PeerIp found no peer address on the request: serve with \
    `into_make_service_with_connect_info::<SocketAddr>()` (axum, with the `axum` feature \
    of tower-ratelimit) or insert the peer's `SocketAddr` into the request's extensions";

impl PeerIp {
    /// Keys by peer address, IPv6 grouped by /64.
    #[must_use]
    pub const fn new() -> Self {
        Self { ipv6_prefix: 64 }
    }

    /// Groups IPv6 addresses by their first `bits` bits (at most 128).
    #[must_use]
    pub const fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = if bits > 128 { 128 } else { bits };
        self
    }

    fn group(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return IpAddr::V4(v4);
                }
                let bits = u32::from(self.ipv6_prefix);
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }
}

impl Default for PeerIp {
    fn default() -> Self {
        Self::new()
    }
}

impl<B> KeyExtractor<http::Request<B>> for PeerIp {
    fn extract(&self, req: &http::Request<B>) -> Result<Option<Key>, KeyError> {
        let ext = req.extensions();
        #[cfg(feature = "axum")]
        if let Some(info) = ext.get::<axum::extract::ConnectInfo<SocketAddr>>() {
            return Ok(Some(Key::from(self.group(info.0.ip()))));
        }
        match ext.get::<SocketAddr>() {
            Some(addr) => Ok(Some(Key::from(self.group(addr.ip())))),
            None => Err(KeyError::new(NO_PEER)),
        }
    }
}
