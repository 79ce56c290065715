//! Run with `cargo bench --bench layer`.
//!
//! Side by side in one run, so the figures read as ratios:
//! - `layer/*`: a request through an HTTP service with no layer, with
//!   `RateLimitLayer` on one global key, and on 10,000 per-client keys; and
//!   `RateLimitLayer` against `tower_governor` on one global key, without
//!   and with rate-limit headers on the response;
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
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::GlobalKeyExtractor;
use tower_ratelimit::key::Key;
use tower_ratelimit::store::Check;
use tower_ratelimit::{HeaderStyle, MemoryStore, Policy, PolicySet, Quota, RateLimitLayer};

const KEYS: u32 = 10_000;
/// A quota that never limits within a run, so every request takes the full
/// path, and whose state stays (it does not refill between two requests of
/// one key), as a busy client's does.
fn unlimited(name: &str) -> Policy {
    Policy::new(name, Quota::per_day(1_000).burst(100_000_000))
}

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
        .policy(unlimited("burst"))
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
        .policy(unlimited("burst"))
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
    // Against tower_governor, both on one global key; ours with no headers
    // (tower_governor's default), then both with headers on every response.
    let axum_inner = service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(axum::body::Body::empty()))
    });
    let ours = |style, attach| {
        RateLimitLayer::builder()
            .policy(unlimited("burst"))
            .headers(style)
            .decision_in_extensions(attach)
            .build()
            .unwrap()
            .layer(axum_inner)
    };
    let bare = ours(HeaderStyle::None, false);
    g.bench_function("ratelimit_no_headers_no_extension", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(bare.clone().oneshot(Request::new(())).await.unwrap()) });
    });
    let plain = ours(HeaderStyle::None, true);
    g.bench_function("ratelimit_no_headers", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(plain.clone().oneshot(Request::new(())).await.unwrap()) });
    });
    let gov = tower_governor::GovernorLayer::new(
        GovernorConfigBuilder::default()
            .per_nanosecond(1)
            .burst_size(u32::MAX)
            .key_extractor(GlobalKeyExtractor)
            .finish()
            .unwrap(),
    )
    .layer(axum_inner);
    g.bench_function("tower_governor_no_headers", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(gov.clone().oneshot(Request::new(())).await.unwrap()) });
    });
    let legacy = ours(HeaderStyle::Legacy, true);
    g.bench_function("ratelimit_legacy_headers", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(legacy.clone().oneshot(Request::new(())).await.unwrap()) });
    });
    let gov_headers = tower_governor::GovernorLayer::new(
        GovernorConfigBuilder::default()
            .per_nanosecond(1)
            .burst_size(u32::MAX)
            .key_extractor(GlobalKeyExtractor)
            .use_headers()
            .finish()
            .unwrap(),
    )
    .layer(axum_inner);
    g.bench_function("tower_governor_headers", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(gov_headers.clone().oneshot(Request::new(())).await.unwrap())
        });
    });
    g.finish();
}

fn decide(c: &mut Criterion) {
    let mut g = c.benchmark_group("decide");
    let set = PolicySet::new(vec![unlimited("burst")]).unwrap();
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
