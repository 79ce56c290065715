//! The future a [`RateLimit`](crate::RateLimit) service returns:
//! checking → (waiting →) readying → calling, or an answer ready at once.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::config::FailurePolicy;
use crate::decision::Decision;
use crate::error::StoreError;
use crate::limiter::{Held, PendingHold};
use crate::response::{Respond, ResponseConfig, Stamp};

pin_project! {
    /// Response future of [`RateLimit`](crate::RateLimit).
    ///
    /// ```
    /// use tower::{Layer, Service, ServiceExt, service_fn};
    /// use tower_ratelimit::future::ResponseFuture;
    /// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
    /// let layer = RateLimitLayer::builder()
    ///     .policy(Policy::new("p", Quota::per_second(10)))
    ///     .reject_with_error()
    ///     .build()?;
    /// let mut svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n * 2) }));
    /// svc.ready().await?;
    /// let future: ResponseFuture<_, u32, _, _> = svc.call(21);
    /// assert_eq!(future.await?, 42);
    /// # Ok(())
    /// # }
    /// ```
    pub struct ResponseFuture<S, Req, C, M>
    where
        S: Service<Req>,
        M: Respond<Req, S::Response, S::Error>,
    {
        #[pin]
        state: State<S::Future, C, Result<M::Response, M::Error>>,
        // A clone of the inner service and the request, while a decision
        // or a slot is awaited. The clone is made ready only once the wait
        // is over, so a waiting request holds no slot of a
        // `ConcurrencyLimit` or `Buffer` inside. Boxed: the usual path (an
        // in-memory decision, no wait) never holds them.
        call: Option<Box<Call<S, Req>>>,
        // The rate-limit fields the response gets.
        stamp: Stamp,
        // The concurrency units of an admitted request, and whether the
        // response body keeps them until it ends.
        held: Option<Held>,
        hold_body: bool,
        _mode: PhantomData<fn() -> M>,
    }
}

/// What a request kept aside while it waits needs to be called.
pub(crate) struct Call<S, Req> {
    pub(crate) service: S,
    pub(crate) req: Req,
    /// While the store decides: what acting on its answer needs.
    pub(crate) checking: Option<Checking>,
}

/// What acting on a store's answer needs, for a store that answers later.
pub(crate) struct Checking {
    /// The lease the check holds concurrency units under.
    pub(crate) pending: Option<PendingHold>,
    /// The policy set the request is checked against.
    pub(crate) set: usize,
    pub(crate) config: Arc<ResponseConfig>,
    pub(crate) failure: FailurePolicy,
}

pin_project! {
    #[project = StateProj]
    enum State<F, C, O> {
        Checking { #[pin] check: C },
        // The timer is made on first poll, inside the runtime.
        Waiting { until: Instant, sleep: Option<Pin<Box<Sleep>>> },
        Readying,
        Calling { #[pin] future: F },
        Done { output: Option<O> },
    }
}

/// What follows a store's answer.
pub(crate) enum Step<O> {
    /// Call the inner service now; `admitted` when the decision admitted
    /// the request (not when shadow mode let it through, nor when the
    /// store failed open), so it holds the units it was charged.
    /// `degraded` when a fallback decided it, and holds its units.
    Call {
        stamp: Stamp,
        admitted: bool,
        degraded: bool,
    },
    /// Call it when the reserved slot comes.
    Wait {
        stamp: Stamp,
        wait: Duration,
        degraded: bool,
    },
    /// Answer without calling it.
    Answer(O),
}

/// Acts on a store's answer: attaches an admitting decision to the request,
/// applies the failure policy to an error. In shadow mode every decision
/// lets the request through at once.
#[inline]
pub(crate) fn step<Req, Res, E, M>(
    result: Result<Decision, StoreError>,
    req: &mut Req,
    set: usize,
    config: &ResponseConfig,
    failure: FailurePolicy,
) -> Step<Result<M::Response, M::Error>>
where
    M: Respond<Req, Res, E>,
{
    match result {
        Ok(decision) if decision.is_allowed() || config.shadow => {
            #[cfg(feature = "tracing")]
            if !decision.is_allowed() {
                log_shadow_rejection(&decision);
            }
            let stamp = config.stamp(set, &decision);
            let admitted = decision.is_allowed();
            let degraded = decision.is_degraded();
            let wait = decision.wait();
            if config.attach_decision {
                M::attach(req, decision);
            }
            if wait.is_zero() || config.shadow {
                Step::Call {
                    stamp,
                    admitted,
                    degraded,
                }
            } else {
                Step::Wait {
                    stamp,
                    wait,
                    degraded,
                }
            }
        }
        Ok(decision) => Step::Answer(M::rejected(config, set, req, Some(&decision))),
        Err(err) => match failure {
            FailurePolicy::FailClosed if !config.shadow => Step::Answer(M::store_error(req, err)),
            // The engine logged the failure.
            _ => {
                let _ = err;
                Step::Call {
                    stamp: Stamp::NONE,
                    admitted: false,
                    degraded: false,
                }
            }
        },
    }
}

/// Logs a request shadow mode let through: which policies would have
/// refused it, never its key.
#[cfg(feature = "tracing")]
fn log_shadow_rejection(decision: &Decision) {
    let mut policies = String::new();
    for p in decision.policies().iter().filter(|p| !p.is_allowed()) {
        if !policies.is_empty() {
            policies.push_str(", ");
        }
        policies.push_str(p.name());
    }
    tracing::info!(
        policies = %policies,
        retry_after_ms = decision.retry_after().map(|d| d.as_millis() as u64),
        "rate limit shadow mode: this request would have been rejected"
    );
}

impl<S, Req, C, M> ResponseFuture<S, Req, C, M>
where
    S: Service<Req>,
    M: Respond<Req, S::Response, S::Error>,
{
    fn with(state: State<S::Future, C, Result<M::Response, M::Error>>) -> Self {
        Self {
            state,
            call: None,
            stamp: Stamp::NONE,
            held: None,
            hold_body: false,
            _mode: PhantomData,
        }
    }

    /// Waits for the store, then for a slot if one was reserved.
    pub(crate) fn checking(check: C, call: Box<Call<S, Req>>) -> Self {
        let mut this = Self::with(State::Checking { check });
        this.call = Some(call);
        this
    }

    /// Waits for a reserved slot, then readies the service and calls it.
    pub(crate) fn waiting(
        stamp: Stamp,
        wait: Duration,
        call: Box<Call<S, Req>>,
        held: Option<Held>,
        hold_body: bool,
    ) -> Self {
        let until = Instant::now() + wait;
        let mut this = Self::with(State::Waiting { until, sleep: None });
        this.call = Some(call);
        this.stamp = stamp;
        this.held = held;
        this.hold_body = hold_body;
        this
    }

    /// The inner service's future, already called.
    #[inline]
    pub(crate) fn calling(
        future: S::Future,
        stamp: Stamp,
        held: Option<Held>,
        hold_body: bool,
    ) -> Self {
        let mut this = Self::with(State::Calling { future });
        this.stamp = stamp;
        this.held = held;
        this.hold_body = hold_body;
        this
    }

    /// An answer ready at once.
    pub(crate) fn done(output: Result<M::Response, M::Error>) -> Self {
        Self::with(State::Done {
            output: Some(output),
        })
    }
}

impl<S, Req, C, M> Future for ResponseFuture<S, Req, C, M>
where
    S: Service<Req>,
    C: Future<Output = Result<Decision, StoreError>>,
    M: Respond<Req, S::Response, S::Error>,
{
    type Output = Result<M::Response, M::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Checking { check } => {
                    let result = ready!(check.poll(cx));
                    let Some(call) = this.call.as_mut() else {
                        unreachable!("`checking` holds the call")
                    };
                    let Some(checking) = call.checking.take() else {
                        unreachable!("`checking` holds what acting on the answer needs")
                    };
                    let step = step::<Req, S::Response, S::Error, M>(
                        result,
                        &mut call.req,
                        checking.set,
                        &checking.config,
                        checking.failure,
                    );
                    *this.hold_body = checking.config.hold_until_body_end;
                    match step {
                        Step::Call {
                            stamp,
                            admitted,
                            degraded,
                        } => {
                            if admitted {
                                *this.held = checking.pending.map(|p| p.arm(false, degraded));
                            }
                            *this.stamp = stamp;
                            this.state.set(State::Readying);
                        }
                        Step::Wait {
                            stamp,
                            wait,
                            degraded,
                        } => {
                            *this.held = checking.pending.map(|p| p.arm(false, degraded));
                            *this.stamp = stamp;
                            // The slot is reserved: sleeping is all that is left.
                            let until = Instant::now() + wait;
                            this.state.set(State::Waiting { until, sleep: None });
                        }
                        Step::Answer(output) => {
                            // A turned-away request keeps neither service nor request.
                            *this.call = None;
                            this.state.set(State::Done { output: None });
                            return Poll::Ready(output);
                        }
                    }
                }
                StateProj::Waiting { until, sleep } => {
                    let sleep =
                        sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(*until)));
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    let Some(call) = this.call.as_mut() else {
                        unreachable!("a request is held until it is called")
                    };
                    if let Err(err) = ready!(call.service.poll_ready(cx)) {
                        *this.call = None;
                        this.state.set(State::Done { output: None });
                        return Poll::Ready(Err(M::inner_error(err)));
                    }
                    let Some(call) = this.call.take() else {
                        unreachable!("a request is held until it is called")
                    };
                    let Call {
                        mut service, req, ..
                    } = *call;
                    let future = service.call(req);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let output = match ready!(future.poll(cx)) {
                        Ok(res) => {
                            let held = this.held.take().filter(|_| *this.hold_body);
                            Ok(M::allowed(res, std::mem::take(this.stamp), held))
                        }
                        Err(err) => Err(M::inner_error(err)),
                    };
                    // The response is complete: units still held go back.
                    *this.held = None;
                    this.state.set(State::Done { output: None });
                    return Poll::Ready(output);
                }
                StateProj::Done { output } => {
                    return Poll::Ready(
                        output
                            .take()
                            .expect("ResponseFuture polled after it completed"),
                    );
                }
            }
        }
    }
}
