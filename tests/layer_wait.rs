//! Wait mode with other tower middleware inside the layer: a request
//! waiting for its slot holds no readiness of the inner service, so it
//! blocks (or, under `load_shed`, sheds) no other key's requests; and a
//! layer with a fixed key paces its caller in `poll_ready`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_ratelimit::clock::TokioClock;
use tower_ratelimit::key::Header;
use tower_ratelimit::{MemoryStore, OnLimit, Policy, Quota, RateLimitLayer, RateLimited};

type Req = Request<String>;

fn user(name: &str) -> Req {
    Request::builder()
        .header("x-user", name)
        .body(String::new())
        .unwrap()
}

/// One request per user per second, waiting up to 2 s for a slot.
fn per_user_waiting() -> RateLimitLayer<Header, MemoryStore<TokioClock>> {
    RateLimitLayer::builder()
        .store(
            MemoryStore::builder()
                .clock(TokioClock::new())
                .build()
                .unwrap(),
        )
        .policy(Policy::new("per-user", Quota::per_second(1)))
        .key(Header::new("x-user"))
        .on_limit(OnLimit::Wait {
            max: Duration::from_secs(2),
        })
        .build()
        .unwrap()
}

/// Records who was served when.
fn recording(
    log: &Arc<Mutex<Vec<(String, Duration)>>>,
    start: Instant,
) -> impl Service<Req, Response = Response<String>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    let log = Arc::clone(log);
    service_fn(move |req: Req| {
        let who = req.headers()["x-user"].to_str().unwrap().to_owned();
        log.lock().unwrap().push((who, start.elapsed()));
        async { Ok::<_, Infallible>(Response::new(String::new())) }
    })
}

/// Ann spends her slot and asks again (waiting 1 s); Bob then asks once.
/// Returns when each was served.
async fn ann_waits_bob_asks<S>(svc: S) -> Vec<(String, Duration)>
where
    S: Service<Req, Response = Response<tower_ratelimit::response::ResponseBody<String>>>
        + Clone
        + Send
        + 'static,
    S::Error: std::fmt::Debug + Send + 'static,
    S::Future: Send,
{
    let start = Instant::now();
    let ok = |res: Result<Response<_>, S::Error>| res.unwrap().status() == StatusCode::OK;
    assert!(ok(svc.clone().oneshot(user("ann")).await));
    let ann = tokio::spawn(svc.clone().oneshot(user("ann")));
    tokio::task::yield_now().await;
    let bob = tokio::spawn(svc.clone().oneshot(user("bob")));
    let bob_done = async {
        let res = bob.await.unwrap();
        (res.unwrap().status(), start.elapsed())
    };
    let (status, bob_at) = bob_done.await;
    assert_eq!(status, StatusCode::OK);
    assert!(ok(ann.await.unwrap()));
    vec![("bob".into(), bob_at)]
}

#[tokio::test(start_paused = true)]
async fn a_waiting_request_holds_no_concurrency_limit_slot() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let svc = ServiceBuilder::new()
        .layer(per_user_waiting())
        .concurrency_limit(1)
        .service(recording(&log, start));
    let served = ann_waits_bob_asks(svc).await;
    // Bob is served at once, not after Ann's second.
    assert_eq!(served, [("bob".to_owned(), Duration::ZERO)]);
    let log = log.lock().unwrap();
    assert_eq!(
        *log,
        [
            ("ann".to_owned(), Duration::ZERO),
            ("bob".to_owned(), Duration::ZERO),
            ("ann".to_owned(), Duration::from_secs(1)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiting_request_holds_no_buffer_slot() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let svc = ServiceBuilder::new()
        .layer(per_user_waiting())
        .buffer(1)
        .service(recording(&log, start));
    let served = ann_waits_bob_asks(svc).await;
    assert_eq!(served, [("bob".to_owned(), Duration::ZERO)]);
}

/// One handle, readied and called for each request (a client's
/// `svc.ready().await?.call(req)`), not a clone per request: a request
/// that waits leaves the handle holding no slot of the limit inside, so
/// the handle's next request and the waiting one are both served.
async fn one_handle_ann_waits_then_bob<S>(mut svc: S)
where
    S: Service<Req, Response = Response<tower_ratelimit::response::ResponseBody<String>>>,
    S::Error: std::fmt::Debug,
{
    let limit = Duration::from_secs(10);
    let first = svc.ready().await.unwrap().call(user("ann")).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    // Ann's second waits a second for her slot.
    let ann = svc.ready().await.unwrap().call(user("ann"));
    let ann = tokio::time::timeout(limit, ann)
        .await
        .expect("the waiting request is served once its slot comes");
    assert_eq!(ann.unwrap().status(), StatusCode::OK);
    let bob = tokio::time::timeout(limit, async {
        svc.ready().await.unwrap().call(user("bob")).await
    })
    .await
    .expect("the handle is ready again after a request that waited");
    assert_eq!(bob.unwrap().status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn one_handle_over_a_concurrency_limit_of_one_serves_a_waiting_request() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = ServiceBuilder::new()
        .layer(per_user_waiting())
        .concurrency_limit(1)
        .service(recording(&log, Instant::now()));
    one_handle_ann_waits_then_bob(svc).await;
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn one_handle_over_a_buffer_of_one_serves_a_waiting_request() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = ServiceBuilder::new()
        .layer(per_user_waiting())
        .buffer(1)
        .service(recording(&log, Instant::now()));
    one_handle_ann_waits_then_bob(svc).await;
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_request_does_not_make_load_shed_refuse_others() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let svc = ServiceBuilder::new()
        .layer(per_user_waiting())
        .load_shed()
        .concurrency_limit(1)
        .service(recording(&log, start));
    // A shed request would be an error, and fail the unwraps inside.
    let served = ann_waits_bob_asks(svc).await;
    assert_eq!(served, [("bob".to_owned(), Duration::ZERO)]);
}

// ---- Pacing in poll_ready ----

/// A tower client stack: a global limit of 2 per second, burst 1, waiting
/// up to `max`.
fn paced_client(
    max: Duration,
    calls: &Arc<Mutex<Vec<Duration>>>,
    start: Instant,
) -> impl Service<u32, Response = u32, Error = BoxError> {
    let calls = Arc::clone(calls);
    ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder()
                .store(
                    MemoryStore::builder()
                        .clock(TokioClock::new())
                        .build()
                        .unwrap(),
                )
                .policy(Policy::new("upstream", Quota::per_second(2).burst(1)))
                .on_limit(OnLimit::Wait { max })
                .reject_with_error()
                .build()
                .unwrap(),
        )
        .service(service_fn(move |n: u32| {
            calls.lock().unwrap().push(start.elapsed());
            async move { Ok::<_, Infallible>(n) }
        }))
}

#[tokio::test(start_paused = true)]
async fn a_fixed_key_in_wait_mode_paces_poll_ready() {
    let start = Instant::now();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut client = paced_client(Duration::from_secs(10), &calls, start);
    let mut ready_at = Vec::new();
    for n in 0..4 {
        // Readiness itself waits for the slot…
        client.ready().await.unwrap();
        ready_at.push(start.elapsed());
        // …so the call goes straight through.
        let before = start.elapsed();
        assert_eq!(client.call(n).await.unwrap(), n);
        assert_eq!(start.elapsed(), before);
    }
    let ms = Duration::from_millis;
    assert_eq!(ready_at, [ms(0), ms(500), ms(1000), ms(1500)]);
    assert_eq!(*calls.lock().unwrap(), ready_at);
}

#[tokio::test(start_paused = true)]
async fn a_paced_reservation_beyond_max_is_answered_by_call() {
    let start = Instant::now();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut client = paced_client(Duration::from_millis(100), &calls, start);
    client.ready().await.unwrap();
    client.call(1).await.unwrap();
    // The next slot is 500 ms away, beyond 100 ms: ready at once, and the
    // call is refused without reaching the inner service.
    client.ready().await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    let err = client.call(2).await.unwrap_err();
    assert!(err.downcast_ref::<RateLimited>().is_some(), "{err}");
    assert_eq!(calls.lock().unwrap().len(), 1);
    // Nothing was reserved: at 500 ms the slot is free.
    tokio::time::advance(Duration::from_millis(500)).await;
    client.ready().await.unwrap();
    assert_eq!(client.call(3).await.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_clone_does_not_share_a_reserved_slot() {
    let start = Instant::now();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let layer = RateLimitLayer::builder()
        .store(
            MemoryStore::builder()
                .clock(TokioClock::new())
                .build()
                .unwrap(),
        )
        .policy(Policy::new("upstream", Quota::per_second(2).burst(1)))
        .on_limit(OnLimit::Wait {
            max: Duration::from_secs(10),
        })
        .reject_with_error()
        .build()
        .unwrap();
    let inner = {
        let calls = Arc::clone(&calls);
        service_fn(move |n: u32| {
            calls.lock().unwrap().push(start.elapsed());
            async move { Ok::<_, Infallible>(n) }
        })
    };
    let mut a = tower::Layer::layer(&layer, inner);
    a.ready().await.unwrap();
    // A clone made now reserves a slot of its own, the next one.
    let mut b = a.clone();
    b.ready().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    b.call(2).await.unwrap();
    a.call(1).await.unwrap();
    assert_eq!(
        *calls.lock().unwrap(),
        [Duration::from_millis(500), Duration::from_millis(500)]
    );
}
