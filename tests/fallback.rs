//! `FailurePolicy::Fallback`: while the store fails, decisions are made in
//! memory on this instance's share of each quota, and go back to the store
//! as soon as it answers; a failing store is logged once per second.
//!
//! The store that fails on demand wraps a real `MemoryStore` (a store a
//! user could write); the Redis test pauses a real `redis-server`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tower_ratelimit::clock::TokioClock;
use tower_ratelimit::store::{Check, Store};
use tower_ratelimit::{
    AcquireError, Decision, FailurePolicy, MemoryStore, Policy, Quota, RateLimiter, StoreError,
    StoreErrorKind,
};

/// A memory store that fails every call while `down` is set.
#[derive(Clone)]
struct Flaky {
    inner: Arc<MemoryStore<TokioClock>>,
    down: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
}

impl Flaky {
    fn new() -> Self {
        Self {
            inner: Arc::new(
                MemoryStore::builder()
                    .clock(TokioClock::new())
                    .build()
                    .unwrap(),
            ),
            down: Arc::new(AtomicBool::new(false)),
            calls: Arc::new(AtomicU64::new(0)),
        }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

impl Store for Flaky {
    type Future = std::future::Ready<Result<Decision, StoreError>>;

    fn decide(&self, check: Check<'_>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(if self.down.load(Ordering::SeqCst) {
            Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "store is down",
                None,
            ))
        } else {
            Ok(MemoryStore::decide_now(&self.inner, check))
        })
    }
}

/// `got` is `want`, less at most the half second a slow machine takes.
fn assert_near(got: Option<Duration>, want: Duration) {
    let got = got.expect("a retry time");
    assert!(
        got <= want && got + Duration::from_millis(500) > want,
        "{got:?} is not {want:?}"
    );
}

fn limiter(store: Flaky, policies: Vec<Policy>, failure: FailurePolicy) -> RateLimiter<Flaky> {
    RateLimiter::builder()
        .store(store)
        .policies(policies)
        .on_store_failure(failure)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn decides_on_its_share_while_the_store_fails_then_goes_back() {
    let store = Flaky::new();
    let l = limiter(
        store.clone(),
        vec![Policy::new("p", Quota::per_minute(10))],
        FailurePolicy::Fallback { instances: 3 },
    );
    for _ in 0..4 {
        let d = l.try_acquire("k", 1).await.unwrap();
        assert!(d.is_allowed() && !d.is_degraded());
    }

    store.set_down(true);
    // This instance's share of 10 a minute among 3: 4 (rounded up), counted
    // from nothing.
    for i in 0..4 {
        let d = l.try_acquire("k", 1).await.unwrap();
        assert!(d.is_allowed(), "local decision {i}");
        assert!(d.is_degraded());
        assert_eq!(d.policies()[0].limit(), 4);
        assert_eq!(d.remaining(), 3 - i);
    }
    let d = l.try_acquire("k", 1).await.unwrap();
    assert!(!d.is_allowed() && d.is_degraded());
    // The share refills at its own rate: one unit in 15 s (the local store
    // keeps real time, a little of which the test has taken).
    assert_near(d.retry_after(), Duration::from_secs(15));
    // Every call still asked the store first.
    assert_eq!(store.calls.load(Ordering::SeqCst), 9);

    store.set_down(false);
    let d = l.try_acquire("k", 1).await.unwrap();
    assert!(!d.is_degraded(), "back on the store as soon as it answers");
    assert!(d.is_allowed());
    // The store kept its own count: 4 before the failure, 5 now.
    assert_eq!(d.policies()[0].limit(), 10);
    assert_eq!(d.remaining(), 5);
}

#[tokio::test(start_paused = true)]
async fn without_a_fallback_the_error_comes_back() {
    for failure in [FailurePolicy::FailClosed, FailurePolicy::FailOpen] {
        let store = Flaky::new();
        store.set_down(true);
        let l = limiter(
            store,
            vec![Policy::new("p", Quota::per_minute(10))],
            failure,
        );
        match l.try_acquire("k", 1).await {
            Err(AcquireError::Store(e)) => assert_eq!(e.kind(), StoreErrorKind::Unavailable),
            other => panic!("{failure:?}: expected the store's error, got {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn every_policy_is_divided_and_a_burst_too() {
    let store = Flaky::new();
    store.set_down(true);
    let l = limiter(
        store,
        vec![
            Policy::new("minute", Quota::per_minute(100).burst(10)),
            Policy::new("hour", Quota::per_hour(1000)),
        ],
        FailurePolicy::Fallback { instances: 4 },
    );
    let d = l.try_acquire("k", 1).await.unwrap();
    let limits: Vec<(String, u64)> = d
        .policies()
        .iter()
        .map(|p| (p.name().to_owned(), p.limit()))
        .collect();
    assert_eq!(
        limits,
        [("minute".to_owned(), 25), ("hour".to_owned(), 250)]
    );
    // The burst of 10 divided by 4: 3 at once, then the minute's share
    // refills one unit every 60 s / 25.
    assert!(l.try_acquire("k", 2).await.unwrap().is_allowed());
    let d = l.try_acquire("k", 1).await.unwrap();
    assert!(!d.is_allowed());
    assert_near(d.retry_after(), Duration::from_millis(2400));
}

#[tokio::test(start_paused = true)]
async fn permits_taken_locally_are_given_back_locally() {
    let store = Flaky::new();
    let l = limiter(
        store.clone(),
        vec![Policy::concurrency("jobs", 4)],
        FailurePolicy::Fallback { instances: 2 },
    );
    let on_store = l.try_acquire_permit("k", 1).await.unwrap();
    assert!(!on_store.decision().is_degraded());

    store.set_down(true);
    let a = l.try_acquire_permit("k", 1).await.unwrap();
    let b = l.try_acquire_permit("k", 1).await.unwrap();
    assert!(a.decision().is_degraded() && b.decision().is_degraded());
    // A share of 2 in flight.
    assert!(matches!(
        l.try_acquire_permit("k", 1).await,
        Err(AcquireError::Limited(_))
    ));
    drop(a);
    let c = l.try_acquire_permit("k", 1).await.unwrap();
    assert!(c.decision().is_degraded());

    // Dropping the permit taken on the store while it fails loses its
    // release; its lease comes back when it expires, as after a crash.
    store.set_down(false);
    drop((b, c));
    let d = l.check("k", 1).await.unwrap();
    assert!(!d.is_degraded());
    assert_eq!(
        d.remaining(),
        3,
        "the store holds the one permit it granted"
    );
}

#[tokio::test]
async fn zero_instances_is_a_config_error() {
    let err = RateLimiter::builder()
        .policy(Policy::new("p", Quota::per_minute(10)))
        .on_store_failure(FailurePolicy::Fallback { instances: 0 })
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "instances");
    let err = tower_ratelimit::RateLimitLayer::builder()
        .policy(Policy::new("p", Quota::per_minute(10)))
        .on_store_failure(FailurePolicy::Fallback { instances: 0 })
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "instances");
}

#[cfg(feature = "tracing")]
mod logging {
    use super::*;
    use support::events::Events;

    #[tokio::test(start_paused = true)]
    async fn a_failing_store_is_logged_once_a_second_with_the_count_skipped() {
        let warnings = Events::install(tracing::Level::WARN);
        let store = Flaky::new();
        store.set_down(true);
        let l = limiter(
            store,
            vec![Policy::new("p", Quota::per_second(1_000_000))],
            FailurePolicy::Fallback { instances: 1 },
        );
        // 100 failures a second for 3.5 s.
        for _ in 0..350 {
            assert!(l.try_acquire("k", 1).await.unwrap().is_degraded());
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        let logged: Vec<u64> = warnings
            .seen()
            .iter()
            .map(|w| {
                w["skipped"]
                    .parse()
                    .expect("a failure warning carries `skipped`")
            })
            .collect();
        // Logged at 0 s, 1 s, 2 s and 3 s; each after the 99 counted
        // since the one before.
        assert_eq!(logged, [0, 99, 99, 99]);
    }
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use support::RedisServer;

    #[test]
    fn a_paused_redis_is_replaced_by_the_local_share_and_then_resumes() {
        let server = RedisServer::start();
        support::runtime().block_on(async {
            let store = tower_ratelimit::store::RedisStore::builder()
                .timeout(Duration::from_millis(100))
                .connect(&server.url())
                .await
                .unwrap();
            let l = RateLimiter::builder()
                .store(store)
                .policy(Policy::new("p", Quota::per_minute(10)))
                .on_store_failure(FailurePolicy::Fallback { instances: 2 })
                .build()
                .unwrap();
            for _ in 0..3 {
                let d = l.try_acquire("fallback", 1).await.unwrap();
                assert!(d.is_allowed() && !d.is_degraded());
            }

            // Every command waits for 1.5 s: each call misses its deadline.
            assert!(server.command("CLIENT PAUSE 1500 ALL").starts_with("+OK"));
            let paused = tokio::time::Instant::now();
            let mut admitted = 0;
            for _ in 0..6 {
                let d = l.try_acquire("fallback", 1).await.unwrap();
                assert!(d.is_degraded(), "{d:?}");
                admitted += u32::from(d.is_allowed());
            }
            assert!(
                paused.elapsed() < Duration::from_millis(1500),
                "still paused"
            );
            assert_eq!(admitted, 5, "a share of 10 among 2");

            // Once Redis answers again (and any cool-down is over), the
            // decisions are Redis's, which counted only what it saw.
            let deadline = paused + Duration::from_secs(10);
            let d = loop {
                let d = l.try_acquire("fallback", 1).await.unwrap();
                if !d.is_degraded() {
                    break d;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "Redis never came back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert!(d.is_allowed());
            assert_eq!(d.policies()[0].limit(), 10);
            // 3 before the pause, this one, and any timed-out call that
            // Redis ran once it was unpaused (the script may have run after
            // its deadline: at most the 6 sent while paused).
            assert!((3..=9).contains(&(10 - d.remaining() - 1)), "{d:?}");
        });
    }
}

#[tokio::test(start_paused = true)]
async fn the_layer_answers_from_the_share() {
    use http::{Request, Response, StatusCode};
    use tower::{Layer, ServiceExt, service_fn};

    let store = Flaky::new();
    store.set_down(true);
    let layer = tower_ratelimit::RateLimitLayer::builder()
        .store(store)
        .policy(Policy::new("api", Quota::per_minute(10)))
        .on_store_failure(FailurePolicy::Fallback { instances: 5 })
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|_: Request<String>| async {
        Ok::<_, std::convert::Infallible>(Response::new(String::new()))
    }));
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let res = svc
            .clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        statuses.push(res.status());
        last = Some(res);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let res = last.unwrap();
    // The published policy stays the shared one; what is left is the share's.
    let policy = res.headers()["ratelimit-policy"].to_str().unwrap();
    assert_eq!(policy, r#""api";q=10;w=60"#);
    let field = res.headers()["ratelimit"].to_str().unwrap();
    assert!(field.starts_with(r#""api";r=0;"#), "{field}");
    // One unit of the share (2 a minute) comes back in 30 s.
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((29..=30).contains(&retry), "{retry}");
}
