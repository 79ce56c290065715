//! The fixed window: at most `limit` per window `[k·period, (k+1)·period)`.
//!
//! The state is the latest window that holds admissions and its count. In
//! wait mode a request that does not fit is reserved in the next window, so
//! the latest window can lie ahead of now.

use super::Slot;
use crate::quota::Params;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FixedWindow {
    pub(crate) window: u64,
    pub(crate) count: u64,
}

impl FixedWindow {
    pub(crate) fn fresh(p: &Params, now: u64) -> Self {
        Self {
            window: now / p.period,
            count: 0,
        }
    }

    pub(crate) fn earliest(&self, p: &Params, now: u64, cost: u64) -> Slot {
        if cost > p.limit {
            return Slot::Never;
        }
        let current = now / p.period;
        let (t0, window) = if self.window > current {
            (self.window * p.period, self.window)
        } else {
            (now, current)
        };
        let count = if window == self.window { self.count } else { 0 };
        if count + cost <= p.limit {
            Slot::At(t0)
        } else {
            Slot::At((window + 1) * p.period)
        }
    }

    pub(crate) fn commit(&mut self, p: &Params, t: u64, cost: u64) {
        let window = t / p.period;
        if window == self.window {
            self.count += cost;
        } else {
            *self = Self {
                window,
                count: cost,
            };
        }
    }

    pub(crate) fn remaining(&self, p: &Params, now: u64) -> u64 {
        let current = now / p.period;
        if self.window > current {
            0
        } else if self.window == current {
            p.limit.saturating_sub(self.count)
        } else {
            p.limit
        }
    }

    pub(crate) fn full_at(&self, p: &Params) -> u64 {
        (self.window + 1) * p.period
    }
}
