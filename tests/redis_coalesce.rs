//! `RedisStore` coalescing, against real `redis-server`s: requests for one
//! key that arrive together go to Redis in one call and get exactly the
//! answers they would have had one at a time.
#![cfg(feature = "redis")]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use support::{RedisServer, fcall_calls, fresh_key, runtime};
use tower_ratelimit::key::Key;
use tower_ratelimit::store::{Check, Op, RedisStore, Store};
use tower_ratelimit::{Algorithm, Policy, PolicySet, Quota};

fn policies() -> impl Strategy<Value = PolicySet> {
    support::policy_sets(&Algorithm::ALL, 1..12, 1..15)
}

/// A request of a burst: all of a burst's requests arrive at once.
#[derive(Debug, Clone)]
struct Ask {
    cost: u64,
    wait: bool,
    peek: bool,
}

/// Bursts of requests, each at its own time.
fn bursts() -> impl Strategy<Value = Vec<(u64, Vec<Ask>)>> {
    let ask = (
        prop_oneof![4 => Just(1_u64), 1 => 0..6_u64],
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(cost, wait, peek)| Ask { cost, wait, peek });
    prop::collection::vec(
        (
            prop_oneof![Just(0_u64), 0..400_000_u64, 0..3_000_000_u64],
            prop::collection::vec(ask, 1..24),
        ),
        1..8,
    )
}

const START: u64 = 1_763_800_000_000_000;

fn check<'a>(key: &'a Key, set: &'a PolicySet, ask: &Ask, at: u64, lease: u64) -> Check<'a> {
    Check::new(key, set, ask.cost)
        .with_op(if ask.peek { Op::Peek } else { Op::Acquire })
        .with_max_wait(ask.wait.then(|| Duration::from_millis(1500)))
        .with_at_micros(Some(at))
        .with_lease(lease)
}

#[test]
fn a_burst_decided_together_answers_exactly_as_one_by_one() {
    let (together, apart) = (RedisServer::start(), RedisServer::start());
    let rt = runtime();
    let (coalescing, one_by_one) = rt.block_on(async {
        let coalescing = RedisStore::builder()
            .timeout(Duration::from_secs(5))
            .connect(&together.url())
            .await
            .unwrap();
        let one_by_one = RedisStore::builder()
            .timeout(Duration::from_secs(5))
            .coalesce(false)
            .denied_cache(0, Duration::ZERO)
            .connect(&apart.url())
            .await
            .unwrap();
        (coalescing, one_by_one)
    });
    let config = ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let requests = AtomicU64::new(0);
    proptest!(config, |(set in policies(), bursts in bursts())| {
        let key = fresh_key("burst");
        let mut at = START;
        let mut lease = 0;
        for (advance, asks) in &bursts {
            at += advance;
            let checks: Vec<Check<'_>> = asks
                .iter()
                .map(|a| {
                    lease += 1;
                    check(&key, &set, a, at, lease)
                })
                .collect();
            requests.fetch_add(checks.len() as u64, Ordering::Relaxed);
            // All at once: the first sends its call, the rest queue behind it
            // in this order.
            let joined = rt.block_on(futures_join(checks.iter().map(|c| coalescing.decide(*c)).collect()));
            for (i, (c, got)) in checks.iter().zip(joined).enumerate() {
                let alone = rt.block_on(one_by_one.decide(*c)).unwrap();
                prop_assert_eq!(got.unwrap(), alone, "request {} of {:?}", i, asks);
            }
        }
    });
    let (calls_together, asked) = (fcall_calls(&together), requests.into_inner());
    eprintln!(
        "{asked} requests in {calls_together} calls (one by one: {})",
        fcall_calls(&apart)
    );
    assert!(
        calls_together * 2 < asked,
        "{calls_together} calls for {asked} requests"
    );
}

/// Polls every future in order until all are done; their outputs, in order.
async fn futures_join<F: std::future::Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futures.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match std::pin::Pin::new(&mut *f).poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

#[test]
fn a_hot_key_is_decided_in_few_calls_and_admits_exactly_its_limit() {
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let redis = RedisStore::builder()
            .timeout(Duration::from_secs(5))
            .connect(&server.url())
            .await
            .unwrap();
        let set = PolicySet::new(vec![Policy::new("p", Quota::per_hour(300))]).unwrap();
        let key = fresh_key("hot");
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (redis, set, key) = (redis.clone(), set.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                let mut admitted = 0;
                for _ in 0..10 {
                    admitted += u64::from(
                        redis
                            .decide(Check::new(&key, &set, 1))
                            .await
                            .unwrap()
                            .is_allowed(),
                    );
                }
                admitted
            }));
        }
        let mut admitted = 0;
        for t in tasks {
            admitted += t.await.unwrap();
        }
        assert_eq!(admitted, 300, "640 asked of 300");
        assert!(
            fcall_calls(&server) < 640,
            "{} calls for 640 requests",
            fcall_calls(&server)
        );
    });
}

#[test]
fn a_queued_request_given_up_on_before_its_call_counts_for_nothing() {
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let redis = RedisStore::builder()
            .timeout(Duration::from_secs(5))
            .connect(&server.url())
            .await
            .unwrap();
        let set = PolicySet::new(vec![Policy::new("p", Quota::per_hour(3))]).unwrap();
        let key = fresh_key("dropped");
        let first = redis.decide(Check::new(&key, &set, 1));
        let dropped = redis.decide(Check::new(&key, &set, 1));
        let third = redis.decide(Check::new(&key, &set, 1));
        drop(dropped);
        let (a, c) = (first.await.unwrap(), third.await.unwrap());
        assert!(a.is_allowed() && c.is_allowed());
        assert_eq!(c.remaining(), 1, "the dropped request spent nothing");
    });
}

/// A store with at most one call in flight per kind, and `timeout`.
async fn one_call_in_flight(server: &RedisServer, timeout: Duration) -> RedisStore {
    RedisStore::builder()
        .timeout(timeout)
        .calls_in_flight(1)
        .connect(&server.url())
        .await
        .unwrap()
}

/// Bursts of requests over a few keys, each burst at its own time.
fn bursts_over_keys() -> impl Strategy<Value = Vec<(u64, Vec<(usize, Ask)>)>> {
    let ask = (
        0..12_usize,
        prop_oneof![4 => Just(1_u64), 1 => 0..6_u64],
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(key, cost, wait, peek)| (key, Ask { cost, wait, peek }));
    prop::collection::vec(
        (
            prop_oneof![Just(0_u64), 0..400_000_u64, 0..3_000_000_u64],
            prop::collection::vec(ask, 1..40),
        ),
        1..6,
    )
}

/// With one call in flight, the requests leading other keys that arrive
/// meanwhile go in one call for all their keys (and those for one key
/// queue behind its lane): every answer is the one-by-one answer, in fewer
/// calls than coalescing alone makes.
#[test]
fn many_keys_decided_in_one_call_answer_exactly_as_one_by_one() {
    let servers = [
        RedisServer::start(),
        RedisServer::start(),
        RedisServer::start(),
    ];
    let rt = runtime();
    let [batching, lanes_only, one_by_one] = rt.block_on(async {
        let store = |url: String, calls: usize, coalesce: bool| async move {
            let builder = RedisStore::builder()
                .timeout(Duration::from_secs(5))
                .calls_in_flight(calls)
                .coalesce(coalesce);
            let builder = if coalesce {
                builder
            } else {
                builder.denied_cache(0, Duration::ZERO)
            };
            builder.connect(&url).await.unwrap()
        };
        [
            store(servers[0].url(), 1, true).await,
            store(servers[1].url(), 0, true).await,
            store(servers[2].url(), 0, false).await,
        ]
    });
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let requests = AtomicU64::new(0);
    proptest!(config, |(set in policies(), bursts in bursts_over_keys())| {
        let keys: Vec<Key> = (0..12).map(|_| fresh_key("many")).collect();
        let mut at = START;
        let mut lease = 0;
        for (advance, asks) in &bursts {
            at += advance;
            let checks: Vec<Check<'_>> = asks
                .iter()
                .map(|(k, a)| {
                    lease += 1;
                    check(&keys[*k], &set, a, at, lease)
                })
                .collect();
            requests.fetch_add(checks.len() as u64, Ordering::Relaxed);
            let joined = rt.block_on(futures_join(checks.iter().map(|c| batching.decide(*c)).collect()));
            let in_lanes = rt.block_on(futures_join(checks.iter().map(|c| lanes_only.decide(*c)).collect()));
            for (i, ((c, got), lane)) in checks.iter().zip(joined).zip(in_lanes).enumerate() {
                let alone = rt.block_on(one_by_one.decide(*c)).unwrap();
                prop_assert_eq!(lane.unwrap(), alone.clone(), "coalesced: request {} of {:?}", i, asks);
                prop_assert_eq!(got.unwrap(), alone, "in calls for many keys: request {} of {:?}", i, asks);
            }
        }
    });
    let [many, lanes, alone] = [0, 1, 2].map(|i| fcall_calls(&servers[i]));
    let asked = requests.into_inner();
    eprintln!(
        "{asked} requests: {many} calls for many keys, {lanes} coalesced, {alone} one by one"
    );
    // About two thirds in the runs measured (0.64-0.70 of coalescing's).
    assert!(
        many * 10 < lanes * 9,
        "{many} calls, against {lanes} coalescing alone"
    );
}

#[test]
fn a_request_given_up_on_while_waiting_for_a_call_counts_for_nothing() {
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let redis = one_call_in_flight(&server, Duration::from_secs(5)).await;
        let set = PolicySet::new(vec![Policy::new("p", Quota::per_hour(3))]).unwrap();
        let (a, b, c) = (fresh_key("a"), fresh_key("b"), fresh_key("c"));
        let first = redis.decide(Check::new(&a, &set, 1));
        let dropped = redis.decide(Check::new(&b, &set, 1));
        let third = redis.decide(Check::new(&c, &set, 1));
        drop(dropped);
        let (first, third) = (first.await.unwrap(), third.await.unwrap());
        assert!(first.is_allowed() && third.is_allowed());
        let after = redis.decide(Check::new(&b, &set, 1)).await.unwrap();
        assert_eq!(after.remaining(), 2, "the dropped request spent nothing");
    });
}

#[test]
fn requests_waiting_for_a_call_are_answered_when_redis_does_not_answer() {
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let redis = one_call_in_flight(&server, Duration::from_millis(200)).await;
        let set = PolicySet::new(vec![Policy::new("p", Quota::per_hour(3))]).unwrap();
        // Functions loaded and the time known before Redis stops.
        redis
            .decide(Check::new(&fresh_key("warm"), &set, 1))
            .await
            .unwrap();
        let keys: Vec<Key> = (0..8).map(|_| fresh_key("stopped")).collect();
        let stopped = server.stop();
        let started = std::time::Instant::now();
        let answers = futures_join(
            keys.iter()
                .map(|k| redis.decide(Check::new(k, &set, 1)))
                .collect(),
        )
        .await;
        drop(stopped);
        for a in &answers {
            assert!(a.is_err(), "{a:?}");
        }
        // Each waited at most for the call ahead and its own.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    });
}

/// Requests that no call takes within the deadline are answered that they
/// timed out, and count for nothing: with Redis not answering and one call
/// in flight, the first call ends at the deadline, the next takes 64 keys
/// and ends at twice it, and by then the other 15 have waited too long.
#[test]
fn requests_no_call_takes_within_the_deadline_time_out_uncounted() {
    const LIMIT: u64 = 10;
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let deadline = Duration::from_millis(100);
        let redis = one_call_in_flight(&server, deadline).await;
        let set = PolicySet::new(vec![Policy::new("p", Quota::per_hour(LIMIT))]).unwrap();
        // The functions for one key and for several loaded first.
        let warm: Vec<Key> = (0..3).map(|_| fresh_key("warm")).collect();
        for r in futures_join(
            warm.iter()
                .map(|k| redis.decide(Check::new(k, &set, 1)))
                .collect(),
        )
        .await
        {
            r.unwrap();
        }
        let keys: Vec<Key> = (0..80).map(|_| fresh_key("shed")).collect();
        let stopped = server.stop();
        let answers = futures_join(
            keys.iter()
                .map(|k| redis.decide(Check::new(k, &set, 1)))
                .collect(),
        )
        .await;
        drop(stopped);
        assert!(answers.iter().all(Result::is_err), "{answers:?}");
        // The calls sent ran once Redis went on; the others never did.
        // Read through a store of its own, whose deadline a machine busy
        // with the calls Redis now runs cannot miss.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reader = support::redis_store(&server).await;
        let mut charged = 0;
        for k in &keys {
            let peek = reader
                .decide(Check::new(k, &set, 1).with_op(Op::Peek))
                .await
                .unwrap();
            charged += LIMIT - peek.remaining();
        }
        assert!(
            (1..=65).contains(&charged),
            "{charged} of 80 requests charged"
        );
    });
}

/// Each policy set has its own calls in flight: requests of one set do
/// not wait for the calls of another.
#[test]
fn policy_sets_do_not_wait_for_each_others_calls() {
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let deadline = Duration::from_secs(1);
        let redis = one_call_in_flight(&server, deadline).await;
        let a = PolicySet::new(vec![Policy::new("a", Quota::per_hour(10))]).unwrap();
        let b = PolicySet::new(vec![Policy::new("b", Quota::per_hour(10))]).unwrap();
        redis
            .decide(Check::new(&fresh_key("warm"), &a, 1))
            .await
            .unwrap();
        let stopped = server.stop();
        let started = std::time::Instant::now();
        // Set a's call is in flight (and hangs), a second request of set a
        // waits for it, and 100 ms on set b's request goes at once: it
        // ends with its own deadline, at about 1.1 s. Behind set a's calls
        // it would end at about 2 s (taken after the second one's call, or
        // timed out waiting).
        let (ka, ka2, kb) = (fresh_key("a"), fresh_key("a"), fresh_key("b"));
        let first = redis.decide(Check::new(&ka, &a, 1));
        let behind = redis.decide(Check::new(&ka2, &a, 1));
        let other = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let r = redis.decide(Check::new(&kb, &b, 1)).await;
            (r, started.elapsed())
        };
        let (first, behind, other) = tokio::join!(first, behind, other);
        drop(stopped);
        assert!(first.is_err() && behind.is_err() && other.0.is_err());
        assert!(other.1 < Duration::from_millis(1_600), "{:?}", other.1);
    });
}

/// More kinds of call at once than are bounded (here distinct given
/// times): the rest go at once, and every request is answered as alone.
#[test]
fn many_given_times_at_once_are_answered_as_alone() {
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let redis = one_call_in_flight(&server, Duration::from_secs(5)).await;
        let set = PolicySet::new(vec![Policy::new("p", Quota::per_hour(2))]).unwrap();
        let keys: Vec<Key> = (0..100).map(|_| fresh_key("times")).collect();
        for round in 0..3_u64 {
            let checks: Vec<Check<'_>> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    Check::new(k, &set, 1).with_at_micros(Some(START + i as u64 * 1_000 + round))
                })
                .collect();
            let answers = futures_join(checks.iter().map(|c| redis.decide(*c)).collect()).await;
            for a in answers {
                let a = a.unwrap();
                assert_eq!(a.is_allowed(), round < 2, "round {round}: {a:?}");
            }
        }
    });
}
