//! Input that must not break the limiter: every invalid configuration is a
//! `ConfigError` naming its field; keys of any shape, costs of 0 and beyond
//! capacity, and quotas at the edge of what the builder accepts are decided
//! the same way by the memory store and by Redis, without a panic.

mod support;

use std::time::Duration;

use tower_ratelimit::key::Key;
use tower_ratelimit::store::{Check, Store};
use tower_ratelimit::{
    Algorithm, ConfigError, MemoryStore, Policy, PolicySet, Quota, RateLimitLayer,
};

fn set(policies: Vec<Policy>) -> Result<PolicySet, ConfigError> {
    PolicySet::new(policies)
}

fn one(policy: Policy) -> Result<PolicySet, ConfigError> {
    set(vec![policy])
}

fn p(quota: Quota) -> Policy {
    Policy::new("p", quota)
}

#[test]
fn every_invalid_configuration_names_its_field() {
    let us = Duration::from_micros;
    let cases: Vec<(&str, Result<PolicySet, ConfigError>, &str, &str)> = vec![
        (
            "zero limit",
            one(p(Quota::per_second(0))),
            "limit",
            "at least 1",
        ),
        (
            "zero period",
            one(p(Quota::new(1, Duration::ZERO))),
            "period",
            "at least 1µs",
        ),
        (
            "sub-µs period",
            one(p(Quota::new(1, Duration::from_nanos(999)))),
            "period",
            "at least 1µs",
        ),
        (
            "zero burst",
            one(p(Quota::per_second(1).burst(0))),
            "burst",
            "at least 1",
        ),
        (
            "burst on a window",
            one(p(Quota::per_second(1).burst(2)).with_algorithm(Algorithm::FixedWindow)),
            "burst",
            "does not apply",
        ),
        (
            "burst on concurrency",
            one(
                Policy::new("p", Quota::new(2, Duration::from_secs(30)).burst(3))
                    .with_algorithm(Algorithm::Concurrency),
            ),
            "burst",
            "does not apply",
        ),
        (
            "period too long",
            one(p(Quota::new(1, us(1 << 53)))),
            "period",
            "too long",
        ),
        (
            "limit too large",
            one(p(Quota::per_day(1 << 53))),
            "limit",
            "too large",
        ),
        (
            "burst too large",
            one(p(Quota::per_day(1).burst(1 << 53))),
            "burst",
            "too large",
        ),
        (
            "burst times unit overflows",
            one(p(Quota::new(3, us(1_000_000_007)).burst(1 << 30))),
            "burst",
            "overflows",
        ),
        (
            "sliding counter beyond 2^32",
            one(p(Quota::per_day((1 << 32) + 1)).with_algorithm(Algorithm::SlidingWindowCounter)),
            "limit",
            "2^32",
        ),
        (
            "concurrency too large",
            one(Policy::concurrency("p", 100_001)),
            "limit",
            "concurrency",
        ),
        (
            "concurrency lease too short",
            one(Policy::new("p", Quota::new(1, us(999))).with_algorithm(Algorithm::Concurrency)),
            "period",
            "lease",
        ),
        (
            "empty name",
            one(Policy::new("", Quota::per_second(1))),
            "name",
            "empty",
        ),
        (
            "long name",
            one(Policy::new("n".repeat(65), Quota::per_second(1))),
            "name",
            "64 bytes",
        ),
        (
            "name with a space",
            one(Policy::new("a b", Quota::per_second(1))),
            "name",
            "ASCII letters",
        ),
        (
            "name with a quote",
            one(Policy::new("a\"b", Quota::per_second(1))),
            "name",
            "ASCII letters",
        ),
        ("no policies", set(vec![]), "policies", "empty"),
        (
            "two policies of one name",
            set(vec![p(Quota::per_second(1)), p(Quota::per_second(2))]),
            "policies",
            "distinct",
        ),
    ];
    for (what, result, field, says) in cases {
        let err = result.expect_err(what);
        assert_eq!(err.field(), field, "{what}: {err}");
        assert!(err.to_string().contains(says), "{what}: {err}");
    }
}

#[test]
fn store_and_layer_settings_name_their_field() {
    let err = MemoryStore::builder().shards(0).build().unwrap_err();
    assert_eq!(err.field(), "shards");
    let err = MemoryStore::builder()
        .shards(8)
        .max_keys(7)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_keys");
    let err = RateLimitLayer::builder().build().unwrap_err();
    assert_eq!(err.field(), "policies");
    let err = RateLimitLayer::builder()
        .policy(Policy::new("p", Quota::per_second(0)))
        .build()
        .unwrap_err();
    assert_eq!((err.field(), err.policy()), ("limit", Some("p")));
}

#[cfg(feature = "redis")]
#[test]
fn redis_store_settings_name_their_field() {
    use tower_ratelimit::store::RedisStore;
    let server = support::RedisServer::start();
    support::runtime().block_on(async {
        let client = redis::Client::open(server.url()).unwrap();
        let conn = client.get_multiplexed_async_connection().await.unwrap();
        let err = RedisStore::builder()
            .prefix("rl:{x}:")
            .build(conn.clone())
            .unwrap_err();
        assert_eq!(err.field(), "prefix");
        let err = RedisStore::builder()
            .timeout(Duration::ZERO)
            .build(conn.clone())
            .unwrap_err();
        assert_eq!(err.field(), "timeout");
        let err = RedisStore::builder()
            .cool_down(0, Duration::from_secs(1))
            .build(conn)
            .unwrap_err();
        assert_eq!(err.field(), "failures");
    });
}

/// Keys of every awkward shape.
fn awkward_keys() -> Vec<(&'static str, Key)> {
    vec![
        ("empty", Key::from("")),
        ("1 MiB", Key::from("k".repeat(1 << 20))),
        ("binary", Key::from(&[0xff_u8, 0x00, 0xfe, b'\n'][..])),
        ("braces", Key::from("{{}}{a}}{")),
        ("colons", Key::from("a:b::c:")),
        ("newlines", Key::from("line\r\nnext\n")),
        ("a hash tag of another key", Key::from("}:p:0000{s:x")),
    ]
}

/// Decides a short timeline for each awkward key, returning every decision.
async fn decide_awkward<St: Store>(store: &St, tag: &str) -> Vec<tower_ratelimit::Decision> {
    let set = one(p(Quota::per_hour(2))).unwrap();
    let mut out = Vec::new();
    // Time only moves forward, as a store's clock does.
    let mut now = 1_000_000;
    for (name, key) in awkward_keys() {
        // Each store sees its own keys, whatever ran before on this server.
        let key = Key::from(format!("{tag}-{name}-{key}"));
        for cost in [1, 0, 1, 1, 3] {
            now += 10;
            let check = Check::new(&key, &set, cost).with_at_micros(Some(now));
            out.push(store.decide(check).await.unwrap());
        }
    }
    out
}

#[tokio::test]
async fn awkward_keys_costs_of_zero_and_beyond_capacity_decide_in_memory() {
    let store = MemoryStore::new();
    let decisions = decide_awkward(&store, "m").await;
    for d in decisions.chunks(5) {
        let allowed: Vec<bool> = d.iter().map(|d| d.is_allowed()).collect();
        // 1, a free look, 1, then the quota is spent; 3 never fits in 2.
        assert_eq!(allowed, [true, true, true, false, false]);
        assert_eq!(d[1].remaining(), 1, "cost 0 charges nothing");
        assert!(d[4].is_never());
        assert_eq!(d[4].retry_after(), None);
    }
}

#[cfg(feature = "redis")]
#[test]
fn redis_decides_awkward_keys_exactly_like_memory_and_bounds_their_size() {
    let server = support::RedisServer::start();
    support::runtime().block_on(async {
        let redis = support::redis_store(&server).await;
        let memory = MemoryStore::new();
        let from_redis = decide_awkward(&redis, "x").await;
        let from_memory = decide_awkward(&memory, "x").await;
        assert_eq!(from_redis, from_memory);
        // No key in Redis grows with its input, and each is one hash tag.
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!keys.is_empty());
        for key in keys {
            let shown = String::from_utf8_lossy(&key);
            assert!(key.len() < 200, "a key of {} bytes", key.len());
            assert_eq!(key.iter().filter(|&&b| b == b'{').count(), 1, "{shown}");
            assert_eq!(key.iter().filter(|&&b| b == b'}').count(), 1, "{shown}");
        }
    });
}

/// Quotas at the edges the builder accepts, for every rate algorithm, with
/// costs that fill them in a few requests: the largest limit and period, a
/// burst near the bound, and limits that do not divide their period.
fn extreme_sets() -> Vec<(String, PolicySet)> {
    const BIG: u64 = (1 << 53) - 1;
    let quotas = [
        (
            "largest limit and period",
            Quota::new(BIG, Duration::from_micros(BIG)),
        ),
        (
            "largest limit per second",
            Quota::new(BIG, Duration::from_secs(1)),
        ),
        ("a day of 60,001", Quota::per_day(60_001)),
        (
            "one per largest period",
            Quota::new(1, Duration::from_micros(BIG)),
        ),
        ("7 per 3 µs", Quota::new(7, Duration::from_micros(3))),
    ];
    let mut sets = Vec::new();
    for algorithm in Algorithm::RATES {
        for (name, quota) in &quotas {
            let policy = Policy::new("p", *quota).with_algorithm(algorithm);
            if let Ok(set) = one(policy) {
                sets.push((format!("{algorithm:?}, {name}"), set));
            }
        }
    }
    sets
}

/// Costs that fill a quota of `limit` in a few steps, overshoot it, and
/// probe one unit at a time: a quarter, most of the rest, the whole, one.
fn extreme_costs(limit: u64) -> Vec<u64> {
    let quarter = (limit / 4).max(1);
    vec![quarter, limit - quarter, 1, limit, 1, quarter, limit]
}

async fn decide_extremes<St: Store>(
    store: &St,
    tag: &str,
) -> Vec<(String, tower_ratelimit::Decision)> {
    let mut out = Vec::new();
    let mut now = 1_000_000;
    for (name, set) in extreme_sets() {
        let key = Key::from(format!("{tag}-{name}"));
        let limit = set.policies()[0].quota().burst_size();
        for cost in extreme_costs(limit) {
            now += 1;
            let check = Check::new(&key, &set, cost).with_at_micros(Some(now));
            out.push((name.clone(), store.decide(check).await.unwrap()));
        }
    }
    out
}

#[cfg(feature = "redis")]
#[test]
fn redis_decides_quotas_at_the_accepted_extremes_exactly_like_memory() {
    let server = support::RedisServer::start();
    support::runtime().block_on(async {
        let redis = support::redis_store(&server).await;
        let memory = MemoryStore::new();
        let from_redis = decide_extremes(&redis, "e").await;
        let from_memory = decide_extremes(&memory, "e").await;
        assert!(from_memory.len() > 20, "the builder accepts these");
        let differ: Vec<_> = from_memory
            .iter()
            .zip(&from_redis)
            .filter(|(m, r)| m != r)
            .collect();
        assert!(
            differ.is_empty(),
            "{} differ; first (memory, redis): {:#?}",
            differ.len(),
            differ.first()
        );
    });
}
