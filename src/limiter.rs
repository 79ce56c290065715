//! [`RateLimiter`]: the limiter without tower, for batch jobs, workers and
//! clients that acquire and release.
//!
//! It decides with the same stores, policies and algorithms as
//! [`RateLimitLayer`](crate::RateLimitLayer), and is checked by the same
//! rules when built. Every call names a key and a cost:
//!
//! | call | what it does |
//! |---|---|
//! | [`check`](RateLimiter::check) | what would happen now; spends nothing, on Redis too |
//! | [`try_acquire`](RateLimiter::try_acquire) | decides now; a rejection's [`retry_after`](Decision::retry_after) is the wait |
//! | [`acquire`](RateLimiter::acquire) | reserves the earliest slot and sleeps until it |
//! | [`try_acquire_permit`](RateLimiter::try_acquire_permit) / [`acquire_permit`](RateLimiter::acquire_permit) | the same, holding the units of [concurrency](crate::Algorithm::Concurrency) policies in a [`Permit`] until it is dropped |
//! | [`reset`](RateLimiter::reset) | forgets the key's state |
//!
//! ```
//! use std::time::Duration;
//! use tower_ratelimit::{Policy, Quota, RateLimiter};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_ratelimit::BoxError> {
//! let limiter = RateLimiter::builder()
//!     .policy(Policy::new("api", Quota::per_second(2)))
//! #   // Tokio's paused clock, so the retry time below is exact.
//! #   .store(tower_ratelimit::MemoryStore::builder().clock(tower_ratelimit::clock::TokioClock::new()).build()?)
//!     .build()?;
//!
//! assert!(limiter.try_acquire("user-1", 1).await?.is_allowed());
//! assert!(limiter.try_acquire("user-1", 1).await?.is_allowed());
//! let third = limiter.try_acquire("user-1", 1).await?;
//! assert_eq!(third.retry_after(), Some(Duration::from_millis(500)));
//!
//! // `acquire` waits its turn instead: a reservation, not a retry loop.
//! limiter.acquire("user-1", 1).await?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use crate::config::FailurePolicy;
use crate::decision::Decision;
use crate::error::{AcquireError, ConfigError, RateLimited, StoreError};
use crate::fallback::{DecideFuture, Failover, FailureLog, Local, OwnedCheck};
use crate::key::Key;
use crate::observe::{self, Observer};
use crate::quota::{Algorithm, Policy, PolicySet};
#[cfg(feature = "memory")]
use crate::store::MemoryStore;
use crate::store::{Check, Op, Store};

/// The limiter's engine, shared by every clone of a [`RateLimiter`] and
/// by the layer: a store and the policies it decides.
pub(crate) struct Engine<St> {
    pub(crate) store: St,
    pub(crate) policies: PolicySet,
    /// Wakes local waiters for a permit when one is released here.
    released: Notify,
    /// Decides while the store fails, with `FailurePolicy::Fallback`.
    fallback: Option<Local>,
    failures: FailureLog,
    failure: FailurePolicy,
    pub(crate) observer: Observer,
}

impl<St: Store> Engine<St> {
    pub(crate) fn new(
        store: St,
        policies: PolicySet,
        failure: FailurePolicy,
        observer: Observer,
    ) -> Self {
        let fallback = match failure {
            #[cfg(feature = "memory")]
            FailurePolicy::Fallback { instances } => Some(Local::new(u64::from(instances.max(1)))),
            _ => None,
        };
        Self {
            store,
            policies,
            released: Notify::new(),
            fallback,
            failures: FailureLog::new(),
            failure,
            observer,
        }
    }

    /// The store's answer if it gives one at once (an in-memory store),
    /// through the failure handling.
    #[inline]
    pub(crate) fn decide_now(&self, check: Check<'_>) -> Option<Result<Decision, StoreError>> {
        match self.store.decide_now(check)? {
            Ok(d) => {
                self.observer.decided(check, &d, None);
                Some(Ok(d))
            }
            Err(e) => Some(self.failed(e, Some(check))),
        }
    }

    /// The store's answer to come, through the failure handling.
    pub(crate) fn decide_later(self: &Arc<Self>, check: Check<'_>) -> DecideFuture<St::Future> {
        // Kept to decide again in the fallback, to give back a lease, or to
        // report the decision.
        let report = observe::wanted();
        let kept = (self.fallback.is_some() || check.lease() != 0 || report)
            .then(|| OwnedCheck::of(&check));
        DecideFuture::new(
            self.store.decide(check),
            Arc::clone(self) as Arc<dyn Failover>,
            kept,
            report,
        )
    }

    /// Decides at once where the store can, else awaits it. `true` with
    /// the answer when it came at once.
    async fn decide(self: &Arc<Self>, check: Check<'_>) -> (Result<Decision, StoreError>, bool) {
        match self.decide_now(check) {
            Some(result) => (result, true),
            None => (self.decide_later(check).await, false),
        }
    }

    /// Decides for `key` against the engine's policies, taking concurrency
    /// units under a new lease: an admitted decision comes with what holds
    /// them.
    async fn admit(
        self: &Arc<Self>,
        key: &Key,
        cost: u64,
        max_wait: Option<Duration>,
    ) -> Result<(Decision, Option<Held>), StoreError> {
        let set = &self.policies;
        let pending = self.lease(key, set, cost);
        let check = Check::new(key, set, cost)
            .with_lease(pending.as_ref().map_or(0, PendingHold::id))
            .with_max_wait(max_wait);
        let (decision, local) = self.decide(check).await;
        let decision = decision?;
        let held = match decision.is_allowed() {
            true => pending.map(|p| p.arm(local, decision.is_degraded())),
            false => None,
        };
        Ok((decision, held))
    }

    /// The lease an admitted request will hold its concurrency units
    /// under; `None` when `set` has no concurrency policy.
    #[inline]
    pub(crate) fn lease(
        self: &Arc<Self>,
        key: &Key,
        set: &PolicySet,
        cost: u64,
    ) -> Option<PendingHold> {
        if !set.has_concurrency() {
            return None;
        }
        let every = renew_every(set)?;
        Some(PendingHold(Box::new((
            Arc::clone(self) as Arc<dyn Keeper>,
            Lease {
                held: OwnedCheck::of(&Check::new(key, set, cost).with_lease(lease_id())),
                every,
                degraded: false,
            },
        ))))
    }
}

/// What holds concurrency units for the engine, whatever its store.
trait Keeper: Send + Sync {
    /// Gives the units back at once (an in-memory store).
    fn release_now(&self, lease: &Lease);
    /// Renews the lease until told to release it, on a task.
    fn keep(self: Arc<Self>, lease: Lease, released: oneshot::Receiver<()>);
}

impl<St: Store> Failover for Engine<St> {
    fn decided(&self, check: Check<'_>, d: &Decision, latency: Option<Duration>) {
        self.observer.decided(check, d, latency);
    }

    fn failed(&self, err: StoreError, check: Option<Check<'_>>) -> Result<Decision, StoreError> {
        self.observer.failed(check, self.failure, &err);
        if let Some(skipped) = self.failures.note() {
            #[cfg(feature = "tracing")]
            tracing::warn!(
                error = %err,
                skipped,
                fallback = self.fallback.is_some(),
                "rate limit store failed (failures since the last one logged: `skipped`)"
            );
            #[cfg(not(feature = "tracing"))]
            let _ = skipped;
        }
        match (&self.fallback, check) {
            (Some(local), Some(check)) => Ok(local.decide(check)),
            _ => Err(err),
        }
    }

    fn forget(self: Arc<Self>, check: OwnedCheck) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to release on: the lease runs out by itself.
            return;
        };
        runtime.spawn(async move { self.release_later(&check).await });
    }
}

impl<St: Store> Engine<St> {
    /// Gives back on the store what `held`'s lease holds, then wakes local
    /// waiters for a permit.
    async fn release_later(&self, held: &OwnedCheck) {
        let _ = self.store.decide(held.check().with_op(Op::Release)).await;
        self.released.notify_waiters();
    }
}

impl<St: Store> Keeper for Engine<St> {
    fn release_now(&self, lease: &Lease) {
        let check = lease.check(Op::Release);
        match (&self.fallback, lease.degraded) {
            (Some(local), true) => drop(local.decide(check)),
            _ => drop(self.store.decide_now(check)),
        }
        self.released.notify_waiters();
    }

    fn keep(self: Arc<Self>, lease: Lease, mut released: oneshot::Receiver<()>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to renew on: the lease runs out by itself.
            return;
        };
        runtime.spawn(async move {
            loop {
                if tokio::time::timeout(lease.every, &mut released)
                    .await
                    .is_ok()
                {
                    break;
                }
                match self.store.decide(lease.check(Op::Renew)).await {
                    Ok(d) if d.is_allowed() => {}
                    // The lease ran out or the key was reset: nothing is held.
                    Ok(_) => return,
                    // The store failed: try again at the next renewal, still
                    // within the lease.
                    Err(_) => {}
                }
            }
            self.release_later(&lease.held).await;
        });
    }
}

/// A lease drawn for a request whose decision is not made yet.
pub(crate) struct PendingHold(Box<(Arc<dyn Keeper>, Lease)>);

impl PendingHold {
    /// The lease id the store's check must carry.
    pub(crate) fn id(&self) -> u64 {
        self.0.1.held.lease()
    }

    /// The request was admitted: hold its units until the hold is dropped.
    /// `local` says the store decided at once, and releases at once too.
    /// `degraded` says a fallback decided it: the units are held there,
    /// and given back there at once.
    pub(crate) fn arm(self, local: bool, degraded: bool) -> Held {
        let (keeper, mut lease) = *self.0;
        lease.degraded = degraded;
        if local || degraded {
            return Held(Some(HoldKind::Now(Box::new((keeper, lease)))));
        }
        let (tx, rx) = oneshot::channel();
        keeper.keep(lease, rx);
        Held(Some(HoldKind::Task(tx)))
    }
}

/// How often the leases of `set`'s concurrency policies are renewed: three
/// times per shortest lease. `None` without concurrency policies.
fn renew_every(set: &PolicySet) -> Option<Duration> {
    set.params()
        .iter()
        .filter(|p| p.algorithm == Algorithm::Concurrency)
        .map(|p| Duration::from_micros(p.period / 3).max(Duration::from_millis(1)))
        .min()
}

/// A lease id no other holder of a key draws: a counter through a
/// bijective mix, offset by a per-process random seed.
fn lease_id() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| RandomState::new().hash_one(std::process::id()));
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // splitmix64's finaliser: distinct inputs give distinct outputs.
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).max(1)
}

/// The units one holder has on a key's concurrency policies.
struct Lease {
    /// The key, policies, cost and lease id it holds.
    held: OwnedCheck,
    /// How often it is renewed.
    every: Duration,
    /// Held in the fallback's local store.
    degraded: bool,
}

impl Lease {
    fn check(&self, op: Op) -> Check<'_> {
        self.held.check().with_op(op)
    }
}

/// Concurrency units held for an admitted request, given back when this is
/// dropped. The layer keeps one in a request's response future (or, with
/// [`hold_permits_until_body_end`](crate::RateLimitLayerBuilder::hold_permits_until_body_end),
/// in its response body); a [`Permit`] keeps one for a
/// [`RateLimiter`] caller.
///
/// ```
/// use tokio::sync::oneshot;
/// use tower::{Layer, Service, ServiceExt, service_fn};
/// use tower_ratelimit::{BoxError, Policy, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// let layer = RateLimitLayer::builder()
///     .policy(Policy::concurrency("in-flight", 1))
///     .reject_with_error()
///     .build()?;
/// let mut svc = layer.layer(service_fn(|rx: oneshot::Receiver<u32>| async move {
///     Ok::<_, BoxError>(rx.await?)
/// }));
/// let (tx, rx) = oneshot::channel();
/// let first = svc.ready().await?.call(rx); // admitted: its future holds the unit
/// let (_tx, rx2) = oneshot::channel();
/// assert!(svc.ready().await?.call(rx2).await.is_err()); // none left
/// tx.send(7).unwrap();
/// assert_eq!(first.await?, 7); // done: the unit is given back
/// let (tx, rx3) = oneshot::channel();
/// tx.send(8).unwrap();
/// assert_eq!(svc.oneshot(rx3).await?, 8);
/// # Ok(())
/// # }
/// ```
pub struct Held(Option<HoldKind>);

enum HoldKind {
    Now(Box<(Arc<dyn Keeper>, Lease)>),
    Task(oneshot::Sender<()>),
}

impl Drop for Held {
    fn drop(&mut self) {
        match self.0.take() {
            Some(HoldKind::Now(held)) => held.0.release_now(&held.1),
            Some(HoldKind::Task(tx)) => {
                let _ = tx.send(());
            }
            None => {}
        }
    }
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Held")
    }
}

/// Units of a limiter's [concurrency](Algorithm::Concurrency) policies,
/// held until this is dropped or [released](Permit::release): also when
/// its holder panics, and when the future holding it is cancelled.
///
/// On Redis every permit is a lease that a background task renews while
/// the permit lives (three times per lease), so the permits of a process
/// that died come back when their lease runs out. Releasing sends the
/// release to Redis from that task; the permit does not wait for it.
///
/// For a limiter with only rate policies a permit holds nothing.
///
/// ```
/// use tower_ratelimit::{Policy, RateLimiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
/// let limiter = RateLimiter::builder()
///     .policy(Policy::concurrency("workers", 1))
///     .build()?;
/// let permit = limiter.try_acquire_permit("jobs", 1).await?;
/// assert!(limiter.try_acquire_permit("jobs", 1).await.is_err()); // one at a time
/// permit.release();
/// assert!(limiter.try_acquire_permit("jobs", 1).await.is_ok());
/// # Ok(())
/// # }
/// ```
#[must_use = "a permit gives its units back when dropped"]
pub struct Permit {
    decision: Decision,
    hold: Option<Held>,
}

impl Permit {
    /// The decision that admitted it.
    ///
    /// ```
    /// use tower_ratelimit::{Policy, RateLimiter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
    /// let limiter = RateLimiter::builder()
    ///     .policy(Policy::concurrency("workers", 3))
    ///     .build()?;
    /// let permit = limiter.try_acquire_permit("jobs", 1).await?;
    /// assert!(permit.decision().is_allowed());
    /// assert_eq!(permit.decision().remaining(), 2); // 2 of 3 still free
    /// # Ok(())
    /// # }
    /// ```
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// Gives the units back now (as dropping it does).
    ///
    /// ```
    /// use tower_ratelimit::{Policy, RateLimiter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
    /// let limiter = RateLimiter::builder()
    ///     .policy(Policy::concurrency("workers", 2))
    ///     .build()?;
    /// let permit = limiter.try_acquire_permit("jobs", 2).await?;
    /// assert!(limiter.check("jobs", 1).await?.is_busy());
    /// permit.release();
    /// assert!(limiter.check("jobs", 2).await?.is_allowed());
    /// # Ok(())
    /// # }
    /// ```
    pub fn release(self) {
        drop(self);
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("decision", &self.decision)
            .field("holds", &self.hold.is_some())
            .finish()
    }
}

/// The crate's engine without tower: decides for a key and a cost, waits
/// for a reserved slot, hands out concurrency permits. See the
/// [module docs](crate::limiter) for the calls.
///
/// Cheap to clone; every clone shares one limiter. Store failures are
/// returned as errors: the caller chooses what they mean.
///
/// ```
/// use tower_ratelimit::{Policy, Quota, RateLimiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
/// let limiter = RateLimiter::builder()
///     .policy(Policy::new("emails", Quota::per_hour(2)))
///     .build()?;
/// let worker = limiter.clone(); // the same counts
/// assert!(limiter.try_acquire("alice", 1).await?.is_allowed());
/// assert!(worker.try_acquire("alice", 1).await?.is_allowed());
/// let refused = limiter.try_acquire("alice", 1).await?;
/// assert!(!refused.is_allowed());
/// assert!(refused.retry_after().is_some());
/// assert!(worker.try_acquire("bob", 1).await?.is_allowed()); // keys count apart
/// # Ok(())
/// # }
/// ```
pub struct RateLimiter<St = DefaultStore> {
    engine: Arc<Engine<St>>,
    max_wait: Duration,
}

#[cfg(feature = "memory")]
type DefaultStore = MemoryStore;
#[cfg(not(feature = "memory"))]
type DefaultStore = ();

impl<St> Clone for RateLimiter<St> {
    fn clone(&self) -> Self {
        Self {
            engine: Arc::clone(&self.engine),
            max_wait: self.max_wait,
        }
    }
}

impl<St> fmt::Debug for RateLimiter<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("policies", &self.engine.policies.policies())
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "memory")]
impl RateLimiter {
    /// Starts configuring a limiter on a new [`MemoryStore`], with no
    /// longest wait.
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimiter};
    ///
    /// let limiter = RateLimiter::builder()
    ///     .policy(Policy::new("p", Quota::per_second(5)))
    ///     .build()?;
    /// assert_eq!(limiter.policies().len(), 1);
    /// assert!(limiter.store().is_empty()); // a new store
    /// # Ok::<(), tower_ratelimit::BoxError>(())
    /// ```
    pub fn builder() -> RateLimiterBuilder<MemoryStore> {
        RateLimiterBuilder::with_store(MemoryStore::new())
    }
}

impl<St: Store> RateLimiter<St> {
    /// The limiter's policies.
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimiter};
    ///
    /// let limiter = RateLimiter::builder()
    ///     .policy(Policy::new("per-second", Quota::per_second(5)))
    ///     .policy(Policy::new("per-day", Quota::per_day(1000)))
    ///     .build()?;
    /// let names: Vec<_> = limiter.policies().policies().iter().map(|p| p.name()).collect();
    /// assert_eq!(names, ["per-second", "per-day"]);
    /// # Ok::<(), tower_ratelimit::BoxError>(())
    /// ```
    #[must_use]
    pub fn policies(&self) -> &PolicySet {
        &self.engine.policies
    }

    /// The store it decides with.
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimiter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
    /// let limiter = RateLimiter::builder()
    ///     .policy(Policy::new("p", Quota::per_minute(10)))
    ///     .build()?;
    /// limiter.try_acquire("a", 1).await?;
    /// limiter.try_acquire("b", 1).await?;
    /// assert_eq!(limiter.store().len(), 2); // state for two keys
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn store(&self) -> &St {
        &self.engine.store
    }

    /// What [`try_acquire`](Self::try_acquire) would answer now, spending
    /// nothing (on Redis the script decides without writing).
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimiter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
    /// let limiter = RateLimiter::builder().policy(Policy::new("p", Quota::per_hour(1))).build()?;
    /// assert!(limiter.check("k", 1).await?.is_allowed());
    /// assert!(limiter.check("k", 1).await?.is_allowed());
    /// assert!(limiter.try_acquire("k", 1).await?.is_allowed());
    /// assert!(!limiter.check("k", 1).await?.is_allowed());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The store failed.
    pub async fn check(&self, key: impl Into<Key>, cost: u64) -> Result<Decision, StoreError> {
        let key = key.into();
        let check = Check::new(&key, &self.engine.policies, cost).with_op(Op::Peek);
        self.engine.decide(check).await.0
    }

    /// Decides now and charges every policy if admitted. A rejected
    /// decision's [`retry_after`](Decision::retry_after) is how long to
    /// wait (the leaky-bucket design's `Allow`); a rejection spends
    /// nothing.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_ratelimit::{Policy, Quota, RateLimiter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
    /// let limiter = RateLimiter::builder()
    ///     .policy(Policy::new("p", Quota::per_minute(10).burst(2)))
    ///     .build()?;
    /// assert!(limiter.try_acquire("k", 2).await?.is_allowed());
    /// let d = limiter.try_acquire("k", 1).await?;
    /// assert!(!d.is_allowed());
    /// let retry = d.retry_after().unwrap(); // one unit back every 6 s
    /// assert!(retry > Duration::ZERO && retry <= Duration::from_secs(6));
    /// assert!(limiter.try_acquire("k", 3).await?.is_never()); // more than the burst
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`AcquireError::Store`] when the store failed;
    /// [`AcquireError::PermitRequired`] when the limiter has concurrency
    /// policies (use [`try_acquire_permit`](Self::try_acquire_permit)).
    pub async fn try_acquire(
        &self,
        key: impl Into<Key>,
        cost: u64,
    ) -> Result<Decision, AcquireError> {
        if self.engine.policies.has_concurrency() {
            return Err(AcquireError::PermitRequired);
        }
        let key = key.into();
        let check = Check::new(&key, &self.engine.policies, cost);
        Ok(self.engine.decide(check).await.0?)
    }

    /// Reserves the earliest slot every policy allows and sleeps until it.
    ///
    /// The slot is taken when this is first polled: dropping the future
    /// while it sleeps (a `tokio::time::timeout`, a `select!` that moved
    /// on) cancels the wait but not the reservation. The slot stays spent,
    /// as a request that was let through would have spent it; refunding it
    /// could let a later caller through early under algorithms that count
    /// by time.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    /// use tower_ratelimit::{Policy, Quota, RateLimiter, clock::TokioClock, MemoryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
    /// let store = MemoryStore::builder().clock(TokioClock::new()).build()?;
    /// let limiter = RateLimiter::builder()
    ///     .store(store)
    ///     .policy(Policy::new("p", Quota::per_second(10).burst(1)))
    ///     .build()?;
    /// let start = Instant::now();
    /// for _ in 0..3 {
    ///     limiter.acquire("batch", 1).await?;
    /// }
    /// assert_eq!(start.elapsed(), Duration::from_millis(200)); // 0, 100, 200 ms
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`AcquireError::Limited`] at once when the cost can never fit or the
    /// slot is beyond the [longest wait](RateLimiterBuilder::max_wait) (nothing
    /// is spent); [`AcquireError::Store`] when the store failed;
    /// [`AcquireError::PermitRequired`] when the limiter has concurrency
    /// policies (use [`acquire_permit`](Self::acquire_permit)).
    pub async fn acquire(&self, key: impl Into<Key>, cost: u64) -> Result<Decision, AcquireError> {
        if self.engine.policies.has_concurrency() {
            return Err(AcquireError::PermitRequired);
        }
        let key = key.into();
        let check =
            Check::new(&key, &self.engine.policies, cost).with_max_wait(Some(self.max_wait));
        let decision = self.engine.decide(check).await.0?;
        admitted(decision).await
    }

    /// Takes `cost` units of every policy now, holding those of the
    /// concurrency policies in the returned [`Permit`] until it is dropped.
    ///
    /// ```
    /// use tower_ratelimit::{AcquireError, Policy, Quota, RateLimiter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
    /// let limiter = RateLimiter::builder()
    ///     .policy(Policy::concurrency("in-flight", 2))
    ///     .policy(Policy::new("rate", Quota::per_minute(100)))
    ///     .build()?;
    /// let a = limiter.try_acquire_permit("jobs", 1).await?;
    /// let _b = limiter.try_acquire_permit("jobs", 1).await?;
    /// let err = limiter.try_acquire_permit("jobs", 1).await.unwrap_err();
    /// assert!(matches!(err, AcquireError::Limited(_)));
    /// assert!(err.decision().unwrap().is_busy());
    /// drop(a);
    /// assert!(limiter.try_acquire_permit("jobs", 1).await.is_ok());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`AcquireError::Limited`] when any policy has no room now;
    /// [`AcquireError::Store`] when the store failed.
    pub async fn try_acquire_permit(
        &self,
        key: impl Into<Key>,
        cost: u64,
    ) -> Result<Permit, AcquireError> {
        let (decision, hold) = self.engine.admit(&key.into(), cost, None).await?;
        if !decision.is_allowed() {
            return Err(AcquireError::Limited(RateLimited::new(Some(decision))));
        }
        Ok(Permit { decision, hold })
    }

    /// Waits for room in every policy, then holds the units of the
    /// concurrency policies in the returned [`Permit`] until it is dropped
    /// (the token-bucket design's `Acquire` … `Release`).
    ///
    /// Rate policies reserve their slot as in [`acquire`](Self::acquire).
    /// A full concurrency policy has no slot to reserve: the call tries
    /// again when a permit is released in this process, and otherwise with
    /// a backoff from 5 ms to 200 ms (for permits released by other
    /// instances), until the [longest wait](RateLimiterBuilder::max_wait)
    /// is over. Dropping the future cancels it; a permit taken but not yet
    /// returned is given back.
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimiter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
    /// let limiter = RateLimiter::builder()
    ///     .policy(Policy::concurrency("in-flight", 4))
    ///     .build()?;
    /// let permit = limiter.acquire_permit("jobs", 1).await?;
    /// // ... the work ...
    /// drop(permit); // the token-bucket design's `Release`
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`AcquireError::Limited`] when the cost can never fit, a rate slot
    /// is beyond the longest wait, or no permit came free within it;
    /// [`AcquireError::Store`] when the store failed.
    pub async fn acquire_permit(
        &self,
        key: impl Into<Key>,
        cost: u64,
    ) -> Result<Permit, AcquireError> {
        let key = key.into();
        let deadline = tokio::time::Instant::now() + self.max_wait.min(FAR);
        let mut backoff = Duration::from_millis(5);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // Subscribe before asking, so a release in between still wakes.
            let mut released = std::pin::pin!(self.engine.released.notified());
            released.as_mut().enable();
            let (decision, hold) = self.engine.admit(&key, cost, Some(left)).await?;
            if decision.is_allowed() {
                let permit = Permit { decision, hold };
                let wait = permit.decision.wait();
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                return Ok(permit);
            }
            if !decision.is_busy() || left.is_zero() {
                return Err(AcquireError::Limited(RateLimited::new(Some(decision))));
            }
            let nap = backoff.min(left);
            let _ = tokio::time::timeout(nap, released).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    /// Forgets `key`'s state for every policy: it starts full again.
    ///
    /// Units held by permits of concurrency policies are forgotten too;
    /// those permits give back nothing when dropped.
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimiter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
    /// let limiter = RateLimiter::builder()
    ///     .policy(Policy::new("p", Quota::per_hour(1)))
    ///     .build()?;
    /// assert!(limiter.try_acquire("k", 1).await?.is_allowed());
    /// assert!(!limiter.try_acquire("k", 1).await?.is_allowed());
    /// limiter.reset("k").await?;
    /// assert!(limiter.try_acquire("k", 1).await?.is_allowed());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The store failed.
    pub async fn reset(&self, key: impl Into<Key>) -> Result<(), StoreError> {
        let key = key.into();
        let check = Check::new(&key, &self.engine.policies, 0).with_op(Op::Reset);
        self.engine.decide(check).await.0.map(drop)
    }
}

/// Waits longer than this are treated as no limit (far enough for any
/// timer, near enough not to overflow one).
const FAR: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Sleeps until an admitted decision's slot, or turns a rejection into an
/// error.
async fn admitted(decision: Decision) -> Result<Decision, AcquireError> {
    if !decision.is_allowed() {
        return Err(AcquireError::Limited(RateLimited::new(Some(decision))));
    }
    let wait = decision.wait();
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    Ok(decision)
}

/// Builds a [`RateLimiter`]; see [`RateLimiter::builder`].
///
/// ```
/// use std::time::Duration;
/// use tower_ratelimit::{FailurePolicy, Policy, Quota, RateLimiter};
///
/// let limiter = RateLimiter::builder()
///     .policy(Policy::new("p", Quota::per_second(10)))
///     .max_wait(Duration::from_secs(5))
///     .on_store_failure(FailurePolicy::FailClosed)
///     .build()?;
/// assert_eq!(limiter.policies().len(), 1);
/// # Ok::<(), tower_ratelimit::BoxError>(())
/// ```
#[must_use]
pub struct RateLimiterBuilder<St> {
    store: St,
    policies: Vec<Policy>,
    max_wait: Duration,
    failure: FailurePolicy,
    observer: Observer,
}

impl<St> fmt::Debug for RateLimiterBuilder<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiterBuilder")
            .field("policies", &self.policies)
            .field("max_wait", &self.max_wait)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl<St> RateLimiterBuilder<St> {
    /// Starts configuring a limiter that decides with `store`.
    ///
    /// ```
    /// use tower_ratelimit::{MemoryStore, Policy, Quota, RateLimiterBuilder};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
    /// let limiter = RateLimiterBuilder::with_store(MemoryStore::new())
    ///     .policy(Policy::new("p", Quota::per_minute(3)))
    ///     .build()?;
    /// assert_eq!(limiter.try_acquire("k", 1).await?.remaining(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_store(store: St) -> Self {
        Self {
            store,
            policies: Vec::new(),
            max_wait: Duration::MAX,
            failure: FailurePolicy::FailClosed,
            observer: Observer::default(),
        }
    }

    /// Decides with `store` instead (a [`RedisStore`](crate::store::RedisStore),
    /// a [`MemoryStore`] on a test clock, your own).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_ratelimit::clock::FakeClock;
    /// use tower_ratelimit::{MemoryStore, Policy, Quota, RateLimiter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
    /// let clock = FakeClock::new();
    /// let store = MemoryStore::builder().clock(clock.clone()).build()?;
    /// let limiter = RateLimiter::builder()
    ///     .store(store)
    ///     .policy(Policy::new("p", Quota::per_second(1)))
    ///     .build()?;
    /// assert!(limiter.try_acquire("k", 1).await?.is_allowed());
    /// assert!(!limiter.try_acquire("k", 1).await?.is_allowed());
    /// clock.advance(Duration::from_secs(1));
    /// assert!(limiter.try_acquire("k", 1).await?.is_allowed());
    /// # Ok(())
    /// # }
    /// ```
    pub fn store<St2>(self, store: St2) -> RateLimiterBuilder<St2> {
        RateLimiterBuilder {
            store,
            policies: self.policies,
            max_wait: self.max_wait,
            failure: self.failure,
            observer: self.observer,
        }
    }

    /// Adds a policy. A call must fit every policy; one that does not is
    /// charged to none of them.
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimiter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
    /// let limiter = RateLimiter::builder()
    ///     .policy(Policy::new("burst", Quota::per_second(5)))
    ///     .policy(Policy::new("daily", Quota::per_day(3)))
    ///     .build()?;
    /// for _ in 0..3 {
    ///     assert!(limiter.try_acquire("k", 1).await?.is_allowed());
    /// }
    /// let d = limiter.try_acquire("k", 1).await?; // "burst" has room, "daily" has not
    /// assert!(!d.is_allowed());
    /// assert!(d.policies()[0].is_allowed());
    /// assert!(!d.policies()[1].is_allowed());
    /// # Ok(())
    /// # }
    /// ```
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policies.push(policy);
        self
    }

    /// Adds several policies.
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimiter};
    ///
    /// let tiers = [("second", Quota::per_second(10)), ("hour", Quota::per_hour(500))];
    /// let limiter = RateLimiter::builder()
    ///     .policies(tiers.into_iter().map(|(name, q)| Policy::new(name, q)))
    ///     .build()?;
    /// assert_eq!(limiter.policies().len(), 2);
    /// # Ok::<(), tower_ratelimit::BoxError>(())
    /// ```
    pub fn policies(mut self, policies: impl IntoIterator<Item = Policy>) -> Self {
        self.policies.extend(policies);
        self
    }

    /// The longest [`acquire`](RateLimiter::acquire) and
    /// [`acquire_permit`](RateLimiter::acquire_permit) wait (default: no
    /// limit). A slot further away is refused at once, spending nothing.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_ratelimit::{AcquireError, Policy, Quota, RateLimiter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
    /// let limiter = RateLimiter::builder()
    ///     .policy(Policy::new("p", Quota::per_minute(1)))
    ///     .max_wait(Duration::from_secs(1))
    ///     .build()?;
    /// limiter.acquire("k", 1).await?;
    /// let err = limiter.acquire("k", 1).await.unwrap_err(); // 60 s away
    /// assert!(matches!(err, AcquireError::Limited(_)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// What a call does when the store fails (default:
    /// [`FailurePolicy::FailClosed`], the call returns the
    /// [`StoreError`]). [`FailurePolicy::FailOpen`] also returns the error
    /// (the caller decides whether to go ahead); only
    /// [`FailurePolicy::Fallback`] changes the answer, deciding on this
    /// instance's share of the quota in memory. Either way a failing store
    /// is logged at most once a second (with the `tracing` feature).
    ///
    /// ```
    /// use tower_ratelimit::{FailurePolicy, Policy, Quota, RateLimiter};
    ///
    /// let limiter = RateLimiter::builder()
    ///     .policy(Policy::new("jobs", Quota::per_second(100)))
    ///     .on_store_failure(FailurePolicy::Fallback { instances: 4 })
    ///     .build()
    ///     .unwrap();
    /// # let _ = limiter;
    /// ```
    pub fn on_store_failure(mut self, failure: FailurePolicy) -> Self {
        self.failure = failure;
        self
    }

    /// Logs keys as they are in decision events (feature `tracing`),
    /// instead of hashed (the default). Keys taken from client input (API
    /// keys, tokens) are secrets: log them raw only where logs are.
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimiter};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
    /// let limiter = RateLimiter::builder()
    ///     .policy(Policy::new("p", Quota::per_second(10)))
    ///     .log_raw_keys(true) // internal keys only: job names, not tokens
    ///     .build()?;
    /// assert!(limiter.try_acquire("nightly-report", 1).await?.is_allowed());
    /// # Ok(())
    /// # }
    /// ```
    pub fn log_raw_keys(mut self, raw: bool) -> Self {
        self.observer.raw_keys = raw;
        self
    }

    /// Checks the configuration and makes the limiter.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field, as for
    /// [`RateLimitLayerBuilder::build`](crate::RateLimitLayerBuilder::build).
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimiter};
    ///
    /// let err = RateLimiter::builder()
    ///     .policy(Policy::new("p", Quota::per_second(0)))
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err.field(), "limit");
    /// assert_eq!(err.policy(), Some("p"));
    /// assert!(RateLimiter::builder().policy(Policy::new("p", Quota::per_second(1))).build().is_ok());
    /// ```
    pub fn build(self) -> Result<RateLimiter<St>, ConfigError>
    where
        St: Store,
    {
        let policies = PolicySet::new(self.policies)?;
        Ok(RateLimiter {
            engine: Arc::new(Engine::new(
                self.store,
                policies,
                self.failure.check()?,
                self.observer,
            )),
            max_wait: self.max_wait,
        })
    }
}
