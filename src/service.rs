//! [`RateLimit`], the service the layer makes.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use tokio::time::Sleep;
use tower_service::Service;

use crate::config::{FailurePolicy, OnLimit, Shared};
use crate::decision::Decision;
use crate::error::StoreError;
use crate::future::{ResponseFuture, Step, step};
use crate::key::{Cost, Key, KeyExtractor};
use crate::limiter::{Held, PendingHold};
use crate::response::Respond;
use crate::store::{Check, Store};

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
/// [`OnLimit::Wait`] mode with a key and a cost that do not depend on the
/// request ([`Global`](crate::key::Global), the unit cost), `poll_ready`
/// reserves the next slot and stays `Pending` until it comes, so a tower
/// client stack is paced by backpressure rather than by holding requests.
/// A service dropped with a reservation leaves the slot spent.
pub struct RateLimit<S, K, St, C, M> {
    inner: S,
    shared: Arc<Shared<K, St, C>>,
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

impl<S, K, St, C, M> RateLimit<S, K, St, C, M> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<K, St, C>>) -> Self {
        Self {
            inner,
            shared,
            pace: Pace::Idle,
            _mode: PhantomData,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K, St, C, M> Clone for RateLimit<S, K, St, C, M> {
    /// A clone shares the limiter, not a slot this one reserved.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), Arc::clone(&self.shared))
    }
}

impl<S: fmt::Debug, K, St, C, M> fmt::Debug for RateLimit<S, K, St, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("policies", &self.shared.engine.policies.policies())
            .finish_non_exhaustive()
    }
}

impl<S, K, St, C, M, Req> Service<Req> for RateLimit<S, K, St, C, M>
where
    S: Service<Req> + Clone,
    K: KeyExtractor<Req>,
    St: Store,
    C: Cost<Req>,
    M: Respond<Req, S::Response, S::Error>,
{
    type Response = M::Response;
    type Error = M::Error;
    type Future = ResponseFuture<S, Req, St::Future, M>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Some((key, cost)) = self.paced() {
            ready!(self.reserve(cx, &key, cost));
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
        let shared = &*self.shared;
        let config = Arc::clone(&shared.config);
        let info = M::info(&req);
        if let Pace::Reserved(..) = self.pace {
            let Pace::Reserved(result, held) = std::mem::replace(&mut self.pace, Pace::Idle) else {
                unreachable!()
            };
            return self.call_reserved(req, result, held);
        }
        let key = match shared.key.extract(&req) {
            Ok(Some(key)) => key,
            Ok(None) if shared.reject_missing_key => {
                return ResponseFuture::done(M::rejected(&config, info, None), info, config);
            }
            Ok(None) => {
                return ResponseFuture::calling(self.inner.call(req), None, None, info, config);
            }
            Err(err) => return ResponseFuture::done(M::key_error(info, err), info, config),
        };
        let cost = shared.cost.cost(&req);
        let engine = &shared.engine;
        let set = &engine.policies;
        let pending = engine.lease(&key, set, cost);
        let check = Check::new(&key, set, cost)
            .max_wait(shared.max_wait())
            .lease(pending.as_ref().map_or(0, PendingHold::id));
        let Some(result) = engine.store.decide_sync(check) else {
            let check = engine.store.decide(check);
            let call = Box::new((self.inner.clone(), req));
            return ResponseFuture::checking(check, call, pending, info, config, shared.failure);
        };
        match step::<Req, S::Response, S::Error, M>(result, &mut req, info, &config, shared.failure)
        {
            Step::Call(decision) => {
                let held = decision.as_ref().and(pending).map(|p| p.arm(true));
                ResponseFuture::calling(self.inner.call(req), decision, held, info, config)
            }
            Step::Wait(decision, wait) => {
                let held = pending.map(|p| p.arm(true));
                let call = Box::new((self.inner.clone(), req));
                ResponseFuture::waiting(decision, wait, call, held, info, config)
            }
            Step::Answer(output) => ResponseFuture::done(output, info, config),
        }
    }
}

impl<S, K, St, C, M> RateLimit<S, K, St, C, M>
where
    St: Store,
{
    /// The key and cost `poll_ready` reserves for: in wait mode, when
    /// neither depends on the request.
    fn paced<Req>(&self) -> Option<(Key, u64)>
    where
        K: KeyExtractor<Req>,
        C: Cost<Req>,
    {
        if let OnLimit::Reject = self.shared.on_limit {
            return None;
        }
        Some((self.shared.key.fixed()?, self.shared.cost.fixed()?))
    }

    /// Drives the reservation until it is made and its slot has come.
    fn reserve(&mut self, cx: &mut Context<'_>, key: &Key, cost: u64) -> Poll<()> {
        let engine = &self.shared.engine;
        loop {
            self.pace = match &mut self.pace {
                Pace::Idle => {
                    let set = &engine.policies;
                    let pending = engine.lease(key, set, cost);
                    let check = Check::new(key, set, cost)
                        .max_wait(self.shared.max_wait())
                        .lease(pending.as_ref().map_or(0, PendingHold::id));
                    match engine.store.decide_sync(check) {
                        Some(result) => settle(result, pending, true),
                        None => Pace::Deciding(
                            Mutex::new(Box::pin(engine.store.decide(check))),
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
    ) -> ResponseFuture<S, Req, St::Future, M>
    where
        S: Service<Req>,
        M: Respond<Req, S::Response, S::Error>,
    {
        let shared = &*self.shared;
        let config = Arc::clone(&shared.config);
        let info = M::info(&req);
        // The wait is over: an admitted reservation is called at once.
        let result = result.map(Decision::waited);
        match step::<Req, S::Response, S::Error, M>(result, &mut req, info, &config, shared.failure)
        {
            Step::Call(decision) => {
                ResponseFuture::calling(self.inner.call(req), decision, held, info, config)
            }
            Step::Wait(..) => unreachable!("a reserved slot has been waited for"),
            Step::Answer(output) => ResponseFuture::done(output, info, config),
        }
    }
}

/// The reservation a store's answer makes.
fn settle(result: Result<Decision, StoreError>, pending: Option<PendingHold>, local: bool) -> Pace {
    match result {
        Ok(d) if d.is_allowed() => {
            let held = pending.map(|p| p.arm(local));
            match d.wait() {
                wait if wait.is_zero() => Pace::Reserved(Ok(d), held),
                wait => Pace::Sleeping(Box::pin(tokio::time::sleep(wait)), d, held),
            }
        }
        other => Pace::Reserved(other, None),
    }
}
