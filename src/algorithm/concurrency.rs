//! Concurrency: at most `limit` units in flight at once.
//!
//! The state is the number of units held. A request takes `cost` units when
//! they fit and gives them back when it is released; there is no time in
//! it, so a full policy names no retry time: a unit frees when a holder
//! lets go. In Redis the same count is a set of leases that expire unless
//! renewed (`lua/concurrency.lua`), so a crashed holder's units come back.

use super::Slot;
use crate::quota::Params;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Concurrency {
    pub(crate) held: u64,
}

impl Concurrency {
    pub(crate) fn earliest(&self, p: &Params, now: u64, cost: u64) -> Slot {
        if cost > p.limit {
            Slot::Never
        } else if self.held + cost <= p.limit {
            Slot::At(now)
        } else {
            Slot::Busy
        }
    }

    pub(crate) fn commit(&mut self, cost: u64) {
        self.held += cost;
    }

    pub(crate) fn release(&mut self, cost: u64) {
        self.held = self.held.saturating_sub(cost);
    }

    pub(crate) fn remaining(&self, p: &Params) -> u64 {
        p.limit.saturating_sub(self.held)
    }

    /// Never full while anything is held: held state is never forgotten.
    pub(crate) fn full_at(&self) -> u64 {
        if self.held == 0 { 0 } else { u64::MAX }
    }
}
