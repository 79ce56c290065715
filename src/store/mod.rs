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
///
/// ```
/// use tower_ratelimit::key::Key;
/// use tower_ratelimit::store::{Check, Op};
/// use tower_ratelimit::{MemoryStore, Policy, PolicySet, Quota};
///
/// let store = MemoryStore::new();
/// let set = PolicySet::new(vec![Policy::new("p", Quota::per_hour(1))])?;
/// let key = Key::from("k");
/// let peek = Check::new(&key, &set, 1).with_op(Op::Peek);
/// assert!(store.decide_now(peek).is_allowed()); // spends nothing
/// assert!(store.decide_now(Check::new(&key, &set, 1)).is_allowed()); // Op::Acquire
/// assert!(!store.decide_now(peek).is_allowed()); // the hour's unit is spent
/// store.decide_now(Check::new(&key, &set, 0).with_op(Op::Reset));
/// assert!(store.decide_now(peek).is_allowed()); // full again
/// # Ok::<(), tower_ratelimit::BoxError>(())
/// ```
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

/// One request to decide: a key, the policies, a cost and what is asked.
///
/// Stores receive checks; a [`MemoryStore`] can also be asked one directly.
///
/// ```
/// use tower_ratelimit::key::Key;
/// use tower_ratelimit::store::Check;
/// use tower_ratelimit::{MemoryStore, Policy, PolicySet, Quota};
///
/// let store = MemoryStore::new();
/// let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(10))])?;
/// let key = Key::from("user-1");
/// let d = store.decide_now(Check::new(&key, &set, 4));
/// assert!(d.is_allowed());
/// assert_eq!(d.remaining(), 6);
/// # Ok::<(), tower_ratelimit::BoxError>(())
/// ```
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
    ///
    /// ```
    /// # use tower_ratelimit::key::Key;
    /// # use tower_ratelimit::store::{Check, Op};
    /// # use tower_ratelimit::{Policy, PolicySet, Quota};
    /// # let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(10))])?;
    /// let key = Key::from("k");
    /// let check = Check::new(&key, &set, 2);
    /// assert_eq!(check.op(), Op::Acquire);
    /// assert_eq!(check.max_wait(), None); // reject mode
    /// assert_eq!(check.at_micros(), None); // the store's clock
    /// assert_eq!(check.lease(), 0);
    /// # Ok::<(), tower_ratelimit::BoxError>(())
    /// ```
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
    ///
    /// ```
    /// # use tower_ratelimit::key::Key;
    /// # use tower_ratelimit::store::{Check, Op};
    /// # use tower_ratelimit::{MemoryStore, Policy, PolicySet, Quota};
    /// let store = MemoryStore::new();
    /// let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(10))])?;
    /// let key = Key::from("k");
    /// store.decide_now(Check::new(&key, &set, 3));
    /// let peek = Check::new(&key, &set, 1).with_op(Op::Peek);
    /// assert_eq!(peek.op(), Op::Peek);
    /// assert_eq!(store.decide_now(peek).remaining(), 7);
    /// assert_eq!(store.decide_now(peek).remaining(), 7); // a peek spends nothing
    /// # Ok::<(), tower_ratelimit::BoxError>(())
    /// ```
    #[must_use]
    pub fn with_op(mut self, op: Op) -> Self {
        self.op = op;
        self
    }

    /// The id under which concurrency policies hold this check's units:
    /// given with [`Op::Acquire`], then with [`Op::Renew`] and
    /// [`Op::Release`]. Ids must be unique among a key's holders (the
    /// limiter draws them at random).
    ///
    /// ```
    /// # use tower_ratelimit::key::Key;
    /// # use tower_ratelimit::store::{Check, Op};
    /// # use tower_ratelimit::{MemoryStore, Policy, PolicySet, Quota};
    /// let store = MemoryStore::new();
    /// let set = PolicySet::new(vec![Policy::concurrency("workers", 1)])?;
    /// let key = Key::from("jobs");
    /// let first = Check::new(&key, &set, 1).with_lease(7);
    /// assert_eq!(first.lease(), 7);
    /// assert!(store.decide_now(first).is_allowed());
    /// let second = Check::new(&key, &set, 1).with_lease(8);
    /// assert!(store.decide_now(second).is_busy()); // lease 7 holds the unit
    /// store.decide_now(first.with_op(Op::Release));
    /// assert!(store.decide_now(second).is_allowed());
    /// # Ok::<(), tower_ratelimit::BoxError>(())
    /// ```
    #[must_use]
    pub fn with_lease(mut self, id: u64) -> Self {
        self.lease = id;
        self
    }

    /// Wait mode: the request may take a slot up to `max` ahead.
    ///
    /// An admitted decision's [`wait`](Decision::wait) is how long until
    /// that slot.
    ///
    /// ```
    /// use std::time::Duration;
    /// # use tower_ratelimit::key::Key;
    /// # use tower_ratelimit::store::{Check, Op};
    /// # use tower_ratelimit::{MemoryStore, Policy, PolicySet, Quota};
    /// let store = MemoryStore::new();
    /// let set = PolicySet::new(vec![Policy::new("p", Quota::per_second(10).burst(1))])?;
    /// let key = Key::from("k");
    /// let now = Check::new(&key, &set, 1).with_at_micros(Some(0));
    /// assert!(store.decide_now(now).is_allowed());
    /// assert!(!store.decide_now(now).is_allowed()); // reject mode: no room now
    /// let waiting = now.with_max_wait(Some(Duration::from_secs(1)));
    /// let d = store.decide_now(waiting);
    /// assert!(d.is_allowed());
    /// assert_eq!(d.wait(), Duration::from_millis(100)); // the next slot
    /// # Ok::<(), tower_ratelimit::BoxError>(())
    /// ```
    #[must_use]
    pub fn with_max_wait(mut self, max: Option<Duration>) -> Self {
        self.max_wait = max;
        self
    }

    /// Decide as of this time (µs) instead of the store's clock. Meant for
    /// tests that compare stores exactly. (Redis still expires keys by its
    /// own clock: with a given time, `RedisStore` keeps them a minute
    /// longer than their state needs.)
    ///
    /// ```
    /// # use tower_ratelimit::key::Key;
    /// # use tower_ratelimit::store::{Check, Op};
    /// # use tower_ratelimit::{MemoryStore, Policy, PolicySet, Quota};
    /// let store = MemoryStore::new();
    /// let set = PolicySet::new(vec![Policy::new("p", Quota::per_second(1))])?;
    /// let key = Key::from("k");
    /// let at = |micros| Check::new(&key, &set, 1).with_at_micros(Some(micros));
    /// assert!(store.decide_now(at(0)).is_allowed());
    /// assert!(!store.decide_now(at(500_000)).is_allowed());
    /// assert!(store.decide_now(at(1_000_000)).is_allowed());
    /// assert_eq!(store.decide_now(at(1_000_000)).at_micros(), 1_000_000);
    /// # Ok::<(), tower_ratelimit::BoxError>(())
    /// ```
    #[must_use]
    pub fn with_at_micros(mut self, at: Option<u64>) -> Self {
        self.at_micros = at;
        self
    }

    /// The key.
    ///
    /// ```
    /// # use tower_ratelimit::key::Key;
    /// # use tower_ratelimit::store::{Check, Op};
    /// # use tower_ratelimit::{Policy, PolicySet, Quota};
    /// # let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(10))])?;
    /// let key = Key::from("user-1");
    /// let check = Check::new(&key, &set, 1);
    /// assert_eq!(check.key(), &Key::from("user-1"));
    /// # Ok::<(), tower_ratelimit::BoxError>(())
    /// ```
    #[must_use]
    pub fn key(&self) -> &'a Key {
        self.key
    }

    /// The policies.
    ///
    /// ```
    /// # use tower_ratelimit::key::Key;
    /// # use tower_ratelimit::store::{Check, Op};
    /// # use tower_ratelimit::{Policy, PolicySet, Quota};
    /// # let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(10))])?;
    /// let key = Key::from("k");
    /// let check = Check::new(&key, &set, 1);
    /// assert_eq!(check.policies().len(), 1);
    /// assert_eq!(check.policies().policies()[0].name(), "p");
    /// # Ok::<(), tower_ratelimit::BoxError>(())
    /// ```
    #[must_use]
    pub fn policies(&self) -> &'a PolicySet {
        self.policies
    }

    /// The cost in units.
    ///
    /// ```
    /// # use tower_ratelimit::key::Key;
    /// # use tower_ratelimit::store::{Check, Op};
    /// # use tower_ratelimit::{Policy, PolicySet, Quota};
    /// # let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(10))])?;
    /// let key = Key::from("k");
    /// assert_eq!(Check::new(&key, &set, 5).cost(), 5);
    /// # Ok::<(), tower_ratelimit::BoxError>(())
    /// ```
    #[must_use]
    pub fn cost(&self) -> u64 {
        self.cost
    }

    /// `None` in reject mode; the longest wait for a slot in wait mode.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_ratelimit::key::Key;
    /// # use tower_ratelimit::store::{Check, Op};
    /// # use tower_ratelimit::{Policy, PolicySet, Quota};
    /// # let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(10))])?;
    /// let key = Key::from("k");
    /// let check = Check::new(&key, &set, 1);
    /// assert_eq!(check.max_wait(), None);
    /// let check = check.with_max_wait(Some(Duration::from_secs(2)));
    /// assert_eq!(check.max_wait(), Some(Duration::from_secs(2)));
    /// # Ok::<(), tower_ratelimit::BoxError>(())
    /// ```
    #[must_use]
    pub fn max_wait(&self) -> Option<Duration> {
        self.max_wait
    }

    /// The explicit decision time, if any.
    ///
    /// ```
    /// # use tower_ratelimit::key::Key;
    /// # use tower_ratelimit::store::{Check, Op};
    /// # use tower_ratelimit::{Policy, PolicySet, Quota};
    /// # let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(10))])?;
    /// let key = Key::from("k");
    /// let check = Check::new(&key, &set, 1);
    /// assert_eq!(check.at_micros(), None);
    /// assert_eq!(check.with_at_micros(Some(42)).at_micros(), Some(42));
    /// # Ok::<(), tower_ratelimit::BoxError>(())
    /// ```
    #[must_use]
    pub fn at_micros(&self) -> Option<u64> {
        self.at_micros
    }

    /// What is asked.
    ///
    /// ```
    /// # use tower_ratelimit::key::Key;
    /// # use tower_ratelimit::store::{Check, Op};
    /// # use tower_ratelimit::{Policy, PolicySet, Quota};
    /// # let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(10))])?;
    /// let key = Key::from("k");
    /// let check = Check::new(&key, &set, 1);
    /// assert_eq!(check.op(), Op::Acquire);
    /// assert_eq!(check.with_op(Op::Renew).op(), Op::Renew);
    /// # Ok::<(), tower_ratelimit::BoxError>(())
    /// ```
    #[must_use]
    pub fn op(&self) -> Op {
        self.op
    }

    /// The lease id (0 when none was given).
    ///
    /// ```
    /// # use tower_ratelimit::key::Key;
    /// # use tower_ratelimit::store::{Check, Op};
    /// # use tower_ratelimit::{Policy, PolicySet, Quota};
    /// # let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(10))])?;
    /// let key = Key::from("k");
    /// let check = Check::new(&key, &set, 1);
    /// assert_eq!(check.lease(), 0);
    /// assert_eq!(check.with_lease(9).lease(), 9);
    /// # Ok::<(), tower_ratelimit::BoxError>(())
    /// ```
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
///
/// A store of your own can wrap another: this one counts the checks it is
/// asked and leaves the deciding to a [`MemoryStore`].
///
/// ```
/// use std::future::{Ready, ready};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use tower_ratelimit::store::Check;
/// use tower_ratelimit::{Decision, MemoryStore, Policy, Quota, RateLimiter, Store, StoreError};
///
/// #[derive(Default)]
/// struct Counting {
///     inner: MemoryStore,
///     asked: AtomicU64,
/// }
///
/// impl Store for Counting {
///     type Future = Ready<Result<Decision, StoreError>>;
///
///     fn decide(&self, check: Check<'_>) -> Self::Future {
///         ready(self.decide_now(check).expect("decides at once"))
///     }
///
///     fn decide_now(&self, check: Check<'_>) -> Option<Result<Decision, StoreError>> {
///         self.asked.fetch_add(1, Ordering::Relaxed);
///         Some(Ok(self.inner.decide_now(check)))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
/// let limiter = RateLimiter::builder()
///     .store(Counting::default())
///     .policy(Policy::new("p", Quota::per_minute(1)))
///     .build()?;
/// assert!(limiter.try_acquire("k", 1).await?.is_allowed());
/// assert!(!limiter.try_acquire("k", 1).await?.is_allowed());
/// assert_eq!(limiter.store().asked.load(Ordering::Relaxed), 2);
/// # Ok(())
/// # }
/// ```
pub trait Store: Send + Sync + 'static {
    /// The answer, which owns everything it needs.
    type Future: Future<Output = Result<Decision, StoreError>> + Send + 'static;

    /// Decides `check`.
    ///
    /// ```
    /// use tower_ratelimit::key::Key;
    /// use tower_ratelimit::store::Check;
    /// use tower_ratelimit::{MemoryStore, Policy, PolicySet, Quota, Store};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
    /// let store = MemoryStore::new();
    /// let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(2))])?;
    /// let key = Key::from("k");
    /// let check = Check::new(&key, &set, 1);
    /// assert_eq!(Store::decide(&store, check).await?.remaining(), 1);
    /// assert_eq!(Store::decide(&store, check).await?.remaining(), 0);
    /// assert!(!Store::decide(&store, check).await?.is_allowed());
    /// # Ok(())
    /// # }
    /// ```
    fn decide(&self, check: Check<'_>) -> Self::Future;

    /// Decides `check` at once if the store can without waiting (an
    /// in-memory store), so the layer skips holding the request while a
    /// future resolves. `None` (the default) means: use [`decide`](Self::decide).
    ///
    /// ```
    /// use tower_ratelimit::key::Key;
    /// use tower_ratelimit::store::Check;
    /// use tower_ratelimit::{MemoryStore, Policy, PolicySet, Quota, Store};
    ///
    /// let store = MemoryStore::new();
    /// let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(2))])?;
    /// let key = Key::from("k");
    /// let answer = Store::decide_now(&store, Check::new(&key, &set, 1));
    /// let decision = answer.expect("an in-memory store answers at once")?;
    /// assert!(decision.is_allowed());
    /// assert_eq!(decision.remaining(), 1);
    /// # Ok::<(), tower_ratelimit::BoxError>(())
    /// ```
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
