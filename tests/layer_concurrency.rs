//! The layer with `Concurrency` policies: requests in flight are bounded
//! across every clone (and, on Redis, every instance), and their permits go
//! back when the response completes, the body ends, or the future is
//! dropped.

mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use tokio::sync::oneshot;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_ratelimit::key::Header;
use tower_ratelimit::store::Store;
use tower_ratelimit::{MemoryStore, Policy, Quota, RateLimitLayer};

type Req = Request<String>;

/// A service whose responses wait until the test lets them go: each call
/// hands the test a sender that finishes it.
#[derive(Clone)]
struct Gated(Arc<Mutex<Vec<oneshot::Sender<()>>>>);

impl Gated {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(Vec::new())))
    }

    fn release_one(&self) {
        let tx = self.0.lock().unwrap().remove(0);
        tx.send(()).unwrap();
    }

    fn waiting(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn service(
        &self,
    ) -> impl Service<Req, Response = Response<String>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static {
        let gates = Arc::clone(&self.0);
        service_fn(move |_req: Req| {
            let (tx, rx) = oneshot::channel();
            gates.lock().unwrap().push(tx);
            async move {
                let _ = rx.await;
                Ok::<_, Infallible>(Response::new("done".to_owned()))
            }
        })
    }
}

fn in_flight_layer<St: Store>(
    store: St,
    limit: u64,
) -> RateLimitLayer<tower_ratelimit::key::Global, St> {
    RateLimitLayer::builder()
        .store(store)
        .policy(Policy::concurrency("in-flight", limit))
        .build()
        .unwrap()
}

fn header<B>(res: &Response<B>, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Lets other tasks run until `cond` holds; fails rather than hang.
async fn until(cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting");
        settle().await;
    }
}

async fn holds_until_the_response_completes<St: Store>(store: St) {
    let gated = Gated::new();
    let svc = in_flight_layer(store, 2).layer(gated.service());
    let a = tokio::spawn(svc.clone().oneshot(Req::default()));
    let b = tokio::spawn(svc.clone().oneshot(Req::default()));
    until(|| gated.waiting() >= 2).await;
    // Two in flight: a third is refused, with the policy's unit and no
    // retry time (nobody knows when one finishes).
    let refused = svc.clone().oneshot(Req::default()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        header(&refused, "ratelimit-policy").as_deref(),
        Some("\"in-flight\";q=2;qu=\"concurrent-requests\"")
    );
    assert_eq!(
        header(&refused, "ratelimit").as_deref(),
        Some("\"in-flight\";r=0")
    );
    assert_eq!(header(&refused, "retry-after"), None);

    // One completes (whichever reached the service first): its permit goes
    // back with its response (on Redis a task sends the release: allow it a
    // bounded moment).
    gated.release_one();
    until(|| a.is_finished() || b.is_finished()).await;
    let (done, other) = if a.is_finished() { (a, b) } else { (b, a) };
    assert_eq!(done.await.unwrap().unwrap().status(), StatusCode::OK);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let c = loop {
        let c = tokio::spawn(svc.clone().oneshot(Req::default()));
        until(|| gated.waiting() >= 2 || c.is_finished()).await;
        if gated.waiting() == 2 {
            break c;
        }
        let res = c.await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            std::time::Instant::now() < deadline,
            "the permit never came back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    gated.release_one();
    gated.release_one();
    assert_eq!(other.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(c.await.unwrap().unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn in_memory_a_permit_is_held_until_the_response_completes() {
    holds_until_the_response_completes(MemoryStore::new()).await;
}

#[cfg(feature = "redis")]
#[test]
fn on_redis_a_permit_is_held_until_the_response_completes() {
    let server = support::RedisServer::start();
    support::runtime().block_on(async {
        holds_until_the_response_completes(support::redis_store(&server).await).await;
    });
}

#[tokio::test]
async fn a_dropped_response_future_gives_its_permit_back() {
    let gated = Gated::new();
    let svc = in_flight_layer(MemoryStore::new(), 1).layer(gated.service());
    let held = tokio::spawn(svc.clone().oneshot(Req::default()));
    until(|| gated.waiting() >= 1).await;
    assert_eq!(
        svc.clone().oneshot(Req::default()).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    held.abort();
    let _ = held.await;
    let next = tokio::spawn(svc.clone().oneshot(Req::default()));
    until(|| gated.waiting() >= 2).await;
    gated.0.lock().unwrap().pop().unwrap().send(()).unwrap();
    assert_eq!(next.await.unwrap().unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn a_panicking_inner_service_gives_its_permit_back() {
    let svc = in_flight_layer(MemoryStore::new(), 1).layer(service_fn(|req: Req| async move {
        assert!(!req.body().is_empty(), "the handler failed");
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let crashed = tokio::spawn(svc.clone().oneshot(Req::default()));
    assert!(crashed.await.unwrap_err().is_panic());
    let res = svc.oneshot(Req::new("x".into())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn concurrency_and_rate_policies_on_one_layer_admit_all_or_nothing() {
    let gated = Gated::new();
    let svc = RateLimitLayer::builder()
        .policy(Policy::new("rate", Quota::per_minute(3)))
        .policy(Policy::concurrency("in-flight", 1))
        .build()
        .unwrap()
        .layer(gated.service());
    let a = tokio::spawn(svc.clone().oneshot(Req::default()));
    until(|| gated.waiting() >= 1).await;
    // Refused for concurrency: the rate policy is charged nothing.
    for _ in 0..5 {
        let res = svc.clone().oneshot(Req::default()).await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            header(&res, "ratelimit").as_deref(),
            Some("\"rate\";r=2;t=20, \"in-flight\";r=0")
        );
    }
    gated.release_one();
    a.await.unwrap().unwrap();
    for _ in 0..2 {
        let next = tokio::spawn(svc.clone().oneshot(Req::default()));
        until(|| gated.waiting() >= 1).await;
        gated.release_one();
        assert_eq!(next.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    // Refused for the rate: no permit is taken, so none is missing later.
    let res = svc.clone().oneshot(Req::default()).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(header(&res, "retry-after").is_some());
    assert_eq!(
        header(&res, "ratelimit").as_deref(),
        Some("\"rate\";r=0;t=20, \"in-flight\";r=1")
    );
}

#[tokio::test]
async fn concurrency_is_counted_per_key() {
    let gated = Gated::new();
    let svc = RateLimitLayer::builder()
        .policy(Policy::concurrency("per-user", 1))
        .key(Header::new("x-user"))
        .build()
        .unwrap()
        .layer(gated.service());
    let user = |name: &str| {
        Request::builder()
            .header("x-user", name)
            .body(String::new())
            .unwrap()
    };
    let _a = tokio::spawn(svc.clone().oneshot(user("ann")));
    until(|| gated.waiting() >= 1).await;
    assert_eq!(
        svc.clone().oneshot(user("ann")).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let _b = tokio::spawn(svc.clone().oneshot(user("bob")));
    until(|| gated.waiting() >= 2).await;
}

#[tokio::test]
async fn grpc_requests_over_the_concurrency_limit_get_resource_exhausted() {
    let gated = Gated::new();
    let svc = in_flight_layer(MemoryStore::new(), 1).layer(gated.service());
    let grpc = || {
        Request::builder()
            .header("content-type", "application/grpc")
            .body(String::new())
            .unwrap()
    };
    let _a = tokio::spawn(svc.clone().oneshot(grpc()));
    until(|| gated.waiting() >= 1).await;
    let res = svc.oneshot(grpc()).await.unwrap();
    assert_eq!(header(&res, "grpc-status").as_deref(), Some("8"));
}

/// A body that ends when the test says so.
struct GateBody(Option<oneshot::Receiver<()>>);

impl http_body::Body for GateBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.0.as_mut() {
            Some(rx) => match Pin::new(rx).poll(cx) {
                Poll::Ready(_) => {
                    self.0 = None;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
            None => Poll::Ready(None),
        }
    }
}

use std::future::Future as _;

#[tokio::test]
async fn a_permit_can_be_held_until_the_body_ends() {
    let ends = Arc::new(Mutex::new(Vec::new()));
    let inner = {
        let ends = Arc::clone(&ends);
        service_fn(move |_req: Req| {
            let (tx, rx) = oneshot::channel();
            ends.lock().unwrap().push(tx);
            async move { Ok::<_, Infallible>(Response::new(GateBody(Some(rx)))) }
        })
    };
    let streaming = |until_body_end: bool| {
        let layer = RateLimitLayer::builder().policy(Policy::concurrency("streams", 1));
        let layer = if until_body_end {
            layer.hold_permits_until_body_end()
        } else {
            layer
        };
        layer.build().unwrap().layer(inner.clone())
    };

    // By default the permit goes back with the response head.
    let svc = streaming(false);
    let _first = svc.clone().oneshot(Req::default()).await.unwrap();
    let second = svc.clone().oneshot(Req::default()).await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);

    // Held until the body ends, a second stream waits for the first.
    let svc = streaming(true);
    let first = svc.clone().oneshot(Req::default()).await.unwrap();
    let refused = svc.clone().oneshot(Req::default()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let end = ends.lock().unwrap().pop().unwrap();
    end.send(()).unwrap();
    let body = http_body_util::BodyExt::collect(first.into_body()).await;
    assert!(body.is_ok());
    let third = svc.oneshot(Req::default()).await.unwrap();
    assert_eq!(third.status(), StatusCode::OK);
}
