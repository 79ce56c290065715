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
#[cfg(all(fuzzing, feature = "redis"))]
pub(crate) use redis::fuzz_reply;

use std::future::Future;
use std::time::Duration;

#[cfg(feature = "redis-sentinel")]
pub use self::redis::SentinelConnection;
#[cfg(feature = "redis")]
pub use self::redis::{
    ConnectError, ConnectErrorKind, MIN_REDIS_VERSION, RedisConnection, RedisStore,
    RedisStoreBuilder,
};
#[cfg(feature = "memory")]
pub use memory::{MemoryStore, MemoryStoreBuilder};

use crate::decision::Decision;
use crate::error::StoreError;
use crate::key::Key;
use crate::quota::PolicySet;

/// What a [`Check`] asks of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Op {
    /// Decide, and charge every policy when admitted (the default).
    #[default]
    Acquire,
    /// Decide, changing nothing: what [`Acquire`](Op::Acquire) would answer
    /// now.
    Peek,
    /// Give back the units the check's [lease](Check::lease) holds on the
    /// concurrency policies. Other policies are not touched.
    Release,
    /// Extend the check's lease on the concurrency policies by each one's
    /// lease time. The decision is rejected when the lease is gone (it ran
    /// out, or the key was reset): its units are no longer held.
    Renew,
    /// Forget the key's state for every policy.
    Reset,
}

/// One request to decide.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    key: &'a Key,
    policies: &'a PolicySet,
    cost: u64,
    max_wait: Option<Duration>,
    at_micros: Option<u64>,
    op: Op,
    lease: u64,
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
            op: Op::Acquire,
            lease: 0,
        }
    }

    /// Asks for `op` instead of [`Op::Acquire`].
    #[must_use]
    pub fn with_op(mut self, op: Op) -> Self {
        self.op = op;
        self
    }

    /// The id under which concurrency policies hold this check's units:
    /// given with [`Op::Acquire`], then with [`Op::Renew`] and
    /// [`Op::Release`]. Ids must be unique among a key's holders (the
    /// limiter draws them at random).
    #[must_use]
    pub fn with_lease(mut self, id: u64) -> Self {
        self.lease = id;
        self
    }

    /// Wait mode: the request may take a slot up to `max` ahead.
    #[must_use]
    pub fn with_max_wait(mut self, max: Option<Duration>) -> Self {
        self.max_wait = max;
        self
    }

    /// Decide as of this time (µs) instead of the store's clock. Meant for
    /// tests that compare stores exactly. (Redis still expires keys by its
    /// own clock: with a given time, `RedisStore` keeps them a minute
    /// longer than their state needs.)
    #[must_use]
    pub fn with_at_micros(mut self, at: Option<u64>) -> Self {
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
    pub fn max_wait(&self) -> Option<Duration> {
        self.max_wait
    }

    /// The explicit decision time, if any.
    #[must_use]
    pub fn at_micros(&self) -> Option<u64> {
        self.at_micros
    }

    /// What is asked.
    #[must_use]
    pub fn op(&self) -> Op {
        self.op
    }

    /// The lease id (0 when none was given).
    #[must_use]
    pub fn lease(&self) -> u64 {
        self.lease
    }
}

/// Decides requests atomically and keeps the state.
///
/// Implementations must decide a whole [`Check`] at once: either every
/// policy admits and all are charged, or none is. The functions in
/// [`algorithm`](crate::algorithm) do the deciding; a store supplies state,
/// a lock and a clock. A check's [`Op`] says what is asked: to acquire
/// ([`algorithm::decide`](crate::algorithm::decide)), to peek
/// ([`algorithm::check`](crate::algorithm::check)), to release or renew a
/// concurrency lease ([`algorithm::release`](crate::algorithm::release)),
/// or to reset the key. Answers to `Release` and `Reset` are admitted
/// decisions describing the state after them.
///
/// A store that answers later (its [`decide_now`](Store::decide_now) is
/// `None`) may be sent a `Release` for a lease it never granted: when a
/// decision holding a lease fails or is dropped before its answer, the
/// lease is released in case the store granted it. Such a release must
/// change nothing, and must be applied after any decision already sent
/// for the same lease (one connection, in order, as `RedisStore` does).
/// Stores that count units without lease ids should decide at once.
pub trait Store: Send + Sync + 'static {
    /// The answer, which owns everything it needs.
    type Future: Future<Output = Result<Decision, StoreError>> + Send + 'static;

    /// Decides `check`.
    fn decide(&self, check: Check<'_>) -> Self::Future;

    /// Decides `check` at once if the store can without waiting (an
    /// in-memory store), so the layer skips holding the request while a
    /// future resolves. `None` (the default) means: use [`decide`](Self::decide).
    fn decide_now(&self, check: Check<'_>) -> Option<Result<Decision, StoreError>> {
        let _ = check;
        None
    }
}

impl<S: Store> Store for std::sync::Arc<S> {
    type Future = S::Future;

    fn decide(&self, check: Check<'_>) -> Self::Future {
        (**self).decide(check)
    }

    fn decide_now(&self, check: Check<'_>) -> Option<Result<Decision, StoreError>> {
        (**self).decide_now(check)
    }
}
