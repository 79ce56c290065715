//! `RedisStore` against a real `redis-server` (and a real 3-master Redis
//! Cluster), spawned on free ports by `tests/support`.
#![cfg(feature = "redis")]

mod support;

use support::{fresh_key, policy};

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use support::RedisServer;
use tower_ratelimit::clock::FakeClock;
use tower_ratelimit::key::Key;
use tower_ratelimit::store::{Check, RedisStore, Store};
use tower_ratelimit::{Algorithm, Decision, MemoryStore, Policy, PolicySet, Quota, StoreErrorKind};

const ALGORITHMS: [Algorithm; 7] = Algorithm::RATES;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::builder()
        .timeout(Duration::from_secs(5))
        .connect(&server.url())
        .await
        .unwrap()
}

/// One step of a timeline: advance, then ask.
#[derive(Debug, Clone)]
struct Step {
    advance_us: u64,
    cost: u64,
    wait: bool,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            prop_oneof![Just(0_u64), 0..2_000_u64, 0..400_000_u64, 0..3_000_000_u64],
            prop_oneof![Just(1_u64), 0..6_u64],
            prop::bool::weighted(0.3),
        )
            .prop_map(|(advance_us, cost, wait)| Step {
                advance_us,
                cost,
                wait,
            }),
        1..40,
    )
}

fn policies() -> impl Strategy<Value = PolicySet> {
    support::policy_sets(&ALGORITHMS, 1..12, 1..15)
}

/// Runs one timeline through both stores and returns the pairs of
/// decisions that differ.
async fn compare(
    redis: &RedisStore,
    set: &PolicySet,
    steps: &[Step],
) -> Vec<(usize, Decision, Decision)> {
    // A realistic epoch, so windows align as they do on a real clock.
    let start = 1_763_800_000_000_000_u64;
    let clock = FakeClock::at_micros(start);
    let memory = MemoryStore::builder().clock(clock.clone()).build().unwrap();
    let key = fresh_key("parity");
    let mut differ = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        clock.advance(Duration::from_micros(step.advance_us));
        let at = tower_ratelimit::clock::Clock::now_micros(&clock);
        let max_wait = step.wait.then(|| Duration::from_millis(1500));
        // A lease per request, as the limiter draws them: concurrency
        // policies in Redis hold units per lease.
        let check = Check::new(&key, set, step.cost)
            .with_max_wait(max_wait)
            .with_lease(i as u64 + 1);
        let m = memory.decide_now(check);
        let r = redis.decide(check.with_at_micros(Some(at))).await.unwrap();
        if m != r {
            differ.push((i, m, r));
        }
    }
    differ
}

/// Drives `cases` random timelines through both stores.
fn check_parity(rt: &tokio::runtime::Runtime, redis: &RedisStore, cases: u32) {
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(set in policies(), steps in steps())| {
        let differ = rt.block_on(compare(redis, &set, &steps));
        prop_assert!(differ.is_empty(), "first difference (step, memory, redis): {:#?}", differ[0]);
    });
}

#[test]
fn redis_decides_exactly_like_memory_for_random_timelines() {
    let server = RedisServer::start();
    let rt = runtime();
    let redis = rt.block_on(store(&server));
    check_parity(&rt, &redis, 96);
}

#[test]
fn every_algorithm_over_a_long_timeline_matches_memory() {
    let server = RedisServer::start();
    let rt = runtime();
    let redis = rt.block_on(store(&server));
    for algorithm in ALGORITHMS {
        let set = PolicySet::new(vec![
            policy("fast", algorithm, 7, 1_000, Some(3)),
            policy("slow", Algorithm::SlidingWindowLog, 40, 10_000, None),
        ])
        .unwrap();
        let steps: Vec<Step> = (0..600_u64)
            .map(|i| Step {
                advance_us: (i * 7_919) % 310_000,
                cost: 1 + i % 3,
                wait: i % 5 == 0,
            })
            .collect();
        let differ = rt.block_on(compare(&redis, &set, &steps));
        assert!(differ.is_empty(), "{algorithm:?}: {:#?}", differ.first());
    }
}

/// Sixteen policies, every algorithm twice: the largest set a script decides.
fn largest_set() -> PolicySet {
    let policies: Vec<Policy> = (0..PolicySet::MAX_POLICIES)
        .map(|i| {
            let a = Algorithm::ALL[i % Algorithm::ALL.len()];
            let limit = 5 + i as u64;
            Policy::new(format!("p{i}"), Quota::new(limit, Duration::from_secs(60)))
                .with_algorithm(a)
        })
        .collect();
    PolicySet::new(policies).unwrap()
}

#[test]
fn the_largest_policy_set_decides_on_redis_as_in_memory_with_or_without_functions() {
    let set = largest_set();
    assert!(
        PolicySet::new(
            (0..=PolicySet::MAX_POLICIES)
                .map(|i| Policy::new(format!("p{i}"), Quota::per_second(1)))
                .collect()
        )
        .is_err()
    );
    let steps: Vec<Step> = (0..12)
        .map(|i| Step {
            advance_us: 1_000,
            cost: 1,
            wait: i % 3 == 0,
        })
        .collect();
    for server in [RedisServer::start(), RedisServer::start_without_functions()] {
        let rt = runtime();
        let redis = rt.block_on(store(&server));
        let differ = rt.block_on(compare(&redis, &set, &steps));
        assert!(differ.is_empty(), "{:#?}", differ.first());
    }
}

#[test]
fn a_request_rejected_by_one_policy_charges_none() {
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let redis = store(&server).await;
        let set = PolicySet::new(vec![
            Policy::new("burst", Quota::per_second(10)),
            Policy::new("hourly", Quota::per_hour(2)).with_algorithm(Algorithm::FixedWindow),
        ])
        .unwrap();
        let key = fresh_key("all-or-nothing");
        for _ in 0..2 {
            assert!(
                redis
                    .decide(Check::new(&key, &set, 1))
                    .await
                    .unwrap()
                    .is_allowed()
            );
        }
        let d = redis.decide(Check::new(&key, &set, 1)).await.unwrap();
        assert!(!d.is_allowed());
        assert_eq!(d.policies()[0].remaining(), 8, "burst was not charged");
        assert_eq!(d.policies()[1].remaining(), 0);
    });
}

#[test]
fn keys_expire_once_state_is_full_again_even_for_long_periods() {
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let redis = store(&server).await;
        for (algorithm, quota, at_least_ms) in [
            (Algorithm::Gcra, Quota::per_second(10), 100),
            (Algorithm::Gcra, Quota::per_day(1), 86_400_000),
            (Algorithm::TokenBucket, Quota::per_hour(3), 3_600_000),
            (
                Algorithm::LeakyBucket,
                Quota::new(1, Duration::from_secs(7 * 86_400)),
                7 * 86_400_000,
            ),
            (Algorithm::FixedWindow, Quota::per_minute(5), 1),
            (
                Algorithm::SlidingWindowLog,
                Quota::per_day(1_000),
                86_400_000,
            ),
            (
                Algorithm::SlidingWindowCounter,
                Quota::per_minute(5),
                60_000,
            ),
        ] {
            let set =
                PolicySet::new(vec![Policy::new("p", quota).with_algorithm(algorithm)]).unwrap();
            let key = fresh_key("ttl");
            let started = Instant::now();
            let d = redis.decide(Check::new(&key, &set, 1)).await.unwrap();
            assert!(d.is_allowed());
            let name = redis.redis_key(&key, &set, 0);
            let ttl: i64 = server
                .command(&format!("PTTL {name}"))
                .trim_start_matches(':')
                .trim()
                .parse()
                .unwrap();
            // Real time passed since the expiry was set: add it back.
            let ttl = ttl + started.elapsed().as_millis() as i64;
            let full_ms = d.policies()[0].reset_after().as_millis() as i64;
            assert!(
                ttl >= full_ms,
                "{algorithm:?}: ttl {ttl} ms < {full_ms} ms to full"
            );
            assert!(ttl >= at_least_ms.min(full_ms), "{algorithm:?}: ttl {ttl}");
            assert!(
                ttl <= full_ms + 1_100,
                "{algorithm:?}: ttl {ttl} ms for {full_ms} ms"
            );
        }
    });
}

/// Decides twice on `server`, running `flush` on it in between: the second
/// decision must be counted once, and Redis must have seen the `recovery`
/// commands (as `INFO commandstats` names them).
fn decides_once_across(server: &RedisServer, flush: &str, recovery: &[&str]) {
    let rt = runtime();
    rt.block_on(async {
        let redis = store(server).await;
        let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(3))]).unwrap();
        let key = fresh_key("flush");
        assert!(
            redis
                .decide(Check::new(&key, &set, 1))
                .await
                .unwrap()
                .is_allowed()
        );
        assert!(server.command(flush).starts_with("+OK"), "{flush}");
        let d = redis.decide(Check::new(&key, &set, 1)).await.unwrap();
        assert!(d.is_allowed());
        // Counted once, not twice: one unit is left of three.
        assert_eq!(d.policies()[0].remaining(), 1);
    });
    let stats = server.command("INFO commandstats");
    for command in recovery {
        assert!(
            stats.contains(&format!("cmdstat_{command}:calls=2,")),
            "{command} twice: {stats}"
        );
    }
}

#[test]
fn function_flush_reloads_the_library_and_decides_once() {
    decides_once_across(&RedisServer::start(), "FUNCTION FLUSH", &["function|load"]);
}

#[test]
fn without_functions_noscript_after_script_flush_loads_the_script_and_decides_once() {
    decides_once_across(
        &RedisServer::start_without_functions(),
        "SCRIPT FLUSH",
        &["eval"],
    );
}

#[test]
fn without_functions_redis_decides_exactly_like_memory() {
    let server = RedisServer::start_without_functions();
    let rt = runtime();
    let redis = rt.block_on(store(&server));
    check_parity(&rt, &redis, 24);
}

#[test]
fn untrusted_keys_are_hashed_into_one_hash_tag() {
    let server = RedisServer::start();
    let rt = runtime();
    let hashed = rt.block_on(store(&server));
    let set = PolicySet::new(vec![Policy::new("burst", Quota::per_second(5))]).unwrap();
    // By default string keys are a keyed hash; integers stay readable.
    let token = hashed.redis_key(&Key::from("alice"), &set, 0);
    assert!(token.starts_with("ratelimit:{k:"), "{token}");
    assert_eq!(token.len(), "ratelimit:{k:}:burst:".len() + 32 + 8);
    let n = hashed.redis_key(&Key::from(7_u64), &set, 0);
    assert!(n.starts_with("ratelimit:{n:7}:burst:"), "{n}");
    let redis = rt.block_on(async {
        RedisStore::builder()
            .timeout(Duration::from_secs(5))
            .hash_keys(false)
            .connect(&server.url())
            .await
            .unwrap()
    });
    let plain = redis.redis_key(&Key::from("alice"), &set, 0);
    assert!(plain.starts_with("ratelimit:{s:alice}:burst:"), "{plain}");
    assert_eq!(plain.len(), "ratelimit:{s:alice}:burst:".len() + 8);
    let braces = redis.redis_key(&Key::from("x}:y{z"), &set, 0);
    assert!(braces.starts_with("ratelimit:{h:"), "{braces}");
    assert_eq!(braces.matches('{').count(), 1);
    let long = redis.redis_key(&Key::from("k".repeat(500)), &set, 0);
    assert!(long.len() < 90, "{long}");
    assert_ne!(
        redis.redis_key(&Key::from("k".repeat(500)), &set, 0),
        redis.redis_key(&Key::from("k".repeat(501)), &set, 0)
    );
    // A policy of the same name with another quota has its own state.
    let changed = PolicySet::new(vec![Policy::new("burst", Quota::per_second(6))]).unwrap();
    assert_ne!(plain, redis.redis_key(&Key::from("alice"), &changed, 0));
    let e = RedisStore::builder()
        .prefix("bad{")
        .build(rt.block_on(async {
            redis::Client::open(server.url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap()
        }))
        .unwrap_err();
    assert_eq!(e.field(), "prefix");
}

#[test]
fn a_stalled_redis_times_out_then_is_skipped_for_the_cool_down() {
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let redis = RedisStore::builder()
            .timeout(Duration::from_millis(200))
            .cool_down(3, Duration::from_secs(30))
            .connect(&server.url())
            .await
            .unwrap();
        let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(3))]).unwrap();
        let key = fresh_key("stall");
        assert!(redis.decide(Check::new(&key, &set, 1)).await.is_ok());
        // Freeze the server: it accepts bytes but never answers.
        let stopped = server.stop();
        for _ in 0..3 {
            let e = redis.decide(Check::new(&key, &set, 1)).await.unwrap_err();
            assert_eq!(e.kind(), StoreErrorKind::Timeout);
        }
        let started = Instant::now();
        let e = redis.decide(Check::new(&key, &set, 1)).await.unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Unavailable);
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "skipped without waiting"
        );
        drop(stopped);
    });
}

/// Hammers one key from 4 stores × 32 tasks for `secs` of real time and
/// returns the server times of the admitted requests, sorted.
fn hammer(server: &RedisServer, set: &PolicySet, secs: u64) -> Vec<u64> {
    let rt = runtime();
    rt.block_on(async {
        let key = fresh_key("hammer");
        let admitted = Arc::new(std::sync::Mutex::new(Vec::new()));
        // Each instance has its own connection, made (and its library
        // loaded) before the clock starts.
        let mut stores = Vec::new();
        for _ in 0..4 {
            let redis = store(server).await;
            let warm = redis.decide(Check::new(&fresh_key("warm"), set, 1)).await;
            assert!(warm.unwrap().is_allowed());
            stores.push(redis);
        }
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for redis in stores {
            for _ in 0..32 {
                let (redis, set, key, admitted) = (
                    redis.clone(),
                    set.clone(),
                    key.clone(),
                    Arc::clone(&admitted),
                );
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let d = redis.decide(Check::new(&key, &set, 1)).await.unwrap();
                        if d.is_allowed() {
                            admitted.lock().unwrap().push(d.at_micros());
                        }
                    }
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut times = std::mem::take(&mut *admitted.lock().unwrap());
        times.sort_unstable();
        times
    })
}

#[test]
fn four_instances_share_an_exact_gcra_limit() {
    let server = RedisServer::start();
    // 500/s with a burst of 100: over a span of Redis's clock at most
    // burst + rate × span are admitted.
    let set = PolicySet::new(vec![Policy::new("p", Quota::per_second(500).burst(100))]).unwrap();
    let times = hammer(&server, &set, 3);
    let span = times.last().unwrap() - times.first().unwrap();
    assert!(span >= 2_900_000, "span {span} µs");
    let bound = 100 + span / 2_000;
    let admitted = times.len() as u64;
    eprintln!("gcra: {admitted} admitted over {span} µs; bound {bound}");
    assert!(admitted <= bound, "{admitted} admitted > bound {bound}");
    assert!(
        admitted * 100 >= bound * 99,
        "{admitted} admitted, more than 1% under {bound}"
    );
}

#[test]
fn four_instances_share_an_exact_token_bucket_limit() {
    let server = RedisServer::start();
    // 500 tokens every second, capacity 500: the refill steps start at the
    // first admission, and each step admits exactly 500.
    let set = PolicySet::new(vec![
        Policy::new("p", Quota::per_second(500)).with_algorithm(Algorithm::TokenBucket),
    ])
    .unwrap();
    let times = hammer(&server, &set, 3);
    let first = times[0];
    let mut per_step = vec![0_u64; 4];
    for t in &times {
        per_step[usize::try_from((t - first) / 1_000_000).unwrap()] += 1;
    }
    eprintln!("token bucket: admitted per refill step {per_step:?}");
    // Steps 0..=1 lie wholly inside the 3 s run; the later ones may be cut.
    assert_eq!(per_step[..2], [500, 500]);
    assert!(per_step.iter().all(|&n| n <= 500), "{per_step:?}");
}

#[test]
fn four_instances_never_let_a_sliding_log_window_exceed_the_limit() {
    let server = RedisServer::start();
    let limit = 300;
    let period = 500_000;
    let set = PolicySet::new(vec![
        Policy::new("p", Quota::new(limit, Duration::from_micros(period)))
            .with_algorithm(Algorithm::SlidingWindowLog),
    ])
    .unwrap();
    let times = hammer(&server, &set, 3);
    // Six windows' worth, less what a loaded machine's slower calls miss.
    assert!(
        times.len() as u64 >= 6 * limit * 80 / 100,
        "{} admitted",
        times.len()
    );
    // Every window (t - period, t] ending at an admission holds at most `limit`.
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[lo] + period <= times[hi] {
            lo += 1;
        }
        assert!(
            (hi - lo + 1) as u64 <= limit,
            "window ending {} holds {}",
            times[hi],
            hi - lo + 1
        );
    }
}

#[cfg(feature = "redis-cluster")]
mod cluster {
    use super::*;
    use support::RedisCluster;

    async fn cluster_store(cluster: &RedisCluster) -> RedisStore {
        RedisStore::builder()
            .timeout(Duration::from_secs(5))
            .connect_cluster(cluster.urls())
            .await
            .unwrap()
    }

    #[test]
    fn on_a_cluster_redis_matches_memory_over_keys_in_every_slot_range() {
        let cluster = RedisCluster::start();
        let rt = runtime();
        let redis = rt.block_on(cluster_store(&cluster));
        check_parity(&rt, &redis, 48);
        // The cases' keys landed on all three masters.
        let mut masters_with_keys = 0;
        for node in &cluster.nodes {
            let size = node.command("DBSIZE");
            if size.trim_start_matches(':').trim().parse::<u64>().unwrap() > 0 {
                masters_with_keys += 1;
            }
        }
        assert_eq!(masters_with_keys, 3);
    }

    #[test]
    fn multi_policy_checks_on_a_cluster_never_hit_crossslot() {
        let cluster = RedisCluster::start();
        let rt = runtime();
        rt.block_on(async {
            let redis = cluster_store(&cluster).await;
            let set = PolicySet::new(vec![
                Policy::new("burst", Quota::per_second(5)),
                Policy::new("minute", Quota::per_minute(7))
                    .with_algorithm(Algorithm::SlidingWindowLog),
                Policy::new("hour", Quota::per_hour(9)).with_algorithm(Algorithm::FixedWindow),
            ])
            .unwrap();
            let mut slots_seen = HashSet::new();
            for n in 0..300_u64 {
                let key = Key::from(n);
                let name = redis.redis_key(&key, &set, 0);
                slots_seen.insert(
                    cluster.nodes[0]
                        .command(&format!("CLUSTER KEYSLOT {name}"))
                        .trim_start_matches(':')
                        .trim()
                        .to_owned(),
                );
                for i in 0..9 {
                    let d = redis.decide(Check::new(&key, &set, 1)).await.unwrap();
                    // 5 pass "burst" at once; "minute" and "hour" allow more.
                    assert_eq!(d.is_allowed(), i < 5, "key {n} request {i}");
                }
            }
            assert!(
                slots_seen.len() > 250,
                "{} distinct slots",
                slots_seen.len()
            );
        });
    }
}

#[test]
fn stores_built_on_a_multiplexed_connection_or_a_connection_manager_share_state() {
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let client = redis::Client::open(server.url()).unwrap();
        let multiplexed = RedisStore::builder()
            .timeout(Duration::from_secs(5))
            .build(client.get_multiplexed_async_connection().await.unwrap())
            .unwrap();
        let managed = RedisStore::builder()
            .timeout(Duration::from_secs(5))
            .build(client.get_connection_manager().await.unwrap())
            .unwrap();
        let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(3))]).unwrap();
        let key = fresh_key("conns");
        let mut admitted = 0;
        for store in [&multiplexed, &managed, &multiplexed, &managed] {
            admitted += usize::from(
                store
                    .decide(Check::new(&key, &set, 1))
                    .await
                    .unwrap()
                    .is_allowed(),
            );
        }
        assert_eq!(admitted, 3);
    });
}

/// A Redis clock that steps back (a failover to a node whose clock is
/// behind) must not hold an active key back by the size of the step. The
/// step is made as the store sees it: its last decision read a time 30 s
/// ahead of the server's clock (the old master's), the next reads the
/// server's own `TIME`.
#[test]
fn a_redis_clock_stepping_back_holds_no_active_key_back() {
    let server = RedisServer::start();
    let rt = runtime();
    rt.block_on(async {
        let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(10))]).unwrap();
        let key = fresh_key("step");
        let ahead = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64
            + 30_000_000;
        let redis = store(&server).await;
        // The whole quota, spent on the clock that was 30 s ahead.
        let spent = redis
            .decide(Check::new(&key, &set, 10).with_at_micros(Some(ahead)))
            .await
            .unwrap();
        assert!(spent.is_allowed());
        // The next decision, on the clock 30 s behind: one unit comes back
        // 6 s after the last spending, not 36 s.
        let next = redis.decide(Check::new(&key, &set, 1)).await.unwrap();
        assert!(!next.is_allowed());
        let retry = next.retry_after().unwrap();
        assert!(
            retry <= Duration::from_secs(6),
            "held back by the step: {retry:?}"
        );
        assert!(retry >= Duration::from_secs(5), "{retry:?}");
        // A store that never saw the clock ahead has nothing to go by: the
        // state lies 30 s in its future (this is what the floor prevents).
        let fresh = store(&server).await;
        let other = fresh.decide(Check::new(&key, &set, 1)).await.unwrap();
        assert!(
            other.retry_after().unwrap() > Duration::from_secs(30),
            "{other:?}"
        );
    });
}
