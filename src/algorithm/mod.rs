//! The algorithms as pure functions of state and time.
//!
//! [`decide`] is the whole decision for one request against a
//! [`PolicySet`]: it finds the earliest time every policy admits the
//! request, and commits it to all of them or to none. The in-memory store
//! calls it under a lock; a custom store can call it the same way. The Redis
//! scripts compute exactly the same thing.
//!
//! Time is integer microseconds. Every algorithm keeps requests in order: a
//! request is never admitted ahead of a reservation made earlier on the same
//! state, which is what lets wait mode reserve a slot and still never exceed
//! a limit.
//!
//! ```
//! use std::time::Duration;
//! use tower_ratelimit::algorithm::{decide, State};
//! use tower_ratelimit::{Policy, PolicySet, Quota};
//!
//! let set = PolicySet::new(vec![Policy::new("burst", Quota::per_second(2))]).unwrap();
//! let mut states: Vec<Option<State>> = vec![None];
//! assert!(decide(&set, &mut states, 0, 1, None).is_allowed());
//! assert!(decide(&set, &mut states, 0, 1, None).is_allowed());
//! let third = decide(&set, &mut states, 0, 1, None);
//! assert!(!third.is_allowed());
//! assert_eq!(third.retry_after(), Some(Duration::from_millis(500)));
//! ```

mod concurrency;
mod fixed_window;
mod level;
mod sliding_counter;
mod sliding_log;
mod token_bucket;

use std::time::Duration;

use crate::decision::{BUSY, Decision, NEVER, Policies, PolicyDecision};
use crate::quota::{Algorithm, Params, PolicySet};

pub(crate) use concurrency::Concurrency;
pub(crate) use fixed_window::FixedWindow;
pub(crate) use level::Level;
pub(crate) use sliding_counter::SlidingCounter;
#[cfg(feature = "redis")]
pub(crate) use sliding_counter::steps as sliding_counter_steps;
pub(crate) use sliding_log::SlidingLog;
pub(crate) use token_bucket::TokenBucket;

/// The earliest time a policy admits a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// At this time (now or later).
    At(u64),
    /// Not now and no waiting: a shaping leaky bucket is full. A retry at
    /// `retry_at` finds room.
    QueueFull { retry_at: u64 },
    /// Not now, at no known time: a concurrency policy is full until a
    /// holder releases.
    Busy,
    /// Never: the cost exceeds what the policy can ever hold.
    Never,
}

/// One policy's state for one key. Opaque; made and changed by [`decide`].
///
/// ```
/// use tower_ratelimit::algorithm::{State, decide};
/// use tower_ratelimit::{Policy, PolicySet, Quota};
///
/// let set = PolicySet::new(vec![Policy::new("p", Quota::per_second(1))])?;
/// let mut states: Vec<Option<State>> = vec![None]; // full
/// assert!(decide(&set, &mut states, 0, 1, None).is_allowed());
/// assert!(states[0].is_some()); // now it remembers the spent unit
/// let kept = states.clone();
/// assert!(!decide(&set, &mut states, 0, 1, None).is_allowed());
/// assert_eq!(states, kept); // a rejection changes no state
/// # Ok::<(), tower_ratelimit::BoxError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State(pub(crate) Repr);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Repr {
    Level(Level),
    TokenBucket(TokenBucket),
    FixedWindow(FixedWindow),
    SlidingLog(SlidingLog),
    SlidingCounter(SlidingCounter),
    Concurrency(Concurrency),
}

impl State {
    /// A full state (nothing spent) for `p` at `now`.
    pub(crate) fn fresh(p: &Params, now: u64) -> Self {
        State(match p.algorithm {
            Algorithm::Gcra | Algorithm::GreedyTokenBucket | Algorithm::LeakyBucket => {
                Repr::Level(Level::fresh(now))
            }
            Algorithm::TokenBucket => Repr::TokenBucket(TokenBucket::fresh(p, now)),
            Algorithm::FixedWindow => Repr::FixedWindow(FixedWindow::fresh(p, now)),
            Algorithm::SlidingWindowLog => Repr::SlidingLog(SlidingLog::default()),
            Algorithm::SlidingWindowCounter => Repr::SlidingCounter(SlidingCounter::fresh(p, now)),
            Algorithm::Concurrency => Repr::Concurrency(Concurrency::default()),
        })
    }

    fn earliest(&self, p: &Params, now: u64, cost: u64, shaping: bool) -> Slot {
        match &self.0 {
            Repr::Level(s) => s.earliest(
                p,
                now,
                cost,
                shaping && p.algorithm == Algorithm::LeakyBucket,
            ),
            Repr::TokenBucket(s) => s.earliest(p, now, cost),
            Repr::FixedWindow(s) => s.earliest(p, now, cost),
            Repr::SlidingLog(s) => s.earliest(p, now, cost),
            Repr::SlidingCounter(s) => s.earliest(p, now, cost),
            Repr::Concurrency(s) => s.earliest(p, now, cost),
        }
    }

    fn commit(&mut self, p: &Params, t: u64, cost: u64) {
        match &mut self.0 {
            Repr::Level(s) => s.commit(p, t, cost),
            Repr::TokenBucket(s) => s.commit(p, t, cost),
            Repr::FixedWindow(s) => s.commit(p, t, cost),
            Repr::SlidingLog(s) => s.commit(p, t, cost),
            Repr::SlidingCounter(s) => s.commit(p, t, cost),
            Repr::Concurrency(s) => s.commit(cost),
        }
    }

    fn remaining(&self, p: &Params, now: u64) -> u64 {
        match &self.0 {
            Repr::Level(s) => s.remaining(p, now),
            Repr::TokenBucket(s) => s.remaining(p, now),
            Repr::FixedWindow(s) => s.remaining(p, now),
            Repr::SlidingLog(s) => s.remaining(p, now),
            Repr::SlidingCounter(s) => s.remaining(p, now),
            Repr::Concurrency(s) => s.remaining(p),
        }
    }

    /// Whether this state holds what deciding `cost` at `now` needs (and
    /// committing at `commit_at`): always, but for a partial sliding log
    /// read from Redis.
    fn covers(&self, p: &Params, now: u64, cost: u64, commit_at: Option<u64>) -> bool {
        match &self.0 {
            Repr::SlidingLog(s) => s.covers(p, now, cost, commit_at),
            _ => true,
        }
    }

    /// When the state is back to full: from then on it can be forgotten.
    pub(crate) fn full_at(&self, p: &Params) -> u64 {
        match &self.0 {
            Repr::Level(s) => s.full_at(p),
            Repr::TokenBucket(s) => s.full_at(p),
            Repr::FixedWindow(s) => s.full_at(p),
            Repr::SlidingLog(s) => s.full_at(p),
            Repr::SlidingCounter(s) => s.full_at(p),
            Repr::Concurrency(s) => s.full_at(),
        }
    }
}

/// Decides one request of `cost` units at `now` (µs) against every policy
/// in `set`, all or nothing.
///
/// `states[i]` is policy `i`'s state for the request's key; `None` means
/// full (never used, or forgotten after it refilled). On admission every
/// state is updated; on rejection none is. `max_wait` is `None` to decide
/// now (reject mode) or the longest a request may wait for a reserved slot
/// (wait mode).
///
/// ```
/// use tower_ratelimit::algorithm::decide;
/// use tower_ratelimit::{Policy, PolicySet, Quota};
///
/// let set = PolicySet::new(vec![
///     Policy::new("second", Quota::per_second(2)),
///     Policy::new("minute", Quota::per_minute(3)),
/// ])?;
/// let mut states = vec![None, None];
/// assert!(decide(&set, &mut states, 0, 2, None).is_allowed());
/// let refused = decide(&set, &mut states, 0, 1, None);
/// assert!(!refused.is_allowed()); // "second" is empty
/// assert!(refused.policies()[1].is_allowed()); // "minute" had room, and is not charged
/// assert!(decide(&set, &mut states, 1_000_000, 1, None).is_allowed()); // µs
/// assert!(!decide(&set, &mut states, 2_000_000, 1, None).is_allowed()); // 3 this minute
/// # Ok::<(), tower_ratelimit::BoxError>(())
/// ```
///
/// # Panics
///
/// If `states.len() != set.len()`.
pub fn decide(
    set: &PolicySet,
    states: &mut [Option<State>],
    now: u64,
    cost: u64,
    max_wait: Option<Duration>,
) -> Decision {
    let mut slots = Scratch::new(set.len(), Slot::Never);
    fill_slots(set, states, now, cost, max_wait, slots.as_mut());
    if let (true, Some(t)) = combine(slots.as_mut(), now, max_wait) {
        if cost > 0 {
            commit(set, states, now, t, cost);
        }
    }
    finish(set, states, now, max_wait, slots.as_mut())
}

fn commit(set: &PolicySet, states: &mut [Option<State>], now: u64, t: u64, cost: u64) {
    for (p, state) in set.params().iter().zip(states.iter_mut()) {
        state
            .get_or_insert_with(|| State::fresh(p, now))
            .commit(p, t, cost);
    }
}

#[cfg(feature = "redis")]
/// [`decide`] on states a store read that may be partial (a sliding log
/// read from Redis holds only what its script needed): `None` when they do
/// not hold what the decision needs.
pub(crate) fn decide_view(
    set: &PolicySet,
    states: &mut [Option<State>],
    now: u64,
    cost: u64,
    max_wait: Option<Duration>,
) -> Option<Decision> {
    if !covered(set, states, now, cost, None) {
        return None;
    }
    let mut slots = Scratch::new(set.len(), Slot::Never);
    fill_slots(set, states, now, cost, max_wait, slots.as_mut());
    if let (true, Some(t)) = combine(slots.as_mut(), now, max_wait) {
        if cost > 0 {
            if !covered(set, states, now, cost, Some(t)) {
                return None;
            }
            commit(set, states, now, t, cost);
        }
    }
    Some(finish(set, states, now, max_wait, slots.as_mut()))
}

#[cfg(feature = "redis")]
/// [`check`] on states that may be partial, as [`decide_view`].
pub(crate) fn check_view(
    set: &PolicySet,
    states: &[Option<State>],
    now: u64,
    cost: u64,
    max_wait: Option<Duration>,
) -> Option<Decision> {
    covered(set, states, now, cost, None).then(|| check(set, states, now, cost, max_wait))
}

#[cfg(feature = "redis")]
fn covered(
    set: &PolicySet,
    states: &[Option<State>],
    now: u64,
    cost: u64,
    commit_at: Option<u64>,
) -> bool {
    set.params()
        .iter()
        .zip(states)
        .all(|(p, s)| s.as_ref().is_none_or(|s| s.covers(p, now, cost, commit_at)))
}

#[cfg(feature = "memory")]
/// Drops what has expired from the sliding logs in `states`, as of the
/// earliest time a request could now be admitted: a store that keeps
/// states calls this when it reads them, so no decision walks what expired
/// long ago. Changes no decision (time never runs backwards for a key).
pub(crate) fn trim(set: &PolicySet, states: &mut [Option<State>], now: u64) {
    for (p, state) in set.params().iter().zip(states.iter_mut()) {
        if let Some(State(Repr::SlidingLog(log))) = state {
            log.trim(p, now.max(log.last.0));
        }
    }
}

/// [`decide`] for a set of one GCRA-family policy in reject mode, on its
/// state as one word ([`Level::tat`]; `0` for none) when the bucket was
/// last drawn from no later than `now`: the same decision, with no
/// division by a number unknown at build time, and the state after it when
/// the request was charged.
///
/// With `last ≤ now` the level at `now` is `tat - now·drain` (or zero), and
/// the state after a charge is that level plus the cost, last drawn at
/// `now`. `reset_after` is `⌈level / drain⌉` either way: the time the
/// level takes to drain.
#[cfg(feature = "memory")]
#[inline(always)]
pub(crate) fn decide_tat(p: &Params, tat: u64, now: u64, cost: u64) -> (Decision, Option<Level>) {
    let level = tat.saturating_sub(now.saturating_mul(p.drain));
    let (allowed, retry, after) = if cost > p.burst {
        (false, NEVER, level)
    } else {
        let need = cost * p.unit;
        match (level + need).checked_sub(p.capacity()) {
            None | Some(0) => (true, 0, level + need),
            Some(excess) => (false, p.drain_div.div_ceil(excess), level),
        }
    };
    let remaining = p.unit_div.div(p.capacity().saturating_sub(after));
    // One unit more than is left fits once the level drains to make room.
    let refill_after = if remaining >= p.burst {
        NEVER
    } else if !allowed && remaining + 1 == cost {
        // A unit more than is left is the request's cost: it fits when
        // the request would, which `retry` says (the level is unchanged).
        retry
    } else {
        p.drain_div
            .div_ceil(after + (remaining + 1) * p.unit - p.capacity())
    };
    let policy = PolicyDecision {
        policy: p.info,
        allowed: u64::from(allowed),
        remaining,
        retry_after: retry,
        reset_after: p.drain_div.div_ceil(after),
        refill_after,
    };
    let charged = (allowed && cost > 0).then_some(Level {
        level: after,
        last: now,
    });
    (
        Decision::new(allowed, now, retry, Policies::One(policy)),
        charged,
    )
}

/// What [`decide`] would answer, changing nothing: the decision for a
/// request that looks before it spends. `remaining` is what is left now.
///
/// ```
/// use tower_ratelimit::algorithm::{check, decide};
/// use tower_ratelimit::{Policy, PolicySet, Quota};
///
/// let set = PolicySet::new(vec![Policy::new("p", Quota::per_second(1))]).unwrap();
/// let mut states = vec![None];
/// assert!(check(&set, &states, 0, 1, None).is_allowed());
/// assert!(check(&set, &states, 0, 1, None).is_allowed()); // nothing spent
/// assert!(decide(&set, &mut states, 0, 1, None).is_allowed());
/// assert!(!check(&set, &states, 0, 1, None).is_allowed());
/// ```
///
/// # Panics
///
/// If `states.len() != set.len()`.
pub fn check(
    set: &PolicySet,
    states: &[Option<State>],
    now: u64,
    cost: u64,
    max_wait: Option<Duration>,
) -> Decision {
    let mut slots = Scratch::new(set.len(), Slot::Never);
    fill_slots(set, states, now, cost, max_wait, slots.as_mut());
    finish(set, states, now, max_wait, slots.as_mut())
}

/// Gives back `cost` units held by the concurrency policies of `set`;
/// the other policies' states are left as they are.
///
/// ```
/// use tower_ratelimit::algorithm::{decide, release};
/// use tower_ratelimit::{Policy, PolicySet};
///
/// let set = PolicySet::new(vec![Policy::concurrency("in-flight", 1)]).unwrap();
/// let mut states = vec![None];
/// assert!(decide(&set, &mut states, 0, 1, None).is_allowed());
/// assert!(!decide(&set, &mut states, 0, 1, None).is_allowed());
/// release(&set, &mut states, 1);
/// assert!(decide(&set, &mut states, 0, 1, None).is_allowed());
/// ```
///
/// # Panics
///
/// If `states.len() != set.len()`.
pub fn release(set: &PolicySet, states: &mut [Option<State>], cost: u64) {
    assert_eq!(
        states.len(),
        set.len(),
        "one state slot per policy in the set"
    );
    for state in states.iter_mut().flatten() {
        if let Repr::Concurrency(c) = &mut state.0 {
            c.release(cost);
        }
    }
}

/// Every policy's earliest slot for the request.
fn fill_slots(
    set: &PolicySet,
    states: &[Option<State>],
    now: u64,
    cost: u64,
    max_wait: Option<Duration>,
    slots: &mut [Slot],
) {
    let params = set.params();
    assert_eq!(
        states.len(),
        params.len(),
        "one state slot per policy in the set"
    );
    let shaping = max_wait.is_some();
    for ((p, state), slot) in params.iter().zip(states).zip(slots.iter_mut()) {
        *slot = if cost == 0 {
            Slot::At(now)
        } else {
            match state {
                Some(s) => s.earliest(p, now, cost, shaping),
                None => State::fresh(p, now).earliest(p, now, cost, shaping),
            }
        };
    }
}

/// The decision, from the slots and the states as they stand.
fn finish(
    set: &PolicySet,
    states: &[Option<State>],
    now: u64,
    max_wait: Option<Duration>,
    slots: &[Slot],
) -> Decision {
    let mut after = Scratch::new(set.len(), (0, 0, NEVER));
    for ((p, state), out) in set.params().iter().zip(states).zip(after.as_mut()) {
        *out = match state {
            Some(s) => {
                let remaining = s.remaining(p, now);
                (remaining, s.full_at(p), refill_at(s, p, now, remaining))
            }
            None => (p.burst, now, NEVER),
        };
    }
    assemble(set, now, max_wait, slots, after.as_mut())
}

/// When one unit more than `remaining` fits `s` (in reject mode), or
/// [`NEVER`]: every unit is there, or they are units in flight.
fn refill_at(s: &State, p: &Params, now: u64, remaining: u64) -> u64 {
    if p.algorithm == Algorithm::Concurrency || remaining >= p.burst {
        return NEVER;
    }
    if let Repr::SlidingLog(log) = &s.0 {
        if !s.covers(p, now, remaining + 1, None) {
            // A partial view read from Redis may still tell from its header.
            return log.refill_at(p, now, remaining).unwrap_or(NEVER);
        }
    }
    match s.earliest(p, now, remaining + 1, false) {
        Slot::At(t) => t,
        _ => NEVER,
    }
}

/// Per-request scratch: on the stack for the usual few policies.
enum Scratch<T> {
    Inline([T; INLINE], usize),
    Heap(Vec<T>),
}

impl<T: Copy> Scratch<T> {
    fn new(n: usize, fill: T) -> Self {
        if n <= INLINE {
            Scratch::Inline([fill; INLINE], n)
        } else {
            Scratch::Heap(vec![fill; n])
        }
    }

    fn as_mut(&mut self) -> &mut [T] {
        match self {
            Scratch::Inline(buf, n) => &mut buf[..*n],
            Scratch::Heap(v) => v,
        }
    }
}

/// Policies whose scratch space fits on the stack.
const INLINE: usize = 4;

/// Whether the request is admitted, and the slot it gets: the latest of
/// the policies' slots, `None` if one never admits it.
fn combine(slots: &[Slot], now: u64, max_wait: Option<Duration>) -> (bool, Option<u64>) {
    let max_wait = max_wait.map_or(0, crate::clock::duration_micros);
    let mut at = Some(now);
    let mut blocked = false;
    for slot in slots {
        at = match (*slot, at) {
            (Slot::At(t), Some(a)) => Some(a.max(t)),
            (Slot::QueueFull { retry_at }, Some(a)) => {
                blocked = true;
                Some(a.max(retry_at))
            }
            (Slot::Busy, a) => {
                blocked = true;
                a
            }
            _ => None,
        };
    }
    let allowed = matches!(at, Some(t) if !blocked && t - now <= max_wait);
    (allowed, at)
}

/// The [`Decision`] for a request given each policy's slot and, after any
/// commit, each policy's `(remaining, full_at, refill_at)`. Shared by every
/// store, so the same inputs give the same decision field for field.
pub(crate) fn assemble(
    set: &PolicySet,
    now: u64,
    max_wait: Option<Duration>,
    slots: &[Slot],
    after: &[(u64, u64, u64)],
) -> Decision {
    let (allowed, at) = combine(slots, now, max_wait);
    let policy = |i: usize| {
        let (p, (remaining, full_at, refill_at)) = (&set.params()[i], after[i]);
        let retry_after = match slots[i] {
            Slot::At(t) => t.saturating_sub(now),
            Slot::QueueFull { retry_at } => retry_at.saturating_sub(now),
            Slot::Busy => BUSY,
            Slot::Never => NEVER,
        };
        PolicyDecision {
            policy: p.info,
            allowed: u64::from(allowed || retry_after == 0),
            remaining,
            retry_after,
            // Units in flight come back when released, at no known time.
            reset_after: if p.algorithm == Algorithm::Concurrency {
                0
            } else {
                full_at.saturating_sub(now)
            },
            refill_after: if refill_at == NEVER {
                NEVER
            } else {
                refill_at.saturating_sub(now)
            },
        }
    };
    let policies = if set.len() == 1 {
        Policies::One(policy(0))
    } else {
        Policies::Many((0..set.len()).map(policy).collect())
    };
    let busy = slots.contains(&Slot::Busy);
    let gap = match at {
        None => NEVER,
        // Admitted, or a rate policy names a time: the concurrency policy
        // may have room by then, but only a retry can tell.
        Some(t) if !busy => t - now,
        Some(_) => BUSY,
    };
    Decision::new(allowed, now, gap, policies)
}

/// When every state in `states` is back to full, in µs: the time after
/// which a store may forget them (and the expiry a store should set).
///
/// ```
/// use tower_ratelimit::algorithm::{decide, full_at};
/// use tower_ratelimit::{Policy, PolicySet, Quota};
///
/// let set = PolicySet::new(vec![Policy::new("p", Quota::per_second(10))])?;
/// let mut states = vec![None];
/// assert_eq!(full_at(&set, &states), 0); // nothing to keep
/// for _ in 0..10 {
///     decide(&set, &mut states, 0, 1, None);
/// }
/// assert_eq!(full_at(&set, &states), 1_000_000); // 10 units back at 100 ms each
/// # Ok::<(), tower_ratelimit::BoxError>(())
/// ```
pub fn full_at(set: &PolicySet, states: &[Option<State>]) -> u64 {
    set.params()
        .iter()
        .zip(states)
        .filter_map(|(p, s)| s.as_ref().map(|s| s.full_at(p)))
        .max()
        .unwrap_or(0)
}
