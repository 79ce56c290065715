//! [`RateLimit`], the service the layer makes.

use std::fmt;
use std::marker::PhantomData;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::future::{ResponseFuture, Step, step};
use crate::key::{Cost, KeyExtractor};
use crate::layer::{OnLimit, Shared};
use crate::response::Respond;
use crate::store::{Check, Store};

/// Rate-limits the inner service. Made by
/// [`RateLimitLayer`](crate::RateLimitLayer); every clone shares the
/// layer's limiter.
///
/// `poll_ready` forwards the inner service's readiness. The decision is made
/// per request: inside `call` for stores that decide at once (the in-memory
/// store), otherwise in the future `call` returns.
pub struct RateLimit<S, K, St, C, M> {
    inner: S,
    shared: Arc<Shared<K, St, C>>,
    _mode: PhantomData<fn() -> M>,
}

impl<S, K, St, C, M> RateLimit<S, K, St, C, M> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<K, St, C>>) -> Self {
        Self {
            inner,
            shared,
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
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            _mode: PhantomData,
        }
    }
}

impl<S: fmt::Debug, K, St, C, M> fmt::Debug for RateLimit<S, K, St, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("policies", &self.shared.policies.policies())
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
        self.inner.poll_ready(cx).map_err(M::inner_error)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let shared = &*self.shared;
        let config = Arc::clone(&shared.config);
        let info = M::info(&req);
        let key = match shared.key.extract(&req) {
            Ok(Some(key)) => key,
            Ok(None) if shared.reject_missing_key => {
                return ResponseFuture::done(M::rejected(&config, info, None), info, config);
            }
            Ok(None) => {
                return ResponseFuture::calling(self.inner.call(req), None, info, config);
            }
            Err(err) => return ResponseFuture::done(M::key_error(info, err), info, config),
        };
        let max_wait = match shared.on_limit {
            OnLimit::Reject => None,
            OnLimit::Wait { max } => Some(max),
        };
        let cost = shared.cost.cost(&req);
        let check = Check::new(&key, &shared.policies, cost).max_wait(max_wait);
        let Some(result) = shared.store.decide_sync(check) else {
            let check = shared.store.decide(check);
            let call = Box::new((take_ready(&mut self.inner), req));
            return ResponseFuture::checking(check, call, info, config, shared.failure);
        };
        match step::<Req, S::Response, S::Error, M>(result, &mut req, info, &config, shared.failure)
        {
            Step::Call(decision) => {
                ResponseFuture::calling(self.inner.call(req), decision, info, config)
            }
            Step::Wait(decision, wait) => {
                let call = Box::new((take_ready(&mut self.inner), req));
                ResponseFuture::waiting(decision, wait, call, info, config)
            }
            Step::Answer(output) => ResponseFuture::done(output, info, config),
        }
    }
}

/// Takes the service `poll_ready` readied for this request, leaving a clone
/// in its place for the next one.
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    mem::replace(inner, clone)
}
