//! Where limiter state lives: the [`Store`] trait and [`MemoryStore`].
//!
//! A store decides one request atomically against all of its policies. The
//! trait is generic rather than object-safe: the layer is generic over its
//! store, so the in-memory store's decision is a plain function call with no
//! allocation or dynamic dispatch for the future, while a networked store
//! can still return a boxed future as its `Future` type.

#[cfg(feature = "memory")]
mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::future::Future;
use std::time::Duration;

#[cfg(feature = "redis")]
pub use self::redis::{RedisConnection, RedisStore, RedisStoreBuilder};
#[cfg(feature = "memory")]
pub use memory::{MemoryStore, MemoryStoreBuilder};

use crate::decision::Decision;
use crate::error::StoreError;
use crate::key::Key;
use crate::quota::PolicySet;

/// One request to decide.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    key: &'a Key,
    policies: &'a PolicySet,
    cost: u64,
    max_wait: Option<Duration>,
    at_micros: Option<u64>,
}

impl<'a> Check<'a> {
    /// A check of `cost` units for `key` against `policies`, deciding now
    /// (reject mode).
    #[must_use]
    pub fn new(key: &'a Key, policies: &'a PolicySet, cost: u64) -> Self {
        Self {
            key,
            policies,
            cost,
            max_wait: None,
            at_micros: None,
        }
    }

    /// Wait mode: the request may take a slot up to `max` ahead.
    #[must_use]
    pub fn max_wait(mut self, max: Option<Duration>) -> Self {
        self.max_wait = max;
        self
    }

    /// Decide as of this time (µs) instead of the store's clock. Meant for
    /// tests that compare stores exactly.
    #[must_use]
    pub fn at_micros(mut self, at: Option<u64>) -> Self {
        self.at_micros = at;
        self
    }

    /// The key.
    #[must_use]
    pub fn key(&self) -> &'a Key {
        self.key
    }

    /// The policies.
    #[must_use]
    pub fn policies(&self) -> &'a PolicySet {
        self.policies
    }

    /// The cost in units.
    #[must_use]
    pub fn cost(&self) -> u64 {
        self.cost
    }

    /// `None` in reject mode; the longest wait for a slot in wait mode.
    #[must_use]
    pub fn get_max_wait(&self) -> Option<Duration> {
        self.max_wait
    }

    /// The explicit decision time, if any.
    #[must_use]
    pub fn get_at_micros(&self) -> Option<u64> {
        self.at_micros
    }
}

/// Decides requests atomically and keeps the state.
///
/// Implementations must decide a whole [`Check`] at once: either every
/// policy admits and all are charged, or none is. The functions in
/// [`algorithm`](crate::algorithm) do the deciding; a store supplies state,
/// a lock and a clock.
pub trait Store: Send + Sync + 'static {
    /// The answer, which owns everything it needs.
    type Future: Future<Output = Result<Decision, StoreError>> + Send + 'static;

    /// Decides `check`.
    fn decide(&self, check: Check<'_>) -> Self::Future;

    /// Decides `check` at once if the store can without waiting (an
    /// in-memory store), so the layer skips holding the request while a
    /// future resolves. `None` (the default) means: use [`decide`](Self::decide).
    fn decide_sync(&self, check: Check<'_>) -> Option<Result<Decision, StoreError>> {
        let _ = check;
        None
    }
}

impl<S: Store> Store for std::sync::Arc<S> {
    type Future = S::Future;

    fn decide(&self, check: Check<'_>) -> Self::Future {
        (**self).decide(check)
    }

    fn decide_sync(&self, check: Check<'_>) -> Option<Result<Decision, StoreError>> {
        (**self).decide_sync(check)
    }
}
