//! What a store answers.

use std::sync::Arc;
use std::time::Duration;

/// A store's answer for one request: admitted or not, and for every policy
/// how much is left and when it refills.
///
/// The layer puts it in the request's extensions, so a handler can read it:
///
/// ```
/// # #[cfg(feature = "axum")] {
/// use axum::Extension;
/// use tower_ratelimit::Decision;
///
/// async fn handler(Extension(decision): Extension<Decision>) -> String {
///     format!("{} requests left", decision.remaining())
/// }
/// # }
/// ```
///
/// Cloning is cheap (the per-policy part is shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    allowed: bool,
    at_micros: u64,
    wait: Duration,
    retry_after: Option<Duration>,
    policies: Arc<[PolicyDecision]>,
}

impl Decision {
    pub(crate) fn new(
        allowed: bool,
        at_micros: u64,
        wait: Duration,
        retry_after: Option<Duration>,
        policies: Arc<[PolicyDecision]>,
    ) -> Self {
        Self {
            allowed,
            at_micros,
            wait,
            retry_after,
            policies,
        }
    }

    /// Whether the request was admitted (possibly after [`wait`](Self::wait)).
    #[must_use]
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// The store's time when it decided, in µs (Redis: the server's `TIME`).
    #[must_use]
    pub fn at_micros(&self) -> u64 {
        self.at_micros
    }

    /// For an admitted request, how long until its reserved slot: zero
    /// unless it was admitted in wait mode behind others.
    #[must_use]
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// For a rejected request, how long until the same request could be
    /// admitted; `None` when it never can (its cost exceeds a quota) and
    /// for admitted requests.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The per-policy details, in the order of the layer's policies. Empty
    /// for requests that were not counted.
    #[must_use]
    pub fn policies(&self) -> &[PolicyDecision] {
        &self.policies
    }

    /// The fewest units left across all policies (`u64::MAX` when no policy
    /// counted the request).
    #[must_use]
    pub fn remaining(&self) -> u64 {
        self.policies
            .iter()
            .map(|p| p.remaining)
            .min()
            .unwrap_or(u64::MAX)
    }
}

/// One policy's part of a [`Decision`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDecision {
    pub(crate) name: Arc<str>,
    pub(crate) allowed: bool,
    pub(crate) limit: u64,
    pub(crate) period: Duration,
    pub(crate) remaining: u64,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) reset_after: Duration,
}

impl PolicyDecision {
    /// The policy's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `true` when the request was admitted; for a rejected request, whether
    /// this policy alone would have admitted it at once.
    #[must_use]
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// The quota's limit per period.
    #[must_use]
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The quota's period.
    #[must_use]
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Units that could be spent right now after this decision.
    #[must_use]
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// How long until this policy alone would admit the request: zero if it
    /// admits it now, `None` if it never can.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// How long until this policy's state is back to full (nothing spent).
    #[must_use]
    pub fn reset_after(&self) -> Duration {
        self.reset_after
    }
}
