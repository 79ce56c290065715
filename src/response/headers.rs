//! The rate-limit header fields, and the one place their numbers come from.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::header::Entry;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::decision::{Decision, PolicyDecision};
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
    /// `RateLimit`'s `t`, in seconds; `None` for a concurrency policy,
    /// which has no window.
    pub(crate) reset: Option<u64>,
}

impl Figures {
    pub(crate) fn of(p: &PolicyDecision) -> Self {
        Self {
            remaining: field_integer(p.remaining()),
            // draft-10 §4.1.2 defines `t` as the time until additional
            // quota is available; for now it is the time until the quota
            // is full again, the figure every store reports.
            reset: (!p.is_concurrency()).then(|| field_integer(whole_seconds(p.reset_after()))),
        }
    }
}

/// `RateLimit-Policy`'s `q` and `w` for `policy`: `(limit, window seconds)`,
/// no window for a concurrency policy.
fn policy_figures(policy: &Policy) -> (u64, Option<u64>) {
    let quota = policy.quota();
    let window = (policy.get_algorithm() != Algorithm::Concurrency)
        .then(|| field_integer(whole_seconds(quota.period())));
    (field_integer(quota.limit()), window)
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

/// The `RateLimit-Policy` value for `set`, made once when the layer is
/// built.
pub(crate) fn policy_header(set: &PolicySet) -> Option<HeaderValue> {
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
    // Names are checked to be plain ASCII, so this cannot fail.
    HeaderValue::try_from(value).ok()
}

/// Adds the fields of `style` for `decision` to `headers`. `policy` is the
/// `RateLimit-Policy` value of the set the decision was made for.
pub(crate) fn add(
    style: HeaderStyle,
    headers: &mut HeaderMap,
    policy: Option<&HeaderValue>,
    decision: &Decision,
) {
    let policies = decision.policies();
    if policies.is_empty() {
        return;
    }
    match style {
        HeaderStyle::Ietf => {
            if let Some(v) = policy {
                append_list(headers, &RATELIMIT_POLICY, v.clone());
            }
            // Hand-built: this runs on every response.
            let mut value = Vec::with_capacity(32 * policies.len());
            for (i, p) in policies.iter().enumerate() {
                if i > 0 {
                    value.extend_from_slice(b", ");
                }
                let figures = Figures::of(p);
                value.push(b'"');
                value.extend_from_slice(p.name().as_bytes());
                value.extend_from_slice(b"\";r=");
                push_u64(&mut value, figures.remaining);
                if let Some(t) = figures.reset {
                    value.extend_from_slice(b";t=");
                    push_u64(&mut value, t);
                }
            }
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
                append_list(headers, &RATELIMIT, v);
            }
        }
        HeaderStyle::Legacy => {
            // The policy closest to its limit speaks for the request, and
            // for every layer it passes through.
            let Some(p) = policies.iter().min_by_key(|p| p.remaining()) else {
                return;
            };
            let figures = Figures::of(p);
            let inner = headers
                .get(&X_REMAINING)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if inner.is_some_and(|r| r <= figures.remaining) {
                return;
            }
            headers.insert(X_LIMIT.clone(), field_integer(p.limit()).into());
            headers.insert(X_REMAINING.clone(), figures.remaining.into());
            headers.insert(X_RESET.clone(), figures.reset.unwrap_or(0).into());
        }
        HeaderStyle::None => {}
    }
}

/// Adds `items` to the list field `name`: as the field when it is absent,
/// after the items already there (a rate limiter further in) otherwise.
fn append_list(headers: &mut HeaderMap, name: &HeaderName, items: HeaderValue) {
    match headers.entry(name) {
        Entry::Vacant(e) => {
            e.insert(items);
        }
        Entry::Occupied(mut e) => {
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
}

pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0_u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}
