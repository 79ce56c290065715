//! The crate's error types.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

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
    policy: Option<String>,
    field: &'static str,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            policy: None,
            field,
            message: message.into(),
        }
    }

    pub(crate) fn in_policy(mut self, name: &str) -> Self {
        self.policy = Some(name.to_owned());
        self
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
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
/// instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    retry_after: Option<Duration>,
}

impl RateLimited {
    pub(crate) fn new(retry_after: Option<Duration>) -> Self {
        Self { retry_after }
    }

    /// How long until the same request could be admitted; `None` when it
    /// never can, because its cost is larger than the quota.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.retry_after {
            Some(d) => write!(f, "rate limited; retry after {d:?}"),
            None => f.write_str("rate limited; the request's cost exceeds the quota"),
        }
    }
}

impl StdError for RateLimited {}

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
