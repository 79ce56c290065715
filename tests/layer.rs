//! The layer through real services: `oneshot` on the service, an axum
//! `Router`, and a real axum server on 127.0.0.1.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_ratelimit::clock::{FakeClock, TokioClock};
use tower_ratelimit::key::{Global, Header, Key, PeerIp};
use tower_ratelimit::store::{Check, Store};
use tower_ratelimit::{
    Decision, FailurePolicy, HeaderStyle, MemoryStore, OnLimit, Policy, Quota, RateLimitLayer,
    RateLimited, StoreError, StoreErrorKind,
};

type Req = Request<String>;

fn ok_service() -> impl Service<Req, Response = Response<String>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(|_req: Req| async { Ok::<_, Infallible>(Response::new("ok".to_owned())) })
}

fn fake_store(clock: &FakeClock) -> MemoryStore<FakeClock> {
    MemoryStore::builder().clock(clock.clone()).build().unwrap()
}

fn header<'a, B>(res: &'a Response<B>, name: &str) -> Option<&'a str> {
    res.headers().get(name).map(|v| v.to_str().unwrap())
}

/// Sends a request through a clone of `svc`, returning status and headers.
async fn status_of<S>(svc: &S) -> Response<()>
where
    S: Service<Req, Response = Response<tower_ratelimit::response::ResponseBody<String>>> + Clone,
    S::Error: std::fmt::Debug,
{
    svc.clone()
        .oneshot(Request::new(String::new()))
        .await
        .unwrap()
        .map(|_| ())
}

#[tokio::test]
async fn over_the_limit_is_a_429_with_retry_after_and_ietf_headers() {
    let clock = FakeClock::new();
    let svc = RateLimitLayer::builder()
        .store(fake_store(&clock))
        .policy(Policy::new("burst", Quota::per_second(2)))
        .build()
        .unwrap()
        .layer(ok_service());

    let first = status_of(&svc).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        header(&first, "ratelimit-policy"),
        Some("\"burst\";q=2;w=1")
    );
    assert_eq!(header(&first, "ratelimit"), Some("\"burst\";r=1;t=1"));
    assert_eq!(header(&first, "retry-after"), None);

    let second = status_of(&svc).await;
    assert_eq!(header(&second, "ratelimit"), Some("\"burst\";r=0;t=1"));

    let third = status_of(&svc).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&third, "retry-after"), Some("1"));
    assert_eq!(
        header(&third, "ratelimit-policy"),
        Some("\"burst\";q=2;w=1")
    );
    assert_eq!(header(&third, "ratelimit"), Some("\"burst\";r=0;t=1"));
    assert_eq!(
        header(&third, "content-type"),
        Some("text/plain; charset=utf-8")
    );
}

#[tokio::test]
async fn retry_after_rounds_up_to_whole_seconds() {
    let clock = FakeClock::new();
    // One request per 200 ms: the wait after a burst of 5 is 0.2 s.
    let svc = tower::Layer::layer(
        &RateLimitLayer::builder()
            .store(fake_store(&clock))
            .policy(Policy::new("fast", Quota::per_second(5)))
            .build()
            .unwrap(),
        ok_service(),
    );
    for _ in 0..5 {
        assert_eq!(status_of(&svc).await.status(), StatusCode::OK);
    }
    let limited = status_of(&svc).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&limited, "retry-after"), Some("1"));

    // One request per 1.2 s: the wait is 1.2 s, sent as 2.
    let slow = tower::Layer::layer(
        &RateLimitLayer::builder()
            .store(fake_store(&clock))
            .policy(Policy::new(
                "slow",
                Quota::new(1, Duration::from_millis(1200)),
            ))
            .build()
            .unwrap(),
        ok_service(),
    );
    assert_eq!(status_of(&slow).await.status(), StatusCode::OK);
    let limited = status_of(&slow).await;
    assert_eq!(header(&limited, "retry-after"), Some("2"));
    assert_eq!(
        header(&limited, "ratelimit-policy"),
        Some("\"slow\";q=1;w=2")
    );

    // 1 µs of waiting is still "1", never "0".
    clock.advance(Duration::from_micros(1_199_999));
    let limited = status_of(&slow).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&limited, "retry-after"), Some("1"));
    clock.advance(Duration::from_micros(1));
    assert_eq!(status_of(&slow).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn legacy_and_no_header_styles() {
    let clock = FakeClock::new();
    let layer = |style| {
        RateLimitLayer::builder()
            .store(fake_store(&clock))
            .policy(Policy::new("burst", Quota::per_second(2)))
            .policy(Policy::new("minute", Quota::per_minute(100)))
            .headers(style)
            .build()
            .unwrap()
    };
    let legacy = tower::Layer::layer(&layer(HeaderStyle::Legacy), ok_service());
    let res = status_of(&legacy).await;
    // The policy with the fewest units left speaks: "burst" has 1 left.
    assert_eq!(header(&res, "x-ratelimit-limit"), Some("2"));
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("1"));
    assert_eq!(header(&res, "x-ratelimit-reset"), Some("1"));
    assert_eq!(header(&res, "ratelimit"), None);

    let none = tower::Layer::layer(&layer(HeaderStyle::None), ok_service());
    status_of(&none).await;
    status_of(&none).await;
    let res = status_of(&none).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers().len(), 3, "{:?}", res.headers()); // retry-after, content-type, content-length
    assert_eq!(header(&res, "retry-after"), Some("1"));
}

#[tokio::test]
async fn every_policy_is_shown_and_a_rejection_charges_none() {
    let clock = FakeClock::new();
    let svc = tower::Layer::layer(
        &RateLimitLayer::builder()
            .store(fake_store(&clock))
            .policy(Policy::new("burst", Quota::per_second(10)))
            .policy(Policy::new("hourly", Quota::per_hour(3)))
            .build()
            .unwrap(),
        ok_service(),
    );
    for _ in 0..3 {
        assert_eq!(status_of(&svc).await.status(), StatusCode::OK);
    }
    let res = status_of(&svc).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        header(&res, "ratelimit-policy"),
        Some("\"burst\";q=10;w=1, \"hourly\";q=3;w=3600")
    );
    // "burst" still shows 7 left: the rejected request was charged to neither.
    // `t` is when more is available (draft-10 §4.1.2): "burst" one more unit
    // within a second, "hourly" one unit back after 20 minutes, the same
    // time as `Retry-After` (not the hour it takes to be whole again).
    assert_eq!(
        header(&res, "ratelimit"),
        Some("\"burst\";r=7;t=1, \"hourly\";r=0;t=1200")
    );
    assert_eq!(header(&res, "retry-after"), Some("1200"));
}

#[tokio::test]
async fn a_cost_that_can_never_fit_is_rejected_without_retry_after() {
    let clock = FakeClock::new();
    let svc = tower::Layer::layer(
        &RateLimitLayer::builder()
            .store(fake_store(&clock))
            .policy(Policy::new("upload", Quota::per_second(10)))
            .cost(|req: &Req| req.body().len() as u64)
            .build()
            .unwrap(),
        ok_service(),
    );
    let res = svc
        .clone()
        .oneshot(Request::new("x".repeat(11)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), None);
    // All ten units are there: nothing more will come, so no `t`.
    assert_eq!(header(&res, "ratelimit"), Some("\"upload\";r=10"));
    // Nothing was charged: a cost of 10 still fits.
    let res = svc.oneshot(Request::new("x".repeat(10))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_requests_through_fifty_clones_admit_exactly_the_quota() {
    let clock = FakeClock::new();
    let admitted = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&admitted);
    let inner = service_fn(move |_req: Req| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(String::new())) }
    });
    let svc = tower::Layer::layer(
        &RateLimitLayer::builder()
            .store(fake_store(&clock))
            .policy(Policy::new("global", Quota::per_hour(137)))
            .build()
            .unwrap(),
        inner,
    );
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut clone = svc.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..20 {
                let res = clone
                    .ready()
                    .await
                    .unwrap()
                    .call(Request::new(String::new()))
                    .await
                    .unwrap();
                ok += u64::from(res.status() == StatusCode::OK);
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert_eq!(ok, 137);
    assert_eq!(admitted.load(Ordering::SeqCst), 137);
}

/// Records the paused tokio time at which the inner service is called.
fn timed_service(
    calls: &Arc<Mutex<Vec<Duration>>>,
    start: Instant,
) -> impl Service<Req, Response = Response<String>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    let calls = Arc::clone(calls);
    service_fn(move |_req: Req| {
        calls.lock().unwrap().push(start.elapsed());
        async { Ok::<_, Infallible>(Response::new(String::new())) }
    })
}

fn waiting_layer(
    max: Duration,
) -> RateLimitLayer<Global, MemoryStore<TokioClock>, tower_ratelimit::key::UnitCost> {
    RateLimitLayer::builder()
        .store(
            MemoryStore::builder()
                .clock(TokioClock::new())
                .build()
                .unwrap(),
        )
        .policy(Policy::new("paced", Quota::per_second(2)))
        .on_limit(OnLimit::Wait { max })
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn wait_mode_proceeds_exactly_at_each_reserved_slot() {
    let start = Instant::now();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let svc = tower::Layer::layer(
        &waiting_layer(Duration::from_secs(2)),
        timed_service(&calls, start),
    );
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            svc.oneshot(Request::new(String::new())).await.unwrap()
        }));
        // Let each task reach its decision before the next starts.
        tokio::task::yield_now().await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status(), StatusCode::OK);
    }
    let ms = |n| Duration::from_millis(n);
    assert_eq!(
        *calls.lock().unwrap(),
        vec![ms(0), ms(0), ms(500), ms(1000), ms(1500)]
    );
}

#[tokio::test(start_paused = true)]
async fn wait_mode_rejects_a_slot_beyond_max_without_spending_it() {
    let start = Instant::now();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let svc = tower::Layer::layer(
        &waiting_layer(Duration::from_millis(600)),
        timed_service(&calls, start),
    );
    let a = tokio::spawn(svc.clone().oneshot(Request::new(String::new())));
    let b = tokio::spawn(svc.clone().oneshot(Request::new(String::new())));
    let c = tokio::spawn(svc.clone().oneshot(Request::new(String::new())));
    tokio::task::yield_now().await;
    // Slots so far: 0, 0, 500 ms. The next is at 1000 ms, beyond 600 ms.
    let d = svc
        .clone()
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(d.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&d, "retry-after"), Some("1"));
    for t in [a, b, c] {
        assert_eq!(t.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    // At 500 ms the slot at 1000 ms is within reach; had the rejected request
    // taken it, this one would be at 1500 ms and rejected.
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    let e = svc.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(e.status(), StatusCode::OK);
    assert_eq!(
        calls.lock().unwrap().last(),
        Some(&Duration::from_millis(1000))
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiting_request_keeps_its_reservation() {
    let start = Instant::now();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let svc = tower::Layer::layer(
        &waiting_layer(Duration::from_secs(5)),
        timed_service(&calls, start),
    );
    for _ in 0..2 {
        svc.clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
    }
    // This one waits for the slot at 500 ms, and gives up after 100 ms.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        svc.clone().oneshot(Request::new(String::new())),
    )
    .await;
    assert!(gave_up.is_err(), "the request was still waiting");
    // Its slot stays spent: the next request goes at 1000 ms, not 500 ms.
    let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        *calls.lock().unwrap(),
        vec![Duration::ZERO, Duration::ZERO, Duration::from_millis(1000)]
    );
}

#[tokio::test]
async fn handlers_see_the_decision_in_request_extensions_when_asked_for() {
    let svc = tower::Layer::layer(
        &RateLimitLayer::builder()
            .policy(Policy::new("burst", Quota::per_minute(10)))
            .decision_in_extensions(true)
            .build()
            .unwrap(),
        service_fn(|req: Req| async move {
            let d = req.extensions().get::<Decision>().expect("decision");
            Ok::<_, Infallible>(Response::new(format!(
                "{} {}",
                d.is_allowed(),
                d.remaining()
            )))
        }),
    );
    let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"true 9");
}

#[tokio::test]
async fn the_decision_is_left_out_of_request_extensions_by_default() {
    let svc = RateLimitLayer::builder()
        .policy(Policy::new("burst", Quota::per_minute(10)))
        .build()
        .unwrap()
        .layer(service_fn(|req: Req| async move {
            let seen = req.extensions().get::<Decision>().is_some();
            Ok::<_, Infallible>(Response::new(seen.to_string()))
        }));
    let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    // Headers still come from the decision.
    assert_eq!(header(&res, "ratelimit"), Some("\"burst\";r=9;t=6"));
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"false");
}

#[tokio::test]
async fn requests_without_a_key_pass_uncounted_unless_rejected() {
    let api_key = || Header::new("x-api-key");
    let open = tower::Layer::layer(
        &RateLimitLayer::builder()
            .policy(Policy::new("per-key", Quota::per_second(1)))
            .key(api_key())
            .build()
            .unwrap(),
        ok_service(),
    );
    for _ in 0..3 {
        let res = status_of(&open).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "ratelimit"), None);
    }
    let keyed = || {
        Request::builder()
            .header("x-api-key", "k1")
            .body(String::new())
            .unwrap()
    };
    assert_eq!(
        open.clone().oneshot(keyed()).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        open.clone().oneshot(keyed()).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    let strict = tower::Layer::layer(
        &RateLimitLayer::builder()
            .policy(Policy::new("per-key", Quota::per_second(1)))
            .key(api_key())
            .reject_missing_key()
            .build()
            .unwrap(),
        ok_service(),
    );
    let res = status_of(&strict).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), None);
}

#[tokio::test]
async fn peer_ip_without_connect_info_is_a_500_naming_the_fix() {
    let svc = tower::Layer::layer(
        &RateLimitLayer::builder()
            .policy(Policy::new("per-ip", Quota::per_second(1)))
            .key(PeerIp::new())
            .build()
            .unwrap(),
        ok_service(),
    );
    let res = svc
        .clone()
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = std::str::from_utf8(&body).unwrap();
    assert!(
        text.contains("into_make_service_with_connect_info"),
        "{text}"
    );

    // With the peer's address recorded, the key works.
    let from = |addr: &str| {
        let mut req = Request::new(String::new());
        req.extensions_mut()
            .insert(addr.parse::<std::net::SocketAddr>().unwrap());
        req
    };
    let ok = svc.clone().oneshot(from("10.0.0.1:5000")).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let same_ip = svc.clone().oneshot(from("10.0.0.1:6000")).await.unwrap();
    assert_eq!(same_ip.status(), StatusCode::TOO_MANY_REQUESTS);
    let other_ip = svc.clone().oneshot(from("10.0.0.2:5000")).await.unwrap();
    assert_eq!(other_ip.status(), StatusCode::OK);
    // One IPv6 /64 is one client.
    let v6 = svc.clone().oneshot(from("[2001:db8::1]:1")).await.unwrap();
    assert_eq!(v6.status(), StatusCode::OK);
    let v6_same_64 = svc.oneshot(from("[2001:db8::ffff]:1")).await.unwrap();
    assert_eq!(v6_same_64.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn grpc_requests_get_resource_exhausted_trailers_only() {
    let svc = tower::Layer::layer(
        &RateLimitLayer::builder()
            .policy(Policy::new("rpc", Quota::per_minute(1)))
            .build()
            .unwrap(),
        ok_service(),
    );
    let grpc = || {
        Request::builder()
            .header("content-type", "application/grpc+proto")
            .body(String::new())
            .unwrap()
    };
    assert_eq!(
        svc.clone().oneshot(grpc()).await.unwrap().status(),
        StatusCode::OK
    );
    let res = svc.oneshot(grpc()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "grpc-status"), Some("8"));
    assert_eq!(header(&res, "content-type"), Some("application/grpc"));
    assert_eq!(header(&res, "retry-after"), Some("60"));
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(body.is_empty());
}

#[tokio::test]
async fn non_http_services_get_a_typed_rate_limited_error() {
    let clock = FakeClock::new();
    let mut svc = tower::Layer::layer(
        &RateLimitLayer::builder()
            .store(fake_store(&clock))
            .policy(Policy::new("jobs", Quota::per_second(4)))
            .key(|job: &(u64, &'static str)| Some(job.0))
            .reject_with_error()
            .build()
            .unwrap(),
        service_fn(|job: (u64, &'static str)| async move { Ok::<_, std::io::Error>(job.1) }),
    );
    for _ in 0..4 {
        let out = svc.ready().await.unwrap().call((7, "done")).await.unwrap();
        assert_eq!(out, "done");
    }
    let err = svc
        .ready()
        .await
        .unwrap()
        .call((7, "late"))
        .await
        .unwrap_err();
    let limited = err
        .downcast_ref::<RateLimited>()
        .expect("a RateLimited error");
    assert_eq!(limited.retry_after(), Some(Duration::from_millis(250)));
    // Another key has its own quota.
    assert_eq!(
        svc.ready().await.unwrap().call((8, "other")).await.unwrap(),
        "other"
    );
    // Inner errors pass through, boxed.
    let mut failing = tower::Layer::layer(
        &RateLimitLayer::builder()
            .policy(Policy::new("jobs", Quota::per_second(4)))
            .reject_with_error()
            .build()
            .unwrap(),
        service_fn(|_: u8| async { Err::<(), _>(std::io::Error::other("boom")) }),
    );
    let err = failing.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(err.to_string(), "boom");
}

/// A store whose backend is down.
#[derive(Clone)]
struct DownStore;

impl Store for DownStore {
    type Future = Ready<Result<Decision, StoreError>>;

    fn decide(&self, _: Check<'_>) -> Self::Future {
        ready(Err(StoreError::new(
            StoreErrorKind::Unavailable,
            "connection refused",
            None,
        )))
    }
}

#[tokio::test]
async fn a_failed_store_fails_open_by_default_or_closed_when_asked() {
    let layer = |failure| {
        RateLimitLayer::builder()
            .store(DownStore)
            .policy(Policy::new("burst", Quota::per_second(1)))
            .on_store_failure(failure)
            .build()
            .unwrap()
    };
    let open = tower::Layer::layer(&layer(FailurePolicy::FailOpen), ok_service());
    for _ in 0..3 {
        assert_eq!(status_of(&open).await.status(), StatusCode::OK);
    }
    let closed = tower::Layer::layer(&layer(FailurePolicy::FailClosed), ok_service());
    assert_eq!(
        status_of(&closed).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

mod axum_router {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;

    fn get_req(path: &str) -> Request<Body> {
        Request::builder().uri(path).body(Body::empty()).unwrap()
    }

    fn one_per_minute(name: &str) -> RateLimitLayer<Global, MemoryStore> {
        RateLimitLayer::builder()
            .policy(Policy::new(name, Quota::per_minute(1)))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn two_route_layers_keep_independent_limits() {
        let a = Router::new()
            .route("/a", get(|| async { "a" }))
            .route_layer(one_per_minute("a"));
        let b = Router::new()
            .route("/b", get(|| async { "b" }))
            .route_layer(one_per_minute("b"));
        let app = a.merge(b);
        let status = |path: &'static str| {
            let app = app.clone();
            async move { app.oneshot(get_req(path)).await.unwrap().status() }
        };
        assert_eq!(status("/a").await, StatusCode::OK);
        assert_eq!(status("/a").await, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(status("/b").await, StatusCode::OK);
        assert_eq!(status("/b").await, StatusCode::TOO_MANY_REQUESTS);
        // Unmatched routes are not limited by a route layer.
        assert_eq!(status("/c").await, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn one_layer_on_two_routes_shares_one_limit() {
        let shared = one_per_minute("shared");
        let app = Router::new()
            .route("/a", get(|| async { "a" }).layer(shared.clone()))
            .route("/b", get(|| async { "b" }).layer(shared));
        let res = app.clone().oneshot(get_req("/a")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let res = app.oneshot(get_req("/b")).await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    }

    #[cfg(feature = "axum")]
    #[tokio::test]
    async fn a_real_server_limits_each_peer_ip() {
        use std::net::SocketAddr;

        use bytes::Bytes;
        use http_body_util::Empty;
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;

        let app = Router::new().route("/", get(|| async { "hello" })).layer(
            RateLimitLayer::builder()
                .policy(Policy::new("per-ip", Quota::per_minute(3)))
                .key(PeerIp::new())
                .build()
                .unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let res = client
                .get(format!("http://{addr}/").parse().unwrap())
                .await
                .unwrap();
            statuses.push(res.status().as_u16());
        }
        server.abort();
        assert_eq!(statuses, [200, 200, 200, 429, 429]);
    }
}

#[test]
fn build_names_the_bad_field() {
    let err = |b: Result<RateLimitLayer<Global, MemoryStore>, _>| b.unwrap_err();
    let e = err(RateLimitLayer::builder().build());
    assert_eq!(e.field(), "policies");
    let e = err(RateLimitLayer::builder()
        .policy(Policy::new("a", Quota::per_second(1)))
        .policy(Policy::new("a", Quota::per_minute(5)))
        .build());
    assert_eq!(e.field(), "policies");
    assert!(e.to_string().contains("\"a\""), "{e}");
    let e = err(RateLimitLayer::builder()
        .policy(Policy::new("z", Quota::new(5, Duration::ZERO)))
        .build());
    assert_eq!((e.field(), e.policy()), ("period", Some("z")));
    let e = err(RateLimitLayer::builder()
        .policy(Policy::new("b", Quota::per_second(5).burst(0)))
        .build());
    assert_eq!(e.field(), "burst");
    let e = err(RateLimitLayer::builder()
        .policy(Policy::new("has space", Quota::per_second(5)))
        .build());
    assert_eq!(e.field(), "name");
}

#[test]
fn keys_of_different_kinds_never_collide() {
    assert_ne!(Key::from(7_u64), Key::from("7"));
    let mut a = Vec::new();
    let mut b = Vec::new();
    Key::from(7_u64).write_tagged(&mut a);
    Key::from("7").write_tagged(&mut b);
    assert_ne!(a, b);
}
