//! The sliding window log: every admission is logged with its time and
//! cost; a request at `t` fits when the costs logged in `(t - period, t]`
//! plus its own stay within `limit`.
//!
//! Entries are in time order, and a new one is never logged before the last
//! (wait-mode reservations queue behind each other), so the count over any
//! later window only falls and one check at the request's time suffices.
//! The log holds at most `limit` units of cost.

use std::collections::VecDeque;

use super::Slot;
use crate::quota::Params;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SlidingLog {
    /// `(time, cost)`, oldest first, one entry per distinct time.
    pub(crate) entries: VecDeque<(u64, u64)>,
}

impl SlidingLog {
    fn last(&self) -> u64 {
        self.entries.back().map_or(0, |e| e.0)
    }

    /// The entries still counted at `t`, oldest first.
    fn live(&self, p: &Params, t: u64) -> impl Iterator<Item = &(u64, u64)> {
        self.entries.iter().filter(move |e| e.0 + p.period > t)
    }

    pub(crate) fn earliest(&self, p: &Params, now: u64, cost: u64) -> Slot {
        if cost > p.limit {
            return Slot::Never;
        }
        let t0 = now.max(self.last());
        let mut used: u64 = self.live(p, t0).map(|e| e.1).sum();
        if used + cost <= p.limit {
            return Slot::At(t0);
        }
        for &(time, c) in self.live(p, t0) {
            used -= c;
            if used + cost <= p.limit {
                return Slot::At(t0.max(time + p.period));
            }
        }
        // Unreachable: once every entry has expired, `cost <= limit` fits.
        Slot::At(t0.max(self.last() + p.period))
    }

    pub(crate) fn commit(&mut self, p: &Params, t: u64, cost: u64) {
        while self.entries.front().is_some_and(|e| e.0 + p.period <= t) {
            self.entries.pop_front();
        }
        match self.entries.back_mut() {
            Some(last) if last.0 == t => last.1 += cost,
            _ => self.entries.push_back((t, cost)),
        }
    }

    pub(crate) fn remaining(&self, p: &Params, now: u64) -> u64 {
        if self.last() > now {
            return 0;
        }
        p.limit
            .saturating_sub(self.live(p, now).map(|e| e.1).sum::<u64>())
    }

    pub(crate) fn full_at(&self, p: &Params) -> u64 {
        self.entries.back().map_or(0, |e| e.0 + p.period)
    }
}
