//! The differential against `governor`: on random timelines, GCRA in the
//! in-memory store admits and refuses exactly what `governor`'s keyed GCRA
//! admits and refuses, and names the same retry time, when one request
//! every `T` is a whole number of µs (so both count it exactly).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use governor::{Quota as GovQuota, RateLimiter as GovLimiter};
use proptest::prelude::*;
use tower_ratelimit::clock::FakeClock;
use tower_ratelimit::key::Key;
use tower_ratelimit::store::Check;
use tower_ratelimit::{MemoryStore, Policy, PolicySet, Quota};

/// `(µs per request, limit, burst, gaps between requests in µs)`.
fn timeline() -> impl Strategy<Value = (u64, u64, u32, Vec<u64>)> {
    (1..=5_000_u64, 1..=20_u64, 1..=10_u32).prop_flat_map(|(t, limit, burst)| {
        let gap = prop_oneof![
            4 => Just(0_u64),
            4 => 0..=t,
            2 => 0..=t * u64::from(burst) * 2,
        ];
        (
            Just(t),
            Just(limit),
            Just(burst),
            prop::collection::vec(gap, 1..120),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn gcra_in_the_memory_store_decides_as_governor_does(
        (t, limit, burst, gaps) in timeline()
    ) {
        // `limit` per `limit · t` µs: one every `t` µs, `burst` at once.
        let period = Duration::from_micros(limit * t);
        let set = PolicySet::new(vec![Policy::new(
            "p",
            Quota::new(limit, period).burst(u64::from(burst)),
        )])
        .unwrap();
        let clock = FakeClock::new();
        let store = MemoryStore::builder().clock(clock.clone()).build().unwrap();
        let theirs_clock = FakeRelativeClock::default();
        let quota = GovQuota::with_period(Duration::from_micros(t))
            .unwrap()
            .allow_burst(NonZeroU32::new(burst).unwrap());
        let theirs = GovLimiter::dashmap_with_clock(quota, theirs_clock.clone());
        let key = Key::from(7_u64);
        let mut now = 0;
        for (i, gap) in gaps.iter().enumerate() {
            now += gap;
            clock.set_micros(now);
            theirs_clock.advance(Duration::from_micros(*gap));
            let ours = store.decide_now(Check::new(&key, &set, 1));
            let verdict = theirs.check_key(&7_u64);
            prop_assert_eq!(ours.is_allowed(), verdict.is_ok(), "request {} at {} µs", i, now);
            if let Err(not_until) = verdict {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(&theirs_clock));
                prop_assert_eq!(ours.retry_after(), Some(wait), "request {} at {} µs", i, now);
            }
        }
    }
}
