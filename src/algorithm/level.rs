//! GCRA, the greedy token bucket and the leaky bucket: one level that
//! drains continuously.
//!
//! The state is the level `L` in ticks at time `last`. One unit is
//! `unit` ticks, the bucket holds `burst·unit` ticks and drains `drain`
//! ticks per µs, so every quantity is an integer and the rate
//! `drain / unit = limit / period` is exact. This is GCRA's
//! continuous-state form: `last + L / drain` is its theoretical arrival time.

use super::Slot;
use crate::quota::Params;
#[cfg(feature = "memory")]
use crate::quota::TAT_LIMIT;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Level {
    pub(crate) level: u64,
    pub(crate) last: u64,
}

impl Level {
    pub(crate) fn fresh(now: u64) -> Self {
        Self {
            level: 0,
            last: now,
        }
    }

    /// The state as one number, `last · drain + level` (the theoretical
    /// arrival time in ticks), when it is below [`TAT_LIMIT`]. For a bucket
    /// last drawn from no later than any time it is decided at from then
    /// on, this number alone decides as the state does: see
    /// [`decide_tat`](super::decide_tat).
    #[cfg(feature = "memory")]
    #[inline]
    pub(crate) fn tat(&self, p: &Params) -> Option<u64> {
        self.last
            .checked_mul(p.drain)?
            .checked_add(self.level)
            .filter(|&t| t < TAT_LIMIT)
    }

    /// The state a [`tat`](Self::tat) stands for at `now`, for a bucket
    /// last drawn from no later than `now`; `None` when it is full again.
    #[cfg(feature = "memory")]
    pub(crate) fn from_tat(p: &Params, tat: u64, now: u64) -> Option<Self> {
        let level = tat
            .checked_sub(now.saturating_mul(p.drain))
            .filter(|&l| l > 0)?;
        Some(Self { level, last: now })
    }

    /// The level at `t`; before `last` (a reservation ahead, or a clock
    /// that stepped back) nothing has drained yet.
    fn level_at(&self, p: &Params, t: u64) -> u64 {
        let elapsed = t.saturating_sub(self.last);
        if elapsed >= p.drain_div.div_ceil(self.level) {
            0
        } else {
            self.level - elapsed * p.drain
        }
    }

    pub(crate) fn earliest(&self, p: &Params, now: u64, cost: u64, shaping: bool) -> Slot {
        let capacity = p.capacity();
        if cost > p.burst {
            return Slot::Never;
        }
        let need = cost * p.unit;
        // Nobody goes ahead of a reservation already made.
        let t0 = now.max(self.last);
        let level = self.level_at(p, t0);
        if shaping {
            // Requests leave one after another, each once those ahead have
            // drained. Slots are whole µs, so a request of one unit holds
            // the queue for ⌈period/limit⌉ µs; the bucket holds `burst`
            // units, so the wait may be at most what `burst - cost` such
            // requests take. (Counting the queue in ticks would count each
            // slot's rounding too, and hold one unit fewer than `burst`
            // whenever period/limit is not a whole number of µs. Requests of
            // several units round less, so with mixed costs and a fractional
            // interval the queue can hold slightly more; the rate is exact.)
            let slot = t0 + p.drain_div.div_ceil(level);
            let room = (p.burst - cost) * p.drain_div.div_ceil(p.unit);
            if slot - now > room {
                return Slot::QueueFull {
                    retry_at: slot - room,
                };
            }
            return Slot::At(slot);
        }
        match (level + need).checked_sub(capacity) {
            None | Some(0) => Slot::At(t0),
            Some(excess) => Slot::At(t0 + p.drain_div.div_ceil(excess)),
        }
    }

    pub(crate) fn commit(&mut self, p: &Params, t: u64, cost: u64) {
        self.level = self.level_at(p, t) + cost * p.unit;
        self.last = self.last.max(t);
    }

    pub(crate) fn remaining(&self, p: &Params, now: u64) -> u64 {
        if self.last > now {
            return 0;
        }
        p.unit_div
            .div(p.capacity().saturating_sub(self.level_at(p, now)))
    }

    pub(crate) fn full_at(&self, p: &Params) -> u64 {
        self.last + p.drain_div.div_ceil(self.level)
    }
}
