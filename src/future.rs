//! The future a [`RateLimit`](crate::RateLimit) service returns:
//! checking → (waiting →) calling, or an answer ready at once.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use crate::decision::Decision;
use crate::error::StoreError;
use crate::layer::FailurePolicy;
use crate::response::{Respond, ResponseConfig};

pin_project! {
    /// Response future of [`RateLimit`](crate::RateLimit).
    pub struct ResponseFuture<S, Req, C, M>
    where
        S: Service<Req>,
        M: Respond<Req, S::Response, S::Error>,
    {
        #[pin]
        state: State<S::Future, C, Result<M::Response, M::Error>>,
        // The service made ready by `poll_ready`, and the request, until
        // the decision lets the request through.
        call: Option<(S, Req)>,
        decision: Option<Decision>,
        info: M::Info,
        config: Arc<ResponseConfig>,
        failure: FailurePolicy,
        _mode: PhantomData<fn() -> M>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, C, O> {
        Checking { #[pin] check: C },
        Waiting { sleep: Pin<Box<Sleep>> },
        Calling { #[pin] future: F },
        Done { output: Option<O> },
    }
}

impl<S, Req, C, M> ResponseFuture<S, Req, C, M>
where
    S: Service<Req>,
    M: Respond<Req, S::Response, S::Error>,
{
    fn with(
        state: State<S::Future, C, Result<M::Response, M::Error>>,
        info: M::Info,
        config: Arc<ResponseConfig>,
        failure: FailurePolicy,
    ) -> Self {
        Self {
            state,
            call: None,
            decision: None,
            info,
            config,
            failure,
            _mode: PhantomData,
        }
    }

    pub(crate) fn checking(
        check: C,
        service: S,
        req: Req,
        info: M::Info,
        config: Arc<ResponseConfig>,
        failure: FailurePolicy,
    ) -> Self {
        let mut this = Self::with(State::Checking { check }, info, config, failure);
        this.call = Some((service, req));
        this
    }

    pub(crate) fn calling(future: S::Future, info: M::Info, config: Arc<ResponseConfig>) -> Self {
        Self::with(
            State::Calling { future },
            info,
            config,
            FailurePolicy::FailOpen,
        )
    }

    pub(crate) fn done(
        output: Result<M::Response, M::Error>,
        info: M::Info,
        config: Arc<ResponseConfig>,
    ) -> Self {
        Self::with(
            State::Done {
                output: Some(output),
            },
            info,
            config,
            FailurePolicy::FailOpen,
        )
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
                    let decision = match ready!(check.poll(cx)) {
                        Ok(decision) => decision,
                        Err(err) => match this.failure {
                            FailurePolicy::FailClosed => {
                                return Poll::Ready(M::store_error(*this.info, err));
                            }
                            FailurePolicy::FailOpen => {
                                #[cfg(feature = "tracing")]
                                tracing::warn!(error = %err, "rate limit store failed; letting the request through");
                                #[cfg(not(feature = "tracing"))]
                                let _ = err;
                                let (mut service, req) = take_call(this.call);
                                this.state.set(State::Calling {
                                    future: service.call(req),
                                });
                                continue;
                            }
                        },
                    };
                    if !decision.is_allowed() {
                        return Poll::Ready(M::rejected(this.config, *this.info, Some(&decision)));
                    }
                    let wait = decision.wait();
                    if let Some((_, req)) = this.call.as_mut() {
                        M::attach(req, &decision);
                    }
                    *this.decision = Some(decision);
                    if wait.is_zero() {
                        let (mut service, req) = take_call(this.call);
                        this.state.set(State::Calling {
                            future: service.call(req),
                        });
                    } else {
                        // The slot is reserved: sleeping is all that is left.
                        this.state.set(State::Waiting {
                            sleep: Box::pin(tokio::time::sleep(wait)),
                        });
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    let (mut service, req) = take_call(this.call);
                    this.state.set(State::Calling {
                        future: service.call(req),
                    });
                }
                StateProj::Calling { future } => {
                    let output = match ready!(future.poll(cx)) {
                        Ok(res) => Ok(M::allowed(this.config, res, this.decision.as_ref())),
                        Err(err) => Err(M::inner_error(err)),
                    };
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

fn take_call<S, Req>(call: &mut Option<(S, Req)>) -> (S, Req) {
    // Every path into `Calling` from `Checking` or `Waiting` runs once, and
    // `checking` is the only constructor of those states; it sets `call`.
    call.take().expect("the request is held until it is called")
}
