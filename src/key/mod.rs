//! Who is being limited: the [`KeyExtractor`] trait and the built-in
//! extractors.
//!
//! An extractor looks at a request and names the key its quota is counted
//! under. `Ok(None)` means the request has no key; by default it is let
//! through uncounted (see
//! [`RateLimitLayerBuilder::reject_missing_key`](crate::RateLimitLayerBuilder::reject_missing_key)).
//! `Err` means the extractor cannot work on this service at all, such as
//! [`PeerIp`] on a server that does not record peer addresses.
//!
//! By address: [`PeerIp`] keys by the connection's peer; behind proxies or a
//! load balancer, [`ClientIp`] keys by the client they report, believing
//! them only when the peer is one of the proxies it is told to trust.
//!
//! By request: [`Header`] (an API key), [`Method`], and with the `axum`
//! feature [`MatchedPath`] (the route). A tuple of extractors is an
//! extractor of the combination: `(ClientIp, Method)` counts each client's
//! `GET`s and `POST`s apart.
//!
//! ```
//! use tower_ratelimit::key::{Header, Key, KeyExtractor, Method};
//!
//! let per_key_and_method = (Header::new("x-api-key"), Method);
//! let req = http::Request::post("/").header("x-api-key", "k1").body(()).unwrap();
//! let key = per_key_and_method.extract(&req).unwrap().unwrap();
//! assert_eq!(key.to_string(), "(k1, POST)");
//! // No API key, no key: the request is not counted (or is rejected).
//! let anonymous = http::Request::post("/").body(()).unwrap();
//! assert_eq!(per_key_and_method.extract(&anonymous).unwrap(), None);
//! ```
//!
//! Any closure `Fn(&Req) -> Option<K>` with `K: Into<Key>` is an extractor:
//!
//! ```
//! use tower_ratelimit::key::{Key, KeyExtractor};
//!
//! let by_user = |req: &http::Request<()>| {
//!     req.headers()
//!         .get("x-user-id")
//!         .and_then(|v| v.to_str().ok())
//!         .map(str::to_owned)
//! };
//! let req = http::Request::builder().header("x-user-id", "42").body(()).unwrap();
//! assert_eq!(by_user.extract(&req).unwrap(), Some(Key::from("42")));
//! ```

mod client_ip;
mod composite;
mod forwarded;
mod global;
mod header;
mod ip;
mod ip_net;
mod method;
mod peer_ip;
#[cfg(feature = "axum")]
mod route;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

pub use client_ip::{ClientIp, ProxyHeader};
pub use global::Global;
pub use header::Header;
pub use ip_net::{IpNet, IpNetError};
pub use method::Method;
pub use peer_ip::PeerIp;
#[cfg(feature = "axum")]
pub use route::MatchedPath;

use crate::error::KeyError;

/// Names the key a request is counted under.
///
/// Any closure `Fn(&Req) -> Option<K>` with `K: Into<Key>` is one.
///
/// ```
/// use tower_ratelimit::key::{Header, Key, KeyExtractor};
///
/// let by_tenant = |req: &http::Request<()>| {
///     req.uri().path().strip_prefix("/t/")?.split('/').next().map(String::from)
/// };
/// let req = http::Request::get("/t/acme/orders").body(()).unwrap();
/// assert_eq!(by_tenant.extract(&req)?, Some(Key::from("acme")));
/// assert_eq!(by_tenant.extract(&http::Request::new(()))?, None); // not counted
/// assert_eq!(by_tenant.fixed(), None); // depends on the request
///
/// let api_key = Header::new("x-api-key");
/// assert_eq!(api_key.extract(&http::Request::new(()))?, None);
/// # Ok::<(), tower_ratelimit::KeyError>(())
/// ```
pub trait KeyExtractor<Req>: Send + Sync + 'static {
    /// The request's key, `None` if it has none, or an error if the
    /// extractor cannot work on this service.
    ///
    /// ```
    /// use tower_ratelimit::key::{Key, KeyExtractor};
    ///
    /// let by_user = |req: &http::Request<()>| req.headers().get("x-user")?.to_str().ok().map(String::from);
    /// let req = http::Request::get("/").header("x-user", "alice").body(()).unwrap();
    /// assert_eq!(by_user.extract(&req)?, Some(Key::from("alice")));
    /// # Ok::<(), tower_ratelimit::KeyError>(())
    /// ```
    fn extract(&self, req: &Req) -> Result<Option<Key>, KeyError>;

    /// The key of every request, when it does not depend on the request
    /// (as for [`Global`]). A layer in [`OnLimit::Wait`](crate::OnLimit::Wait)
    /// mode with a fixed key and cost reserves the next slot in
    /// `poll_ready`, pacing its caller by backpressure. Default: `None`.
    ///
    /// ```
    /// use tower_ratelimit::key::{Global, Key, KeyExtractor};
    ///
    /// assert_eq!(KeyExtractor::<http::Request<()>>::fixed(&Global), Some(Key::global()));
    /// let by_path = |req: &http::Request<()>| Some(req.uri().path().to_owned());
    /// assert_eq!(by_path.fixed(), None);
    /// ```
    fn fixed(&self) -> Option<Key> {
        None
    }
}

impl<F, Req, K> KeyExtractor<Req> for F
where
    F: Fn(&Req) -> Option<K> + Send + Sync + 'static,
    K: Into<Key>,
{
    fn extract(&self, req: &Req) -> Result<Option<Key>, KeyError> {
        Ok(self(req).map(Into::into))
    }
}

/// A rate-limit key: a string, an integer, an IP address, the global key,
/// or a combination of keys.
///
/// Keys of different kinds never collide: `Key::from(7_u64)` and
/// `Key::from("7")` are counted apart, and so are the combinations
/// `("a:b", "c")` and `("a", "b:c")`. Cloning is cheap: at most a
/// reference count.
///
/// ```
/// use std::net::Ipv4Addr;
/// use tower_ratelimit::key::Key;
///
/// assert_ne!(Key::from(7_u64), Key::from("7"));
/// assert_eq!(Key::from("alice"), Key::from(String::from("alice")));
/// assert_eq!(Key::from(Ipv4Addr::LOCALHOST), Key::from(std::net::IpAddr::from(Ipv4Addr::LOCALHOST)));
/// assert_ne!(
///     Key::composite([Key::from("a:b"), Key::from("c")]),
///     Key::composite([Key::from("a"), Key::from("b:c")]),
/// );
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Global,
    Int(u64),
    Ip(IpAddr),
    Str(Arc<str>),
    Bytes(Arc<[u8]>),
    Composite(Arc<[Key]>),
}

impl Key {
    /// The one key shared by every request.
    ///
    /// ```
    /// use tower_ratelimit::key::{Global, Key, KeyExtractor};
    ///
    /// assert_eq!(Global.extract(&http::Request::new(()))?, Some(Key::global()));
    /// assert_ne!(Key::global(), Key::from(""));
    /// # Ok::<(), tower_ratelimit::KeyError>(())
    /// ```
    #[must_use]
    pub const fn global() -> Self {
        Key(Repr::Global)
    }

    /// A key combining `parts`, in order: what a tuple of extractors
    /// yields.
    ///
    /// ```
    /// use tower_ratelimit::key::Key;
    ///
    /// let a = Key::composite([Key::from("a:b"), Key::from("c")]);
    /// let b = Key::composite([Key::from("a"), Key::from("b:c")]);
    /// assert_ne!(a, b);
    /// ```
    #[must_use]
    pub fn composite<const N: usize>(parts: [Key; N]) -> Self {
        Key(Repr::Composite(Arc::new(parts)))
    }

    /// The key as bytes for a store, with a tag naming its kind so kinds
    /// never collide: `g`, `n:<int>`, `ip:<addr>`, `s:<str>`, `b:<bytes>`,
    /// and for a combination `c:` then each part's tagged bytes after their
    /// length (`c:3:s:a3:n:7`), so no part can run into the next.
    ///
    /// ```
    /// use tower_ratelimit::key::Key;
    ///
    /// let mut out = Vec::new();
    /// Key::composite([Key::from("a"), Key::from(7_u64)]).write_tagged(&mut out);
    /// assert_eq!(out, b"c:3:s:a3:n:7");
    /// ```
    pub fn write_tagged(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing into a Vec cannot fail.
        let _ = match &self.0 {
            Repr::Global => out.write_all(b"g"),
            Repr::Int(n) => write!(out, "n:{n}"),
            Repr::Ip(ip) => write!(out, "ip:{ip}"),
            Repr::Str(s) => {
                out.extend_from_slice(b"s:");
                out.write_all(s.as_bytes())
            }
            Repr::Bytes(b) => {
                out.extend_from_slice(b"b:");
                out.write_all(b)
            }
            Repr::Composite(parts) => {
                out.extend_from_slice(b"c:");
                let mut part = Vec::new();
                for p in parts.iter() {
                    part.clear();
                    p.write_tagged(&mut part);
                    let _ = write!(out, "{}:", part.len());
                    out.extend_from_slice(&part);
                }
                Ok(())
            }
        };
    }
}

/// A key as the in-memory store keeps it: integers and addresses inline,
/// anything else as the key itself.
#[cfg(feature = "memory")]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Parts<'a> {
    Global,
    Int(u64),
    V4(u32),
    V6([u64; 2]),
    Other(&'a Key),
}

#[cfg(feature = "memory")]
impl Key {
    #[inline]
    pub(crate) fn parts(&self) -> Parts<'_> {
        match &self.0 {
            Repr::Global => Parts::Global,
            Repr::Int(n) => Parts::Int(*n),
            Repr::Ip(IpAddr::V4(ip)) => Parts::V4(u32::from(*ip)),
            Repr::Ip(IpAddr::V6(ip)) => {
                let n = u128::from(*ip);
                Parts::V6([n as u64, (n >> 64) as u64])
            }
            Repr::Str(_) | Repr::Bytes(_) | Repr::Composite(_) => Parts::Other(self),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Global => f.write_str("Key::global()"),
            Repr::Int(n) => write!(f, "Key({n})"),
            Repr::Ip(ip) => write!(f, "Key({ip})"),
            Repr::Str(s) => write!(f, "Key({s:?})"),
            Repr::Bytes(b) => write!(f, "Key({:?})", String::from_utf8_lossy(b)),
            Repr::Composite(parts) => f.debug_tuple("Key").field(&&parts[..]).finish(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Global => f.write_str("global"),
            Repr::Int(n) => write!(f, "{n}"),
            Repr::Ip(ip) => write!(f, "{ip}"),
            Repr::Str(s) => f.write_str(s),
            Repr::Bytes(b) => f.write_str(&String::from_utf8_lossy(b)),
            Repr::Composite(parts) => {
                f.write_str("(")?;
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    fmt::Display::fmt(p, f)?;
                }
                f.write_str(")")
            }
        }
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Key(Repr::Str(Arc::from(s)))
    }
}

impl From<String> for Key {
    fn from(s: String) -> Self {
        Key(Repr::Str(Arc::from(s)))
    }
}

impl From<Arc<str>> for Key {
    fn from(s: Arc<str>) -> Self {
        Key(Repr::Str(s))
    }
}

impl From<&[u8]> for Key {
    fn from(b: &[u8]) -> Self {
        match std::str::from_utf8(b) {
            Ok(s) => Key::from(s),
            Err(_) => Key(Repr::Bytes(Arc::from(b))),
        }
    }
}

impl From<u64> for Key {
    fn from(n: u64) -> Self {
        Key(Repr::Int(n))
    }
}

impl From<u32> for Key {
    fn from(n: u32) -> Self {
        Key(Repr::Int(n.into()))
    }
}

impl From<IpAddr> for Key {
    fn from(ip: IpAddr) -> Self {
        Key(Repr::Ip(ip))
    }
}

impl From<Ipv4Addr> for Key {
    fn from(ip: Ipv4Addr) -> Self {
        Key(Repr::Ip(ip.into()))
    }
}

impl From<Ipv6Addr> for Key {
    fn from(ip: Ipv6Addr) -> Self {
        Key(Repr::Ip(ip.into()))
    }
}

/// The cost of a request in quota units (default: 1 per request).
///
/// Any closure `Fn(&Req) -> u64` is a cost. A request whose cost exceeds a
/// policy's burst can never be admitted and is rejected at once, with no
/// retry time.
///
/// ```
/// use tower_ratelimit::key::{Cost, UnitCost};
///
/// // One unit per started kilobyte of declared body.
/// let by_size = |req: &http::Request<()>| {
///     let len: u64 = req
///         .headers()
///         .get(http::header::CONTENT_LENGTH)
///         .and_then(|v| v.to_str().ok()?.parse().ok())
///         .unwrap_or(0);
///     len.div_ceil(1024).max(1)
/// };
/// let upload = http::Request::post("/").header("content-length", "3000").body(()).unwrap();
/// assert_eq!(by_size.cost(&upload), 3);
/// assert_eq!(by_size.cost(&http::Request::new(())), 1);
/// assert_eq!(UnitCost.cost(&upload), 1);
/// ```
pub trait Cost<Req>: Send + Sync + 'static {
    /// The request's cost.
    ///
    /// ```
    /// use tower_ratelimit::key::Cost;
    ///
    /// let by_batch = |batch: &Vec<u32>| batch.len() as u64;
    /// assert_eq!(by_batch.cost(&vec![1, 2, 3]), 3);
    /// ```
    fn cost(&self, req: &Req) -> u64;

    /// The cost of every request, when it does not depend on the request
    /// (as for [`UnitCost`]); see [`KeyExtractor::fixed`]. Default: `None`.
    ///
    /// ```
    /// use tower_ratelimit::key::{Cost, UnitCost};
    ///
    /// assert_eq!(Cost::<()>::fixed(&UnitCost), Some(1));
    /// let by_batch = |batch: &Vec<u32>| batch.len() as u64;
    /// assert_eq!(by_batch.fixed(), None);
    /// ```
    fn fixed(&self) -> Option<u64> {
        None
    }
}

impl<F, Req> Cost<Req> for F
where
    F: Fn(&Req) -> u64 + Send + Sync + 'static,
{
    fn cost(&self, req: &Req) -> u64 {
        self(req)
    }
}

/// Every request costs one unit.
///
/// ```
/// use tower_ratelimit::key::{Cost, UnitCost};
///
/// assert_eq!(UnitCost.cost(&"any request"), 1);
/// assert_eq!(Cost::<&str>::fixed(&UnitCost), Some(1));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitCost;

impl<Req> Cost<Req> for UnitCost {
    fn cost(&self, _: &Req) -> u64 {
        1
    }

    fn fixed(&self) -> Option<u64> {
        Some(1)
    }
}
