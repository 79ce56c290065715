//! The in-memory store's bounds: forgetting refilled state, the key cap,
//! and concurrency.

use std::sync::Arc;
use std::time::Duration;

use tower_ratelimit::clock::FakeClock;
use tower_ratelimit::key::Key;
use tower_ratelimit::store::Check;
use tower_ratelimit::{Algorithm, MemoryStore, Policy, PolicySet, Quota};

fn set(algorithm: Algorithm) -> PolicySet {
    PolicySet::new(vec![
        Policy::new("per-minute", Quota::per_minute(10)).algorithm(algorithm),
    ])
    .unwrap()
}

#[test]
fn the_key_cap_holds_under_a_flood_of_distinct_keys() {
    let clock = FakeClock::new();
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .shards(4)
        .max_keys(1_000)
        .build()
        .unwrap();
    let set = set(Algorithm::Gcra);
    // Time stands still: nothing refills, so only the cap can make room.
    for n in 0..50_000_u64 {
        let d = store.decide_now(Check::new(&Key::from(n), &set, 1));
        assert!(d.is_allowed(), "a new key starts full");
        assert!(store.len() <= 1_000, "{} keys after {n}", store.len());
    }
    assert!(
        store.len() >= 800,
        "the cap is used, not emptied: {}",
        store.len()
    );
}

#[test]
fn eviction_forgets_the_keys_closest_to_refilling_first() {
    let clock = FakeClock::new();
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .shards(1)
        .max_keys(64)
        .build()
        .unwrap();
    let set = set(Algorithm::Gcra);
    let heavy = Key::from("heavy");
    // "heavy" spends its whole burst: it is the furthest from refilling.
    for _ in 0..10 {
        assert!(store.decide_now(Check::new(&heavy, &set, 1)).is_allowed());
    }
    for n in 0..1_000_u64 {
        store.decide_now(Check::new(&Key::from(n), &set, 1));
    }
    // It was never evicted, so it is still limited.
    assert!(!store.decide_now(Check::new(&heavy, &set, 1)).is_allowed());
}

#[test]
fn refilled_state_is_forgotten() {
    for algorithm in Algorithm::RATES {
        let clock = FakeClock::new();
        let store = MemoryStore::builder()
            .clock(clock.clone())
            .shards(1)
            .build()
            .unwrap();
        let set = set(algorithm);
        for n in 0..5_000_u64 {
            store.decide_now(Check::new(&Key::from(n), &set, 3));
        }
        assert_eq!(store.len(), 5_000, "{algorithm:?}");
        // Two periods later every state is back to full. A shard is swept
        // each time it doubles since the last sweep (here at 8,192 keys),
        // and the sweep drops all 5,000.
        clock.advance(Duration::from_secs(120));
        for n in 5_000..10_000_u64 {
            store.decide_now(Check::new(&Key::from(n), &set, 3));
        }
        assert!(store.len() <= 5_000, "{algorithm:?}: {} keys", store.len());
    }
}

#[test]
fn rejected_requests_for_new_keys_store_nothing() {
    let store = MemoryStore::new();
    let set = set(Algorithm::Gcra);
    // A cost of 11 never fits a burst of 10.
    let d = store.decide_now(Check::new(&Key::from("k"), &set, 11));
    assert!(!d.is_allowed());
    assert_eq!(d.retry_after(), None);
    assert!(store.is_empty());
}

#[test]
fn threads_on_one_key_admit_exactly_the_quota() {
    let clock = FakeClock::new();
    let store = Arc::new(MemoryStore::builder().clock(clock).build().unwrap());
    let set = Arc::new(
        PolicySet::new(vec![
            Policy::new("burst", Quota::per_second(500)),
            Policy::new("window", Quota::per_minute(300)).algorithm(Algorithm::SlidingWindowLog),
        ])
        .unwrap(),
    );
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (store, set) = (Arc::clone(&store), Arc::clone(&set));
            std::thread::spawn(move || {
                let key = Key::from("shared");
                (0..200)
                    .filter(|_| store.decide_now(Check::new(&key, &set, 1)).is_allowed())
                    .count()
            })
        })
        .collect();
    let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(admitted, 300);
}

#[test]
fn builder_rejects_bad_settings() {
    let e = MemoryStore::builder().shards(0).build().unwrap_err();
    assert_eq!(e.field(), "shards");
    let e = MemoryStore::builder()
        .shards(8)
        .max_keys(4)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "max_keys");
}

#[test]
fn a_policy_of_the_same_name_with_another_configuration_has_its_own_state() {
    let store = MemoryStore::builder()
        .clock(FakeClock::new())
        .build()
        .unwrap();
    let key = Key::from("k");
    let gcra = PolicySet::new(vec![Policy::new("p", Quota::per_second(1))]).unwrap();
    let window = PolicySet::new(vec![
        Policy::new("p", Quota::per_second(5)).algorithm(Algorithm::FixedWindow),
    ])
    .unwrap();
    assert!(store.decide_now(Check::new(&key, &gcra, 1)).is_allowed());
    assert!(!store.decide_now(Check::new(&key, &gcra, 1)).is_allowed());
    // Same name, same key, other algorithm and quota: a state of its own.
    for _ in 0..5 {
        assert!(store.decide_now(Check::new(&key, &window, 1)).is_allowed());
    }
    assert!(!store.decide_now(Check::new(&key, &window, 1)).is_allowed());
    // And the first policy's state is still there.
    assert!(!store.decide_now(Check::new(&key, &gcra, 1)).is_allowed());
    // A set sharing one policy by name and configuration shares its state.
    let both = PolicySet::new(vec![
        Policy::new("p", Quota::per_second(1)),
        Policy::new("q", Quota::per_second(9)),
    ])
    .unwrap();
    assert!(!store.decide_now(Check::new(&key, &both, 1)).is_allowed());
}
