//! The rate-limit header fields, and the one place their numbers come from.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::header::Entry;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::decision::{Decision, PolicyDecision};
use crate::intern;
use crate::quota::{Algorithm, Policy, PolicySet};

/// Which rate-limit headers responses carry.
///
/// Every number in the IETF fields is a structured-field Integer, which has
/// at most 15 digits (RFC 9651 §3.3.1): a larger figure (a limit or units
/// left of 10^15 or more) is sent as [`MAX_FIELD_INTEGER`], so the field
/// stays valid for every parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderStyle {
    /// `RateLimit-Policy: "burst";q=10;w=1` and `RateLimit: "burst";r=3;t=1`
    /// (draft-ietf-httpapi-ratelimit-headers-10, structured fields), one
    /// item per policy. The default. A response that already carries these
    /// fields (from a rate limiter further in) gets this layer's items
    /// added after its own.
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
    /// (seconds) for the policy with the fewest units left, across stacked
    /// layers too.
    Legacy,
    /// No rate-limit headers (`429` responses still carry `Retry-After`).
    None,
}

/// The largest number a rate-limit field shows: 15 nines, the most a
/// structured-field Integer holds. Larger figures are clamped to it.
///
/// ```
/// assert_eq!(tower_ratelimit::response::MAX_FIELD_INTEGER.to_string().len(), 15);
/// ```
pub const MAX_FIELD_INTEGER: u64 = 999_999_999_999_999;

pub(crate) static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub(crate) static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// A duration in whole seconds, rounded up: never 0 for a positive
/// duration.
///
/// ```
/// use std::time::Duration;
/// use tower_ratelimit::response::whole_seconds;
///
/// assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
/// assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
/// assert_eq!(whole_seconds(Duration::ZERO), 0);
/// ```
#[must_use]
pub fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `n`, clamped to what a structured-field Integer can hold.
fn field_integer(n: u64) -> u64 {
    n.min(MAX_FIELD_INTEGER)
}

/// What the fields say about one policy's quota: every number they carry
/// is computed here, once.
pub(crate) struct Figures {
    /// `RateLimit`'s `r`: units left.
    pub(crate) remaining: u64,
    /// `RateLimit`'s `t` (draft-10 §4.1.2): seconds until quota beyond
    /// `r` is available; `None` when none will be (the quota is whole, or
    /// a concurrency policy's units are in flight).
    pub(crate) refill: Option<u64>,
    /// `X-RateLimit-Reset`: seconds until the quota is whole again; `None`
    /// for a concurrency policy, which has no window.
    pub(crate) reset: Option<u64>,
}

impl Figures {
    pub(crate) fn of(p: &PolicyDecision) -> Self {
        Self {
            remaining: field_integer(p.remaining()),
            refill: p.refill_after().map(|d| field_integer(whole_seconds(d))),
            reset: (!p.is_concurrency()).then(|| field_integer(whole_seconds(p.reset_after()))),
        }
    }
}

/// `RateLimit-Policy`'s `q` and `w` for `policy`: `(limit, window seconds)`,
/// no window for a concurrency policy.
fn policy_figures(policy: &Policy) -> (u64, Option<u64>) {
    let quota = policy.quota();
    let window = (policy.algorithm() != Algorithm::Concurrency)
        .then(|| field_integer(whole_seconds(quota.period())));
    (field_integer(quota.limit()), window)
}

/// When a refused request is told to come back: its retry time, and never
/// before the `t` (more quota) of a policy that refused it (draft-10 §6).
/// The two differ only for a leaky bucket in wait mode, whose queue can
/// take a reservation a moment before a unit of quota is back.
pub(crate) fn answer_wait(d: &crate::Decision) -> Option<Duration> {
    let wait = d.retry_after()?;
    Some(
        d.policies()
            .iter()
            .filter(|p| !p.is_allowed())
            .filter_map(|p| p.refill_after())
            .fold(wait, Duration::max),
    )
}

/// `Retry-After` in seconds for a wait.
pub(crate) fn retry_after_seconds(wait: Duration) -> u64 {
    whole_seconds(wait)
}

/// `grpc-retry-pushback-ms` for a wait: milliseconds, rounded up.
pub(crate) fn pushback_millis(wait: Duration) -> u64 {
    let ms = wait.as_millis();
    let ms = ms + u128::from(wait.subsec_nanos() % 1_000_000 != 0);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// What a layer's answers say of one of its policy sets, made once when
/// the layer is built: the `RateLimit-Policy` value, interned (cloning it
/// copies a pointer), and the start of each policy's `RateLimit` item.
#[derive(Debug)]
pub(crate) struct SetFields {
    policy: Option<&'static HeaderValue>,
    /// `"name";r=` for each policy, in the set's order.
    items: Box<[Box<[u8]>]>,
}

impl SetFields {
    pub(crate) fn new(set: &PolicySet) -> Self {
        let mut value = String::new();
        for (i, p) in set.policies().iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let (limit, window) = policy_figures(p);
            let _ = write!(value, "{sep}\"{}\";q={limit}", p.name());
            // A concurrency policy has no window; its unit says what it counts.
            let _ = match window {
                Some(w) => write!(value, ";w={w}"),
                None => write!(value, ";qu=\"concurrent-requests\""),
            };
        }
        let items = set
            .policies()
            .iter()
            .map(|p| {
                format!("\"{}\";r=", p.name())
                    .into_bytes()
                    .into_boxed_slice()
            })
            .collect();
        Self {
            // Names are checked to be plain ASCII, so this cannot fail.
            policy: intern::header_value(&value),
            items,
        }
    }
}

/// The rate-limit fields of one response, made when its decision is: all
/// the response needs of the decision, so the decision itself need not be
/// kept while the inner service works. Opaque.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct Stamp(pub(crate) Fields);

#[derive(Debug, Default)]
pub(crate) enum Fields {
    /// No fields: [`HeaderStyle::None`], or no decision (a store that failed
    /// open).
    #[default]
    None,
    Ietf {
        policy: Option<&'static HeaderValue>,
        ratelimit: HeaderValue,
    },
    Legacy {
        limit: u64,
        remaining: u64,
        reset: u64,
    },
}

/// A field value is written here: one policy's `RateLimit` item always
/// fits (a name of at most 64 bytes and two numbers of at most 15 digits),
/// so making the value is one allocation, of its exact size; several
/// policies may spill to the heap.
struct Buf {
    bytes: [u8; 128],
    len: usize,
    spilled: Option<Vec<u8>>,
}

/// `00` to `99`, for writing two digits at a time.
const PAIRS: [u8; 200] = {
    let mut out = [0_u8; 200];
    let mut n = 0;
    while n < 100 {
        out[2 * n] = b'0' + (n / 10) as u8;
        out[2 * n + 1] = b'0' + (n % 10) as u8;
        n += 1;
    }
    out
};

impl Buf {
    fn new() -> Self {
        Self {
            bytes: [0; 128],
            len: 0,
            spilled: None,
        }
    }

    /// Room for `n` more bytes on the stack, or `None` once spilled.
    fn room(&mut self, n: usize) -> Option<&mut [u8]> {
        if self.spilled.is_none() && self.len + n <= self.bytes.len() {
            let room = &mut self.bytes[self.len..self.len + n];
            self.len += n;
            return Some(room);
        }
        if self.spilled.is_none() {
            self.spilled = Some(self.bytes[..self.len].to_vec());
        }
        None
    }

    fn push(&mut self, data: &[u8]) {
        match self.room(data.len()) {
            Some(room) => room.copy_from_slice(data),
            None => self
                .spilled
                .get_or_insert_with(Vec::new)
                .extend_from_slice(data),
        }
    }

    fn push_u64(&mut self, mut n: u64) {
        let mut digits = [0_u8; 20];
        let mut i = digits.len();
        while n >= 100 {
            let pair = (n % 100) as usize * 2;
            n /= 100;
            i -= 2;
            digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
        }
        if n >= 10 {
            let pair = n as usize * 2;
            i -= 2;
            digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
        } else {
            i -= 1;
            digits[i] = b'0' + n as u8;
        }
        self.push(&digits[i..]);
    }

    fn value(&self) -> Option<HeaderValue> {
        let bytes = match &self.spilled {
            None => &self.bytes[..self.len],
            Some(v) => &v[..],
        };
        HeaderValue::from_bytes(bytes).ok()
    }
}

/// The fields of `style` for `decision`, made against the set `fields`
/// describe.
pub(crate) fn stamp(style: HeaderStyle, fields: Option<&SetFields>, decision: &Decision) -> Stamp {
    let policies = decision.policies();
    if policies.is_empty() || style == HeaderStyle::None {
        return Stamp::NONE;
    }
    match style {
        HeaderStyle::Ietf => {
            let mut value = Buf::new();
            for (i, p) in policies.iter().enumerate() {
                if i > 0 {
                    value.push(b", ");
                }
                let figures = Figures::of(p);
                match fields.and_then(|f| f.items.get(i)) {
                    Some(item) => value.push(item),
                    None => {
                        value.push(b"\"");
                        value.push(p.name().as_bytes());
                        value.push(b"\";r=");
                    }
                }
                value.push_u64(figures.remaining);
                if let Some(t) = figures.refill {
                    value.push(b";t=");
                    value.push_u64(t);
                }
            }
            match value.value() {
                Some(ratelimit) => Stamp(Fields::Ietf {
                    policy: fields.and_then(|f| f.policy),
                    ratelimit,
                }),
                None => Stamp::NONE,
            }
        }
        HeaderStyle::Legacy => {
            // The policy closest to its limit speaks for the request, and
            // for every layer it passes through.
            let Some(p) = policies.iter().min_by_key(|p| p.remaining()) else {
                return Stamp::NONE;
            };
            let figures = Figures::of(p);
            Stamp(Fields::Legacy {
                limit: field_integer(p.limit()),
                remaining: figures.remaining,
                reset: figures.reset.unwrap_or(0),
            })
        }
        HeaderStyle::None => Stamp::NONE,
    }
}

impl Stamp {
    /// No fields.
    pub(crate) const NONE: Stamp = Stamp(Fields::None);

    /// Adds the fields to `headers`.
    #[inline]
    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        match self.0 {
            Fields::None => {}
            Fields::Ietf { policy, ratelimit } => {
                if let Some(v) = policy {
                    append_list(headers, &RATELIMIT_POLICY, v.clone());
                }
                append_list(headers, &RATELIMIT, ratelimit);
            }
            Fields::Legacy {
                limit,
                remaining,
                reset,
            } => {
                let inner = headers
                    .get(&X_REMAINING)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                if inner.is_some_and(|r| r <= remaining) {
                    return;
                }
                headers.insert(X_LIMIT.clone(), integer(limit));
                headers.insert(X_REMAINING.clone(), integer(remaining));
                headers.insert(X_RESET.clone(), integer(reset));
            }
        }
    }
}

/// The decimal numbers below 1000, back to back: `0123…99100…999`.
const SMALL: [u8; 2890] = {
    let mut out = [0_u8; 2890];
    let (mut n, mut i) = (0, 0);
    while n < 1000 {
        if n >= 100 {
            out[i] = b'0' + (n / 100) as u8;
            i += 1;
        }
        if n >= 10 {
            out[i] = b'0' + (n / 10 % 10) as u8;
            i += 1;
        }
        out[i] = b'0' + (n % 10) as u8;
        i += 1;
        n += 1;
    }
    out
};

static SMALL_STR: &str = match std::str::from_utf8(&SMALL) {
    Ok(s) => s,
    Err(_) => panic!("digits are ASCII"),
};

/// `n` as a header value. Numbers below 1000 (most `Retry-After` seconds,
/// content lengths and remaining counts) are slices of one static string,
/// so they cost no allocation; larger ones one, of their exact size.
pub(crate) fn integer(n: u64) -> HeaderValue {
    let (start, len) = match n {
        0..10 => (n, 1),
        10..100 => (10 + 2 * (n - 10), 2),
        100..1000 => (190 + 3 * (n - 100), 3),
        _ => {
            let mut digits = Buf::new();
            digits.push_u64(n);
            return digits.value().unwrap_or_else(|| HeaderValue::from(n));
        }
    };
    let start = start as usize;
    HeaderValue::from_static(&SMALL_STR[start..start + len])
}

/// Adds `items` to the list field `name`: as the field when it is absent,
/// after the items already there (a rate limiter further in) otherwise.
fn append_list(headers: &mut HeaderMap, name: &HeaderName, items: HeaderValue) {
    // Usually absent: a lookup (at once on an empty map) and an insert,
    // cheaper than the entry API's reservation and key conversion.
    if !headers.contains_key(name) {
        headers.insert(name.clone(), items);
        return;
    }
    if let Entry::Occupied(mut e) = headers.entry(name) {
        let mut joined = Vec::new();
        for v in e.iter() {
            joined.extend_from_slice(v.as_bytes());
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(items.as_bytes());
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
            e.insert(v);
        }
    }
}
