//! The crate's error types.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::decision::Decision;

/// A boxed error, as tower uses for middleware that adds its own errors.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A rate limiter was configured wrongly. The message names the field.
///
/// ```
/// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
///
/// let err = RateLimitLayer::builder()
///     .policy(Policy::new("burst", Quota::per_second(0)))
///     .build()
///     .unwrap_err();
/// assert_eq!(err.field(), "limit");
/// assert_eq!(err.to_string(), "policy \"burst\": limit must be at least 1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    set: Option<String>,
    policy: Option<String>,
    field: &'static str,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            set: None,
            policy: None,
            field,
            message: message.into(),
        }
    }

    pub(crate) fn in_policy(mut self, name: &str) -> Self {
        self.policy = Some(name.to_owned());
        self
    }

    pub(crate) fn in_set(mut self, name: &str) -> Self {
        self.set = Some(name.to_owned());
        self
    }

    /// What is wrong with the field, without its name.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// The field that is wrong: `limit`, `period`, `burst`, `name`,
    /// `policies`, `max_keys`, …
    #[must_use]
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// The policy the field belongs to, if it belongs to one.
    #[must_use]
    pub fn policy(&self) -> Option<&str> {
        self.policy.as_deref()
    }

    /// The named policy set the field belongs to, if it belongs to one (see
    /// [`policy_set`](crate::RateLimitLayerBuilder::policy_set)).
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
    ///
    /// let err = RateLimitLayer::builder()
    ///     .policy_set("pro", [Policy::new("pro", Quota::per_minute(0))])
    ///     .policies_by(|_: &http::Request<()>| Some("pro"))
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!((err.policy_set(), err.policy(), err.field()), (Some("pro"), Some("pro"), "limit"));
    /// assert_eq!(err.to_string(), "policy set \"pro\": policy \"pro\": limit must be at least 1");
    /// ```
    #[must_use]
    pub fn policy_set(&self) -> Option<&str> {
        self.set.as_deref()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(set) = &self.set {
            write!(f, "policy set {set:?}: ")?;
        }
        match &self.policy {
            Some(name) => write!(f, "policy {name:?}: {} {}", self.field, self.message),
            None => write!(f, "{} {}", self.field, self.message),
        }
    }
}

impl StdError for ConfigError {}

/// A request was turned away by the rate limiter.
///
/// Services that are not HTTP services get this as their error (boxed in a
/// [`BoxError`]; downcast to read it). HTTP services get a `429` response
/// instead. [`RateLimiter`](crate::RateLimiter) calls return it inside an
/// [`AcquireError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    decision: Option<Decision>,
    missing_key: bool,
}

impl RateLimited {
    pub(crate) fn new(decision: Option<Decision>) -> Self {
        Self {
            decision,
            missing_key: false,
        }
    }

    pub(crate) fn missing_key() -> Self {
        Self {
            decision: None,
            missing_key: true,
        }
    }

    /// How long until the same request could be admitted; `None` when no
    /// time is known: it never can (its cost is larger than the quota), a
    /// concurrency policy is full, or the request had no key.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        self.decision.as_ref().and_then(Decision::retry_after)
    }

    /// The store's decision, when the store was asked (not for a request
    /// turned away for having no key).
    #[must_use]
    pub fn decision(&self) -> Option<&Decision> {
        self.decision.as_ref()
    }

    /// Whether the request was turned away for having no key (see
    /// [`reject_missing_key`](crate::RateLimitLayerBuilder::reject_missing_key)).
    #[must_use]
    pub fn is_missing_key(&self) -> bool {
        self.missing_key
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.decision {
            _ if self.missing_key => f.write_str(
                "rate limited; the request has no rate limit key, and requests without one are rejected",
            ),
            Some(d) if d.is_busy() => {
                f.write_str("rate limited; too many requests in flight, retry once one completes")
            }
            Some(d) => match d.retry_after() {
                Some(wait) => write!(f, "rate limited; retry after {wait:?}"),
                None => f.write_str("rate limited; the request's cost exceeds the quota"),
            },
            None => f.write_str("rate limited"),
        }
    }
}

impl StdError for RateLimited {}

/// Why a [`RateLimiter`](crate::RateLimiter) call did not admit.
#[derive(Debug)]
#[non_exhaustive]
pub enum AcquireError {
    /// Turned away: the cost can never fit, the earliest slot is beyond
    /// the limiter's longest wait, or (for a permit) none came free within
    /// it. Nothing was spent.
    Limited(RateLimited),
    /// The store could not decide.
    Store(StoreError),
    /// The limiter has concurrency policies, whose units must be given
    /// back: call [`acquire_permit`](crate::RateLimiter::acquire_permit) or
    /// [`try_acquire_permit`](crate::RateLimiter::try_acquire_permit), whose
    /// [`Permit`](crate::Permit) does. Nothing was asked of the store.
    PermitRequired,
}

impl AcquireError {
    /// The decision that turned the request away, if it was limited.
    #[must_use]
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            AcquireError::Limited(l) => l.decision(),
            _ => None,
        }
    }
}

impl fmt::Display for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireError::Limited(l) => l.fmt(f),
            AcquireError::Store(e) => write!(f, "rate limit store failed: {e}"),
            AcquireError::PermitRequired => f.write_str(
                "this limiter has concurrency policies, whose units must be given back: \
                 use acquire_permit or try_acquire_permit",
            ),
        }
    }
}

impl StdError for AcquireError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            AcquireError::Limited(l) => Some(l),
            AcquireError::Store(e) => Some(e),
            AcquireError::PermitRequired => None,
        }
    }
}

impl From<StoreError> for AcquireError {
    fn from(e: StoreError) -> Self {
        AcquireError::Store(e)
    }
}

/// A key extractor could not run on a request because the service is set up
/// wrongly: for example [`PeerIp`](crate::key::PeerIp) on a server that does
/// not record the peer's address. HTTP services answer such a request with
/// `500` and this message; other services return this error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    message: &'static str,
}

impl KeyError {
    /// An error with a message saying what is missing and how to fix it.
    #[must_use]
    pub const fn new(message: &'static str) -> Self {
        Self { message }
    }

    /// The message.
    #[must_use]
    pub fn message(&self) -> &'static str {
        self.message
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message)
    }
}

impl StdError for KeyError {}

/// The store could not decide: Redis is down or slow, a script failed, …
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    source: Option<BoxError>,
    message: String,
}

/// What kind of failure a [`StoreError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store did not answer before the deadline.
    Timeout,
    /// The store could not be reached.
    Unavailable,
    /// The store answered with something the limiter cannot use.
    Protocol,
    /// The store refused this request's key, not the store as a whole:
    /// Redis's `WRONGTYPE` (the key holds another kind of value), or a
    /// script error on a damaged value. Other keys are unaffected, and it
    /// never counts towards a cool-down.
    Data,
}

impl StoreError {
    /// A store error of `kind` with a message and an optional cause.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>, source: Option<BoxError>) -> Self {
        Self {
            kind,
            source,
            message: message.into(),
        }
    }

    /// The kind of failure.
    #[must_use]
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The same failure for another request that shared its call: the
    /// kind and the whole message, the cause as text.
    #[cfg(feature = "redis")]
    pub(crate) fn copy(&self) -> Self {
        Self::new(self.kind, self.to_string(), None)
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
