//! Run with `cargo bench --bench redis --features redis` (needs
//! `redis-server` on PATH; the bench starts its own on a free port).
//!
//! Side by side in one run, over one connection to a local Redis:
//! - `redis/ping`: the round trip alone;
//! - `redis/raw_evalsha`: the decision script sent by hand with `EVALSHA`,
//!   keys and arguments prebuilt — the floor for any client;
//! - `redis/store_decide`: `RedisStore::decide`, which also builds the keys
//!   and arguments, checks the deadline and assembles the `Decision`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tower_ratelimit::key::Key;
use tower_ratelimit::store::{Check, RedisStore, Store};
use tower_ratelimit::{Policy, PolicySet, Quota};

fn redis(c: &mut Criterion) {
    let server = support::RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (store, mut conn) = rt.block_on(async {
        // A deadline no first call (which loads the library) can miss on a
        // busy machine; it costs nothing per call.
        let store = RedisStore::builder()
            .timeout(std::time::Duration::from_secs(5))
            .connect(&server.url())
            .await
            .unwrap();
        let client = redis::Client::open(server.url()).unwrap();
        let conn = client.get_multiplexed_async_connection().await.unwrap();
        (store, conn)
    });
    let set = PolicySet::new(vec![Policy::new(
        "burst",
        Quota::per_day(1_000).burst(100_000_000),
    )])
    .unwrap();
    let key = Key::from("bench");
    let sha: String = rt.block_on(async {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(RedisStore::script_source(&set))
            .query_async(&mut conn)
            .await
            .unwrap()
    });
    let redis_key = store.redis_key(&key, &set, 0);

    let mut g = c.benchmark_group("redis");
    g.bench_function("ping", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            async move {
                let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
                black_box(pong)
            }
        });
    });
    // The same script and arguments RedisStore sends for this policy (see
    // lua/decide.lua): GCRA's parameters packed as big-endian doubles —
    // burst 10^8, 86 400 000 ticks per unit, 1 tick drained per µs (1,000
    // per day) — after the time floor, then the cost.
    let mut params = Vec::new();
    for n in [100_000_000_f64, 86_400_000.0, 1.0] {
        params.extend_from_slice(&n.to_be_bytes());
    }
    let mut raw = redis::cmd("EVALSHA");
    // ARGV[1] is the caller's floor under Redis's time (0: none).
    raw.arg(&sha)
        .arg(1)
        .arg(&redis_key)
        .arg(0)
        .arg(params)
        .arg(1);
    g.bench_function("raw_evalsha", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            let raw = &raw;
            async move {
                // { now, the state as read (nil for none), admission flags }
                let v: redis::Value = raw.query_async(&mut conn).await.unwrap();
                black_box(v)
            }
        });
    });
    g.bench_function("store_decide", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(store.decide(Check::new(&key, &set, 1)).await.unwrap()) });
    });
    g.finish();
}

criterion_group!(benches, redis);
criterion_main!(benches);
