//! One layer, several policy sets chosen per request, and requests that
//! bypass the limiter.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_ratelimit::clock::FakeClock;
use tower_ratelimit::key::Header;
use tower_ratelimit::response::ResponseBody;
use tower_ratelimit::store::{Check, Store};
use tower_ratelimit::{
    Decision, MemoryStore, OnLimit, Policy, Quota, RateLimitLayer, RateLimited, StoreError,
};

type Req = Request<String>;

fn ok_service() -> impl Service<Req, Response = Response<String>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(|_req: Req| async { Ok::<_, Infallible>(Response::new("ok".to_owned())) })
}

fn header<B>(res: &Response<B>, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

fn get(path: &str) -> Req {
    Request::get(path)
        .header("x-api-key", "k1")
        .body(String::new())
        .unwrap()
}

async fn send<S>(svc: &S, req: Req) -> Response<ResponseBody<String>>
where
    S: Service<Req, Response = Response<ResponseBody<String>>, Error = Infallible> + Clone,
{
    svc.clone().oneshot(req).await.unwrap()
}

type ByRoute = fn(&Req) -> Option<&'static str>;
type LoginLayer = RateLimitLayer<
    Header,
    MemoryStore<FakeClock>,
    tower_ratelimit::key::UnitCost,
    tower_ratelimit::response::HttpRejection,
    ByRoute,
>;

/// /login: "login" 2 per hour plus "global" 5 per hour; elsewhere "global".
fn login_and_global(store: MemoryStore<FakeClock>) -> LoginLayer {
    let global = Policy::new("global", Quota::per_hour(5));
    fn by_route(req: &Req) -> Option<&'static str> {
        (req.uri().path() == "/login").then_some("login")
    }
    RateLimitLayer::builder()
        .store(store)
        .key(Header::new("x-api-key"))
        .policy(global.clone())
        .policy_set("login", [Policy::new("login", Quota::per_hour(2)), global])
        .policies_by(by_route as ByRoute)
        .build()
        .unwrap()
}

fn fake_store() -> MemoryStore<FakeClock> {
    MemoryStore::builder()
        .clock(FakeClock::new())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_route_set_and_the_global_limit_share_the_global_count() {
    let svc = login_and_global(fake_store()).layer(ok_service());
    for _ in 0..2 {
        assert_eq!(send(&svc, get("/login")).await.status(), StatusCode::OK);
    }
    let refused = send(&svc, get("/login")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // The 429 names the set that refused it: both of its policies.
    assert_eq!(
        header(&refused, "ratelimit-policy").as_deref(),
        Some("\"login\";q=2;w=3600, \"global\";q=5;w=3600")
    );
    assert_eq!(
        header(&refused, "ratelimit").as_deref(),
        Some("\"login\";r=0;t=1800, \"global\";r=3;t=720")
    );
    // Two of the five global units went on /login; three are left elsewhere.
    let other = send(&svc, get("/api")).await;
    assert_eq!(
        header(&other, "ratelimit-policy").as_deref(),
        Some("\"global\";q=5;w=3600")
    );
    assert_eq!(
        header(&other, "ratelimit").as_deref(),
        Some("\"global\";r=2;t=720")
    );
}

#[tokio::test]
async fn a_request_refused_by_the_route_policy_is_charged_to_neither() {
    let svc = login_and_global(fake_store()).layer(ok_service());
    for _ in 0..2 {
        send(&svc, get("/login")).await;
    }
    for _ in 0..10 {
        let res = send(&svc, get("/login")).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    // Ten refusals later the global policy still has its three units.
    for _ in 0..3 {
        assert_eq!(send(&svc, get("/api")).await.status(), StatusCode::OK);
    }
    assert_eq!(
        send(&svc, get("/api")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_refusal_by_the_global_policy_on_a_route_charges_the_route_nothing() {
    let svc = login_and_global(fake_store()).layer(ok_service());
    for _ in 0..5 {
        assert_eq!(send(&svc, get("/api")).await.status(), StatusCode::OK);
    }
    let refused = send(&svc, get("/login")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // "login" was not charged: its two units are still there.
    assert_eq!(
        header(&refused, "ratelimit").as_deref(),
        Some("\"login\";r=2, \"global\";r=0;t=720")
    );
}

#[tokio::test]
async fn tiers_are_chosen_from_the_api_key() {
    let svc = RateLimitLayer::builder()
        .key(Header::new("x-api-key"))
        .policy_set("free", [Policy::new("free", Quota::per_minute(1))])
        .policy_set("pro", [Policy::new("pro", Quota::per_minute(3))])
        .policies_by(|req: &Req| {
            let key = req.headers().get("x-api-key")?.to_str().ok()?;
            Some(if key.starts_with("pro_") {
                "pro"
            } else {
                "free"
            })
        })
        .build()
        .unwrap()
        .layer(ok_service());
    let with_key = |key: &str| {
        Request::get("/")
            .header("x-api-key", key)
            .body(String::new())
            .unwrap()
    };
    let statuses = |key: &'static str| {
        let svc = svc.clone();
        async move {
            let mut out = Vec::new();
            for _ in 0..4 {
                out.push(send(&svc, with_key(key)).await.status().as_u16());
            }
            out
        }
    };
    assert_eq!(statuses("free_1").await, [200, 429, 429, 429]);
    assert_eq!(statuses("pro_1").await, [200, 200, 200, 429]);
    let res = send(&svc, with_key("pro_2")).await;
    assert_eq!(
        header(&res, "ratelimit-policy").as_deref(),
        Some("\"pro\";q=3;w=60")
    );
    // No API key: no set (the layer has none of its own), not limited.
    for _ in 0..5 {
        let res = send(&svc, Request::new(String::new())).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "ratelimit"), None);
    }
}

#[tokio::test]
async fn an_unknown_set_name_is_a_500_naming_the_fix() {
    let svc = RateLimitLayer::builder()
        .policy_set("a", [Policy::new("a", Quota::per_minute(1))])
        .policies_by(|_: &Req| Some("b"))
        .build()
        .unwrap()
        .layer(ok_service());
    let res = send(&svc, get("/")).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = std::str::from_utf8(&body).unwrap();
    assert!(text.contains(".policy_set("), "{text}");
}

/// A store that counts how often it is asked.
#[derive(Clone, Default)]
struct CountingStore {
    inner: MemoryStore,
    asked: Arc<AtomicU64>,
}

impl Store for CountingStore {
    type Future = <MemoryStore as Store>::Future;

    fn decide(&self, check: Check<'_>) -> Self::Future {
        self.asked.fetch_add(1, Ordering::SeqCst);
        self.inner.decide(check)
    }

    fn decide_now(&self, check: Check<'_>) -> Option<Result<Decision, StoreError>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Store::decide_now(&self.inner, check)
    }
}

#[tokio::test]
async fn skipped_requests_never_reach_the_store() {
    let store = CountingStore::default();
    let asked = Arc::clone(&store.asked);
    let svc = RateLimitLayer::builder()
        .store(store)
        .policy(Policy::new("burst", Quota::per_minute(1)))
        .skip_if(|req: &Req| req.uri().path() == "/health")
        .build()
        .unwrap()
        .layer(ok_service());
    for _ in 0..5 {
        let res = send(&svc, get("/health")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "ratelimit"), None);
    }
    assert_eq!(asked.load(Ordering::SeqCst), 0);
    assert_eq!(send(&svc, get("/api")).await.status(), StatusCode::OK);
    assert_eq!(
        send(&svc, get("/api")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(asked.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn skip_comes_before_key_extraction() {
    // Health checks carry no API key; with `reject_missing_key` they would
    // be refused, had the key been asked for.
    let svc = RateLimitLayer::builder()
        .policy(Policy::new("per-key", Quota::per_minute(1)))
        .key(Header::new("x-api-key"))
        .reject_missing_key()
        .skip_if(|req: &Req| req.uri().path() == "/health")
        .build()
        .unwrap()
        .layer(ok_service());
    let health = Request::get("/health").body(String::new()).unwrap();
    assert_eq!(send(&svc, health).await.status(), StatusCode::OK);
    let anonymous = Request::get("/api").body(String::new()).unwrap();
    assert_eq!(
        send(&svc, anonymous).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn concurrency_policies_work_per_set() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let gate = Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let slow = service_fn(move |req: Req| {
        let gate = Arc::clone(&gate);
        async move {
            if req.uri().path() == "/upload" {
                if let Some(rx) = gate.lock().await.take() {
                    let _ = rx.await;
                }
            }
            Ok::<_, Infallible>(Response::new(String::new()))
        }
    });
    let svc = RateLimitLayer::builder()
        .policy(Policy::new("rate", Quota::per_minute(100)))
        .policy_set(
            "upload",
            [
                Policy::concurrency("uploads", 1),
                Policy::new("rate", Quota::per_minute(100)),
            ],
        )
        .policies_by(|req: &Req| (req.uri().path() == "/upload").then_some("upload"))
        .build()
        .unwrap()
        .layer(slow);
    let first = tokio::spawn(svc.clone().oneshot(get("/upload")));
    tokio::task::yield_now().await;
    // One upload in flight: a second is refused, other routes are not.
    let second = send(&svc, get("/upload")).await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(send(&svc, get("/api")).await.status(), StatusCode::OK);
    tx.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    // Its permit went back with its response.
    assert_eq!(send(&svc, get("/upload")).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn non_http_services_choose_sets_too() {
    let mut svc = RateLimitLayer::builder()
        .policy(Policy::new("normal", Quota::per_minute(2)))
        .policy_set("bulk", [Policy::new("bulk", Quota::per_minute(1))])
        .policies_by(|job: &(&'static str, u32)| (job.0 == "bulk").then_some("bulk"))
        .reject_with_error()
        .build()
        .unwrap()
        .layer(service_fn(|job: (&'static str, u32)| async move {
            Ok::<_, Infallible>(job.1)
        }));
    assert_eq!(
        svc.ready().await.unwrap().call(("bulk", 1)).await.unwrap(),
        1
    );
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(("bulk", 2))
        .await
        .unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().unwrap();
    assert_eq!(limited.decision().unwrap().policies()[0].name(), "bulk");
    assert_eq!(
        svc.ready().await.unwrap().call(("job", 3)).await.unwrap(),
        3
    );
}

#[tokio::test(start_paused = true)]
async fn a_layer_with_a_selector_does_not_pace_in_poll_ready() {
    // With a selector the set depends on the request: `poll_ready` must not
    // reserve (it would reserve in the wrong set), so the request waits in
    // its future instead, and both are admitted in turn.
    let svc = RateLimitLayer::builder()
        .store(
            MemoryStore::builder()
                .clock(tower_ratelimit::clock::TokioClock::new())
                .build()
                .unwrap(),
        )
        .policy(Policy::new("paced", Quota::per_second(1)))
        .policy_set("other", [Policy::new("other", Quota::per_second(1))])
        .policies_by(|req: &Req| (req.uri().path() == "/other").then_some("other"))
        .on_limit(OnLimit::Wait {
            max: std::time::Duration::from_secs(5),
        })
        .build()
        .unwrap()
        .layer(ok_service());
    let start = tokio::time::Instant::now();
    for _ in 0..2 {
        assert_eq!(send(&svc, get("/")).await.status(), StatusCode::OK);
    }
    // "/other" has its own quota: no wait behind "/".
    let before = start.elapsed();
    assert_eq!(send(&svc, get("/other")).await.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), before);
    assert_eq!(before, std::time::Duration::from_secs(1));
}

#[test]
fn build_checks_the_sets() {
    let p = |name: &str, n| Policy::new(name, Quota::per_minute(n));
    let err = RateLimitLayer::builder()
        .policy_set("a", [p("a", 1)])
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "policies_by");
    let err = RateLimitLayer::builder()
        .policy(p("a", 1))
        .policies_by(|_: &Req| -> Option<&'static str> { None })
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "policy_set");
    let err = RateLimitLayer::builder()
        .policy_set("a", [p("a", 1)])
        .policy_set("a", [p("b", 1)])
        .policies_by(|_: &Req| -> Option<&'static str> { None })
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "policy_set");
    let err = RateLimitLayer::builder()
        .policy(p("global", 100))
        .policy_set("login", [p("global", 50)])
        .policies_by(|_: &Req| -> Option<&'static str> { None })
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "policies");
    assert!(err.to_string().contains("\"global\""), "{err}");
    let err = RateLimitLayer::builder()
        .policy_set("has space", [p("a", 1)])
        .policies_by(|_: &Req| -> Option<&'static str> { None })
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "policy_set");
    let err = RateLimitLayer::builder()
        .policy_set("empty", [])
        .policies_by(|_: &Req| -> Option<&'static str> { None })
        .build()
        .unwrap_err();
    assert_eq!((err.policy_set(), err.field()), (Some("empty"), "policies"));
}
