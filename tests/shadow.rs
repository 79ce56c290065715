//! Shadow mode: everything is decided and counted, nothing is turned away.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_ratelimit::clock::{FakeClock, TokioClock};
use tower_ratelimit::key::Header;
use tower_ratelimit::store::{Check, Store};
use tower_ratelimit::{
    Decision, FailurePolicy, MemoryStore, OnLimit, Policy, Quota, RateLimitLayer, StoreError,
    StoreErrorKind,
};

type Req = Request<String>;

/// Answers with what the handler saw: the decision's verdict, if any.
fn echo_decision()
-> impl Service<Req, Response = Response<String>, Error = Infallible, Future: Send> + Clone {
    service_fn(|req: Req| async move {
        let seen = match req.extensions().get::<Decision>() {
            Some(d) if d.is_allowed() => "allowed".to_owned(),
            Some(d) => format!("would reject, retry after {:?}", d.retry_after()),
            None => "none".to_owned(),
        };
        Ok::<_, Infallible>(Response::new(seen))
    })
}

async fn text<B: http_body::Body<Error: std::fmt::Debug>>(res: Response<B>) -> String {
    let b = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

fn header<B>(res: &Response<B>, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn shadow_mode_lets_everything_through_and_says_what_would_have_happened() {
    let clock = FakeClock::new();
    let store = MemoryStore::builder().clock(clock.clone()).build().unwrap();
    let svc = RateLimitLayer::builder()
        .store(store)
        .policy(Policy::new("burst", Quota::per_minute(2)))
        .shadow()
        .decision_in_extensions(true)
        .build()
        .unwrap()
        .layer(echo_decision());
    let mut seen = Vec::new();
    let mut last = None;
    for _ in 0..4 {
        let res = svc
            .clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        last = header(&res, "ratelimit");
        assert_eq!(header(&res, "retry-after"), None);
        seen.push(text(res).await);
    }
    assert_eq!(
        seen,
        [
            "allowed",
            "allowed",
            "would reject, retry after Some(30s)",
            "would reject, retry after Some(30s)",
        ]
    );
    // More quota in 30 s, when the refused request could retry.
    assert_eq!(last.as_deref(), Some("\"burst\";r=0;t=30"));
    // Refusals were not counted, as an enforcing layer would not count
    // them: after 30 s one unit is back.
    clock.advance(Duration::from_secs(30));
    let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(text(res).await, "allowed");
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_never_waits() {
    let svc = RateLimitLayer::builder()
        .store(
            MemoryStore::builder()
                .clock(TokioClock::new())
                .build()
                .unwrap(),
        )
        .policy(Policy::new("paced", Quota::per_second(1)))
        .on_limit(OnLimit::Wait {
            max: Duration::from_secs(10),
        })
        .shadow()
        .decision_in_extensions(true)
        .build()
        .unwrap()
        .layer(echo_decision());
    let start = tokio::time::Instant::now();
    for _ in 0..3 {
        let res = svc
            .clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test]
async fn shadow_mode_lets_keyless_requests_and_store_failures_through() {
    let keyless = RateLimitLayer::builder()
        .policy(Policy::new("per-key", Quota::per_minute(1)))
        .key(Header::new("x-api-key"))
        .reject_missing_key()
        .shadow()
        .decision_in_extensions(true)
        .build()
        .unwrap()
        .layer(echo_decision());
    let res = keyless.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    #[derive(Clone)]
    struct Down;
    impl Store for Down {
        type Future = std::future::Ready<Result<Decision, StoreError>>;
        fn decide(&self, _: Check<'_>) -> Self::Future {
            std::future::ready(Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "down",
                None,
            )))
        }
    }
    let closed = RateLimitLayer::builder()
        .store(Down)
        .policy(Policy::new("p", Quota::per_minute(1)))
        .on_store_failure(FailurePolicy::FailClosed)
        .shadow()
        .decision_in_extensions(true)
        .build()
        .unwrap()
        .layer(echo_decision());
    let res = closed.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_shadow_rejected_request_holds_no_concurrency_units() {
    let gates: Arc<Mutex<Vec<tokio::sync::oneshot::Sender<()>>>> = Arc::default();
    let held = Arc::clone(&gates);
    let gated = service_fn(move |req: Req| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        held.lock().unwrap().push(tx);
        let allowed = req.extensions().get::<Decision>().unwrap().is_allowed();
        async move {
            let _ = rx.await;
            Ok::<_, Infallible>(Response::new(allowed.to_string()))
        }
    });
    let store = MemoryStore::new();
    let svc = RateLimitLayer::builder()
        .store(store.clone())
        .policy(Policy::concurrency("in-flight", 1))
        .shadow()
        .decision_in_extensions(true)
        .build()
        .unwrap()
        .layer(gated);
    let first = tokio::spawn(svc.clone().oneshot(Request::new(String::new())));
    let second = tokio::spawn(svc.clone().oneshot(Request::new(String::new())));
    while gates.lock().unwrap().len() < 2 {
        tokio::task::yield_now().await;
    }
    // Both run (shadow mode), but only the first took the unit. The second
    // ends first; had it "given back" a unit it never took, the count would
    // now read zero in flight while the first still runs.
    let tx = gates.lock().unwrap().remove(1);
    tx.send(()).unwrap();
    let res = second.await.unwrap().unwrap();
    assert_eq!(
        header(&res, "ratelimit").as_deref(),
        Some("\"in-flight\";r=0")
    );
    assert_eq!(text(res).await, "false");
    let third = tokio::spawn(svc.clone().oneshot(Request::new(String::new())));
    while gates.lock().unwrap().len() < 2 {
        tokio::task::yield_now().await;
    }
    for tx in gates.lock().unwrap().drain(..) {
        tx.send(()).unwrap();
    }
    let third = third.await.unwrap().unwrap();
    // The third still saw the first's unit in use: it would have been refused.
    assert_eq!(text(third).await, "false");
    let first = first.await.unwrap().unwrap();
    assert_eq!(text(first).await, "true");
    drop(store);
}
