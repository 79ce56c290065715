use super::ip::{self, no_peer};
use super::{Key, KeyExtractor};
use crate::error::KeyError;

/// The IP address of the connection's peer, from axum's
/// `ConnectInfo<SocketAddr>` (feature `axum`), tonic's `TcpConnectInfo`
/// (feature `tonic`) or a `SocketAddr` request extension.
///
/// IPv6 addresses are grouped by their leading bits (a /64 by default),
/// since one client usually holds a whole /64.
///
/// Behind a proxy or load balancer every request has the proxy's address;
/// use [`ClientIp`](super::ClientIp), which reads the header the proxy sets.
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
/// With tonic, `Server` records the peer in `TcpConnectInfo`, which is read
/// with the `tonic` feature. Its TLS connections record `TlsConnectInfo`
/// instead, which is not: there, insert the peer's `SocketAddr` into the
/// request's extensions in a layer in front of this one.
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

const NO_PEER: &str = no_peer!("PeerIp");

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
}

impl Default for PeerIp {
    fn default() -> Self {
        Self::new()
    }
}

impl<B> KeyExtractor<http::Request<B>> for PeerIp {
    fn extract(&self, req: &http::Request<B>) -> Result<Option<Key>, KeyError> {
        let peer = ip::peer_ip(req.extensions()).ok_or(KeyError::new(NO_PEER))?;
        Ok(Some(Key::from(ip::group(peer, self.ipv6_prefix))))
    }
}
