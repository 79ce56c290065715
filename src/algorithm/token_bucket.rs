//! The token bucket with refill in steps: `limit` tokens every `period`,
//! up to `burst`.
//!
//! The state is the token count at the last refill boundary `anchor`. The
//! count goes below zero for reservations made in wait mode. A full bucket
//! does not tick: its refill clock restarts when it is first drawn from.

use super::Slot;
use crate::quota::Params;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenBucket {
    pub(crate) tokens: i64,
    pub(crate) anchor: u64,
}

impl TokenBucket {
    pub(crate) fn fresh(p: &Params, now: u64) -> Self {
        Self {
            tokens: to_i64(p.burst),
            anchor: now,
        }
    }

    /// The bucket as it stands at `t`: refills due by then added.
    fn at(&self, p: &Params, t: u64) -> Self {
        let burst = to_i64(p.burst);
        if t < self.anchor {
            return self.clone();
        }
        let steps = (t - self.anchor) / p.period;
        let missing = u64::try_from(burst - self.tokens).unwrap_or(0);
        if steps >= missing.div_ceil(p.limit) {
            Self {
                tokens: burst,
                anchor: t,
            }
        } else {
            Self {
                tokens: self.tokens + to_i64(steps * p.limit),
                anchor: self.anchor + steps * p.period,
            }
        }
    }

    pub(crate) fn earliest(&self, p: &Params, now: u64, cost: u64) -> Slot {
        if cost > p.burst {
            return Slot::Never;
        }
        let t0 = now.max(self.anchor);
        let b = self.at(p, t0);
        let short = to_i64(cost) - b.tokens;
        if short <= 0 {
            return Slot::At(t0);
        }
        let steps = u64::try_from(short).unwrap_or(0).div_ceil(p.limit);
        Slot::At(b.anchor + steps * p.period)
    }

    pub(crate) fn commit(&mut self, p: &Params, t: u64, cost: u64) {
        *self = self.at(p, t.max(self.anchor));
        self.tokens -= to_i64(cost);
    }

    pub(crate) fn remaining(&self, p: &Params, now: u64) -> u64 {
        if self.anchor > now {
            return 0;
        }
        u64::try_from(self.at(p, now).tokens).unwrap_or(0)
    }

    pub(crate) fn full_at(&self, p: &Params) -> u64 {
        let missing = u64::try_from(to_i64(p.burst) - self.tokens).unwrap_or(0);
        self.anchor + missing.div_ceil(p.limit) * p.period
    }
}

/// Counts are below 2^53 (checked at build), so they fit an `i64`.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
