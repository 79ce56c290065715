//! What [`PeerIp`](super::PeerIp) and [`ClientIp`](super::ClientIp) share:
//! finding the peer's address and grouping IPv6 addresses.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The fix for a server that records no peer address, after the name of the
/// extractor that needs it.
macro_rules! no_peer {
    ($extractor:literal) => {
        concat!(
            $extractor,
            " found no peer address on the request: serve with \
            `into_make_service_with_connect_info::<SocketAddr>()` (axum, with the `axum` \
            feature of tower-ratelimit), serve with tonic's `Server` (with the `tonic` \
            feature), or insert the peer's `SocketAddr` into the request's extensions"
        )
    };
}
pub(super) use no_peer;

/// The IP address of the connection's peer, as the server recorded it:
/// axum's `ConnectInfo<SocketAddr>`, tonic's `TcpConnectInfo`, or a plain
/// `SocketAddr` extension. IPv4-mapped IPv6 addresses come back as IPv4.
pub(super) fn peer_ip(ext: &http::Extensions) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = ext.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(canonical(info.0.ip()));
    }
    #[cfg(feature = "tonic")]
    if let Some(addr) = ext
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
    {
        return Some(canonical(addr.ip()));
    }
    ext.get::<SocketAddr>().map(|addr| canonical(addr.ip()))
}

/// The address with an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) turned
/// into the IPv4 address it maps, so one host has one form.
pub(super) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The key form of an address: IPv4 as it is, IPv6 cut to its first
/// `ipv6_prefix` bits (one client usually holds a whole /64).
pub(super) fn group(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        v4 => v4,
    }
}
