//! `RateLimiter`, the limiter without tower: every call on the in-memory
//! store and on a real `redis-server` (and Redis Cluster for permits).

mod support;

use support::fresh_key;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower_ratelimit::clock::TokioClock;
use tower_ratelimit::key::Key;
use tower_ratelimit::store::Store;
use tower_ratelimit::{AcquireError, MemoryStore, Policy, Quota, RateLimiter};

fn paused_store() -> MemoryStore<TokioClock> {
    MemoryStore::builder()
        .clock(TokioClock::new())
        .build()
        .unwrap()
}

fn limiter<St: Store>(store: St, policies: Vec<Policy>) -> RateLimiter<St> {
    RateLimiter::builder()
        .store(store)
        .policies(policies)
        .build()
        .unwrap()
}

// ---- The calls, written once for any store ----

async fn check_spends_nothing<St: Store>(l: &RateLimiter<St>) {
    let key = fresh_key("check");
    for _ in 0..5 {
        let d = l.check(key.clone(), 1).await.unwrap();
        assert!(d.is_allowed());
        assert_eq!(d.remaining(), 2);
    }
    for _ in 0..2 {
        assert!(l.try_acquire(key.clone(), 1).await.unwrap().is_allowed());
    }
    let d = l.check(key.clone(), 1).await.unwrap();
    assert!(!d.is_allowed(), "check sees what was spent");
    assert_eq!(d.remaining(), 0);
    // A check of a cost that fits says so, and still spends nothing.
    assert!(!l.check(key.clone(), 1).await.unwrap().is_allowed());
}

async fn try_acquire_answers_now_with_the_wait<St: Store>(l: &RateLimiter<St>) {
    let key = fresh_key("try");
    assert!(l.try_acquire(key.clone(), 2).await.unwrap().is_allowed());
    let refused = l.try_acquire(key.clone(), 1).await.unwrap();
    assert!(!refused.is_allowed());
    // 2 per minute, both spent: one more in 30 s.
    let wait = refused.retry_after().unwrap();
    assert!(
        wait > Duration::from_secs(29) && wait <= Duration::from_secs(30),
        "{wait:?}"
    );
}

async fn a_cost_that_can_never_fit_fails_at_once<St: Store>(l: &RateLimiter<St>) {
    let key = fresh_key("never");
    let started = std::time::Instant::now();
    let err = l.acquire(key.clone(), 3).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    let AcquireError::Limited(limited) = &err else {
        panic!("{err:?}")
    };
    assert!(limited.decision().unwrap().is_never());
    assert_eq!(limited.retry_after(), None);
    assert!(err.to_string().contains("exceeds the quota"), "{err}");
    // Nothing was spent.
    assert_eq!(l.check(key, 1).await.unwrap().remaining(), 2);
}

async fn a_slot_beyond_the_longest_wait_fails_at_once_and_spends_nothing<St: Store>(
    l: &RateLimiter<St>,
) {
    let key = fresh_key("far");
    l.acquire(key.clone(), 2).await.unwrap();
    let started = std::time::Instant::now();
    let err = l.acquire(key.clone(), 1).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(matches!(err, AcquireError::Limited(_)), "{err:?}");
    assert!(err.decision().unwrap().retry_after().unwrap() > Duration::from_secs(29));
    // The refused call reserved nothing: the next slot is still 30 s off.
    let d = l.try_acquire(key, 1).await.unwrap();
    assert!(d.retry_after().unwrap() <= Duration::from_secs(30));
}

async fn reset_forgets_the_key<St: Store>(l: &RateLimiter<St>) {
    let key = fresh_key("reset");
    l.try_acquire(key.clone(), 2).await.unwrap();
    assert!(!l.check(key.clone(), 1).await.unwrap().is_allowed());
    l.reset(key.clone()).await.unwrap();
    let d = l.check(key.clone(), 2).await.unwrap();
    assert!(d.is_allowed());
    assert_eq!(d.remaining(), 2);
    // Another key is untouched by it.
    let other = fresh_key("reset-other");
    l.try_acquire(other.clone(), 2).await.unwrap();
    l.reset(key).await.unwrap();
    assert!(!l.check(other, 1).await.unwrap().is_allowed());
}

fn two_per_minute() -> Vec<Policy> {
    vec![Policy::new("p", Quota::per_minute(2))]
}

async fn every_call<St: Store + Clone>(store: St) {
    let l = limiter(store.clone(), two_per_minute());
    check_spends_nothing(&l).await;
    try_acquire_answers_now_with_the_wait(&l).await;
    a_cost_that_can_never_fit_fails_at_once(&l).await;
    reset_forgets_the_key(&l).await;
    let bounded = RateLimiter::builder()
        .store(store)
        .policies(two_per_minute())
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    a_slot_beyond_the_longest_wait_fails_at_once_and_spends_nothing(&bounded).await;
}

#[tokio::test]
async fn every_call_works_on_the_memory_store() {
    every_call(MemoryStore::new()).await;
}

#[cfg(feature = "redis")]
#[test]
fn every_call_works_on_redis() {
    let server = support::RedisServer::start();
    support::runtime().block_on(async {
        every_call(support::redis_store(&server).await).await;
    });
}

#[tokio::test]
async fn rate_calls_on_a_concurrency_limiter_ask_for_a_permit() {
    let l = limiter(
        MemoryStore::new(),
        vec![
            Policy::new("rate", Quota::per_second(10)),
            Policy::concurrency("in-flight", 2),
        ],
    );
    let err = l.try_acquire("k", 1).await.unwrap_err();
    assert!(matches!(err, AcquireError::PermitRequired), "{err:?}");
    assert!(err.to_string().contains("acquire_permit"), "{err}");
    assert!(matches!(
        l.acquire("k", 1).await.unwrap_err(),
        AcquireError::PermitRequired
    ));
    // Nothing was asked of the store.
    assert_eq!(l.check("k", 1).await.unwrap().remaining(), 2);
}

// ---- acquire: reservations on a paused clock ----

#[tokio::test(start_paused = true)]
async fn acquire_resumes_exactly_at_its_slot() {
    let l = limiter(
        paused_store(),
        vec![Policy::new("p", Quota::per_second(4).burst(2))],
    );
    let start = Instant::now();
    let mut resumed = Vec::new();
    for _ in 0..5 {
        l.acquire("batch", 1).await.unwrap();
        resumed.push(start.elapsed().as_millis());
    }
    // A burst of two, then one every 250 ms.
    assert_eq!(resumed, [0, 0, 250, 500, 750]);
}

#[tokio::test(start_paused = true)]
async fn concurrent_acquires_reserve_slots_in_turn_without_retrying() {
    let store = paused_store();
    let l = limiter(
        store.clone(),
        vec![Policy::new("p", Quota::per_second(10).burst(1))],
    );
    let start = Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let l = l.clone();
            tokio::spawn(async move {
                l.acquire("shared", 1).await.unwrap();
                start.elapsed().as_millis()
            })
        })
        .collect();
    let mut at = Vec::new();
    for t in tasks {
        at.push(t.await.unwrap());
    }
    at.sort_unstable();
    assert_eq!(at, (0..10).map(|i| i * 100).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_acquire_keeps_its_reservation() {
    let l = limiter(
        paused_store(),
        vec![Policy::new("p", Quota::per_second(1).burst(1))],
    );
    let start = Instant::now();
    l.acquire("k", 1).await.unwrap();
    // The second reserves the slot at 1 s, then is given up at 100 ms…
    let gave_up = tokio::time::timeout(Duration::from_millis(100), l.acquire("k", 1)).await;
    assert!(gave_up.is_err());
    // …and its slot stays spent: the third goes at 2 s, not 1 s.
    l.acquire("k", 1).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

// ---- Permits ----

fn one_at_a_time() -> Vec<Policy> {
    vec![Policy::concurrency("in-flight", 1)]
}

/// Waits (a bounded while) until a permit for `key` can be had: releases
/// to Redis are sent by a task after the permit is dropped.
async fn permit_comes_back<St: Store>(l: &RateLimiter<St>, key: &Key) {
    let started = std::time::Instant::now();
    loop {
        match l.try_acquire_permit(key.clone(), 1).await {
            Ok(p) => return p.release(),
            Err(AcquireError::Limited(_)) if started.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!(
                "the permit for {key:?} did not come back within {:?}: {e} ({:?})",
                started.elapsed(),
                e.decision()
            ),
        }
    }
}

async fn permits_come_back<St: Store + Clone>(store: St) {
    let l = limiter(store, one_at_a_time());

    // Dropped.
    let key = fresh_key("drop");
    let p = l.try_acquire_permit(key.clone(), 1).await.unwrap();
    assert!(l.try_acquire_permit(key.clone(), 1).await.is_err());
    assert!(l.check(key.clone(), 1).await.unwrap().is_busy());
    drop(p);
    permit_comes_back(&l, &key).await;

    // Released early.
    let key = fresh_key("release");
    let p = l.try_acquire_permit(key.clone(), 1).await.unwrap();
    p.release();
    permit_comes_back(&l, &key).await;

    // Its holder panicked.
    let key = fresh_key("panic");
    let (held, l2, k2) = (
        tokio::sync::oneshot::channel::<()>(),
        l.clone(),
        key.clone(),
    );
    let (tx, rx) = held;
    let task = tokio::spawn(async move {
        let _permit = l2.acquire_permit(k2, 1).await.unwrap();
        tx.send(()).unwrap();
        panic!("the work failed");
    });
    rx.await.unwrap();
    assert!(task.await.unwrap_err().is_panic());
    permit_comes_back(&l, &key).await;

    // The future holding it was cancelled.
    let key = fresh_key("cancel");
    let (l2, k2) = (l.clone(), key.clone());
    let work = tokio::spawn(async move {
        let _permit = l2.acquire_permit(k2, 1).await.unwrap();
        std::future::pending::<()>().await;
    });
    while !l.check(key.clone(), 1).await.unwrap().is_busy() {
        tokio::task::yield_now().await;
    }
    work.abort();
    assert!(work.await.unwrap_err().is_cancelled());
    permit_comes_back(&l, &key).await;

    // It timed out.
    let key = fresh_key("timeout");
    let timed = tokio::time::timeout(Duration::from_millis(20), async {
        let _permit = l.acquire_permit(key.clone(), 1).await.unwrap();
        std::future::pending::<()>().await;
    })
    .await;
    assert!(timed.is_err());
    permit_comes_back(&l, &key).await;
}

#[tokio::test]
async fn permits_come_back_after_drop_release_panic_cancel_and_timeout_in_memory() {
    permits_come_back(MemoryStore::new()).await;
}

#[cfg(feature = "redis")]
#[test]
fn permits_come_back_after_drop_release_panic_cancel_and_timeout_on_redis() {
    let server = support::RedisServer::start();
    support::runtime().block_on(async {
        permits_come_back(support::redis_store(&server).await).await;
    });
}

#[tokio::test(start_paused = true)]
async fn acquire_permit_waits_for_a_local_release() {
    let l = limiter(paused_store(), one_at_a_time());
    let held = l.acquire_permit("k", 1).await.unwrap();
    let start = Instant::now();
    let l2 = l.clone();
    let waiter = tokio::spawn(async move {
        let p = l2.acquire_permit("k", 1).await.unwrap();
        (Instant::now(), p)
    });
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    drop(held);
    let (got, _p) = waiter.await.unwrap();
    // Woken by the release itself, not by the next poll of a backoff.
    assert_eq!(got - start, Duration::from_millis(1_000));
}

#[tokio::test(start_paused = true)]
async fn acquire_permit_gives_up_after_the_longest_wait() {
    let l = RateLimiter::builder()
        .store(paused_store())
        .policies(one_at_a_time())
        .max_wait(Duration::from_millis(300))
        .build()
        .unwrap();
    let _held = l.acquire_permit("k", 1).await.unwrap();
    let start = Instant::now();
    let err = l.acquire_permit("k", 1).await.unwrap_err();
    assert!(err.decision().unwrap().is_busy());
    assert!(err.to_string().contains("in flight"), "{err}");
    assert_eq!(start.elapsed(), Duration::from_millis(300));
}

#[tokio::test]
async fn rate_and_concurrency_policies_admit_all_or_nothing() {
    let l = limiter(
        MemoryStore::new(),
        vec![
            Policy::new("rate", Quota::per_minute(3)),
            Policy::concurrency("in-flight", 2),
        ],
    );
    let a = l.try_acquire_permit("k", 1).await.unwrap();
    let b = l.try_acquire_permit("k", 1).await.unwrap();
    // Refused by the concurrency policy: the rate policy is not charged.
    let err = l.try_acquire_permit("k", 1).await.unwrap_err();
    assert!(err.decision().unwrap().is_busy());
    drop((a, b));
    let c = l.try_acquire_permit("k", 1).await.unwrap();
    assert_eq!(c.decision().policies()[0].remaining(), 0, "three spent");
    drop(c);
    // Refused by the rate policy: no permit is taken.
    let err = l.try_acquire_permit("k", 1).await.unwrap_err();
    assert!(err.decision().unwrap().retry_after().is_some());
    assert_eq!(l.check("k", 1).await.unwrap().policies()[1].remaining(), 2);
}

// ---- In flight across instances ----

/// 64 tasks over `limiters` (one per store instance) each run 6 jobs
/// holding a permit; returns the most ever in flight at once.
async fn most_in_flight<St: Store>(limiters: Vec<RateLimiter<St>>, key: Key) -> u64 {
    let in_flight = Arc::new(AtomicU64::new(0));
    let most = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..64 {
        let l = limiters[i % limiters.len()].clone();
        let (in_flight, most, key) = (Arc::clone(&in_flight), Arc::clone(&most), key.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..6 {
                let permit = l.acquire_permit(key.clone(), 1).await.unwrap();
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                drop(permit);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    most.load(Ordering::SeqCst)
}

fn three_in_flight() -> Vec<Policy> {
    vec![Policy::concurrency("in-flight", 3)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_never_more_than_the_limit_in_flight() {
    let store = MemoryStore::new();
    let limiters = (0..4)
        .map(|_| limiter(store.clone(), three_in_flight()))
        .collect();
    let most = most_in_flight(limiters, fresh_key("flight")).await;
    assert_eq!(most, 3);
}

#[cfg(feature = "redis")]
#[test]
fn on_redis_four_instances_never_have_more_than_the_limit_in_flight() {
    let server = support::RedisServer::start();
    support::runtime().block_on(async {
        let mut limiters = Vec::new();
        for _ in 0..4 {
            limiters.push(limiter(
                support::redis_store(&server).await,
                three_in_flight(),
            ));
        }
        let most = most_in_flight(limiters, fresh_key("flight")).await;
        assert_eq!(most, 3);
    });
}

#[cfg(feature = "redis-cluster")]
#[test]
fn on_a_cluster_four_instances_never_have_more_than_the_limit_in_flight() {
    let cluster = support::RedisCluster::start();
    support::runtime().block_on(async {
        let mut limiters = Vec::new();
        for _ in 0..4 {
            limiters.push(limiter(
                support::cluster_store(&cluster).await,
                three_in_flight(),
            ));
        }
        let l = limiters[0].clone();
        let most = most_in_flight(limiters, fresh_key("flight")).await;
        assert_eq!(most, 3);
        // Permits on keys of every slot range come and go.
        for n in 0..30 {
            let key = Key::from(format!("slot-{n}"));
            let p = l.try_acquire_permit(key.clone(), 1).await.unwrap();
            drop(p);
            permit_comes_back(&l, &key).await;
        }
    });
}

// ---- Leases ----

#[cfg(feature = "redis")]
#[test]
fn a_permit_whose_holder_vanished_comes_back_after_its_lease() {
    let server = support::RedisServer::start();
    let lease = Duration::from_millis(400);
    let policy = || {
        vec![
            Policy::new("in-flight", Quota::new(1, lease))
                .with_algorithm(tower_ratelimit::Algorithm::Concurrency),
        ]
    };
    let key = fresh_key("vanished");
    // A process that takes a permit and dies: its runtime (and the task
    // renewing the lease) goes, and it never releases.
    let doomed = support::runtime();
    doomed.block_on(async {
        let l = limiter(support::redis_store(&server).await, policy());
        std::mem::forget(l.try_acquire_permit(key.clone(), 1).await.unwrap());
    });
    drop(doomed);

    support::runtime().block_on(async {
        let l = limiter(support::redis_store(&server).await, policy());
        let started = std::time::Instant::now();
        assert!(l.try_acquire_permit(key.clone(), 1).await.is_err());
        // Redis's clock runs for real: poll until the lease has run out.
        let p = loop {
            match l.try_acquire_permit(key.clone(), 1).await {
                Ok(p) => break p,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let waited = started.elapsed();
        assert!(waited < lease + Duration::from_millis(300), "{waited:?}");
        drop(p);
    });
}

#[cfg(feature = "redis")]
#[test]
fn a_held_permit_is_renewed_past_its_lease() {
    let server = support::RedisServer::start();
    // Renewed every third of it: a stall of a loaded machine up to 400 ms
    // lets no renewal come late.
    let lease = Duration::from_millis(600);
    support::runtime().block_on(async {
        let l = limiter(
            support::redis_store(&server).await,
            vec![
                Policy::new("in-flight", Quota::new(1, lease))
                    .with_algorithm(tower_ratelimit::Algorithm::Concurrency),
            ],
        );
        let key = fresh_key("renewed");
        let p = l.try_acquire_permit(key.clone(), 1).await.unwrap();
        // Three leases later it is still held: its task renewed it.
        tokio::time::sleep(lease * 3).await;
        assert!(l.check(key.clone(), 1).await.unwrap().is_busy());
        drop(p);
        permit_comes_back(&l, &key).await;
    });
}
