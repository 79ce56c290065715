//! Properties of the algorithms over random timelines: the bounds each one
//! promises (at the slot a request was admitted for, so wait-mode
//! reservations count where they land), exact agreement with small
//! reference models, and the in-memory store agreeing with the pure
//! `decide` call for call, on its one-word path for GCRA and its general
//! path alike.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tower_ratelimit::algorithm::{State, decide};
use tower_ratelimit::clock::FakeClock;
use tower_ratelimit::key::Key;
use tower_ratelimit::store::Check;
use tower_ratelimit::{Algorithm, Decision, MemoryStore, Policy, PolicySet, Quota};

const ALGORITHMS: [Algorithm; 7] = Algorithm::RATES;

fn has_burst(algorithm: Algorithm) -> bool {
    matches!(
        algorithm,
        Algorithm::Gcra
            | Algorithm::TokenBucket
            | Algorithm::GreedyTokenBucket
            | Algorithm::LeakyBucket
    )
}

/// One policy's numbers.
#[derive(Debug, Clone, Copy)]
struct Spec {
    algorithm: Algorithm,
    limit: u64,
    period: u64,
    burst: Option<u64>,
}

impl Spec {
    fn capacity(&self) -> u64 {
        self.burst.unwrap_or(self.limit)
    }

    fn policy(&self, name: &str) -> Policy {
        let quota = Quota::new(self.limit, Duration::from_micros(self.period));
        let quota = match self.burst {
            Some(b) => quota.burst(b),
            None => quota,
        };
        Policy::new(name, quota).with_algorithm(self.algorithm)
    }
}

fn set_of(specs: &[Spec]) -> PolicySet {
    let names = ["a", "b"];
    PolicySet::new(specs.iter().zip(names).map(|(s, n)| s.policy(n)).collect()).unwrap()
}

/// Periods that divide evenly by small limits and ones that do not, tiny
/// ones (several units per µs), a whole second, and ones over 2^20 µs (where
/// the sliding counter weighs in steps of several µs).
fn period() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => 1..=12_u64,
        4 => 13..=3_000_u64,
        1 => Just(1_000_000_u64),
        1 => (1_u64 << 20)..=5_000_000,
    ]
}

fn spec_for(algorithm: Algorithm) -> impl Strategy<Value = Spec> {
    let burst = if has_burst(algorithm) {
        prop::option::of(1..=10_u64).boxed()
    } else {
        Just(None).boxed()
    };
    (1..=8_u64, period(), burst).prop_map(move |(limit, period, burst)| Spec {
        algorithm,
        limit,
        period,
        burst,
    })
}

fn any_spec() -> impl Strategy<Value = Spec> {
    prop::sample::select(&ALGORITHMS[..]).prop_flat_map(spec_for)
}

#[derive(Debug, Clone, Copy)]
struct Req {
    gap: u64,
    cost: u64,
    max_wait: Option<u64>,
    key: usize,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Reject,
    Wait,
    Mixed,
}

/// Requests at non-decreasing times: many at the same instant, most within
/// a period of each other, some after a quiet spell.
fn timeline(period: u64, capacity: u64, mode: Mode) -> impl Strategy<Value = Vec<Req>> {
    let gap = prop_oneof![
        4 => Just(0_u64),
        4 => 0..=period,
        1 => 0..=4 * period,
    ];
    let cost = prop_oneof![
        4 => Just(1_u64),
        3 => 0..=capacity + 1,
    ];
    let max_wait = match mode {
        Mode::Reject => Just(None).boxed(),
        Mode::Wait => (0..=3 * period).prop_map(Some).boxed(),
        Mode::Mixed => prop::option::of(0..=3 * period).boxed(),
    };
    prop::collection::vec((gap, cost, max_wait, 0..2_usize), 1..60).prop_map(|reqs| {
        reqs.into_iter()
            .map(|(gap, cost, max_wait, key)| Req {
                gap,
                cost,
                max_wait,
                key,
            })
            .collect()
    })
}

fn one_policy(mode: Mode) -> impl Strategy<Value = (Spec, Vec<Req>)> {
    any_spec().prop_flat_map(move |s| (Just(s), timeline(s.period, s.capacity(), mode)))
}

fn two_policies(mode: Mode) -> impl Strategy<Value = (Vec<Spec>, Vec<Req>)> {
    (any_spec(), any_spec()).prop_flat_map(move |(a, b)| {
        let period = a.period.min(b.period);
        let capacity = a.capacity().max(b.capacity());
        (Just(vec![a, b]), timeline(period, capacity, mode))
    })
}

fn one_or_two_policies(mode: Mode) -> impl Strategy<Value = (Vec<Spec>, Vec<Req>)> {
    prop_oneof![
        one_policy(mode).prop_map(|(s, reqs)| (vec![s], reqs)),
        two_policies(mode),
    ]
}

/// An admitted request of positive cost, at the time its slot begins.
#[derive(Debug, Clone, Copy)]
struct Admission {
    slot: u64,
    cost: u64,
}

/// Runs `reqs` on one key, checking what holds for every decision, and
/// returns the admissions.
fn run(set: &PolicySet, reqs: &[Req]) -> Result<Vec<Admission>, TestCaseError> {
    let mut states: Vec<Option<State>> = vec![None; set.len()];
    let mut now = 0;
    let mut admitted = Vec::new();
    for r in reqs {
        now += r.gap;
        let before = states.clone();
        let max_wait = r.max_wait.map(Duration::from_micros);
        let d = decide(set, &mut states, now, r.cost, max_wait);
        prop_assert_eq!(d.at_micros(), now);
        prop_assert_eq!(d.policies().len(), set.len());
        if !d.is_allowed() || r.cost == 0 {
            prop_assert_eq!(&states, &before, "only an admission changes state: {:?}", d);
        }
        if d.is_allowed() {
            prop_assert_eq!(d.retry_after(), None);
            prop_assert!(d.wait() <= max_wait.unwrap_or(Duration::ZERO), "{:?}", d);
            if r.cost > 0 {
                let slot = now + micros(d.wait());
                if let Some(last) = admitted.last().map(|a: &Admission| a.slot) {
                    prop_assert!(
                        slot >= last,
                        "admitted at {} ahead of a reservation at {}",
                        slot,
                        last
                    );
                }
                admitted.push(Admission { slot, cost: r.cost });
            }
        } else {
            prop_assert_eq!(d.wait(), Duration::ZERO);
            let never = set
                .policies()
                .iter()
                .any(|p| r.cost > p.quota().burst_size());
            prop_assert_eq!(d.retry_after().is_none(), never, "{:?}", d);
            if let Some(retry) = d.retry_after() {
                prop_assert!(retry > Duration::ZERO, "{:?}", d);
            }
        }
    }
    Ok(admitted)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap()
}

/// The total cost admitted with slots in `[from, to]`.
fn sum_in(admitted: &[Admission], from: u64, to: u64) -> u64 {
    admitted
        .iter()
        .filter(|a| (from..=to).contains(&a.slot))
        .map(|a| a.cost)
        .sum()
}

/// Over every span between two admissions, at most `burst` plus what
/// `refill(span)` grants.
fn check_span_bound(
    admitted: &[Admission],
    burst: u64,
    refill: impl Fn(u64) -> u64,
) -> Result<(), TestCaseError> {
    for i in admitted {
        for j in admitted.iter().filter(|j| j.slot >= i.slot) {
            let sum = sum_in(admitted, i.slot, j.slot);
            let bound = burst + refill(j.slot - i.slot);
            prop_assert!(
                sum <= bound,
                "{} admitted in [{}, {}], bound {}",
                sum,
                i.slot,
                j.slot,
                bound
            );
        }
    }
    Ok(())
}

/// The bound each algorithm promises, checked on the admissions.
fn check_bound(spec: &Spec, admitted: &[Admission]) -> Result<(), TestCaseError> {
    let (limit, period, burst) = (spec.limit, spec.period, spec.capacity());
    match spec.algorithm {
        // A continuous refill: burst + ⌊limit·span/period⌋.
        Algorithm::Gcra | Algorithm::GreedyTokenBucket | Algorithm::LeakyBucket => {
            check_span_bound(admitted, burst, |span| {
                u64::try_from(u128::from(limit) * u128::from(span) / u128::from(period)).unwrap()
            })
        }
        // Refills of `limit` at least a period apart: at most ⌈span/period⌉
        // of them fall in a span.
        Algorithm::TokenBucket => {
            check_span_bound(admitted, burst, |span| limit * span.div_ceil(period))
        }
        Algorithm::FixedWindow => {
            for a in admitted {
                let start = a.slot / period * period;
                let n = sum_in(admitted, start, start + period - 1);
                prop_assert!(n <= limit, "{} in the window from {}", n, start);
                let n = sum_in(admitted, a.slot, a.slot + period - 1);
                prop_assert!(n <= 2 * limit, "{} in one period from {}", n, a.slot);
            }
            Ok(())
        }
        Algorithm::SlidingWindowLog => {
            for a in admitted {
                let n = sum_in(admitted, (a.slot + 1).saturating_sub(period), a.slot);
                prop_assert!(n <= limit, "{} in the period up to {}", n, a.slot);
            }
            Ok(())
        }
        Algorithm::SlidingWindowCounter => check_sliding_counter(spec, admitted),
        other => Err(TestCaseError::fail(format!("no bound for {other:?}"))),
    }
}

/// Never more than `limit` in an aligned window (what a fixed window
/// allows), and at every admission the exact, unquantized estimate
/// `prev·(1 - elapsed/period) + curr` stays within `limit`.
fn check_sliding_counter(spec: &Spec, admitted: &[Admission]) -> Result<(), TestCaseError> {
    let (limit, period) = (u128::from(spec.limit), u128::from(spec.period));
    let mut windows: BTreeMap<u64, u64> = BTreeMap::new();
    for a in admitted {
        let w = a.slot / spec.period;
        *windows.entry(w).or_default() += a.cost;
        let curr = u128::from(windows[&w]);
        prop_assert!(curr <= limit, "{} in window {}", curr, w);
        let prev = u128::from(
            w.checked_sub(1)
                .map_or(0, |p| *windows.get(&p).unwrap_or(&0)),
        );
        let elapsed = u128::from(a.slot) - u128::from(w) * period;
        prop_assert!(
            prev * (period - elapsed) + curr * period <= limit * period,
            "at {}: prev {}, curr {}",
            a.slot,
            prev,
            curr
        );
    }
    Ok(())
}

const CASES: u32 = 96;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// GCRA: over any span between two admissions, at most
    /// burst + ⌊limit·span/period⌋, in reject mode.
    #[test]
    fn gcra_never_admits_more_than_burst_plus_rate_times_elapsed(
        (spec, reqs) in spec_for(Algorithm::Gcra)
            .prop_flat_map(|s| (Just(s), timeline(s.period, s.capacity(), Mode::Reject)))
    ) {
        let admitted = run(&set_of(&[spec]), &reqs)?;
        check_bound(&spec, &admitted)?;
    }

    /// Every algorithm keeps its bound, in reject mode, wait mode
    /// (reservations counted at their slots) and both mixed.
    #[test]
    fn every_algorithm_keeps_its_bound_in_both_modes(
        (spec, reqs) in prop_oneof![
            one_policy(Mode::Reject),
            one_policy(Mode::Wait),
            one_policy(Mode::Mixed),
        ]
    ) {
        let admitted = run(&set_of(&[spec]), &reqs)?;
        check_bound(&spec, &admitted)?;
    }

    /// Wait mode never lets a reservation exceed a limit, with one
    /// policy or two checked together.
    #[test]
    fn wait_mode_reservations_never_exceed_any_limit(
        (specs, reqs) in one_or_two_policies(Mode::Wait)
    ) {
        let admitted = run(&set_of(&specs), &reqs)?;
        for spec in &specs {
            check_bound(spec, &admitted)?;
        }
    }

    /// Two policies: every admission is within both bounds, and a request
    /// rejected by either changes neither state (checked in `run`).
    #[test]
    fn two_policies_keep_both_bounds((specs, reqs) in two_policies(Mode::Mixed)) {
        let admitted = run(&set_of(&specs), &reqs)?;
        for spec in &specs {
            check_bound(spec, &admitted)?;
        }
    }

    /// A rejection's retry_after is exact: the same request is admitted
    /// then and not a µs before. `remaining` is exactly what fits now, and
    /// `reset_after` is exactly when each policy is full again.
    #[test]
    fn retry_after_remaining_and_reset_after_are_exact(
        (specs, reqs) in one_or_two_policies(Mode::Mixed)
    ) {
        let set = set_of(&specs);
        let mut states: Vec<Option<State>> = vec![None; set.len()];
        let mut now = 0;
        for r in &reqs {
            now += r.gap;
            let d = decide(&set, &mut states, now, r.cost, r.max_wait.map(Duration::from_micros));
            if r.max_wait.is_none() {
                check_retry_after(&set, &states, now, r.cost, &d)?;
            }
            check_remaining(&set, &states, now, &d)?;
            check_reset_after(&set, &specs, &states, now, &d)?;
            check_refill_after(&set, &specs, &states, now, &d, r.max_wait.is_none())?;
        }
    }

    /// Reject mode with one policy agrees, field by field, with a small
    /// reference model written straight from each algorithm's description.
    #[test]
    fn reject_mode_matches_a_reference_model(
        (spec, reqs) in any_spec()
            .prop_flat_map(|s| (Just(s), timeline(s.period, s.capacity(), Mode::Reject)))
    ) {
        let set = set_of(&[spec]);
        let mut states: Vec<Option<State>> = vec![None];
        let mut model = Model::new(&spec);
        let mut now = 0;
        for r in &reqs {
            now += r.gap;
            let d = decide(&set, &mut states, now, r.cost, None);
            let want = model.check(&spec, now, r.cost);
            let p = &d.policies()[0];
            let got = Outcome {
                allowed: d.is_allowed(),
                retry: p.retry_after().map(micros),
                remaining: p.remaining(),
                reset: micros(p.reset_after()),
            };
            prop_assert_eq!(got, want, "at {} cost {}", now, r.cost);
            let retry = if d.is_allowed() { None } else { p.retry_after() };
            prop_assert_eq!(d.retry_after(), retry);
        }
    }

    /// A shaping leaky bucket (wait mode, unit costs) agrees with a model
    /// that keeps the queue: each request leaves once the one ahead has
    /// drained, which takes ⌈period/limit⌉ µs, and a request finding `burst`
    /// still in the bucket is turned away until one has drained.
    #[test]
    fn leaky_bucket_shaping_matches_a_queue_model(
        (spec, reqs) in spec_for(Algorithm::LeakyBucket)
            .prop_flat_map(|s| (Just(s), timeline(s.period, s.capacity(), Mode::Wait)))
    ) {
        let set = set_of(&[spec]);
        let mut states: Vec<Option<State>> = vec![None];
        let drain_time = spec.period.div_ceil(spec.limit);
        // When each admitted request has drained, in order.
        let mut drained_at: Vec<u64> = Vec::new();
        let mut now = 0;
        for r in &reqs {
            now += r.gap;
            let cost = r.cost.min(1);
            let max_wait = r.max_wait.unwrap();
            let d = decide(&set, &mut states, now, cost, Some(Duration::from_micros(max_wait)));
            if cost == 0 {
                prop_assert!(d.is_allowed() && d.wait() == Duration::ZERO);
                continue;
            }
            let in_bucket: Vec<u64> = drained_at.iter().copied().filter(|&t| t > now).collect();
            let slot = drained_at.last().map_or(now, |&t| t.max(now));
            let burst = spec.capacity();
            if in_bucket.len() as u64 >= burst {
                // Room once all but burst - 1 of them have drained.
                let room_at = in_bucket[in_bucket.len() - burst as usize];
                prop_assert!(!d.is_allowed(), "queue full at {}: {:?}", now, d);
                prop_assert_eq!(d.retry_after(), Some(Duration::from_micros(room_at - now)));
            } else if slot - now > max_wait {
                prop_assert!(!d.is_allowed(), "slot {} beyond the wait at {}: {:?}", slot, now, d);
                prop_assert_eq!(d.retry_after(), Some(Duration::from_micros(slot - now)));
            } else {
                prop_assert!(d.is_allowed(), "at {}: {:?}", now, d);
                prop_assert_eq!(d.wait(), Duration::from_micros(slot - now));
                drained_at.push(slot + drain_time);
            }
        }
    }

    /// The in-memory store on a fake clock answers exactly what `decide`
    /// answers, for two keys, one or two policies, both modes.
    #[test]
    fn memory_store_agrees_with_decide_call_for_call(
        (specs, reqs) in one_or_two_policies(Mode::Mixed)
    ) {
        let set = set_of(&specs);
        let clock = FakeClock::new();
        let store = MemoryStore::builder().clock(clock.clone()).build().unwrap();
        let keys = [Key::from("one"), Key::from("two")];
        let mut states: [Vec<Option<State>>; 2] = [vec![None; set.len()], vec![None; set.len()]];
        let mut now = 0;
        for (i, r) in reqs.iter().enumerate() {
            now += r.gap;
            let max_wait = r.max_wait.map(Duration::from_micros);
            let check = Check::new(&keys[r.key], &set, r.cost).with_max_wait(max_wait);
            let from_store = if i % 3 == 0 {
                // An explicit time overrides the clock.
                store.decide_now(check.with_at_micros(Some(now)))
            } else {
                clock.set_micros(now);
                store.decide_now(check)
            };
            let pure = decide(&set, &mut states[r.key], now, r.cost, max_wait);
            prop_assert_eq!(from_store, pure, "request {}", i);
        }
    }
}

/// A GCRA-family policy with quotas whose drain is one tick per µs and
/// ones whose drain is not, from time zero, from a realistic epoch and
/// from times so large that a state's one word does not fit.
fn level_timeline() -> impl Strategy<Value = (Spec, u64, Vec<Req>)> {
    let algorithm = prop::sample::select(vec![
        Algorithm::Gcra,
        Algorithm::GreedyTokenBucket,
        Algorithm::LeakyBucket,
    ]);
    let limit = prop_oneof![1..=8_u64, 9..=1_000_u64];
    let start = prop_oneof![
        Just(0_u64),
        Just(1_763_800_000_000_000_u64),
        Just((1_u64 << 62) / 7),
        Just(1_u64 << 62),
    ];
    (
        algorithm,
        limit,
        period(),
        prop::option::of(1..=10_u64),
        start,
    )
        .prop_flat_map(|(algorithm, limit, period, burst, start)| {
            let spec = Spec {
                algorithm,
                limit,
                period,
                burst,
            };
            (
                Just(spec),
                Just(start),
                timeline(period, spec.capacity(), Mode::Mixed),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES * 2))]

    /// The store decides a GCRA-family policy alone in reject mode on the
    /// state's one word; every other check (wait mode here) takes the
    /// general path over the same states. Both answer what `decide`
    /// answers, field for field, and so does the general path asked the
    /// same reject-mode questions (as a wait of at most zero, which GCRA
    /// and the greedy bucket decide exactly as reject mode).
    #[test]
    fn the_one_word_path_agrees_with_the_general_path_and_decide(
        (spec, start, reqs) in level_timeline()
    ) {
        let set = set_of(&[spec]);
        let clock = FakeClock::at_micros(start);
        let fast = MemoryStore::builder().clock(clock.clone()).build().unwrap();
        let general = MemoryStore::builder().clock(clock.clone()).build().unwrap();
        let keys = [Key::from(1_u64), Key::from(std::net::Ipv4Addr::new(10, 0, 0, 1))];
        let mut states: [Vec<Option<State>>; 2] = [vec![None], vec![None]];
        let mut now = start;
        for (i, r) in reqs.iter().enumerate() {
            now += r.gap;
            clock.set_micros(now);
            let max_wait = r.max_wait.map(Duration::from_micros);
            let pure = decide(&set, &mut states[r.key], now, r.cost, max_wait);
            let got = fast.decide_now(Check::new(&keys[r.key], &set, r.cost).with_max_wait(max_wait));
            prop_assert_eq!(&got, &pure, "one-word store, request {}", i);
            let routed = match (max_wait, spec.algorithm) {
                (None, Algorithm::Gcra | Algorithm::GreedyTokenBucket) => Some(Duration::ZERO),
                _ => max_wait,
            };
            let got = general.decide_now(Check::new(&keys[r.key], &set, r.cost).with_max_wait(routed));
            prop_assert_eq!(&got, &pure, "general path, request {}", i);
        }
    }
}

/// After a rejection in reject mode with `retry_after = r`, the same request
/// on the same state is admitted at `now + r` and rejected at `now + r - 1`;
/// each policy's own retry is exact for that policy alone.
fn check_retry_after(
    set: &PolicySet,
    states: &[Option<State>],
    now: u64,
    cost: u64,
    d: &Decision,
) -> Result<(), TestCaseError> {
    let Some(retry) = d.retry_after().map(micros) else {
        return Ok(());
    };
    let at = |t: u64| decide(set, &mut states.to_vec(), t, cost, None);
    prop_assert!(
        at(now + retry).is_allowed(),
        "not admitted after {}: {:?}",
        retry,
        d
    );
    prop_assert!(
        !at(now + retry - 1).is_allowed(),
        "admitted before {}: {:?}",
        retry,
        d
    );
    for (i, p) in d.policies().iter().enumerate() {
        let alone = PolicySet::new(vec![set.policies()[i].clone()]).unwrap();
        let at = |t: u64| decide(&alone, &mut [states[i].clone()], t, cost, None);
        match p.retry_after().map(micros) {
            None => prop_assert!(!at(now + 1_000_000_000).is_allowed()),
            Some(0) => prop_assert!(p.is_allowed() && at(now).is_allowed()),
            Some(r) => {
                prop_assert!(!p.is_allowed());
                prop_assert!(at(now + r).is_allowed(), "{} not after {}", p.name(), r);
                prop_assert!(!at(now + r - 1).is_allowed(), "{} before {}", p.name(), r);
            }
        }
    }
    Ok(())
}

/// `remaining` units fit now; one more does not.
fn check_remaining(
    set: &PolicySet,
    states: &[Option<State>],
    now: u64,
    d: &Decision,
) -> Result<(), TestCaseError> {
    let left = d.remaining();
    let fits = |cost: u64| decide(set, &mut states.to_vec(), now, cost, None).is_allowed();
    prop_assert!(fits(left), "{} remaining do not fit: {:?}", left, d);
    prop_assert!(
        !fits(left + 1),
        "{} remaining, one more fits: {:?}",
        left,
        d
    );
    Ok(())
}

/// Each policy has more than `remaining` left `refill_after` from now, and
/// not a µs before; `None` exactly when it is full. For a request rejected
/// in reject mode the refusing policies' `refill_after` is at most their
/// `retry_after` (in wait mode a leaky bucket's queue may have room for a
/// reservation sooner).
fn check_refill_after(
    set: &PolicySet,
    specs: &[Spec],
    states: &[Option<State>],
    now: u64,
    d: &Decision,
    reject_mode: bool,
) -> Result<(), TestCaseError> {
    let left_at =
        |t: u64, i: usize| decide(set, &mut states.to_vec(), t, 0, None).policies()[i].remaining();
    for (i, (p, spec)) in d.policies().iter().zip(specs).enumerate() {
        let left = p.remaining();
        match p.refill_after() {
            None => prop_assert_eq!(left, spec.capacity(), "no refill, yet not full: {:?}", d),
            Some(refill) => {
                let refill = micros(refill);
                prop_assert!(refill > 0, "{:?}", d);
                prop_assert!(
                    left_at(now + refill, i) > left,
                    "nothing more after {}: {:?}",
                    refill,
                    d
                );
                prop_assert!(
                    left_at(now + refill - 1, i) <= left,
                    "more before {}: {:?}",
                    refill,
                    d
                );
                if let Some(retry) = p.retry_after().filter(|_| reject_mode && !p.is_allowed()) {
                    prop_assert!(refill <= micros(retry), "refill after retry: {:?}", d);
                }
            }
        }
    }
    Ok(())
}

/// Each policy is full (remaining = its capacity) `reset_after` from now,
/// and not a µs before.
fn check_reset_after(
    set: &PolicySet,
    specs: &[Spec],
    states: &[Option<State>],
    now: u64,
    d: &Decision,
) -> Result<(), TestCaseError> {
    let left_at = |t: u64| decide(set, &mut states.to_vec(), t, 0, None);
    for (i, (p, spec)) in d.policies().iter().zip(specs).enumerate() {
        let reset = micros(p.reset_after());
        prop_assert_eq!(
            left_at(now + reset).policies()[i].remaining(),
            spec.capacity(),
            "not full after {}",
            reset
        );
        if reset > 0 {
            prop_assert!(
                left_at(now + reset - 1).policies()[i].remaining() < spec.capacity(),
                "full before {}",
                reset
            );
        }
    }
    Ok(())
}

// ------------------------------------------------- reference models ---

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outcome {
    allowed: bool,
    /// The policy's retry: zero when admitted, `None` when never.
    retry: Option<u64>,
    remaining: u64,
    reset: u64,
}

/// Each algorithm as its description reads, in reject mode.
enum Model {
    /// The theoretical arrival time, in µs·limit so it stays an integer.
    Gcra { tat: u128 },
    /// Tokens, and the next refill while the bucket is not full.
    TokenBucket { tokens: u64, next: Option<u64> },
    /// The last window with admissions and its count.
    FixedWindow { last: Option<(u64, u64)> },
    /// Every admission.
    Log { entries: Vec<(u64, u64)> },
    /// The count of every window.
    Counter { windows: BTreeMap<u64, u64> },
}

impl Model {
    fn new(spec: &Spec) -> Self {
        match spec.algorithm {
            Algorithm::Gcra | Algorithm::GreedyTokenBucket | Algorithm::LeakyBucket => {
                Model::Gcra { tat: 0 }
            }
            Algorithm::TokenBucket => Model::TokenBucket {
                tokens: spec.capacity(),
                next: None,
            },
            Algorithm::FixedWindow => Model::FixedWindow { last: None },
            Algorithm::SlidingWindowLog => Model::Log {
                entries: Vec::new(),
            },
            Algorithm::SlidingWindowCounter => Model::Counter {
                windows: BTreeMap::new(),
            },
            other => panic!("no model for {other:?}"),
        }
    }

    fn check(&mut self, spec: &Spec, now: u64, cost: u64) -> Outcome {
        let (limit, period, burst) = (spec.limit, spec.period, spec.capacity());
        // What happens to the state; `Some(retry)` when rejected.
        let rejected: Option<Option<u64>> = match self {
            Model::Gcra { tat } => {
                let (l, p, b) = (u128::from(limit), u128::from(period), u128::from(burst));
                let now_l = u128::from(now) * l;
                let from = (*tat).max(now_l);
                let end = from + u128::from(cost) * p;
                if cost > burst {
                    Some(None)
                } else if cost == 0 {
                    None
                } else if end <= now_l + b * p {
                    *tat = end;
                    None
                } else {
                    let wait = (end - b * p - now_l).div_ceil(l);
                    Some(Some(u64::try_from(wait).unwrap()))
                }
            }
            Model::TokenBucket { tokens, next } => {
                while let Some(n) = *next {
                    if n > now {
                        break;
                    }
                    *tokens = (*tokens + limit).min(burst);
                    *next = (*tokens < burst).then_some(n + period);
                }
                if cost > burst {
                    Some(None)
                } else if cost == 0 {
                    None
                } else if *tokens >= cost {
                    // Drawing from a full bucket starts its refill clock.
                    next.get_or_insert(now + period);
                    *tokens -= cost;
                    None
                } else {
                    let steps = (cost - *tokens).div_ceil(limit);
                    Some(Some(next.unwrap() + (steps - 1) * period - now))
                }
            }
            Model::FixedWindow { last } => {
                let w = now / period;
                let count = match *last {
                    Some((lw, c)) if lw == w => c,
                    _ => 0,
                };
                if cost > limit {
                    Some(None)
                } else if cost == 0 {
                    None
                } else if count + cost <= limit {
                    *last = Some((w, count + cost));
                    None
                } else {
                    Some(Some((w + 1) * period - now))
                }
            }
            Model::Log { entries } => {
                let used = |entries: &[(u64, u64)], t: u64| -> u64 {
                    entries
                        .iter()
                        .filter(|e| e.0 + period > t)
                        .map(|e| e.1)
                        .sum()
                };
                if cost > limit {
                    Some(None)
                } else if cost == 0 {
                    None
                } else if used(entries, now) + cost <= limit {
                    entries.push((now, cost));
                    None
                } else {
                    // The first time an entry drops out and leaves room.
                    let at = entries
                        .iter()
                        .map(|e| e.0 + period)
                        .filter(|&t| t > now)
                        .find(|&t| used(entries, t) + cost <= limit)
                        .unwrap();
                    Some(Some(at - now))
                }
            }
            Model::Counter { windows } => {
                let fits = |windows: &BTreeMap<u64, u64>, t: u64| {
                    let (prev, curr, k, n) = counter_view(spec, windows, t);
                    curr + cost <= limit
                        && u128::from(prev) * u128::from(n - k)
                            <= u128::from(limit - curr - cost) * u128::from(n)
                };
                if cost > limit {
                    Some(None)
                } else if cost == 0 {
                    None
                } else if fits(windows, now) {
                    *windows.entry(now / period).or_default() += cost;
                    None
                } else {
                    // Within a window the weight only falls, so the first
                    // fitting µs of each window is found by bisection.
                    let first = (now / period..now / period + 3).find_map(|w| {
                        let (mut lo, mut hi) = ((w * period).max(now + 1), (w + 1) * period - 1);
                        if lo > hi || !fits(windows, hi) {
                            return None;
                        }
                        while lo < hi {
                            let mid = lo + (hi - lo) / 2;
                            if fits(windows, mid) {
                                hi = mid;
                            } else {
                                lo = mid + 1;
                            }
                        }
                        Some(lo)
                    });
                    Some(Some(first.unwrap() - now))
                }
            }
        };

        let (remaining, reset) = match self {
            Model::Gcra { tat } => {
                let (l, p, b) = (u128::from(limit), u128::from(period), u128::from(burst));
                let level = tat.saturating_sub(u128::from(now) * l);
                (
                    u64::try_from((b * p - level) / p).unwrap(),
                    u64::try_from(level.div_ceil(l)).unwrap(),
                )
            }
            Model::TokenBucket { tokens, next } => {
                let reset = next.map_or(0, |n| {
                    n + ((burst - *tokens).div_ceil(limit) - 1) * period - now
                });
                (*tokens, reset)
            }
            Model::FixedWindow { last } => match *last {
                Some((w, c)) if w == now / period => (limit - c, (w + 1) * period - now),
                _ => (limit, 0),
            },
            Model::Log { entries } => {
                let used: u64 = entries
                    .iter()
                    .filter(|e| e.0 + period > now)
                    .map(|e| e.1)
                    .sum();
                let reset = entries
                    .last()
                    .map_or(0, |e| (e.0 + period).saturating_sub(now));
                (limit - used, reset)
            }
            Model::Counter { windows } => {
                let (prev, curr, k, n) = counter_view(spec, windows, now);
                let weighted = (prev * (n - k)).div_ceil(n);
                let reset = windows
                    .keys()
                    .next_back()
                    .map_or(0, |w| ((w + 2) * period).saturating_sub(now));
                (limit.saturating_sub(curr + weighted), reset)
            }
        };

        Outcome {
            allowed: rejected.is_none(),
            retry: rejected.unwrap_or(Some(0)),
            remaining,
            reset,
        }
    }
}

/// `(previous count, current count, whole weight steps elapsed, steps per
/// window)` at `t`: the weight is measured in steps of
/// `max(1, ⌈period / 2^20⌉)` µs.
fn counter_view(spec: &Spec, windows: &BTreeMap<u64, u64>, t: u64) -> (u64, u64, u64, u64) {
    let period = spec.period;
    let step = period.div_ceil(1 << 20).max(1);
    let n = period.div_ceil(step);
    let w = t / period;
    let count = |w: u64| windows.get(&w).copied().unwrap_or(0);
    let prev = w.checked_sub(1).map_or(0, count);
    (prev, count(w), (t - w * period) / step, n)
}
