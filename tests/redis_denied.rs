//! `RedisStore`'s local cache of denials, against real `redis-server`s:
//! it answers exactly what Redis would, and spares Redis the calls.
#![cfg(feature = "redis")]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use support::{RedisServer, fcall_calls, fresh_key, runtime};
use tower_ratelimit::clock::{Clock, FakeClock};
use tower_ratelimit::key::Key;
use tower_ratelimit::store::{Check, Op, RedisStore, Store};
use tower_ratelimit::{Algorithm, Decision, MemoryStore, Policy, PolicySet, Quota};

async fn store(server: &RedisServer, cached: bool) -> RedisStore {
    let mut builder = RedisStore::builder().timeout(Duration::from_secs(5));
    if !cached {
        builder = builder.denied_cache(0, Duration::ZERO);
    }
    builder.connect(&server.url()).await.unwrap()
}

fn policies() -> impl Strategy<Value = PolicySet> {
    support::policy_sets(&Algorithm::RATES, 1..8, 1..10)
}

/// One step of a timeline: advance, then ask.
#[derive(Debug, Clone)]
struct Step {
    advance_us: u64,
    cost: u64,
    wait: bool,
    op: Op,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            prop_oneof![Just(0_u64), 0..2_000_u64, 0..400_000_u64, 0..3_000_000_u64],
            prop_oneof![4 => Just(1_u64), 1 => 0..6_u64],
            prop::bool::weighted(0.3),
            prop_oneof![16 => Just(Op::Acquire), 3 => Just(Op::Peek), 1 => Just(Op::Reset)],
        )
            .prop_map(|(advance_us, cost, wait, op)| Step {
                advance_us,
                cost,
                wait,
                op,
            }),
        1..50,
    )
}

/// A realistic epoch, so windows align as they do on a real clock.
const START: u64 = 1_763_800_000_000_000;

fn check<'a>(key: &'a Key, set: &'a PolicySet, step: &Step, at: u64) -> Check<'a> {
    let max_wait = step.wait.then(|| Duration::from_millis(1500));
    Check::new(key, set, step.cost)
        .with_op(step.op)
        .with_max_wait(max_wait)
        .with_at_micros(Some(at))
}

#[test]
fn cached_denials_answer_field_for_field_like_the_uncached_store_on_random_timelines() {
    let (with, without) = (RedisServer::start(), RedisServer::start());
    let rt = runtime();
    let (cached, uncached) =
        rt.block_on(async { (store(&with, true).await, store(&without, false).await) });
    let config = ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(set in policies(), steps in steps())| {
        let key = fresh_key("timeline");
        let mut at = START;
        for (i, step) in steps.iter().enumerate() {
            at += step.advance_us;
            let c = check(&key, &set, step, at);
            let (a, b) = rt.block_on(async { (cached.decide(c).await.unwrap(), uncached.decide(c).await.unwrap()) });
            prop_assert_eq!(a, b, "step {}: {:?}", i, step);
        }
    });
    let (spared, asked) = (fcall_calls(&with), fcall_calls(&without));
    eprintln!("Redis calls: {spared} with the cache, {asked} without");
    assert!(
        spared < asked,
        "the cache answered nothing: {spared} calls of {asked}"
    );
}

#[test]
fn a_cached_denial_stays_exact_while_another_instance_spends() {
    let server = RedisServer::start();
    let rt = runtime();
    // Two instances on one Redis: `here` caches, `there` does not; the
    // memory store sees every request in the same order.
    let (here, there) =
        rt.block_on(async { (store(&server, true).await, store(&server, false).await) });
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let (asked_here, served_here) = (AtomicU64::new(0), AtomicU64::new(0));
    proptest!(config, |(set in policies(), steps in steps(), sides in prop::collection::vec(prop::bool::ANY, 50))| {
        let key = fresh_key("instances");
        let clock = FakeClock::at_micros(START);
        let memory = MemoryStore::builder().clock(clock.clone()).build().unwrap();
        for (i, (step, here_side)) in steps.iter().zip(&sides).enumerate() {
            if step.op == Op::Reset {
                // A reset elsewhere is not seen here: that bound is documented.
                continue;
            }
            clock.advance(Duration::from_micros(step.advance_us));
            let c = check(&key, &set, step, clock.now_micros());
            let oracle = memory.decide_now(c);
            let store = if *here_side { &here } else { &there };
            let before = fcall_calls(&server);
            let d: Decision = rt.block_on(store.decide(c)).unwrap();
            if *here_side {
                served_here.fetch_add(1, Ordering::Relaxed);
                asked_here.fetch_add(fcall_calls(&server) - before, Ordering::Relaxed);
            }
            prop_assert_eq!(d.is_allowed(), oracle.is_allowed(), "step {}: {:?}", i, step);
            // Denied here from what this instance last saw: in reject mode
            // never a later retry time than Redis's own. (In wait mode a
            // leaky bucket that others filled says "queue full, retry
            // sooner" where the states seen said "too far to wait".)
            if !step.wait {
                prop_assert!(d.retry_after() <= oracle.retry_after(), "step {}: {:?} vs {:?}", i, d, oracle);
            }
        }
    });
    let (asked, served) = (asked_here.into_inner(), served_here.into_inner());
    eprintln!("the caching instance asked Redis {asked} times for {served} decisions");
    assert!(asked < served);
}

#[test]
fn a_flood_on_a_denied_key_costs_no_redis_call() {
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let redis = RedisStore::builder()
            .timeout(Duration::from_secs(5))
            .denied_cache(10, Duration::from_secs(3600))
            .connect(&server.url())
            .await
            .unwrap();
        let set = PolicySet::new(vec![Policy::new("daily", Quota::per_day(2))]).unwrap();
        let key = fresh_key("flood");
        assert!(admits(&redis, &key, &set, 2).await);
        let first = redis.decide(Check::new(&key, &set, 1)).await.unwrap();
        assert!(!first.is_allowed());
        let before = fcall_calls(&server);
        // The same cost, and more: each waits longer, none is sent.
        for (cost, hours) in [(1, 12), (1, 12), (2, 24), (1, 12)] {
            for _ in 0..200 {
                let d = redis.decide(Check::new(&key, &set, cost)).await.unwrap();
                assert!(!d.is_allowed());
                let wait = d.retry_after().unwrap();
                assert!(wait <= Duration::from_secs(hours * 3600), "{wait:?}");
                assert!(wait > Duration::from_secs(hours * 3600 - 60), "{wait:?}");
                assert_eq!(d.remaining(), 0);
            }
        }
        assert_eq!(
            fcall_calls(&server),
            before,
            "every denial was answered here"
        );
        // A peek is answered alike; so is the layer's synchronous path.
        let peek = Check::new(&key, &set, 1).with_op(Op::Peek);
        assert!(!redis.decide(peek).await.unwrap().is_allowed());
        assert!(redis.decide_now(Check::new(&key, &set, 1)).is_some());
        assert_eq!(fcall_calls(&server), before);
    });
}

/// Whether `redis` admits `cost` units for `key` under `set`.
async fn admits(redis: &RedisStore, key: &Key, set: &PolicySet, cost: u64) -> bool {
    redis
        .decide(Check::new(key, set, cost))
        .await
        .unwrap()
        .is_allowed()
}

#[test]
fn a_reset_here_forgets_the_cached_denial() {
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let redis = store(&server, true).await;
        let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(1))]).unwrap();
        let key = fresh_key("reset");
        assert!(admits(&redis, &key, &set, 1).await);
        assert!(!admits(&redis, &key, &set, 1).await);
        assert!(
            redis.decide_now(Check::new(&key, &set, 1)).is_some(),
            "cached"
        );
        redis
            .decide(Check::new(&key, &set, 0).with_op(Op::Reset))
            .await
            .unwrap();
        assert!(redis.decide_now(Check::new(&key, &set, 1)).is_none());
        assert!(admits(&redis, &key, &set, 1).await);
    });
}

#[test]
fn a_changed_quota_is_not_answered_by_the_old_denial() {
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let redis = store(&server, true).await;
        let one = PolicySet::new(vec![Policy::new("p", Quota::per_minute(1))]).unwrap();
        let two = PolicySet::new(vec![Policy::new("p", Quota::per_minute(2))]).unwrap();
        let key = fresh_key("quota");
        assert!(admits(&redis, &key, &one, 1).await);
        assert!(!admits(&redis, &key, &one, 1).await);
        assert!(redis.decide_now(Check::new(&key, &one, 1)).is_some());
        assert!(redis.decide_now(Check::new(&key, &two, 1)).is_none());
        assert!(admits(&redis, &key, &two, 1).await);
    });
}

#[test]
fn a_full_concurrency_policy_is_never_answered_from_the_cache() {
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let redis = store(&server, true).await;
        let set = PolicySet::new(vec![Policy::concurrency("in-flight", 1)]).unwrap();
        let key = fresh_key("busy");
        let hold = Check::new(&key, &set, 1).with_lease(1);
        assert!(redis.decide(hold).await.unwrap().is_allowed());
        let busy = redis
            .decide(Check::new(&key, &set, 1).with_lease(2))
            .await
            .unwrap();
        assert!(busy.is_busy());
        assert!(
            redis
                .decide_now(Check::new(&key, &set, 1).with_lease(2))
                .is_none()
        );
        redis.decide(hold.with_op(Op::Release)).await.unwrap();
        assert!(
            redis
                .decide(Check::new(&key, &set, 1).with_lease(2))
                .await
                .unwrap()
                .is_allowed()
        );
    });
}
