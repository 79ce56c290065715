//! Run with `cargo bench --bench footprint`.
//!
//! Heap bytes per key of an in-memory limiter holding 1,000,000 keys of
//! one GCRA policy: `MemoryStore::new()` against `governor`'s keyed
//! (DashMap) limiter, on `u64` keys and IPv4 keys (`governor` keyed by
//! `Ipv4Addr`, and by `IpAddr` as `tower_governor` keys clients). Bytes are
//! counted by a global allocator: what is live after the keys went in,
//! less what was live before the limiter was made.
//!
//! Under `cargo test` it runs with 20,000 keys, to check that it works.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use governor::{Quota as GovQuota, RateLimiter as GovLimiter};
use tower_ratelimit::key::Key;
use tower_ratelimit::store::Check;
use tower_ratelimit::{MemoryStore, Policy, PolicySet, Quota};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counter only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Live heap bytes that `fill` leaves behind in what it returns.
fn measure<T>(fill: impl FnOnce() -> T) -> (isize, T) {
    let before = live();
    let kept = fill();
    (live() - before, kept)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: u32 = if full { 1_000_000 } else { 20_000 };
    let set = PolicySet::new(vec![Policy::new(
        "burst",
        Quota::per_day(1_000).burst(100_000_000),
    )])
    .unwrap();
    let quota = GovQuota::with_period(Duration::from_secs(86_400) / 1_000)
        .unwrap()
        .allow_burst(NonZeroU32::new(100_000_000).unwrap());
    let v4 = |i: u32| Ipv4Addr::from(0x0a00_0000 + i);

    println!("bytes per key, {n} keys of one GCRA policy (heap, counted by the allocator)");
    println!("{:<34} {:>10} {:>14}", "limiter", "keys held", "bytes/key");
    let report = |name: &str, bytes: isize, held: usize| {
        println!(
            "{name:<34} {held:>10} {:>14.1}",
            bytes as f64 / held.max(1) as f64
        );
    };

    let (bytes, store) = measure(|| {
        let store = MemoryStore::new();
        for i in 0..n {
            let key = Key::from(u64::from(i));
            assert!(store.decide_now(Check::new(&key, &set, 1)).is_allowed());
        }
        store
    });
    report("ours, u64 keys", bytes, store.len());
    drop(store);

    let (bytes, gov) = measure(|| {
        let gov = GovLimiter::keyed(quota);
        for i in 0..n {
            assert!(gov.check_key(&u64::from(i)).is_ok());
        }
        gov
    });
    report("governor, u64 keys", bytes, gov.len());
    drop(gov);

    let (bytes, store) = measure(|| {
        let store = MemoryStore::new();
        for i in 0..n {
            let key = Key::from(v4(i));
            assert!(store.decide_now(Check::new(&key, &set, 1)).is_allowed());
        }
        store
    });
    report("ours, IPv4 keys", bytes, store.len());
    drop(store);

    let (bytes, gov) = measure(|| {
        let gov = GovLimiter::keyed(quota);
        for i in 0..n {
            assert!(gov.check_key(&v4(i)).is_ok());
        }
        gov
    });
    report("governor, Ipv4Addr keys", bytes, gov.len());
    drop(gov);

    let (bytes, gov) = measure(|| {
        let gov = GovLimiter::keyed(quota);
        for i in 0..n {
            assert!(gov.check_key(&IpAddr::V4(v4(i))).is_ok());
        }
        gov
    });
    report("governor, IpAddr keys", bytes, gov.len());
    drop(gov);
}
