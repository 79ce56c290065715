//! The in-memory store's bounds: forgetting refilled state, the key cap,
//! time that never runs back, and concurrency.

use std::sync::Arc;
use std::time::Duration;

use tower_ratelimit::clock::FakeClock;
use tower_ratelimit::key::Key;
use tower_ratelimit::store::Check;
use tower_ratelimit::{Algorithm, MemoryStore, Policy, PolicySet, Quota};

fn set(algorithm: Algorithm) -> PolicySet {
    PolicySet::new(vec![
        Policy::new("per-minute", Quota::per_minute(10)).with_algorithm(algorithm),
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
fn a_store_built_for_n_keys_holds_n_keys_of_each_policy_before_it_forgets_any() {
    for (n, store) in [
        (
            10_000,
            MemoryStore::builder()
                .clock(FakeClock::new())
                .max_keys(10_000),
        ),
        (
            777,
            MemoryStore::builder().clock(FakeClock::new()).max_keys(777),
        ),
    ] {
        let store = store.build().unwrap();
        // Two policies: each holds its own n keys.
        let hourly = PolicySet::new(vec![Policy::new("hourly", Quota::per_hour(1))]).unwrap();
        let daily = PolicySet::new(vec![
            Policy::new("daily", Quota::per_day(1)).with_algorithm(Algorithm::FixedWindow),
        ])
        .unwrap();
        for i in 0..n as u64 {
            assert!(
                store
                    .decide_now(Check::new(&Key::from(i), &hourly, 1))
                    .is_allowed()
            );
            assert!(
                store
                    .decide_now(Check::new(&Key::from(i), &daily, 1))
                    .is_allowed()
            );
        }
        assert_eq!(store.len(), 2 * n);
        // Every key's spent quota is still there: none was forgotten.
        for i in 0..n as u64 {
            assert!(
                !store
                    .decide_now(Check::new(&Key::from(i), &hourly, 1))
                    .is_allowed(),
                "{i}"
            );
            assert!(
                !store
                    .decide_now(Check::new(&Key::from(i), &daily, 1))
                    .is_allowed(),
                "{i}"
            );
        }
        // One key more, and the cap holds.
        store.decide_now(Check::new(&Key::from(n as u64), &hourly, 1));
        assert!(store.len() <= 2 * n, "{} keys", store.len());
    }
}

#[test]
fn the_default_store_holds_a_million_keys() {
    let store = MemoryStore::new();
    let set = set(Algorithm::Gcra);
    for i in 0..1_000_000_u64 {
        store.decide_now(Check::new(&Key::from(i), &set, 1));
    }
    assert_eq!(store.len(), 1_000_000);
}

#[test]
fn keys_of_every_kind_are_kept_apart() {
    let store = MemoryStore::builder()
        .clock(FakeClock::new())
        .build()
        .unwrap();
    let set = PolicySet::new(vec![Policy::new("p", Quota::per_hour(1))]).unwrap();
    let v4 = std::net::Ipv4Addr::new(0, 0, 0, 7);
    let keys = [
        Key::global(),
        Key::from(7_u64),
        Key::from(v4),
        Key::from(v4.to_ipv6_mapped()),
        Key::from("7"),
        Key::composite([Key::from(7_u64)]),
    ];
    for key in &keys {
        assert!(
            store.decide_now(Check::new(key, &set, 1)).is_allowed(),
            "{key:?}"
        );
    }
    for key in &keys {
        assert!(
            !store.decide_now(Check::new(key, &set, 1)).is_allowed(),
            "{key:?}"
        );
    }
    assert_eq!(store.len(), keys.len());
}

#[test]
fn a_check_at_an_earlier_time_is_decided_at_the_latest_time_the_store_has_seen() {
    let clock = FakeClock::at_micros(5_000_000);
    let store = MemoryStore::builder().clock(clock.clone()).build().unwrap();
    let set = PolicySet::new(vec![Policy::new("p", Quota::per_second(1))]).unwrap();
    let key = Key::from("k");
    assert!(store.decide_now(Check::new(&key, &set, 1)).is_allowed());
    // The clock steps back: time stands still instead.
    clock.set_micros(4_000_000);
    let d = store.decide_now(Check::new(&key, &set, 1));
    assert_eq!(d.at_micros(), 5_000_000);
    assert_eq!(d.retry_after(), Some(Duration::from_secs(1)));
    let d = store.decide_now(Check::new(&key, &set, 1).with_at_micros(Some(1)));
    assert_eq!(d.at_micros(), 5_000_000);
    // Once it passes the latest time again, it is the clock's time.
    clock.set_micros(6_000_000);
    let d = store.decide_now(Check::new(&key, &set, 1));
    assert_eq!(d.at_micros(), 6_000_000);
    assert!(d.is_allowed());
}

#[test]
fn a_reservation_ahead_is_kept_exactly_and_then_folds_back_into_one_word() {
    // Wait mode reserves a slot ahead; a check in reject mode before it
    // comes queues behind it, and once it has passed the state decides as
    // any other.
    let clock = FakeClock::new();
    let store = MemoryStore::builder().clock(clock.clone()).build().unwrap();
    let set = PolicySet::new(vec![Policy::new("p", Quota::per_second(10).burst(1))]).unwrap();
    let mut states = vec![None];
    let key = Key::from(1_u64);
    let wait = Some(Duration::from_secs(1));
    for (at, max_wait) in [
        (0, None),
        (0, wait),
        (0, wait),
        (50_000, None),
        (150_000, None),
        (300_000, None),
    ] {
        clock.set_micros(at);
        let got = store.decide_now(Check::new(&key, &set, 1).with_max_wait(max_wait));
        let want = tower_ratelimit::algorithm::decide(&set, &mut states, at, 1, max_wait);
        assert_eq!(got, want, "at {at} µs");
    }
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
fn threads_on_one_key_admit_exactly_the_burst_on_the_one_word_path_and_the_general_one() {
    // Time stands still: exactly the burst is admitted, however the
    // threads interleave. A wait of at most zero decides as reject mode
    // does for GCRA, through the general path instead of the one word.
    for max_wait in [None, Some(Duration::ZERO)] {
        for algorithm in [Algorithm::Gcra, Algorithm::GreedyTokenBucket] {
            let store = Arc::new(
                MemoryStore::builder()
                    .clock(FakeClock::new())
                    .build()
                    .unwrap(),
            );
            let set = Arc::new(
                PolicySet::new(vec![
                    Policy::new("burst", Quota::per_hour(10).burst(300)).with_algorithm(algorithm),
                ])
                .unwrap(),
            );
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let (store, set) = (Arc::clone(&store), Arc::clone(&set));
                    std::thread::spawn(move || {
                        let key = Key::from("shared");
                        (0..200)
                            .filter(|_| {
                                let check = Check::new(&key, &set, 1).with_max_wait(max_wait);
                                store.decide_now(check).is_allowed()
                            })
                            .count()
                    })
                })
                .collect();
            let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
            assert_eq!(admitted, 300, "{algorithm:?}, wait {max_wait:?}");
        }
    }
}

#[test]
fn threads_on_their_own_keys_get_exactly_what_decide_gives_at_the_time_reported() {
    // Four threads share shards and a moving clock, each on keys of its
    // own: each key's decisions, replayed through `decide` at the times the
    // store reports, come out the same.
    let clock = FakeClock::new();
    let store = Arc::new(
        MemoryStore::builder()
            .clock(clock.clone())
            .shards(2)
            .build()
            .unwrap(),
    );
    let set = Arc::new(
        PolicySet::new(vec![Policy::new(
            "p",
            Quota::new(7, Duration::from_micros(900)).burst(3),
        )])
        .unwrap(),
    );
    let ticker = {
        let clock = clock.clone();
        std::thread::spawn(move || {
            for _ in 0..2_000 {
                clock.advance(Duration::from_micros(13));
                std::thread::yield_now();
            }
        })
    };
    let handles: Vec<_> = (0..4_u64)
        .map(|t| {
            let (store, set) = (Arc::clone(&store), Arc::clone(&set));
            std::thread::spawn(move || {
                let keys: Vec<Key> = (0..8).map(|k| Key::from(t * 100 + k)).collect();
                let mut states = vec![vec![None]; keys.len()];
                for i in 0..2_000_usize {
                    let k = i % keys.len();
                    let max_wait = (i % 5 == 0).then(|| Duration::from_micros(500));
                    let got =
                        store.decide_now(Check::new(&keys[k], &set, 1).with_max_wait(max_wait));
                    let want = tower_ratelimit::algorithm::decide(
                        &set,
                        &mut states[k],
                        got.at_micros(),
                        1,
                        max_wait,
                    );
                    assert_eq!(got, want, "thread {t}, request {i}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    ticker.join().unwrap();
}

#[test]
fn threads_on_one_key_admit_exactly_the_quota() {
    let clock = FakeClock::new();
    let store = Arc::new(MemoryStore::builder().clock(clock).build().unwrap());
    let set = Arc::new(
        PolicySet::new(vec![
            Policy::new("burst", Quota::per_second(500)),
            Policy::new("window", Quota::per_minute(300))
                .with_algorithm(Algorithm::SlidingWindowLog),
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
        Policy::new("p", Quota::per_second(5)).with_algorithm(Algorithm::FixedWindow),
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
