use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::ip::canonical;

/// A network of IP addresses in CIDR notation, such as the networks of the
/// proxies [`ClientIp`](super::ClientIp) trusts.
///
/// Parses from `10.0.0.0/8`, `2001:db8::/32`, or a single address
/// (`192.0.2.7` is a /32, `2001:db8::7` a /128). The bits after the prefix
/// must be zero: `10.1.0.0/8` is an error rather than a silent `10.0.0.0/8`,
/// since trusting a wider network than meant lets more hosts choose keys.
/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is the IPv4 network
/// it maps, and an IPv6 network holds the IPv4 addresses mapped into it.
///
/// ```
/// use std::net::IpAddr;
/// use tower_ratelimit::key::IpNet;
///
/// let net: IpNet = "10.0.0.0/8".parse().unwrap();
/// assert!(net.contains("10.1.2.3".parse().unwrap()));
/// assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
/// assert!(!net.contains("11.0.0.1".parse().unwrap()));
/// assert_eq!(net.to_string(), "10.0.0.0/8");
///
/// let err = "10.0.0.0/33".parse::<IpNet>().unwrap_err();
/// assert_eq!(err.to_string(), "10.0.0.0/33: prefix longer than 32");
/// let err = "10.1.0.0/8".parse::<IpNet>().unwrap_err();
/// assert_eq!(err.to_string(), "10.1.0.0/8: bits set after the prefix (the network is 10.0.0.0/8)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix_len: u8,
}

impl IpNet {
    /// The network of the addresses whose first `prefix_len` bits are those
    /// of `addr`. Fails if `prefix_len` is longer than the address or `addr`
    /// has bits set after it.
    ///
    /// ```
    /// use std::net::Ipv4Addr;
    /// use tower_ratelimit::key::IpNet;
    ///
    /// let net = IpNet::new(Ipv4Addr::new(192, 168, 0, 0).into(), 16).unwrap();
    /// assert_eq!(net, "192.168.0.0/16".parse().unwrap());
    /// assert!(IpNet::new(Ipv4Addr::new(192, 168, 0, 0).into(), 40).is_err());
    /// ```
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, IpNetError> {
        let input = || format!("{addr}/{prefix_len}");
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix_len > max {
            return Err(IpNetError::new(input(), Reason::PrefixTooLong(max)));
        }
        let net = Self::normalize(addr, prefix_len);
        if net.masked() != net.addr {
            let network = Self {
                addr: net.masked(),
                ..net
            };
            return Err(IpNetError::new(input(), Reason::HostBits(network)));
        }
        Ok(net)
    }

    /// The network's first address.
    #[must_use]
    pub const fn addr(&self) -> IpAddr {
        self.addr
    }

    /// How many leading bits every address of the network shares.
    #[must_use]
    pub const fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` is in the network.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len));
                u32::from(ip) & mask.unwrap_or(0) == u32::from(net)
            }
            (IpAddr::V6(net), ip) => {
                let ip = match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len));
                u128::from(ip) & mask.unwrap_or(0) == u128::from(net)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }

    /// An IPv4-mapped IPv6 network as the IPv4 network it is.
    fn normalize(addr: IpAddr, prefix_len: u8) -> Self {
        if let IpAddr::V6(v6) = addr {
            if let (Some(v4), 96..) = (v6.to_ipv4_mapped(), prefix_len) {
                return Self {
                    addr: IpAddr::V4(v4),
                    prefix_len: prefix_len - 96,
                };
            }
        }
        Self { addr, prefix_len }
    }

    /// `addr` with the bits after the prefix cleared.
    fn masked(&self) -> IpAddr {
        let bits = u32::from(self.prefix_len);
        match self.addr {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }
}

impl From<IpAddr> for IpNet {
    /// The network of one address.
    fn from(addr: IpAddr) -> Self {
        let prefix_len = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        Self::normalize(addr, prefix_len)
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let Ok(addr) = addr.parse::<IpAddr>() else {
            return Err(IpNetError::new(s, Reason::NotAnAddress));
        };
        let Some(prefix) = prefix else {
            return Ok(Self::from(addr));
        };
        // Digits only: `u8::from_str` would also take `+8`.
        let digits = !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit());
        let prefix_len = match prefix.parse::<u8>() {
            Ok(len) if digits => len,
            _ if digits => u8::MAX, // Too long for any address.
            _ => return Err(IpNetError::new(s, Reason::NotAPrefix)),
        };
        Self::new(addr, prefix_len).map_err(|e| IpNetError::new(s, e.reason))
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A network in CIDR notation that could not be parsed or made. The message
/// names the input and what is wrong with it.
///
/// ```
/// use tower_ratelimit::key::IpNet;
///
/// let err = "10.0.0.300/8".parse::<IpNet>().unwrap_err();
/// assert_eq!(err.input(), "10.0.0.300/8");
/// assert_eq!(err.to_string(), "10.0.0.300/8: not an IP address");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpNetError {
    input: String,
    reason: Reason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    NotAnAddress,
    NotAPrefix,
    PrefixTooLong(u8),
    HostBits(IpNet),
}

impl IpNetError {
    fn new(input: impl Into<String>, reason: Reason) -> Self {
        Self {
            input: input.into(),
            reason,
        }
    }

    /// The text that is not a network.
    #[must_use]
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for IpNetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.input)?;
        match self.reason {
            Reason::NotAnAddress => f.write_str("not an IP address"),
            Reason::NotAPrefix => f.write_str("the prefix length is not a number"),
            Reason::PrefixTooLong(max) => write!(f, "prefix longer than {max}"),
            Reason::HostBits(network) => {
                write!(f, "bits set after the prefix (the network is {network})")
            }
        }
    }
}

impl StdError for IpNetError {}
