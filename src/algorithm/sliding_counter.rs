//! The sliding window counter: counts per fixed window, and a request at
//! `t` fits when `prev · (1 - elapsed/period) + curr + cost <= limit`, where
//! `elapsed` is how far `t` is into the current window.
//!
//! The weight is measured in steps of `period / 2^20` at the finest (one µs
//! for periods up to about a second), rounding toward counting more of the
//! previous window, so the products stay exact below 2^53 and the
//! approximation never admits more than the exact fraction would.

use super::Slot;
use crate::quota::Params;

/// The finest weight resolution: a window is at most 2^20 steps.
const STEPS: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlidingCounter {
    /// The latest window with admissions.
    pub(crate) window: u64,
    pub(crate) curr: u64,
    pub(crate) prev: u64,
    /// The time of the latest admission: nobody is admitted before it.
    pub(crate) tail: u64,
}

/// The step length in µs and the number of steps in a window.
pub(crate) fn steps(period: u64) -> (u64, u64) {
    let step = period.div_ceil(STEPS).max(1);
    (step, period.div_ceil(step))
}

impl SlidingCounter {
    pub(crate) fn fresh(p: &Params, now: u64) -> Self {
        Self {
            window: now / p.period,
            curr: 0,
            prev: 0,
            tail: 0,
        }
    }

    /// `(previous, current)` counts as seen from window `w`.
    fn counts(&self, w: u64) -> (u64, u64) {
        if w == self.window {
            (self.prev, self.curr)
        } else if w == self.window + 1 {
            (self.curr, 0)
        } else {
            (0, 0)
        }
    }

    pub(crate) fn earliest(&self, p: &Params, now: u64, cost: u64) -> Slot {
        if cost > p.limit {
            return Slot::Never;
        }
        let (step, n) = steps(p.period);
        let mut from = now.max(self.tail);
        // At most three windows: by the third both counts are zero.
        for _ in 0..3 {
            let w = from / p.period;
            let start = w * p.period;
            let (prev, curr) = self.counts(w);
            if curr + cost <= p.limit {
                let room = p.limit - curr - cost;
                let t = if prev <= room {
                    from
                } else {
                    // prev·(n - k) <= room·n  ⇔  k >= n - ⌊room·n / prev⌋
                    let k = n - room * n / prev;
                    from.max(start + k * step)
                };
                if t < start + p.period {
                    return Slot::At(t);
                }
            }
            from = start + p.period;
        }
        Slot::At(from)
    }

    pub(crate) fn commit(&mut self, p: &Params, t: u64, cost: u64) {
        let w = t / p.period;
        let (prev, curr) = self.counts(w);
        *self = Self {
            window: w.max(self.window),
            curr: curr + cost,
            prev,
            tail: self.tail.max(t),
        };
    }

    pub(crate) fn remaining(&self, p: &Params, now: u64) -> u64 {
        if self.tail > now {
            return 0;
        }
        let (step, n) = steps(p.period);
        let w = now / p.period;
        let (prev, curr) = self.counts(w);
        let k = (now - w * p.period) / step;
        let weighted = (prev * (n - k)).div_ceil(n);
        p.limit.saturating_sub(curr + weighted)
    }

    pub(crate) fn full_at(&self, p: &Params) -> u64 {
        (self.window + 2) * p.period
    }
}
