//! What an operator sees: with the `tracing` feature, one debug event per
//! decision and a warning per failing store (at most once a second); with
//! the `metrics` feature, counters, a histogram and a gauge through the
//! [`metrics`](https://docs.rs/metrics) facade, so any exporter works.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `ratelimit_decisions_total` | counter | `policy`, `outcome` |
//! | `ratelimit_store_seconds` | histogram | — |
//! | `ratelimit_store_skipping` | gauge: Redis nodes skipped after failures | — |
//!
//! `outcome` is `allowed` (counted for every policy of an admitted
//! request), `rejected` (for each policy that refused it), or, when the
//! store failed, `failed_open`, `failed_closed` or `fallback` (for every
//! policy of the request) as the [`FailurePolicy`](crate::FailurePolicy)
//! says. Labels are policy names, never keys: a label per client would
//! grow without bound. The histogram times calls to stores that answer
//! later (Redis); an in-memory decision takes nanoseconds and is not timed.
//!
//! Decision events carry the key hashed (a keyed hash, random per process:
//! the same key logs the same within one process, and cannot be recovered
//! from the log); `log_raw_keys(true)` on a builder logs keys as they are.

use std::time::Duration;

use crate::config::FailurePolicy;
use crate::decision::Decision;
use crate::error::StoreError;
use crate::store::Check;
#[cfg(any(feature = "tracing", feature = "metrics"))]
use crate::store::Op;

/// Whether a decision is to be reported now: always with `metrics`, with
/// `tracing` only while its debug events are on.
#[inline]
pub(crate) fn wanted() -> bool {
    #[cfg(feature = "metrics")]
    return true;
    #[cfg(all(feature = "tracing", not(feature = "metrics")))]
    return tracing::enabled!(target: "tower_ratelimit", tracing::Level::DEBUG);
    #[cfg(not(any(feature = "tracing", feature = "metrics")))]
    return false;
}

/// How an engine reports what it decides.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Observer {
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    pub(crate) raw_keys: bool,
}

/// Every outcome a decision counter is labelled with.
#[cfg(feature = "metrics")]
pub(crate) const OUTCOMES: [&str; 5] = [
    "allowed",
    "rejected",
    "failed_open",
    "failed_closed",
    "fallback",
];

/// A policy's `policy` and `outcome` labels, for each of [`OUTCOMES`].
#[cfg(feature = "metrics")]
pub(crate) type Labels = [[metrics::Label; 2]; 5];

/// Where a failure's outcome is in [`OUTCOMES`].
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
fn failure_outcome(failure: FailurePolicy) -> usize {
    match failure {
        FailurePolicy::FailOpen => 2,
        FailurePolicy::FailClosed => 3,
        #[cfg(feature = "memory")]
        FailurePolicy::Fallback { .. } => 4,
    }
}

/// Adds one to a policy's counter of an outcome, allocating nothing.
#[cfg(feature = "metrics")]
#[inline]
fn count(labels: &'static [metrics::Label; 2]) {
    static METADATA: metrics::Metadata<'static> =
        metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
    let key = metrics::Key::from_static_parts("ratelimit_decisions_total", labels);
    metrics::with_recorder(|r| r.register_counter(&key, &METADATA).increment(1));
}

impl Observer {
    /// A decision the store made; `latency` for stores that answer later.
    #[inline]
    #[cfg_attr(
        not(any(feature = "tracing", feature = "metrics")),
        allow(unused_variables)
    )]
    pub(crate) fn decided(&self, check: Check<'_>, d: &Decision, latency: Option<Duration>) {
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        {
            if check.op() != Op::Acquire {
                return;
            }
            #[cfg(feature = "metrics")]
            {
                for p in d.policies() {
                    if d.is_allowed() {
                        count(&p.policy.labels[0]);
                    } else if !p.is_allowed() {
                        count(&p.policy.labels[1]);
                    }
                }
                if let Some(latency) = latency {
                    metrics::histogram!("ratelimit_store_seconds").record(latency.as_secs_f64());
                }
            }
            #[cfg(feature = "tracing")]
            if tracing::enabled!(tracing::Level::DEBUG) {
                self.trace(check, d, latency);
            }
        }
    }

    #[cfg(feature = "tracing")]
    #[cold]
    fn trace(&self, check: Check<'_>, d: &Decision, latency: Option<Duration>) {
        // The policy that refused, or the one closest to its limit.
        let binding = d
            .policies()
            .iter()
            .find(|p| !p.is_allowed())
            .or_else(|| d.policies().iter().min_by_key(|p| p.remaining()));
        let policy = binding.map_or("", |p| p.name());
        let latency_us = latency.map(|l| u64::try_from(l.as_micros()).unwrap_or(u64::MAX));
        let key = KeyField {
            key: check.key(),
            raw: self.raw_keys,
        };
        tracing::debug!(
            target: "tower_ratelimit",
            policy,
            allowed = d.is_allowed(),
            degraded = d.is_degraded(),
            remaining = d.remaining(),
            retry_after_ms = d.retry_after().map(|r| u64::try_from(r.as_millis()).unwrap_or(u64::MAX)),
            cost = check.cost(),
            latency_us,
            key = %key,
            "rate limit decision"
        );
    }

    /// A failed decision, answered by `failure`.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn failed(
        &self,
        check: Option<Check<'_>>,
        failure: FailurePolicy,
        err: &StoreError,
    ) {
        #[cfg(feature = "metrics")]
        if let Some(check) = check.filter(|c| c.op() == Op::Acquire) {
            let outcome = failure_outcome(failure);
            for p in check.policies().params() {
                count(&p.info.labels[outcome]);
            }
        }
        let _ = err;
    }
}

/// Moves the gauge of Redis nodes skipped after failures by `delta`.
#[cfg(feature = "redis")]
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
#[inline]
pub(crate) fn skipping(delta: f64) {
    #[cfg(feature = "metrics")]
    metrics::gauge!("ratelimit_store_skipping").increment(delta);
}

/// A key in a log line: hashed unless raw keys are asked for.
#[cfg(feature = "tracing")]
struct KeyField<'a> {
    key: &'a crate::key::Key,
    raw: bool,
}

#[cfg(feature = "tracing")]
impl std::fmt::Display for KeyField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::hash::BuildHasher;
        static SECRET: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        if self.raw {
            return write!(f, "{}", self.key);
        }
        let hash = SECRET.get_or_init(Default::default).hash_one(self.key);
        write!(f, "#{hash:016x}")
    }
}
