//! Cancellation at every await point: a request future, or a
//! `RateLimiter` future, dropped after any number of polls neither leaks a
//! permit nor spends quota twice; a panicking inner service gives its permit
//! back. On the in-memory store and on a real `redis-server`.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::{Layer, ServiceExt, service_fn};
use tower_ratelimit::key::{Global, Key};
use tower_ratelimit::store::Store;
use tower_ratelimit::{MemoryStore, OnLimit, Policy, Quota, RateLimitLayer, RateLimiter};

type Req = Request<String>;

/// Polls `fut` up to `polls` times, letting the runtime run between polls,
/// and drops it there unless it finished first.
async fn poll_then_drop<F: Future>(fut: F, polls: usize) -> Option<F::Output> {
    let mut fut = pin!(fut);
    for _ in 0..polls {
        let step = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        if let Poll::Ready(out) = step {
            return Some(out);
        }
        tokio::task::yield_now().await;
    }
    None
}

/// Every count up to 30, then ever further apart: a call on Redis takes
/// more polls than one in memory.
fn poll_counts() -> impl Iterator<Item = usize> {
    (0..30).chain([40, 60, 100, 200, 500, 1_000, 5_000, 20_000])
}

const IN_FLIGHT: u64 = 2;
const RATE: u64 = 1_000_000;

fn policies() -> Vec<Policy> {
    vec![
        // One unit back every 315 s: none comes back during a test.
        Policy::new(
            "rate",
            Quota::new(RATE, Duration::from_secs(10 * 365 * 86_400)),
        ),
        Policy::concurrency("in-flight", IN_FLIGHT),
    ]
}

/// What the store holds for the global key: units of the rate spent, and
/// permits free, once releases in flight have landed (bounded wait).
async fn settled<St: Store + Clone>(store: &St) -> (u64, u64) {
    let checker = RateLimiter::builder()
        .store(store.clone())
        .policies(policies())
        .build()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let d = checker.check(Key::global(), 0).await.unwrap();
        let (rate, free) = (d.policies()[0].remaining(), d.policies()[1].remaining());
        if free == IN_FLIGHT || tokio::time::Instant::now() >= deadline {
            return (RATE - rate, free);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Requests through a layer holding a permit to the end of the body, each
/// dropped after 0, 1, 2, … polls.
async fn dropped_requests<St: Store + Clone>(store: St) {
    let svc = RateLimitLayer::builder()
        .store(store.clone())
        .key(Global)
        .policies(policies())
        .hold_permits_until_body_end()
        .build()
        .unwrap()
        .layer(service_fn(|_: Req| async {
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            Ok::<_, Infallible>(Response::new("body".to_owned()))
        }));
    let (mut polled, mut answered) = (0, 0);
    for polls in poll_counts() {
        polled += u64::from(polls > 0);
        let res = poll_then_drop(svc.clone().oneshot(Request::new(String::new())), polls).await;
        if let Some(res) = res {
            let res = res.unwrap();
            // On Redis a dropped request's permit is given back by a call
            // of its own, which may not have landed yet: refused, and
            // charged nothing.
            match res.status() {
                StatusCode::OK => answered += 1,
                StatusCode::TOO_MANY_REQUESTS => polled -= 1,
                other => panic!("{other} after {polls} polls"),
            }
            // The permit is held by the body; dropping it gives it back.
            drop(res);
        }
    }
    assert!(answered > 0, "some requests ran to the end");
    let (spent, free) = settled(&store).await;
    assert_eq!(free, IN_FLIGHT, "every permit came back");
    assert!(
        (answered..=polled).contains(&spent),
        "spent {spent}: at least the {answered} answered, at most once for each of the {polled} polled and not refused"
    );
}

/// `acquire_permit` and `acquire`, each dropped after 0, 1, 2, … polls,
/// with another holder making them wait.
async fn dropped_limiter_calls<St: Store + Clone>(store: St) {
    let l = RateLimiter::builder()
        .store(store.clone())
        .policies(policies())
        .max_wait(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut polled = 0;
    for polls in poll_counts() {
        polled += u64::from(polls > 0);
        // Hold one permit of two for a while, so some calls wait.
        let holder = l.acquire_permit(Key::global(), 1).await.unwrap();
        polled += 1;
        let release = async {
            for _ in 0..polls / 2 {
                tokio::task::yield_now().await;
            }
            drop(holder);
        };
        let (waiting, ()) = tokio::join!(
            poll_then_drop(l.acquire_permit(Key::global(), 2), polls),
            release
        );
        if let Some(permit) = waiting {
            drop(permit.unwrap());
        }
    }
    let (spent, free) = settled(&store).await;
    assert_eq!(free, IN_FLIGHT, "every permit came back");
    // Each holder spent one unit; each waiter at most two, once.
    let holders = poll_counts().count() as u64;
    assert!(
        (holders..=holders + 2 * (polled - holders)).contains(&spent),
        "spent {spent}"
    );
}

#[tokio::test]
async fn dropped_requests_in_memory() {
    dropped_requests(std::sync::Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn dropped_limiter_calls_in_memory() {
    dropped_limiter_calls(std::sync::Arc::new(MemoryStore::new())).await;
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;

    #[test]
    fn dropped_requests_on_redis() {
        let server = support::RedisServer::start();
        support::runtime().block_on(async {
            dropped_requests(support::redis_store(&server).await).await;
        });
    }

    #[test]
    fn dropped_limiter_calls_on_redis() {
        let server = support::RedisServer::start();
        support::runtime().block_on(async {
            dropped_limiter_calls(support::redis_store(&server).await).await;
        });
    }

    #[test]
    fn a_panicking_inner_service_gives_its_permit_back_on_redis() {
        let server = support::RedisServer::start();
        support::runtime().block_on(async {
            let store = support::redis_store(&server).await;
            let svc = RateLimitLayer::builder()
                .store(store.clone())
                .key(Global)
                .policies(policies())
                .build()
                .unwrap()
                .layer(service_fn(|req: Req| async move {
                    assert!(!req.body().is_empty(), "the handler failed");
                    Ok::<_, Infallible>(Response::new(String::new()))
                }));
            // More crashes than permits: each gives its permit back (by a
            // release call of its own, awaited here before the next).
            for _ in 0..IN_FLIGHT + 1 {
                // A permit comes back by a call of its own after the panic:
                // it lands before the next request.
                settled(&store).await;
                let crashed = tokio::spawn(svc.clone().oneshot(Request::new(String::new())));
                assert!(crashed.await.unwrap_err().is_panic());
                assert_eq!(settled(&store).await.1, IN_FLIGHT, "the permit came back");
            }
            let (spent, free) = settled(&store).await;
            assert_eq!(free, IN_FLIGHT);
            assert_eq!(spent, IN_FLIGHT + 1, "each crashed request counted once");
        });
    }
}

#[tokio::test(start_paused = true)]
async fn a_dropped_wait_in_the_layer_keeps_nothing_but_its_reservation() {
    // A waiting request's slot is reserved when it is decided; dropping it
    // while it sleeps does not give the slot back (as `acquire`), and never
    // charges it again.
    let store = MemoryStore::builder()
        .clock(tower_ratelimit::clock::TokioClock::new())
        .build()
        .unwrap();
    let svc = RateLimitLayer::builder()
        .store(store.clone())
        .key(tower_ratelimit::key::Header::new("x-key"))
        .policy(Policy::new("p", Quota::per_second(1)))
        .on_limit(OnLimit::Wait {
            max: Duration::from_secs(10),
        })
        .build()
        .unwrap()
        .layer(service_fn(|_: Req| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    let req = || {
        Request::builder()
            .header("x-key", "k")
            .body(String::new())
            .unwrap()
    };
    let first = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    // Reserves the slot 1 s away, then is dropped mid-sleep.
    let timed = tokio::time::timeout(Duration::from_millis(500), svc.clone().oneshot(req())).await;
    assert!(timed.is_err());
    // The next request waits for the slot after the dropped one's: 2 s.
    let start = tokio::time::Instant::now();
    let third = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(third.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_millis(1500));
}
