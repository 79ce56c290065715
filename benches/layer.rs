//! Run with `cargo bench --bench layer`.
//!
//! Side by side in one run, so the figures read as ratios:
//! - `layer/*`: a request through an HTTP service with no layer, with
//!   `RateLimitLayer` on one global key, and on 10,000 per-client keys;
//! - `decide/*`: one in-memory decision, `MemoryStore` against `governor`'s
//!   keyed and direct (unkeyed) GCRA limiters, on the same key patterns.

use std::convert::Infallible;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use governor::{Quota as GovQuota, RateLimiter as GovLimiter};
use http::{Request, Response};
use tower::{Layer, ServiceExt, service_fn};
use tower_ratelimit::key::Key;
use tower_ratelimit::store::Check;
use tower_ratelimit::{MemoryStore, Policy, PolicySet, Quota, RateLimitLayer};

const KEYS: u32 = 10_000;
/// A quota that never limits, so every request takes the full path.
const HUGE: u64 = 1_000_000_000;

fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
}

fn layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let inner =
        service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) });
    let mut g = c.benchmark_group("layer");

    g.bench_function("no_layer", |b| {
        let svc = inner;
        b.to_async(&rt).iter(|| async {
            let res = svc.oneshot(Request::new(())).await.unwrap();
            black_box(res)
        });
    });

    let global = RateLimitLayer::builder()
        .policy(Policy::new("burst", Quota::per_second(HUGE)))
        .build()
        .unwrap()
        .layer(inner);
    g.bench_function("ratelimit_global_key", |b| {
        b.to_async(&rt).iter(|| async {
            let res = global.clone().oneshot(Request::new(())).await.unwrap();
            black_box(res)
        });
    });

    let next = AtomicU32::new(0);
    let per_client = RateLimitLayer::builder()
        .policy(Policy::new("burst", Quota::per_second(HUGE)))
        .key(|req: &Request<()>| req.extensions().get::<IpAddr>().copied())
        .build()
        .unwrap()
        .layer(inner);
    g.bench_function("ratelimit_10k_client_keys", |b| {
        b.to_async(&rt).iter(|| async {
            let mut req = Request::new(());
            req.extensions_mut()
                .insert(ip(next.fetch_add(1, Ordering::Relaxed) % KEYS));
            let res = per_client.clone().oneshot(req).await.unwrap();
            black_box(res)
        });
    });
    g.finish();
}

fn decide(c: &mut Criterion) {
    let mut g = c.benchmark_group("decide");
    let set = PolicySet::new(vec![Policy::new("burst", Quota::per_second(HUGE))]).unwrap();
    let huge = NonZeroU32::new(u32::MAX).unwrap();

    let store = MemoryStore::new();
    let global = Key::global();
    g.bench_function("memory_store_one_key", |b| {
        b.iter(|| black_box(store.decide_now(Check::new(&global, &set, 1))));
    });
    let direct = GovLimiter::direct(GovQuota::per_second(huge));
    g.bench_function("governor_direct", |b| {
        b.iter(|| black_box(direct.check()));
    });

    let keys: Vec<Key> = (0..KEYS).map(|n| Key::from(ip(n))).collect();
    let mut i = 0;
    g.bench_function("memory_store_10k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(store.decide_now(Check::new(&keys[i], &set, 1)))
        });
    });
    let keyed = GovLimiter::keyed(GovQuota::per_second(huge));
    let mut n = 0;
    g.bench_function("governor_keyed_10k_keys", |b| {
        b.iter(|| {
            n = (n + 1) % KEYS;
            black_box(keyed.check_key(&ip(n)))
        });
    });
    g.finish();
}

criterion_group!(benches, layer, decide);
criterion_main!(benches);
