//! Every algorithm over scripted timelines, with expectations worked out by
//! hand from the quota (all times in µs).

use std::time::Duration;

use tower_ratelimit::algorithm::{State, decide, full_at};
use tower_ratelimit::{Algorithm, Decision, Policy, PolicySet, Quota};

const S: u64 = 1_000_000;

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

fn one(quota: Quota, algorithm: Algorithm) -> PolicySet {
    PolicySet::new(vec![Policy::new("p", quota).with_algorithm(algorithm)]).unwrap()
}

/// One key's states for a policy set, driven by scripted requests.
struct Limiter {
    set: PolicySet,
    states: Vec<Option<State>>,
}

impl Limiter {
    fn new(set: PolicySet) -> Self {
        let states = vec![None; set.len()];
        Self { set, states }
    }

    fn of(quota: Quota, algorithm: Algorithm) -> Self {
        Self::new(one(quota, algorithm))
    }

    /// Reject mode.
    fn check(&mut self, now: u64, cost: u64) -> Decision {
        let d = decide(&self.set, &mut self.states, now, cost, None);
        assert_eq!(d.at_micros(), now);
        d
    }

    /// Wait mode, waiting at most `max` µs.
    fn wait(&mut self, now: u64, cost: u64, max: u64) -> Decision {
        let d = decide(&self.set, &mut self.states, now, cost, Some(us(max)));
        assert_eq!(d.at_micros(), now);
        d
    }

    /// Sends `n` requests of cost 1 at `now` and counts those admitted.
    fn admit_many(&mut self, now: u64, n: usize) -> usize {
        (0..n).filter(|_| self.check(now, 1).is_allowed()).count()
    }
}

#[track_caller]
fn assert_admitted(d: &Decision, remaining: u64) {
    assert!(d.is_allowed(), "expected admitted: {d:?}");
    assert_eq!(d.wait(), Duration::ZERO, "{d:?}");
    assert_eq!(d.retry_after(), None, "{d:?}");
    assert_eq!(d.remaining(), remaining, "remaining: {d:?}");
}

#[track_caller]
fn assert_waits(d: &Decision, wait: u64) {
    assert!(d.is_allowed(), "expected a reservation: {d:?}");
    assert_eq!(d.wait(), us(wait), "{d:?}");
    assert_eq!(d.retry_after(), None, "{d:?}");
}

#[track_caller]
fn assert_rejected(d: &Decision, retry_after: Option<u64>) {
    assert!(!d.is_allowed(), "expected rejected: {d:?}");
    assert_eq!(d.wait(), Duration::ZERO, "{d:?}");
    assert_eq!(d.retry_after(), retry_after.map(us), "retry_after: {d:?}");
}

// ---------------------------------------------------------------- GCRA ---
// per_second(10).burst(3): one unit every 100_000 µs, three at once.

fn gcra() -> Limiter {
    Limiter::of(Quota::per_second(10).burst(3), Algorithm::Gcra)
}

#[test]
fn gcra_admits_burst_then_one_per_emission_interval() {
    let mut l = gcra();
    assert_admitted(&l.check(0, 1), 2);
    assert_admitted(&l.check(0, 1), 1);
    assert_admitted(&l.check(0, 1), 0);
    assert_rejected(&l.check(0, 1), Some(100_000));
    assert_rejected(&l.check(99_999, 1), Some(1));
    assert_admitted(&l.check(100_000, 1), 0);
    assert_rejected(&l.check(100_000, 1), Some(100_000));
    assert_admitted(&l.check(200_000, 1), 0);
    // 50 ms into the next interval: half a unit has refilled, not a whole one.
    assert_rejected(&l.check(250_000, 1), Some(50_000));
    assert_admitted(&l.check(300_000, 1), 0);
}

#[test]
fn gcra_admits_burst_plus_rate_times_elapsed_over_one_second() {
    let mut l = gcra();
    // Five tries every 10 ms from 0 to 1 s inclusive.
    let admitted: usize = (0..=100).map(|i| l.admit_many(i * 10_000, 5)).sum();
    assert_eq!(admitted, 3 + 10);
}

#[test]
fn gcra_refills_the_whole_burst_after_three_intervals() {
    let mut l = gcra();
    assert_eq!(l.admit_many(0, 3), 3);
    assert_eq!(l.admit_many(300_000, 5), 3);

    let mut l = gcra();
    assert_eq!(l.admit_many(0, 3), 3);
    // One µs short of a full refill: 2.99999 units are back, so only two fit.
    assert_eq!(l.admit_many(299_999, 2), 2);
    assert_rejected(&l.check(299_999, 1), Some(1));
}

#[test]
fn gcra_remaining_and_reset_after_follow_the_continuous_refill() {
    let mut l = gcra();
    let d = l.check(0, 1);
    assert_admitted(&d, 2);
    assert_eq!(d.policies()[0].reset_after(), us(100_000));
    let d = l.check(0, 2);
    assert_admitted(&d, 0);
    assert_eq!(d.policies()[0].reset_after(), us(300_000));

    // 1.5 units back: remaining counts whole units.
    let d = l.check(150_000, 0);
    assert_admitted(&d, 1);
    assert_eq!(d.policies()[0].reset_after(), us(150_000));
    let d = l.check(199_999, 0);
    assert_admitted(&d, 1);
    assert_eq!(d.policies()[0].reset_after(), us(100_001));
    let d = l.check(200_000, 0);
    assert_admitted(&d, 2);
    assert_eq!(d.policies()[0].reset_after(), us(100_000));
    let d = l.check(300_000, 0);
    assert_admitted(&d, 3);
    assert_eq!(d.policies()[0].reset_after(), Duration::ZERO);
}

#[test]
fn gcra_cost_above_burst_is_rejected_without_retry_and_consumes_nothing() {
    let mut l = gcra();
    let d = l.check(0, 4);
    assert_rejected(&d, None);
    assert_eq!(d.policies()[0].retry_after(), None);
    assert!(!d.policies()[0].is_allowed());
    assert_eq!(d.remaining(), 3);
    assert_eq!(d.policies()[0].reset_after(), Duration::ZERO);
    // Nothing was consumed: the whole burst is still there.
    assert_admitted(&l.check(0, 3), 0);
    // Still never, however empty or full the bucket is.
    assert_rejected(&l.check(0, 4), None);
    assert_rejected(&l.check(10 * S, 4), None);
}

#[test]
fn gcra_cost_zero_is_admitted_and_consumes_nothing() {
    let mut l = gcra();
    let d = l.check(0, 0);
    assert_admitted(&d, 3);
    assert_eq!(d.policies()[0].reset_after(), Duration::ZERO);
    assert_admitted(&l.check(0, 3), 0);
    // An empty bucket still admits a free request, and reports what is left.
    let d = l.check(0, 0);
    assert_admitted(&d, 0);
    assert_eq!(d.policies()[0].retry_after(), Some(Duration::ZERO));
    assert_eq!(d.policies()[0].reset_after(), us(300_000));
    assert_rejected(&l.check(0, 1), Some(100_000));
}

#[test]
fn gcra_weighted_request_waits_until_its_whole_cost_has_refilled() {
    let mut l = gcra();
    assert_admitted(&l.check(0, 3), 0);
    assert_rejected(&l.check(0, 2), Some(200_000));
    assert_rejected(&l.check(150_000, 2), Some(50_000));
    assert_admitted(&l.check(200_000, 2), 0);
}

#[test]
fn gcra_wait_mode_reserves_exact_slots_one_behind_the_other() {
    let mut l = gcra();
    for _ in 0..3 {
        assert_waits(&l.wait(0, 1, S), 0);
    }
    let d = l.wait(0, 1, S);
    assert_waits(&d, 100_000);
    assert_eq!(
        d.remaining(),
        0,
        "nothing is left now while a slot is reserved"
    );
    assert_waits(&l.wait(0, 1, S), 200_000);
    assert_waits(&l.wait(0, 1, S), 300_000);
    // A later request queues behind the reservations, not at its own refill.
    assert_waits(&l.wait(50_000, 1, S), 350_000);
}

#[test]
fn gcra_slot_beyond_max_wait_is_rejected_and_consumes_nothing() {
    let mut l = gcra();
    assert_eq!(l.admit_many(0, 3), 3);
    assert_waits(&l.wait(0, 1, S), 100_000);
    // The next slot is 200_000: too far for a 150_000 wait.
    assert_rejected(&l.wait(0, 1, 150_000), Some(200_000));
    // Nothing was reserved: the same slot is still free.
    assert_waits(&l.wait(0, 1, 200_000), 200_000);
    // Reject mode never jumps ahead of a reservation either.
    assert_rejected(&l.check(50_000, 1), Some(250_000));
    assert_rejected(&l.check(200_000, 1), Some(100_000));
    assert_admitted(&l.check(300_000, 1), 0);
}

/// Tries requests of cost 1 at every time in `times` until one is turned
/// away, and returns the times of those admitted.
fn admitted_times(l: &mut Limiter, times: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut out = Vec::new();
    for t in times {
        while l.check(t, 1).is_allowed() {
            out.push(t);
        }
    }
    out
}

#[test]
fn gcra_non_integer_interval_admits_exactly_burst_plus_rate_times_elapsed() {
    // 7 per 1000 µs: one unit every 142.857… µs, never rounded per request.
    let mut l = Limiter::of(
        Quota::new(7, Duration::from_micros(1_000)).burst(7),
        Algorithm::Gcra,
    );
    let times = admitted_times(&mut l, 0..100_000);
    // The burst at 0, then the n-th unit refills at 1000·n/7 µs and is
    // taken at the first whole µs from then.
    assert_eq!(&times[..8], &[0, 0, 0, 0, 0, 0, 0, 143]);
    for (i, &t) in times.iter().enumerate().skip(7) {
        let n = i as u64 - 6;
        assert_eq!(t, (1_000 * n).div_ceil(7), "unit {n}");
    }
    // 7 + ⌊7·99_999/1000⌋ in all: the fractions add up instead of being lost.
    assert_eq!(times.len(), 7 + 699);
    // Never more than burst + rate·elapsed between any two admissions.
    for i in 0..times.len() {
        for j in i..times.len() {
            let bound = 7 + 7 * (times[j] - times[i]) / 1_000;
            assert!(
                (j - i + 1) as u64 <= bound,
                "{} in [{}, {}]",
                j - i + 1,
                times[i],
                times[j]
            );
        }
    }
}

#[test]
fn gcra_one_third_per_second_keeps_the_fraction_over_ten_seconds() {
    let mut l = Limiter::of(Quota::per_second(3), Algorithm::Gcra);
    let times = admitted_times(&mut l, (0..10 * S).step_by(100));
    // 3 at once, then unit n at ⌈10^6·n/3⌉ µs, taken on the next 100 µs tick:
    // 3 + ⌊3·9_999_900/10^6⌋ = 32 over the ten seconds.
    assert_eq!(times.len(), 32);
    assert_eq!(&times[..5], &[0, 0, 0, 333_400, 666_700]);
    assert_eq!(times[31], 9_666_700);
}

// ----------------------------------------------- greedy token bucket ---

/// A script mixing both modes, costs and gaps, for comparing algorithms.
fn script() -> Vec<(u64, u64, Option<u64>)> {
    let mut out = Vec::new();
    let mut t = 0;
    for i in 0..200_u64 {
        t += (i * 7_919) % 61_000;
        let cost = i % 4;
        let wait = (i % 3 == 0).then_some((i * 3_571) % 400_000);
        out.push((t, cost, wait));
    }
    out
}

#[test]
fn greedy_token_bucket_admits_exactly_what_gcra_admits() {
    let quota = Quota::per_second(10).burst(3);
    let mut greedy = Limiter::of(quota, Algorithm::GreedyTokenBucket);
    assert_eq!(greedy.admit_many(0, 4), 3);
    assert_rejected(&greedy.check(0, 1), Some(100_000));
    assert_admitted(&greedy.check(100_000, 1), 0);

    let mut greedy = Limiter::of(quota, Algorithm::GreedyTokenBucket);
    let mut gcra = Limiter::of(quota, Algorithm::Gcra);
    for (t, cost, wait) in script() {
        let (a, b) = match wait {
            None => (greedy.check(t, cost), gcra.check(t, cost)),
            Some(max) => (greedy.wait(t, cost, max), gcra.wait(t, cost, max)),
        };
        assert_eq!(a, b, "at {t}, cost {cost}, wait {wait:?}");
    }
}

// ------------------------------------------------------- leaky bucket ---

fn leaky() -> Limiter {
    Limiter::of(Quota::per_second(10).burst(3), Algorithm::LeakyBucket)
}

#[test]
fn leaky_bucket_in_reject_mode_admits_exactly_what_gcra_admits() {
    let quota = Quota::per_second(10).burst(3);
    let mut leaky = Limiter::of(quota, Algorithm::LeakyBucket);
    let mut gcra = Limiter::of(quota, Algorithm::Gcra);
    for (t, cost, _) in script() {
        assert_eq!(leaky.check(t, cost), gcra.check(t, cost), "at {t}");
    }
}

#[test]
fn leaky_bucket_wait_mode_spaces_a_burst_one_interval_apart() {
    let mut l = leaky();
    assert_waits(&l.wait(0, 1, S), 0);
    assert_waits(&l.wait(0, 1, S), 100_000);
    assert_waits(&l.wait(0, 1, S), 200_000);
    // Three are in the bucket: the fourth is turned away although a 1 s wait
    // would reach its slot, and may come back once the first has left.
    let d = l.wait(0, 1, S);
    assert_rejected(&d, Some(100_000));
    assert!(!d.policies()[0].is_allowed());

    // Gcra in wait mode admits the burst at once instead.
    let mut g = gcra();
    for _ in 0..3 {
        assert_waits(&g.wait(0, 1, S), 0);
    }
    assert_waits(&g.wait(0, 1, S), 100_000);
}

#[test]
fn leaky_bucket_queue_full_retry_is_exactly_when_a_place_frees() {
    let mut l = leaky();
    for wait in [0, 100_000, 200_000] {
        assert_waits(&l.wait(0, 1, S), wait);
    }
    assert_rejected(&l.wait(99_999, 1, S), Some(1));
    // The first has left; the new one leaves after the other two.
    assert_waits(&l.wait(100_000, 1, S), 200_000);
    assert_rejected(&l.wait(100_000, 1, S), Some(100_000));
}

#[test]
fn leaky_bucket_wait_mode_smooths_requests_below_capacity_too() {
    let mut l = leaky();
    assert_waits(&l.wait(0, 1, S), 0);
    // The first is still draining: the second leaves one interval after it.
    assert_waits(&l.wait(40_000, 1, S), 60_000);
    // The bucket has drained by 200_000: no wait.
    assert_waits(&l.wait(250_000, 1, S), 0);
}

#[test]
fn leaky_bucket_non_integer_interval_queues_a_whole_burst() {
    // per_second(3): one every 333_333.3 µs; slots are whole µs, so each
    // request leaves 333_334 µs after the one before.
    let mut l = Limiter::of(Quota::per_second(3), Algorithm::LeakyBucket);
    assert_waits(&l.wait(0, 1, 2 * S), 0);
    assert_waits(&l.wait(0, 1, 2 * S), 333_334);
    assert_waits(&l.wait(0, 1, 2 * S), 666_668);
    assert_rejected(&l.wait(0, 1, 2 * S), Some(333_334));
    assert_rejected(&l.wait(333_333, 1, 2 * S), Some(1));
    assert_waits(&l.wait(333_334, 1, 2 * S), 666_668);
}

#[test]
fn leaky_bucket_weighted_requests_fill_the_queue_by_units() {
    let mut l = leaky();
    assert_waits(&l.wait(0, 2, S), 0);
    assert_waits(&l.wait(0, 1, S), 200_000);
    assert_rejected(&l.wait(0, 1, S), Some(100_000));
    assert_rejected(&l.wait(0, 4, S), None);
    assert_eq!(l.wait(0, 4, S).policies()[0].retry_after(), None);
}

#[test]
fn leaky_bucket_slot_beyond_max_wait_is_rejected_and_consumes_nothing() {
    let mut l = leaky();
    assert_waits(&l.wait(0, 1, S), 0);
    assert_rejected(&l.wait(0, 1, 99_999), Some(100_000));
    assert_waits(&l.wait(0, 1, 100_000), 100_000);
    assert_waits(&l.wait(0, 1, 200_000), 200_000);
}

// ------------------------------------------------------- token bucket ---
// per_second(2).burst(4): capacity 4, two tokens every whole second.

fn token_bucket() -> Limiter {
    Limiter::of(Quota::per_second(2).burst(4), Algorithm::TokenBucket)
}

#[test]
fn token_bucket_admits_capacity_then_waits_for_a_whole_refill_step() {
    let mut l = token_bucket();
    for remaining in [3, 2, 1, 0] {
        assert_admitted(&l.check(0, 1), remaining);
    }
    assert_rejected(&l.check(0, 1), Some(S));
    // No partial refill between steps.
    assert_rejected(&l.check(999_999, 1), Some(1));
    assert_admitted(&l.check(S, 1), 1);
    assert_admitted(&l.check(S, 1), 0);
    assert_rejected(&l.check(S, 1), Some(S));
}

#[test]
fn token_bucket_refill_clock_starts_at_the_first_draw() {
    let mut l = token_bucket();
    assert_eq!(l.admit_many(300_000, 4), 4);
    assert_rejected(&l.check(1_299_999, 1), Some(1));
    assert_eq!(l.admit_many(1_300_000, 3), 2);
    assert_rejected(&l.check(1_300_000, 1), Some(S));
}

#[test]
fn token_bucket_full_bucket_does_not_tick() {
    let mut l = token_bucket();
    assert_admitted(&l.check(0, 1), 3);
    // Full again at 1 s; nobody draws until 1.7 s, which restarts the clock.
    assert_eq!(l.admit_many(1_700_000, 4), 4);
    assert_rejected(&l.check(2 * S, 1), Some(700_000));
    assert_rejected(&l.check(2_699_999, 1), Some(1));
    assert_eq!(l.admit_many(2_700_000, 3), 2);
}

#[test]
fn token_bucket_refills_step_by_step_up_to_capacity() {
    let mut l = token_bucket();
    assert_eq!(l.admit_many(0, 4), 4);
    // Two steps make it full again.
    assert_eq!(l.admit_many(2 * S, 5), 4);
    // A long idle spell still fills only to capacity.
    assert_eq!(l.admit_many(60 * S, 9), 4);
}

#[test]
fn token_bucket_remaining_and_reset_after_count_whole_steps() {
    let mut l = token_bucket();
    let d = l.check(0, 1);
    assert_admitted(&d, 3);
    assert_eq!(d.policies()[0].reset_after(), us(S));
    let d = l.check(0, 2);
    assert_admitted(&d, 1);
    assert_eq!(d.policies()[0].reset_after(), us(2 * S));
    let d = l.check(S, 0);
    assert_admitted(&d, 3);
    assert_eq!(d.policies()[0].reset_after(), us(S));
    let d = l.check(2 * S, 0);
    assert_admitted(&d, 4);
    assert_eq!(d.policies()[0].reset_after(), Duration::ZERO);
}

#[test]
fn token_bucket_cost_above_capacity_is_rejected_without_retry() {
    let mut l = token_bucket();
    let d = l.check(0, 5);
    assert_rejected(&d, None);
    assert_eq!(d.remaining(), 4);
    // Above the refill but within the capacity: fits a full bucket.
    assert_admitted(&l.check(0, 3), 1);
    assert_rejected(&l.check(0, 3), Some(S));
    assert_admitted(&l.check(S, 3), 0);
}

#[test]
fn token_bucket_wait_mode_reserves_at_refill_instants() {
    let mut l = token_bucket();
    assert_eq!(l.admit_many(0, 4), 4);
    assert_waits(&l.wait(0, 1, 5 * S), S);
    assert_waits(&l.wait(0, 1, 5 * S), S);
    assert_waits(&l.wait(0, 1, 5 * S), 2 * S);
    assert_rejected(&l.wait(0, 1, 1_500_000), Some(2 * S));
    assert_waits(&l.wait(0, 1, 2 * S), 2 * S);
    // Queues behind the four reservations.
    assert_rejected(&l.check(500_000, 1), Some(2_500_000));
    assert_waits(&l.wait(500_000, 1, 5 * S), 2_500_000);
}

// ------------------------------------------------------- fixed window ---
// per_second(3): windows [0, 1 s), [1 s, 2 s), …

fn fixed_window() -> Limiter {
    Limiter::of(Quota::per_second(3), Algorithm::FixedWindow)
}

#[test]
fn fixed_window_admits_the_limit_per_aligned_window() {
    let mut l = fixed_window();
    for remaining in [2, 1, 0] {
        let d = l.check(200_000, 1);
        assert_admitted(&d, remaining);
        assert_eq!(d.policies()[0].reset_after(), us(800_000));
    }
    assert_rejected(&l.check(200_000, 1), Some(800_000));
    assert_rejected(&l.check(999_999, 1), Some(1));
    assert_eq!(l.admit_many(S, 4), 3);
    assert_rejected(&l.check(S, 1), Some(S));
}

#[test]
fn fixed_window_admits_twice_the_limit_across_a_window_edge() {
    let mut l = fixed_window();
    assert_eq!(l.admit_many(999_999, 4), 3);
    assert_eq!(l.admit_many(S, 4), 3);
}

#[test]
fn fixed_window_windows_align_to_multiples_of_the_period() {
    let mut l = fixed_window();
    let d = l.check(1_500_000, 1);
    assert_admitted(&d, 2);
    assert_eq!(d.policies()[0].reset_after(), us(500_000));
    assert_eq!(l.admit_many(1_500_000, 3), 2);
    assert_rejected(&l.check(1_500_000, 1), Some(500_000));
}

#[test]
fn fixed_window_cost_above_limit_is_rejected_without_retry() {
    let mut l = fixed_window();
    let d = l.check(0, 4);
    assert_rejected(&d, None);
    assert_eq!(d.remaining(), 3);
    assert_eq!(d.policies()[0].reset_after(), Duration::ZERO);
    assert_admitted(&l.check(0, 3), 0);
}

#[test]
fn fixed_window_wait_mode_reserves_in_the_next_window() {
    let mut l = fixed_window();
    assert_eq!(l.admit_many(200_000, 3), 3);
    for _ in 0..3 {
        let d = l.wait(200_000, 1, 2 * S);
        assert_waits(&d, 800_000);
        assert_eq!(d.remaining(), 0);
    }
    assert_rejected(&l.wait(200_000, 1, S), Some(1_800_000));
    assert_waits(&l.wait(200_000, 1, 2 * S), 1_800_000);
    // Reject mode sees the reservations: the first free place is in window 2.
    let d = l.check(999_999, 1);
    assert_rejected(&d, Some(1_000_001));
    assert_eq!(d.remaining(), 0);
}

// ------------------------------------------------- sliding window log ---

fn sliding_log() -> Limiter {
    Limiter::of(Quota::per_second(3), Algorithm::SlidingWindowLog)
}

#[test]
fn sliding_log_admits_at_most_the_limit_in_any_period() {
    let mut l = sliding_log();
    assert_admitted(&l.check(0, 1), 2);
    assert_admitted(&l.check(300_000, 1), 1);
    assert_admitted(&l.check(600_000, 1), 0);
    // The entry at 0 counts until 1 s.
    assert_rejected(&l.check(700_000, 1), Some(300_000));
    assert_rejected(&l.check(999_999, 1), Some(1));
    assert_admitted(&l.check(S, 1), 0);
    assert_rejected(&l.check(S, 1), Some(300_000));
}

#[test]
fn sliding_log_has_no_window_edge_burst() {
    let mut l = sliding_log();
    assert_eq!(l.admit_many(999_999, 4), 3);
    assert_rejected(&l.check(S, 1), Some(999_999));
    assert_rejected(&l.check(1_999_998, 1), Some(1));
    assert_eq!(l.admit_many(1_999_999, 4), 3);
}

#[test]
fn sliding_log_frees_costs_oldest_first() {
    let mut l = sliding_log();
    assert_admitted(&l.check(0, 2), 1);
    assert_admitted(&l.check(500_000, 1), 0);
    // Needs 2: only the entry at 0 frees enough.
    assert_rejected(&l.check(600_000, 2), Some(400_000));
    assert_admitted(&l.check(S, 2), 0);
    assert_rejected(&l.check(S, 1), Some(500_000));
}

#[test]
fn sliding_log_remaining_and_reset_after_follow_the_log() {
    let mut l = sliding_log();
    let d = l.check(0, 2);
    assert_admitted(&d, 1);
    assert_eq!(d.policies()[0].reset_after(), us(S));
    let d = l.check(400_000, 1);
    assert_admitted(&d, 0);
    assert_eq!(d.policies()[0].reset_after(), us(S));
    let d = l.check(S, 0);
    assert_admitted(&d, 2);
    assert_eq!(d.policies()[0].reset_after(), us(400_000));
}

#[test]
fn sliding_log_cost_above_limit_is_rejected_without_retry() {
    let mut l = sliding_log();
    assert_rejected(&l.check(0, 4), None);
    assert_admitted(&l.check(0, 3), 0);
    assert_rejected(&l.check(0, 4), None);
}

#[test]
fn sliding_log_wait_mode_reserves_when_the_oldest_entry_expires() {
    let mut l = sliding_log();
    assert_eq!(l.admit_many(0, 3), 3);
    for _ in 0..3 {
        assert_waits(&l.wait(0, 1, 3 * S), S);
    }
    assert_rejected(&l.wait(0, 1, 1_500_000), Some(2 * S));
    assert_waits(&l.wait(0, 1, 2 * S), 2 * S);
    assert_rejected(&l.check(1_500_000, 1), Some(500_000));
    assert_waits(&l.wait(1_500_000, 1, S), 500_000);
}

// --------------------------------------------- sliding window counter ---
// 10 per 1000 µs: the weight has one step per µs.

fn sliding_counter() -> Limiter {
    Limiter::of(
        Quota::new(10, Duration::from_micros(1_000)),
        Algorithm::SlidingWindowCounter,
    )
}

#[test]
fn sliding_counter_weights_the_previous_window_by_its_overlap() {
    let mut l = sliding_counter();
    assert_eq!(l.admit_many(500, 11), 10);
    // At 1000 the previous window counts 10 in full; one more fits once
    // 10·(1 - e/1000) ≤ 9, at e = 100.
    assert_rejected(&l.check(1_000, 1), Some(100));
    assert_rejected(&l.check(1_099, 1), Some(1));
    assert_admitted(&l.check(1_100, 1), 0);
    // 10·(1 - e/1000) + 1 + 1 ≤ 10 from e = 200.
    assert_rejected(&l.check(1_100, 1), Some(100));
}

#[test]
fn sliding_counter_remaining_rounds_the_weighted_count_up() {
    let mut l = sliding_counter();
    assert_eq!(l.admit_many(500, 10), 10);
    assert_admitted(&l.check(1_100, 1), 0);
    // 10·0.85 = 8.5 counts as 9.
    assert_admitted(&l.check(1_150, 0), 0);
    assert_rejected(&l.check(1_150, 1), Some(50));
    assert_admitted(&l.check(1_199, 0), 0);
    let d = l.check(1_200, 0);
    assert_admitted(&d, 1);
    // Back to full when window 1 (holding the request at 1100) has passed.
    assert_eq!(d.policies()[0].reset_after(), us(1_800));
}

#[test]
fn sliding_counter_admits_the_limit_per_window_at_most() {
    let mut l = sliding_counter();
    // Nothing before: the whole limit fits, and no more within the window.
    assert_eq!(l.admit_many(1_000, 11), 10);
    assert_rejected(&l.check(1_999, 1), Some(101));
    assert_admitted(&l.check(2_100, 1), 0);
}

#[test]
fn sliding_counter_admits_less_than_a_fixed_window_across_an_edge() {
    let mut l = sliding_counter();
    assert_eq!(l.admit_many(999, 10), 10);
    assert_eq!(l.admit_many(1_000, 10), 0);
    assert_rejected(&l.check(1_000, 1), Some(100));

    let mut fixed = Limiter::of(
        Quota::new(10, Duration::from_micros(1_000)),
        Algorithm::FixedWindow,
    );
    assert_eq!(fixed.admit_many(999, 10), 10);
    assert_eq!(fixed.admit_many(1_000, 10), 10);
}

#[test]
fn sliding_counter_quantizes_long_periods_toward_counting_more() {
    // A 3 s period weighs in steps of ⌈3·10^6 / 2^20⌉ = 3 µs. One more after
    // 7 needs 7·(1 - e/P) ≤ 6: exactly e ≥ 428_571.4, so 428_572; in whole
    // steps k ≥ 10^6 - ⌊6·10^6/7⌋ = 142_858, e = 428_574.
    let mut l = Limiter::of(
        Quota::new(7, Duration::from_secs(3)),
        Algorithm::SlidingWindowCounter,
    );
    assert_eq!(l.admit_many(0, 8), 7);
    assert_rejected(&l.check(3 * S, 1), Some(428_574));
    assert_rejected(&l.check(3 * S + 428_572, 1), Some(2));
    assert_rejected(&l.check(3 * S + 428_573, 1), Some(1));
    assert_admitted(&l.check(3 * S + 428_574, 1), 0);
}

#[test]
fn sliding_counter_cost_above_limit_is_rejected_without_retry() {
    let mut l = sliding_counter();
    let d = l.check(0, 11);
    assert_rejected(&d, None);
    assert_eq!(d.remaining(), 10);
    assert_admitted(&l.check(0, 10), 0);
}

#[test]
fn sliding_counter_wait_mode_reserves_the_first_fitting_microsecond() {
    let mut l = sliding_counter();
    assert_eq!(l.admit_many(500, 10), 10);
    assert_waits(&l.wait(500, 1, 1_000), 600);
    assert_waits(&l.wait(500, 1, 1_000), 700);
    assert_rejected(&l.wait(500, 1, 750), Some(800));
    assert_waits(&l.wait(500, 1, 800), 800);
    // 10·(1 - e/1000) + 3 + 1 ≤ 10 from e = 400, behind the reservations.
    assert_rejected(&l.check(600, 1), Some(800));
}

// ------------------------------------------------------ two policies ---

fn burst_and_window(window: Quota) -> Limiter {
    Limiter::new(
        PolicySet::new(vec![
            Policy::new("burst", Quota::per_second(10).burst(3)),
            Policy::new("window", window).with_algorithm(Algorithm::FixedWindow),
        ])
        .unwrap(),
    )
}

#[test]
fn two_policies_admit_only_when_both_admit() {
    let mut l = burst_and_window(Quota::new(5, Duration::from_secs(10)));
    for (burst_left, window_left) in [(2, 4), (1, 3), (0, 2)] {
        let d = l.check(0, 1);
        assert_admitted(&d, burst_left);
        let [burst, window] = d.policies() else {
            panic!("two policies: {d:?}")
        };
        assert_eq!((burst.name(), burst.limit()), ("burst", 10));
        assert_eq!((window.name(), window.limit()), ("window", 5));
        assert_eq!(burst.period(), Duration::from_secs(1));
        assert_eq!(window.period(), Duration::from_secs(10));
        assert_eq!(burst.remaining(), burst_left);
        assert_eq!(window.remaining(), window_left);
    }
    // The burst policy turns it away; the window would admit it.
    let d = l.check(0, 1);
    assert_rejected(&d, Some(100_000));
    let [burst, window] = d.policies() else {
        panic!()
    };
    assert!(!burst.is_allowed());
    assert_eq!(burst.retry_after(), Some(us(100_000)));
    assert!(window.is_allowed());
    assert_eq!(window.retry_after(), Some(Duration::ZERO));
    assert_eq!(window.remaining(), 2, "the window was not charged");

    assert_admitted(&l.check(100_000, 1), 0);
    let d = l.check(200_000, 1);
    assert_admitted(&d, 0);
    assert_eq!(d.policies()[1].remaining(), 0);

    // Now the window turns it away; the burst policy would admit it.
    let d = l.check(300_000, 1);
    assert_rejected(&d, Some(9_700_000));
    let [burst, window] = d.policies() else {
        panic!()
    };
    assert!(burst.is_allowed());
    assert_eq!(burst.remaining(), 1);
    assert_eq!(burst.reset_after(), us(200_000));
    assert!(!window.is_allowed());
    assert_eq!(window.reset_after(), us(9_700_000));
    // The burst policy was not charged either.
    assert_eq!(l.check(300_000, 0).policies()[0].remaining(), 1);
}

#[test]
fn two_policies_wait_for_the_later_slot_and_reserve_in_both() {
    let mut l = burst_and_window(Quota::new(4, Duration::from_secs(1)));
    assert_eq!(l.admit_many(0, 3), 3);
    // burst: 100_000; window: now (4th of 4).
    assert_waits(&l.wait(0, 1, 2 * S), 100_000);
    // burst: 200_000; window: full until 1 s.
    assert_rejected(&l.wait(0, 1, 500_000), Some(S));
    assert_waits(&l.wait(0, 1, 2 * S), S);
    // Both are charged at 1 s.
    assert_waits(&l.wait(0, 1, 2 * S), S);
    assert_waits(&l.wait(0, 1, 2 * S), S);
    assert_waits(&l.wait(0, 1, 2 * S), 1_100_000);
}

#[test]
fn two_policies_cost_that_never_fits_one_has_no_retry() {
    let mut l = burst_and_window(Quota::new(5, Duration::from_secs(10)));
    let d = l.check(0, 4);
    assert_rejected(&d, None);
    let [burst, window] = d.policies() else {
        panic!()
    };
    assert_eq!(burst.retry_after(), None);
    assert!(window.is_allowed());
    assert_eq!(window.retry_after(), Some(Duration::ZERO));
    assert_eq!(window.remaining(), 5);
    assert_admitted(&l.check(0, 3), 0);
    assert_eq!(l.check(0, 0).policies()[1].remaining(), 2);
}

#[test]
fn full_at_is_when_every_policy_has_refilled() {
    let mut l = burst_and_window(Quota::new(5, Duration::from_secs(10)));
    assert_eq!(full_at(&l.set, &l.states), 0);
    l.check(2 * S, 4);
    assert_eq!(full_at(&l.set, &l.states), 0, "a rejection stores nothing");
    l.check(2 * S, 1);
    // burst: 2.1 s; window [0, 10 s): 10 s.
    assert_eq!(full_at(&l.set, &l.states), 10 * S);

    let mut g = gcra();
    g.check(S, 2);
    assert_eq!(full_at(&g.set, &g.states), S + 200_000);
}

// ------------------------------------------------------ configuration ---

fn config_error(policies: Vec<Policy>) -> tower_ratelimit::ConfigError {
    PolicySet::new(policies).expect_err("should be rejected")
}

fn policy(quota: Quota, algorithm: Algorithm) -> Policy {
    Policy::new("p", quota).with_algorithm(algorithm)
}

#[test]
fn config_zero_limit_names_the_limit() {
    let err = config_error(vec![policy(Quota::per_second(0), Algorithm::Gcra)]);
    assert_eq!(err.field(), "limit");
    assert_eq!(err.policy(), Some("p"));
    assert_eq!(err.to_string(), "policy \"p\": limit must be at least 1");
}

#[test]
fn config_zero_period_names_the_period() {
    for period in [Duration::ZERO, Duration::from_nanos(999)] {
        let err = config_error(vec![policy(Quota::new(1, period), Algorithm::Gcra)]);
        assert_eq!(err.field(), "period", "{period:?}");
        assert_eq!(err.policy(), Some("p"));
    }
}

#[test]
fn config_zero_burst_names_the_burst() {
    for algorithm in [
        Algorithm::Gcra,
        Algorithm::TokenBucket,
        Algorithm::GreedyTokenBucket,
        Algorithm::LeakyBucket,
    ] {
        let err = config_error(vec![policy(Quota::per_second(1).burst(0), algorithm)]);
        assert_eq!(err.field(), "burst", "{algorithm:?}");
    }
}

#[test]
fn config_burst_on_a_window_algorithm_names_the_burst() {
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindowLog,
        Algorithm::SlidingWindowCounter,
    ] {
        let err = config_error(vec![policy(Quota::per_second(5).burst(5), algorithm)]);
        assert_eq!(err.field(), "burst", "{algorithm:?}");
        assert!(err.to_string().contains(algorithm.as_str()), "{err}");
        // Without the burst the same quota is fine.
        PolicySet::new(vec![policy(Quota::per_second(5), algorithm)]).unwrap();
    }
}

#[test]
fn config_duplicate_names_name_the_policies() {
    let err = config_error(vec![
        Policy::new("a", Quota::per_second(1)),
        Policy::new("b", Quota::per_second(1)),
        Policy::new("a", Quota::per_minute(5)),
    ]);
    assert_eq!(err.field(), "policies");
    assert_eq!(err.policy(), None);
    assert!(err.to_string().contains("\"a\""), "{err}");
}

#[test]
fn config_empty_set_names_the_policies() {
    assert_eq!(config_error(vec![]).field(), "policies");
}

#[test]
fn config_bad_name_names_the_name() {
    let long = "x".repeat(65);
    for name in ["", "has space", "colon:", "brace{", "ü", long.as_str()] {
        let err = config_error(vec![Policy::new(name, Quota::per_second(1))]);
        assert_eq!(err.field(), "name", "{name:?}");
    }
    let ok = "a-B_9.".repeat(10) + "abcd";
    assert_eq!(ok.len(), 64);
    PolicySet::new(vec![Policy::new(ok, Quota::per_second(1))]).unwrap();
}

#[test]
fn config_overflow_names_the_field_that_is_too_large() {
    let cases = [
        (
            Quota::new(1, Duration::from_secs(10_000_000_000)),
            Algorithm::Gcra,
            "period",
        ),
        (
            Quota::new(1, Duration::MAX),
            Algorithm::FixedWindow,
            "period",
        ),
        (Quota::per_second(1 << 53), Algorithm::Gcra, "limit"),
        (
            Quota::per_second(1 << 53),
            Algorithm::SlidingWindowLog,
            "limit",
        ),
        // One unit is 10^6 ticks (gcd(10^6, 3) = 1): 10^10 units overflow 2^53.
        (
            Quota::per_second(3).burst(10_000_000_000),
            Algorithm::TokenBucket,
            "burst",
        ),
        (
            Quota::per_second((1 << 32) + 1),
            Algorithm::SlidingWindowCounter,
            "limit",
        ),
    ];
    for (quota, algorithm, field) in cases {
        let err = config_error(vec![policy(quota, algorithm)]);
        assert_eq!(err.field(), field, "{quota:?} {algorithm:?}: {err}");
        assert_eq!(err.policy(), Some("p"));
    }
    // The largest numbers that still count exactly are accepted.
    for (quota, algorithm) in [
        (Quota::per_second(1 << 32), Algorithm::SlidingWindowCounter),
        (
            Quota::new((1 << 53) - 1, Duration::from_micros(1)),
            Algorithm::FixedWindow,
        ),
        (
            Quota::per_second(3).burst(9_000_000_000),
            Algorithm::TokenBucket,
        ),
    ] {
        PolicySet::new(vec![policy(quota, algorithm)]).unwrap();
    }
}

#[test]
fn config_burst_too_large_to_count_names_the_burst() {
    let err = config_error(vec![policy(
        Quota::per_second(10).burst(1 << 53),
        Algorithm::Gcra,
    )]);
    assert_eq!(err.field(), "burst", "{err}");
}

#[test]
fn a_period_between_whole_microseconds_rounds_up_never_raising_the_rate() {
    // One per 1.5 µs counts as one per 2 µs.
    let set = PolicySet::new(vec![policy(
        Quota::new(1, Duration::from_nanos(1_500)),
        Algorithm::Gcra,
    )])
    .unwrap();
    let mut states = vec![None];
    assert!(decide(&set, &mut states, 0, 1, None).is_allowed());
    let second = decide(&set, &mut states, 1, 1, None);
    assert!(!second.is_allowed());
    assert_eq!(second.retry_after(), Some(Duration::from_micros(1)));
    assert!(decide(&set, &mut states, 2, 1, None).is_allowed());
}
