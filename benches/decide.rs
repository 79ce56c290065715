//! Run with `cargo bench --bench decide` (feature `tsc`, on by default).
//!
//! One in-memory GCRA decision, `MemoryStore::decide_now` against
//! `governor`'s keyed (DashMap) limiter `check_key`, side by side in one
//! run, on the same key type (`IpAddr`, as an HTTP server keys by client)
//! and the same quota:
//! - `hot_key_allowed`: one key, a quota that never limits;
//! - `hot_key_rejected`: one key whose quota is spent for the day;
//! - `100k_keys_shuffled`: 100,000 keys in a random order, every key's
//!   state kept (a busy server's clients), one thread;
//! - `100k_keys_2_threads`: the same on two threads at once, each in its
//!   own order; the time is wall time per decision of both together.
//!
//! Compare the `ours` and `governor` lines of each group: a ratio, not a
//! bare time. `ours` is the store on its default clock, `SystemClock`,
//! which reads the CPU's time-stamp counter through `quanta` as `governor`
//! does (feature `tsc`), and never runs backwards across cores
//! (governor#299); `ours_os_clock` is the same store on `OsClock`, which
//! asks the operating system's monotonic clock on every read.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use governor::{Quota as GovQuota, RateLimiter as GovLimiter};
use tower_ratelimit::clock::{Clock, OsClock};
use tower_ratelimit::key::Key;
use tower_ratelimit::store::Check;
use tower_ratelimit::{MemoryStore, Policy, PolicySet, Quota};

const KEYS: u32 = 100_000;

/// 1,000 a day with a burst of 10^8: never limits within a run, and a
/// key's state never refills between two of its requests.
fn unlimited() -> (PolicySet, GovQuota) {
    let ours = PolicySet::new(vec![Policy::new(
        "burst",
        Quota::per_day(1_000).burst(100_000_000),
    )])
    .unwrap();
    let theirs = GovQuota::with_period(Duration::from_secs(86_400) / 1_000)
        .unwrap()
        .allow_burst(NonZeroU32::new(100_000_000).unwrap());
    (ours, theirs)
}

/// One a day: spent by the first request, every later one is rejected.
fn spent() -> (PolicySet, GovQuota) {
    let ours = PolicySet::new(vec![Policy::new("daily", Quota::per_day(1))]).unwrap();
    let theirs = GovQuota::with_period(Duration::from_secs(86_400)).unwrap();
    (ours, theirs)
}

fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
}

/// `0..n` in a fixed pseudo-random order (xorshift Fisher-Yates).
fn shuffled(n: u32, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n).collect();
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn ours_decide<C: Clock>(store: &MemoryStore<C>, key: &Key, set: &PolicySet) -> bool {
    // The store's own synchronous call (the trait's wraps it in
    // `Option<Result<..>>`, which a caller holding a `MemoryStore` skips).
    store.decide_now(Check::new(key, set, 1)).is_allowed()
}

fn hot_key(c: &mut Criterion) {
    for (name, (set, quota), allowed) in [
        ("hot_key_allowed", unlimited(), true),
        ("hot_key_rejected", spent(), false),
    ] {
        let mut g = c.benchmark_group(format!("decide/{name}"));
        let store = MemoryStore::new();
        let key = Key::from(ip(1));
        ours_decide(&store, &key, &set);
        assert_eq!(ours_decide(&store, &key, &set), allowed);
        g.bench_function("ours", |b| {
            b.iter(|| black_box(ours_decide(&store, black_box(&key), &set)));
        });
        let os = MemoryStore::builder().clock(OsClock).build().unwrap();
        ours_decide(&os, &key, &set);
        g.bench_function("ours_os_clock", |b| {
            b.iter(|| black_box(ours_decide(&os, black_box(&key), &set)));
        });
        let gov = GovLimiter::keyed(quota);
        let _ = gov.check_key(&ip(1));
        assert_eq!(gov.check_key(&ip(1)).is_ok(), allowed);
        g.bench_function("governor", |b| {
            b.iter(|| black_box(gov.check_key(black_box(&ip(1))).is_ok()));
        });
        g.finish();
    }
}

fn many_keys(c: &mut Criterion) {
    let (set, quota) = unlimited();
    let order = shuffled(KEYS, 0x9e37_79b9_7f4a_7c15);
    let ours_keys: Vec<Key> = order.iter().map(|&n| Key::from(ip(n))).collect();
    let their_keys: Vec<IpAddr> = order.iter().map(|&n| ip(n)).collect();

    let mut g = c.benchmark_group("decide/100k_keys_shuffled");
    let store = MemoryStore::new();
    let mut i = 0;
    g.bench_function("ours", |b| {
        b.iter(|| {
            i = if i + 1 == ours_keys.len() { 0 } else { i + 1 };
            black_box(ours_decide(&store, &ours_keys[i], &set))
        });
    });
    let os = MemoryStore::builder().clock(OsClock).build().unwrap();
    let mut i = 0;
    g.bench_function("ours_os_clock", |b| {
        b.iter(|| {
            i = if i + 1 == ours_keys.len() { 0 } else { i + 1 };
            black_box(ours_decide(&os, &ours_keys[i], &set))
        });
    });
    let gov = GovLimiter::keyed(quota);
    let mut i = 0;
    g.bench_function("governor", |b| {
        b.iter(|| {
            i = if i + 1 == their_keys.len() { 0 } else { i + 1 };
            black_box(gov.check_key(&their_keys[i]).is_ok())
        });
    });
    g.finish();

    // Two threads, each in its own order over the same 100,000 keys.
    let orders = [
        shuffled(KEYS, 0x2545_f491_4f6c_dd1d),
        shuffled(KEYS, 0x1405_7b7e_f767_814f),
    ];
    let mut g = c.benchmark_group("decide/100k_keys_2_threads");
    let ours_keys: Vec<Vec<Key>> = orders
        .iter()
        .map(|o| o.iter().map(|&n| Key::from(ip(n))).collect())
        .collect();
    let their_keys: Vec<Vec<IpAddr>> = orders
        .iter()
        .map(|o| o.iter().map(|&n| ip(n)).collect())
        .collect();
    let store = MemoryStore::new();
    g.bench_function("ours", |b| {
        b.iter_custom(|iters| ours_on_two_threads(iters, &store, &ours_keys, &set));
    });
    let os = MemoryStore::builder().clock(OsClock).build().unwrap();
    g.bench_function("ours_os_clock", |b| {
        b.iter_custom(|iters| ours_on_two_threads(iters, &os, &ours_keys, &set));
    });
    let gov = GovLimiter::keyed(quota);
    g.bench_function("governor", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, |t, n| {
                let keys = &their_keys[t];
                for j in 0..n {
                    black_box(gov.check_key(&keys[j as usize % keys.len()]).is_ok());
                }
            })
        });
    });
    g.finish();
}

/// `iters` decisions of `store` split over two threads, each on its own
/// keys in turn; the wall time of both.
fn ours_on_two_threads<C: Clock>(
    iters: u64,
    store: &MemoryStore<C>,
    keys: &[Vec<Key>],
    set: &PolicySet,
) -> Duration {
    on_two_threads(iters, |t, n| {
        let keys = &keys[t];
        for j in 0..n {
            black_box(ours_decide(store, &keys[j as usize % keys.len()], set));
        }
    })
}

/// Runs `iters` decisions split over two threads started together; the
/// wall time of both.
fn on_two_threads(iters: u64, work: impl Fn(usize, u64) + Sync) -> Duration {
    let barrier = std::sync::Barrier::new(3);
    std::thread::scope(|s| {
        for t in 0..2 {
            let (barrier, work) = (&barrier, &work);
            s.spawn(move || {
                barrier.wait();
                work(t, iters / 2 + (iters % 2) * t as u64);
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

criterion_group!(benches, hot_key, many_keys);
criterion_main!(benches);
