//! [`RateLimit`], the service the layer makes.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use tokio::time::Sleep;
use tower_service::Service;

use crate::config::{FailurePolicy, OnLimit, Shared, UnknownSet};
use crate::decision::Decision;
use crate::error::{KeyError, StoreError};
use crate::fallback::DecideFuture;
use crate::future::{Call, Checking, ResponseFuture, Step, step};
use crate::key::{Cost, Key, KeyExtractor};
use crate::limiter::{Held, PendingHold};
use crate::response::{Respond, Stamp};
use crate::select::{SelectPolicies, Skip};
use crate::store::{Check, Store};

const UNKNOWN_SET: &str = "the rate limit's `policies_by` chose a policy set the layer does \
    not have: add it with `.policy_set(name, policies)`";

/// Rate-limits the inner service. Made by
/// [`RateLimitLayer`](crate::RateLimitLayer); every clone shares the
/// layer's limiter.
///
/// `poll_ready` forwards the inner service's readiness, and the decision is
/// made per request: inside `call` for stores that decide at once (the
/// in-memory store), otherwise in the future `call` returns. A request that
/// must wait for its slot, or for a networked store, holds a clone of the
/// inner service and makes it ready only when its wait is over.
///
/// One case decides in `poll_ready` instead: in
/// [`OnLimit::Wait`] mode with a key, a cost and a policy set that do not
/// depend on the request ([`Global`](crate::key::Global), the unit cost, no
/// [`policies_by`](crate::RateLimitLayerBuilder::policies_by) or
/// [`skip_if`](crate::RateLimitLayerBuilder::skip_if)), and not in shadow
/// mode, `poll_ready`
/// reserves the next slot and stays `Pending` until it comes, so a tower
/// client stack is paced by backpressure rather than by holding requests.
/// A service dropped with a reservation leaves the slot spent.
///
/// ```
/// use http::{Request, Response, StatusCode};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
/// let layer = RateLimitLayer::builder()
///     .policy(Policy::new("p", Quota::per_minute(1)))
///     .build()?;
/// let svc = layer.layer(service_fn(|_: Request<String>| async {
///     Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
/// }));
/// let ok = svc.clone().oneshot(Request::new(String::new())).await?;
/// assert_eq!(ok.status(), StatusCode::OK);
/// assert!(ok.headers().contains_key("ratelimit"));
/// let limited = svc.oneshot(Request::new(String::new())).await?;
/// assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
/// assert!(limited.headers().contains_key("retry-after"));
/// # Ok(())
/// # }
/// ```
pub struct RateLimit<S, K, St, C, M, P, F> {
    inner: S,
    shared: Arc<Shared<K, St, C, P, F>>,
    pace: Pace,
    _mode: PhantomData<fn() -> M>,
}

/// A slot reserved by `poll_ready` for the next `call`.
enum Pace {
    Idle,
    // In a mutex only so the service stays `Sync` (axum asks for it); it is
    // reached through `get_mut`, never locked.
    Deciding(Mutex<BoxDecision>, Option<PendingHold>),
    Sleeping(Pin<Box<Sleep>>, Decision, Option<Held>),
    Reserved(Result<Decision, StoreError>, Option<Held>),
}

type BoxDecision = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

impl<S, K, St, C, M, P, F> RateLimit<S, K, St, C, M, P, F> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<K, St, C, P, F>>) -> Self {
        Self {
            inner,
            shared,
            pace: Pace::Idle,
            _mode: PhantomData,
        }
    }

    /// The inner service.
    ///
    /// ```
    /// use tower::Layer;
    /// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
    ///
    /// struct Backend {
    ///     name: &'static str,
    /// }
    /// let layer = RateLimitLayer::builder().policy(Policy::new("p", Quota::per_second(10))).build()?;
    /// let svc = layer.layer(Backend { name: "orders" });
    /// assert_eq!(svc.get_ref().name, "orders");
    /// # Ok::<(), tower_ratelimit::BoxError>(())
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    ///
    /// ```
    /// use tower::Layer;
    /// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
    ///
    /// struct Backend {
    ///     name: &'static str,
    /// }
    /// let layer = RateLimitLayer::builder().policy(Policy::new("p", Quota::per_second(10))).build()?;
    /// let mut svc = layer.layer(Backend { name: "orders" });
    /// svc.get_mut().name = "billing";
    /// assert_eq!(svc.get_ref().name, "billing");
    /// # Ok::<(), tower_ratelimit::BoxError>(())
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    ///
    /// ```
    /// use tower::Layer;
    /// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
    ///
    /// struct Backend {
    ///     name: &'static str,
    /// }
    /// let layer = RateLimitLayer::builder().policy(Policy::new("p", Quota::per_second(10))).build()?;
    /// let svc = layer.layer(Backend { name: "orders" });
    /// let backend: Backend = svc.into_inner();
    /// assert_eq!(backend.name, "orders");
    /// # Ok::<(), tower_ratelimit::BoxError>(())
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K, St, C, M, P, F> Clone for RateLimit<S, K, St, C, M, P, F> {
    /// A clone shares the limiter, not a slot this one reserved.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), Arc::clone(&self.shared))
    }
}

impl<S: fmt::Debug, K, St, C, M, P, F> fmt::Debug for RateLimit<S, K, St, C, M, P, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("policy_sets", &self.shared.sets)
            .finish_non_exhaustive()
    }
}

impl<S, K, St, C, M, P, F, Req> Service<Req> for RateLimit<S, K, St, C, M, P, F>
where
    S: Service<Req> + Clone,
    K: KeyExtractor<Req>,
    St: Store,
    C: Cost<Req>,
    M: Respond<Req, S::Response, S::Error>,
    P: SelectPolicies<Req>,
    F: Skip<Req>,
{
    type Response = M::Response;
    type Error = M::Error;
    type Future = ResponseFuture<S, Req, DecideFuture<St::Future>, M>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Some((key, cost, set)) = self.paced() {
            ready!(self.reserve(cx, &key, cost, set));
            let proceed = match &self.pace {
                Pace::Reserved(Ok(d), _) => d.is_allowed(),
                Pace::Reserved(Err(_), _) => self.shared.failure == FailurePolicy::FailOpen,
                _ => unreachable!("`reserve` is ready with a reservation"),
            };
            if !proceed {
                // `call` answers without the inner service.
                return Poll::Ready(Ok(()));
            }
        }
        self.inner.poll_ready(cx).map_err(M::inner_error)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        if let Pace::Reserved(..) = self.pace {
            let Pace::Reserved(result, held) = std::mem::replace(&mut self.pace, Pace::Idle) else {
                unreachable!()
            };
            return self.call_reserved(req, result, held);
        }
        let shared = &*self.shared;
        let config = &*shared.config;
        if shared.skip.skip(&req) {
            return ResponseFuture::calling(self.inner.call(req), Stamp::NONE, None, false);
        }
        let index = match shared.sets.choose(shared.select.select(&req)) {
            Ok(Some(index)) => index,
            // No set for this request: it is not limited.
            Ok(None) => {
                return ResponseFuture::calling(self.inner.call(req), Stamp::NONE, None, false);
            }
            Err(UnknownSet) => {
                #[cfg(feature = "tracing")]
                tracing::error!(
                    set = ?shared.select.select(&req),
                    "rate limit policies_by chose an unknown policy set"
                );
                let answer = M::key_error(&req, KeyError::new(UNKNOWN_SET));
                return ResponseFuture::done(answer);
            }
        };
        let key = match shared.key.extract(&req) {
            Ok(Some(key)) => key,
            Ok(None) if shared.reject_missing_key && !config.shadow => {
                return ResponseFuture::done(M::rejected(config, index, &req, None));
            }
            Ok(None) => {
                #[cfg(feature = "tracing")]
                if shared.reject_missing_key {
                    tracing::info!(
                        "rate limit shadow mode: a request without a key would have been rejected"
                    );
                }
                return ResponseFuture::calling(self.inner.call(req), Stamp::NONE, None, false);
            }
            Err(err) => return ResponseFuture::done(M::key_error(&req, err)),
        };
        let cost = shared.cost.cost(&req);
        let engine = &shared.engine;
        let set = shared.sets.get(index);
        let pending = engine.lease(&key, set, cost);
        let check = Check::new(&key, set, cost)
            .with_max_wait(shared.max_wait())
            .with_lease(pending.as_ref().map_or(0, PendingHold::id));
        let Some(result) = engine.decide_now(check) else {
            let check = engine.decide_later(check);
            let call = Box::new(Call {
                service: later(&mut self.inner),
                req,
                checking: Some(Checking {
                    pending,
                    set: index,
                    config: Arc::clone(&shared.config),
                    failure: shared.failure,
                }),
            });
            return ResponseFuture::checking(check, call);
        };
        let hold_body = config.hold_until_body_end;
        match step::<Req, S::Response, S::Error, M>(result, &mut req, index, config, shared.failure)
        {
            Step::Call {
                stamp,
                admitted,
                degraded,
            } => {
                let held = pending.filter(|_| admitted).map(|p| p.arm(true, degraded));
                ResponseFuture::calling(self.inner.call(req), stamp, held, hold_body)
            }
            Step::Wait {
                stamp,
                wait,
                degraded,
            } => {
                let held = pending.map(|p| p.arm(true, degraded));
                let call = Box::new(Call {
                    service: later(&mut self.inner),
                    req,
                    checking: None,
                });
                ResponseFuture::waiting(stamp, wait, call, held, hold_body)
            }
            Step::Answer(output) => ResponseFuture::done(output),
        }
    }
}

/// The inner service for a request called later: a clone, made ready once
/// its wait is over. The one `poll_ready` readied is dropped for a fresh
/// clone, so that neither the handle nor the waiting request holds a slot
/// of a `ConcurrencyLimit` or `Buffer` inside meanwhile (their clones start
/// without one).
fn later<S: Clone>(inner: &mut S) -> S {
    let service = inner.clone();
    *inner = service.clone();
    service
}

impl<S, K, St, C, M, P, F> RateLimit<S, K, St, C, M, P, F>
where
    St: Store,
{
    /// The key, cost and policy set `poll_ready` reserves for: in wait
    /// mode, when none of them depends on the request and no request is
    /// skipped or let through in shadow mode.
    fn paced<Req>(&self) -> Option<(Key, u64, usize)>
    where
        K: KeyExtractor<Req>,
        C: Cost<Req>,
        P: SelectPolicies<Req>,
        F: Skip<Req>,
    {
        let shared = &*self.shared;
        if let OnLimit::Reject = shared.on_limit {
            return None;
        }
        if shared.config.shadow || !shared.select.is_fixed() || !shared.skip.is_never() {
            return None;
        }
        let set = shared.sets.own()?;
        Some((shared.key.fixed()?, shared.cost.fixed()?, set))
    }

    /// Drives the reservation until it is made and its slot has come.
    fn reserve(&mut self, cx: &mut Context<'_>, key: &Key, cost: u64, index: usize) -> Poll<()> {
        let engine = &self.shared.engine;
        loop {
            self.pace = match &mut self.pace {
                Pace::Idle => {
                    let set = self.shared.sets.get(index);
                    let pending = engine.lease(key, set, cost);
                    let check = Check::new(key, set, cost)
                        .with_max_wait(self.shared.max_wait())
                        .with_lease(pending.as_ref().map_or(0, PendingHold::id));
                    match engine.decide_now(check) {
                        Some(result) => settle(result, pending, true),
                        None => Pace::Deciding(
                            Mutex::new(Box::pin(engine.decide_later(check))),
                            pending,
                        ),
                    }
                }
                Pace::Deciding(decide, pending) => {
                    let decide = decide.get_mut().unwrap_or_else(PoisonError::into_inner);
                    let result = ready!(decide.as_mut().poll(cx));
                    settle(result, pending.take(), false)
                }
                Pace::Sleeping(sleep, decision, held) => {
                    ready!(sleep.as_mut().poll(cx));
                    Pace::Reserved(Ok(decision.clone()), held.take())
                }
                Pace::Reserved(..) => return Poll::Ready(()),
            };
        }
    }

    /// Answers a request with the slot `poll_ready` reserved for it.
    fn call_reserved<Req>(
        &mut self,
        mut req: Req,
        result: Result<Decision, StoreError>,
        held: Option<Held>,
    ) -> ResponseFuture<S, Req, DecideFuture<St::Future>, M>
    where
        S: Service<Req>,
        M: Respond<Req, S::Response, S::Error>,
    {
        let shared = &*self.shared;
        let config = &*shared.config;
        // Pacing happens only for the layer's own set.
        let index = shared.sets.own().unwrap_or(0);
        // The wait is over: an admitted reservation is called at once.
        let result = result.map(Decision::waited);
        match step::<Req, S::Response, S::Error, M>(result, &mut req, index, config, shared.failure)
        {
            Step::Call { stamp, .. } => ResponseFuture::calling(
                self.inner.call(req),
                stamp,
                held,
                config.hold_until_body_end,
            ),
            Step::Wait { .. } => unreachable!("a reserved slot has been waited for"),
            Step::Answer(output) => ResponseFuture::done(output),
        }
    }
}

/// The reservation a store's answer makes.
fn settle(result: Result<Decision, StoreError>, pending: Option<PendingHold>, local: bool) -> Pace {
    match result {
        Ok(d) if d.is_allowed() => {
            let held = pending.map(|p| p.arm(local, d.is_degraded()));
            match d.wait() {
                wait if wait.is_zero() => Pace::Reserved(Ok(d), held),
                wait => Pace::Sleeping(Box::pin(tokio::time::sleep(wait)), d, held),
            }
        }
        other => Pace::Reserved(other, None),
    }
}
