//! What a store answers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A store's answer for one request: admitted or not, and for every policy
/// how much is left and when it refills.
///
/// A layer built with
/// [`decision_in_extensions(true)`](crate::RateLimitLayerBuilder::decision_in_extensions)
/// puts it in the request's extensions, so a handler can read it:
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
/// Cloning is cheap: one policy's part is copied, several are shared.
#[derive(Clone, PartialEq, Eq)]
pub struct Decision {
    /// [`ALLOWED`] and [`DEGRADED`] (made without the shared store: a
    /// fallback's local decision). One word, written whole: two `bool`s are
    /// written a byte each, and moving the decision then reads them back
    /// as one word before those writes can be forwarded, a stall of about
    /// a tenth of a hot-key decision.
    flags: u64,
    at_micros: u64,
    /// µs: the wait when admitted, the retry time when not; `NEVER` when
    /// the request can never be admitted.
    gap: u64,
    policies: Policies,
}

impl fmt::Debug for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decision")
            .field("allowed", &self.is_allowed())
            .field("degraded", &self.is_degraded())
            .field("at_micros", &self.at_micros)
            .field("gap", &self.gap)
            .field("policies", &self.policies)
            .finish()
    }
}

/// [`Decision`]'s flag: the request was admitted.
const ALLOWED: u64 = 1;
/// [`Decision`]'s flag: decided without the shared store.
const DEGRADED: u64 = 2;

/// A gap that never closes.
pub(crate) const NEVER: u64 = u64::MAX;
/// A gap of no known length: a concurrency policy is full until a holder
/// releases.
pub(crate) const BUSY: u64 = u64::MAX - 1;

fn micros(gap: u64) -> Option<Duration> {
    (gap < BUSY).then(|| Duration::from_micros(gap))
}

/// One policy inline (the common case: no allocation to share), or many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Policies {
    One(PolicyDecision),
    Many(Arc<[PolicyDecision]>),
}

impl Decision {
    /// `gap` is the wait (admitted) or the retry time (rejected) in µs, or
    /// [`NEVER`].
    #[inline]
    pub(crate) fn new(allowed: bool, at_micros: u64, gap: u64, policies: Policies) -> Self {
        Self {
            flags: u64::from(allowed) * ALLOWED,
            at_micros,
            gap,
            policies,
        }
    }

    /// The same decision, made without the shared store.
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    pub(crate) fn into_degraded(mut self) -> Self {
        self.flags |= DEGRADED;
        self
    }

    /// Whether this was decided without the shared store: the store failed
    /// and [`FailurePolicy::Fallback`](crate::FailurePolicy) decided on this
    /// instance's share of the quota instead.
    #[must_use]
    pub fn is_degraded(&self) -> bool {
        self.flags & DEGRADED != 0
    }

    /// The same decision once its wait is over.
    pub(crate) fn waited(mut self) -> Self {
        if self.is_allowed() {
            self.gap = 0;
        }
        self
    }

    /// The same decision, rejected: a renewal found its lease gone.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn into_lost(mut self) -> Self {
        self.flags &= !ALLOWED;
        self.gap = NEVER;
        self
    }

    /// Whether the request was admitted (possibly after [`wait`](Self::wait)).
    #[must_use]
    #[inline]
    pub fn is_allowed(&self) -> bool {
        self.flags & ALLOWED != 0
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
        if self.is_allowed() {
            micros(self.gap).unwrap_or_default()
        } else {
            Duration::ZERO
        }
    }

    /// For a rejected request, how long until the same request could be
    /// admitted; `None` for admitted requests and when no time is known:
    /// the request can never fit ([`is_never`](Self::is_never)) or a
    /// concurrency policy is full ([`is_busy`](Self::is_busy)).
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        if self.is_allowed() {
            None
        } else {
            micros(self.gap)
        }
    }

    /// Whether the request was rejected because it can never be admitted:
    /// its cost exceeds what a policy can ever hold.
    #[must_use]
    pub fn is_never(&self) -> bool {
        !self.is_allowed() && self.gap == NEVER
    }

    /// Whether the request was rejected because a
    /// [`Concurrency`](crate::Algorithm::Concurrency) policy has no room: it
    /// fits once enough of what is in flight is released, at a time nobody
    /// knows yet.
    #[must_use]
    pub fn is_busy(&self) -> bool {
        !self.is_allowed() && self.gap == BUSY
    }

    /// The per-policy details, in the order of the layer's policies. Empty
    /// for requests that were not counted.
    #[must_use]
    pub fn policies(&self) -> &[PolicyDecision] {
        match &self.policies {
            Policies::One(p) => std::slice::from_ref(p),
            Policies::Many(all) => all,
        }
    }

    /// The fewest units left across all policies (`u64::MAX` when no policy
    /// counted the request).
    #[must_use]
    pub fn remaining(&self) -> u64 {
        self.policies()
            .iter()
            .map(|p| p.remaining)
            .min()
            .unwrap_or(u64::MAX)
    }
}

/// One policy's part of a [`Decision`].
#[derive(Clone, PartialEq, Eq)]
pub struct PolicyDecision {
    /// What does not change from one decision to the next, interned:
    /// copying a decision touches no reference count.
    pub(crate) policy: &'static PolicyInfo,
    /// 1 when this policy admitted the request, else 0: a word, written
    /// whole, for the reason [`Decision`]'s flags are.
    pub(crate) allowed: u64,
    /// µs, like the one below; may be [`NEVER`] or [`BUSY`].
    pub(crate) retry_after: u64,
    pub(crate) reset_after: u64,
    /// µs until one unit more than `remaining` is available; [`NEVER`]
    /// when none will be (the quota is whole, or counts units in flight).
    pub(crate) refill_after: u64,
    pub(crate) remaining: u64,
}

/// A policy as its decisions describe it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct PolicyInfo {
    pub(crate) name: &'static str,
    /// Its decision counters' labels, one pair per outcome.
    #[cfg(feature = "metrics")]
    pub(crate) labels: &'static crate::observe::Labels,
    pub(crate) concurrency: bool,
    pub(crate) limit: u64,
    /// µs.
    pub(crate) period: u64,
}

impl fmt::Debug for PolicyDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyDecision")
            .field("name", &self.policy.name)
            .field("allowed", &self.is_allowed())
            .field("concurrency", &self.policy.concurrency)
            .field("limit", &self.policy.limit)
            .field("period", &self.policy.period)
            .field("remaining", &self.remaining)
            .field("retry_after", &self.retry_after)
            .field("reset_after", &self.reset_after)
            .field("refill_after", &self.refill_after)
            .finish()
    }
}

impl PolicyDecision {
    /// The policy's name.
    #[must_use]
    pub fn name(&self) -> &str {
        self.policy.name
    }

    /// `true` when the request was admitted; for a rejected request, whether
    /// this policy alone would have admitted it at once.
    #[must_use]
    #[inline]
    pub fn is_allowed(&self) -> bool {
        self.allowed != 0
    }

    /// The quota's limit per period; for a concurrency policy, the most in
    /// flight at once.
    #[must_use]
    pub fn limit(&self) -> u64 {
        self.policy.limit
    }

    /// Whether this is a [`Concurrency`](crate::Algorithm::Concurrency)
    /// policy, counting what is in flight rather than a rate.
    #[must_use]
    pub fn is_concurrency(&self) -> bool {
        self.policy.concurrency
    }

    /// The quota's period; for a concurrency policy, its lease.
    #[must_use]
    pub fn period(&self) -> Duration {
        Duration::from_micros(self.policy.period)
    }

    /// Units that could be spent right now after this decision.
    #[must_use]
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// How long until this policy alone would admit the request: zero if it
    /// admits it now, `None` if it never can or, for a full concurrency
    /// policy, when no time is known.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        micros(self.retry_after)
    }

    /// How long until this policy's state is back to full (nothing spent).
    #[must_use]
    pub fn reset_after(&self) -> Duration {
        Duration::from_micros(self.reset_after)
    }

    /// How long until more than [`remaining`](Self::remaining) units are
    /// available: the next unit's refill under a bucket, the window's end
    /// under a fixed window, the oldest request's expiry under a sliding
    /// log. `None` when nothing more will come: every unit is there, or
    /// this is a concurrency policy (units come back when released). The
    /// `RateLimit` field's `t`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_ratelimit::algorithm::decide;
    /// use tower_ratelimit::{Policy, PolicySet, Quota};
    ///
    /// // 10 a minute: one back every 6 s, all back 60 s after spending 10.
    /// let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(10))]).unwrap();
    /// let mut states = vec![None];
    /// let d = decide(&set, &mut states, 0, 10, None);
    /// let p = &d.policies()[0];
    /// assert_eq!(p.refill_after(), Some(Duration::from_secs(6)));
    /// assert_eq!(p.reset_after(), Duration::from_secs(60));
    /// ```
    #[must_use]
    pub fn refill_after(&self) -> Option<Duration> {
        (self.refill_after != NEVER).then(|| Duration::from_micros(self.refill_after))
    }
}
