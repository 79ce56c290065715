//! What happens between a store's failure and the answer: the failure is
//! logged (at most once per interval, with a count of those not logged),
//! and with [`FailurePolicy::Fallback`](crate::FailurePolicy::Fallback) the
//! request is decided in a local in-memory store instead, with each quota
//! divided among the instances that share it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "memory")]
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;

use crate::decision::Decision;
use crate::error::StoreError;
use crate::key::Key;
use crate::quota::PolicySet;
#[cfg(feature = "memory")]
use crate::quota::{Policy, Quota};
#[cfg(feature = "memory")]
use crate::store::MemoryStore;
use crate::store::{Check, Op};

/// How often a failing store is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Logs store failures at most once per [`LOG_EVERY`], counting the rest.
#[derive(Debug)]
pub(crate) struct FailureLog {
    start: tokio::time::Instant,
    /// µs since `start` before which failures are only counted.
    quiet_until: AtomicU64,
    skipped: AtomicU64,
}

impl FailureLog {
    pub(crate) fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            quiet_until: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// Notes a failure; `Some(skipped)` when this one is to be logged,
    /// with how many were not since the last.
    pub(crate) fn note(&self) -> Option<u64> {
        let now = crate::clock::duration_micros(self.start.elapsed());
        let quiet = self.quiet_until.load(Ordering::Relaxed);
        let until = now.saturating_add(crate::clock::duration_micros(LOG_EVERY));
        if now >= quiet
            && self
                .quiet_until
                .compare_exchange(quiet, until, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.skipped.swap(0, Ordering::Relaxed));
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// A local store deciding while the shared one fails.
#[cfg(feature = "memory")]
pub(crate) struct Local {
    store: MemoryStore,
    instances: u64,
    /// Each set the engine has seen, and its divided twin.
    sets: Mutex<Vec<(PolicySet, PolicySet)>>,
}

/// No fallback without the in-memory store.
#[cfg(not(feature = "memory"))]
pub(crate) enum Local {}

#[cfg(feature = "memory")]
impl Local {
    pub(crate) fn new(instances: u64) -> Self {
        Self {
            store: MemoryStore::new(),
            instances,
            sets: Mutex::new(Vec::new()),
        }
    }

    /// `set` with every quota divided by the instance count, rounded up:
    /// each instance's share.
    fn share_of(&self, set: &PolicySet) -> PolicySet {
        let mut sets = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, share)) = sets.iter().find(|(s, _)| s.same_as(set)) {
            return share.clone();
        }
        let n = self.instances;
        let divided: Vec<Policy> = set
            .policies()
            .iter()
            .map(|p| {
                let q = p.quota();
                let mut share = Quota::new(q.limit().div_ceil(n), q.period());
                if q.burst_size() != q.limit() {
                    share = share.burst(q.burst_size().div_ceil(n));
                }
                Policy::new(p.name(), share).with_algorithm(p.algorithm())
            })
            .collect();
        // A division that no longer checks (a rare rate whose units overflow
        // when divided) keeps the whole quota rather than failing.
        let share = PolicySet::new(divided).unwrap_or_else(|_| set.clone());
        sets.push((set.clone(), share.clone()));
        share
    }

    /// Decides `check` on this instance's share of its quotas.
    pub(crate) fn decide(&self, check: Check<'_>) -> Decision {
        let share = self.share_of(check.policies());
        let local = Check::new(check.key(), &share, check.cost())
            .with_max_wait(check.max_wait())
            .with_op(check.op())
            .with_lease(check.lease());
        self.store.decide_now(local).into_degraded()
    }
}

#[cfg(not(feature = "memory"))]
impl Local {
    pub(crate) fn decide(&self, _: Check<'_>) -> Decision {
        match *self {}
    }
}

/// A [`Check`] that owns what it refers to: what decides a check again
/// after its future failed (in the fallback), gives back the lease it may
/// hold, or renews and releases a held lease.
pub(crate) struct OwnedCheck {
    key: Key,
    set: PolicySet,
    cost: u64,
    max_wait: Option<Duration>,
    op: Op,
    lease: u64,
}

impl OwnedCheck {
    pub(crate) fn of(check: &Check<'_>) -> Self {
        Self {
            key: check.key().clone(),
            set: check.policies().clone(),
            cost: check.cost(),
            max_wait: check.max_wait(),
            op: check.op(),
            lease: check.lease(),
        }
    }

    pub(crate) fn check(&self) -> Check<'_> {
        Check::new(&self.key, &self.set, self.cost)
            .with_max_wait(self.max_wait)
            .with_op(self.op)
            .with_lease(self.lease)
    }

    /// The lease id it holds its concurrency units under (0: none).
    pub(crate) fn lease(&self) -> u64 {
        self.lease
    }
}

/// What an engine does with a failed decision, whatever its store.
pub(crate) trait Failover: Send + Sync {
    /// Reports a decision the store made.
    fn decided(&self, check: Check<'_>, d: &Decision, latency: Option<Duration>);

    /// Logs the failure, and decides locally when a fallback is set.
    fn failed(&self, err: StoreError, check: Option<Check<'_>>) -> Result<Decision, StoreError>;

    /// Gives back, in the background, whatever a decision whose outcome is
    /// unknown (it failed, or was dropped in flight) may hold under its
    /// lease. A store's release of a lease that holds nothing changes
    /// nothing, and comes after the decision it follows on the same
    /// connection.
    fn forget(self: Arc<Self>, check: OwnedCheck);
}

pin_project! {
    /// A store's decision, passed through the engine's failure handling
    /// when it fails. The future of a [`RateLimit`](crate::RateLimit)
    /// service's decision for stores that do not decide at once.
    ///
    /// Dropped before it is decided (the request was cancelled), or failed,
    /// a decision that asked for concurrency units has them given back: the
    /// store may have granted them before the answer was lost.
    pub struct DecideFuture<F> {
        #[pin]
        inner: F,
        engine: Arc<dyn Failover>,
        // The check, when it is needed after the call: to decide it again in
        // the fallback, to give its lease back, or to log it.
        check: Option<OwnedCheck>,
        // When the call began, when its answer is reported.
        started: Option<std::time::Instant>,
    }

    impl<F> PinnedDrop for DecideFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped unanswered (an answer takes the check).
            let this = this.project();
            give_back(this.engine, this.check);
        }
    }
}

/// Gives back what `check`'s lease may hold, if it has one.
fn give_back(engine: &Arc<dyn Failover>, check: &mut Option<OwnedCheck>) {
    if let Some(check) = check.take_if(|c| c.lease != 0) {
        Arc::clone(engine).forget(check);
    }
}

impl<F> DecideFuture<F> {
    /// `report`: whether the answer is to be reported (then with the
    /// call's latency).
    pub(crate) fn new(
        inner: F,
        engine: Arc<dyn Failover>,
        check: Option<OwnedCheck>,
        report: bool,
    ) -> Self {
        Self {
            inner,
            engine,
            check,
            started: report.then(std::time::Instant::now),
        }
    }
}

impl<F> std::fmt::Debug for DecideFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecideFuture").finish_non_exhaustive()
    }
}

impl<F> Future for DecideFuture<F>
where
    F: Future<Output = Result<Decision, StoreError>>,
{
    type Output = Result<Decision, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        Poll::Ready(match result {
            // Granted or refused: the caller holds or drops the lease.
            Ok(d) => {
                if let Some(check) = this.check.take() {
                    let latency = this.started.map(|s| s.elapsed());
                    this.engine.decided(check.check(), &d, latency);
                }
                Ok(d)
            }
            Err(e) => {
                let decided = this
                    .engine
                    .failed(e, this.check.as_ref().map(OwnedCheck::check));
                // The store may have granted units it could not report.
                give_back(this.engine, this.check);
                decided
            }
        })
    }
}
