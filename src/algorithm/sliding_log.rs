//! The sliding window log: every admission is logged with its time and
//! cost; a request at `t` fits when the costs logged in `(t - period, t]`
//! plus its own stay within `limit`.
//!
//! Entries are in time order, and a new one is never logged before the last
//! (wait-mode reservations queue behind each other), so the count over any
//! later window only falls and one check at the request's time suffices.
//! The log holds at most `limit` units of cost.
//!
//! No decision scans the log. The units logged are kept as a running total,
//! so a request that fits is decided from the total and the newest entry.
//! Entries leave from the head as they expire, each once. A request that
//! does not fit walks the head only as far as the entries whose expiry
//! makes room for it: fewer than its cost. (The head walked first is what
//! expired since the log was last trimmed; every store trims a log when it
//! admits into it, and the memory store whenever it reads it.)
//!
//! A log read from Redis may be partial: its total, length and newest entry,
//! and only as many entries from the head as the script read. Such a view
//! answers exactly whatever it holds the entries for; [`SlidingLog::covers`]
//! says whether it does.

use std::collections::VecDeque;

use super::Slot;
use crate::quota::Params;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SlidingLog {
    /// `(time, cost)`, oldest first, one entry per distinct time: the whole
    /// log, or in a partial view the oldest entries, as far as read.
    pub(crate) head: VecDeque<(u64, u64)>,
    /// Entries in the whole log.
    pub(crate) count: u64,
    /// Units in the whole log.
    pub(crate) total: u64,
    /// The time of the oldest entry (0 in an empty log).
    pub(crate) first: u64,
    /// The newest entry; `(0, 0)` in an empty log.
    pub(crate) last: (u64, u64),
}

impl SlidingLog {
    /// Whether every entry is held.
    fn whole(&self) -> bool {
        self.head.len() as u64 == self.count
    }

    /// The entries known, oldest first: all of them in a whole log; in a
    /// partial view those read, then the newest if it is the only one not.
    fn known(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let tail = (self.count == self.head.len() as u64 + 1).then_some(self.last);
        self.head.iter().copied().chain(tail)
    }

    /// How many head entries have expired at `t`, and their units; `None`
    /// when the entries held do not tell.
    fn expired(&self, p: &Params, t: u64) -> Option<(usize, u64)> {
        if self.count == 0 || self.first + p.period > t {
            return Some((0, 0));
        }
        if self.last.0 + p.period <= t {
            // Everything has: the newest entry is the last to go.
            return Some((self.head.len(), self.total));
        }
        let mut units = 0;
        for (i, (time, cost)) in self.known().enumerate() {
            if time + p.period > t {
                return Some((i, units));
            }
            units += cost;
        }
        // Every entry known has expired but the newest has not.
        None
    }

    /// The earliest slot for `cost` at `now`, or `None` when the entries
    /// held do not tell.
    fn slot(&self, p: &Params, now: u64, cost: u64) -> Option<Slot> {
        if cost > p.limit {
            return Some(Slot::Never);
        }
        let t0 = now.max(self.last.0);
        let (expired, gone) = self.expired(p, t0)?;
        let mut used = self.total - gone;
        if used + cost <= p.limit {
            return Some(Slot::At(t0));
        }
        // Wait for the oldest live entries to expire, as many as it takes.
        for (time, c) in self.known().skip(expired) {
            used -= c;
            if used + cost <= p.limit {
                return Some(Slot::At(t0.max(time + p.period)));
            }
        }
        // A whole log never gets here: with every entry gone, `cost <= limit`
        // fits.
        None
    }

    /// Whether this state (a partial view perhaps) holds what deciding
    /// `cost` at `now` needs, committing at `commit_at` if given.
    pub(crate) fn covers(&self, p: &Params, now: u64, cost: u64, commit_at: Option<u64>) -> bool {
        self.whole()
            || ((cost == 0 || self.slot(p, now, cost).is_some())
                && commit_at.is_none_or(|t| self.expired(p, t).is_some())
                && (self.last.0 > now || self.expired(p, now).is_some()))
    }

    pub(crate) fn earliest(&self, p: &Params, now: u64, cost: u64) -> Slot {
        // Unreachable `None`: a whole log always tells, and callers check
        // partial views with `covers`.
        self.slot(p, now, cost).unwrap_or(Slot::Never)
    }

    /// Drops the entries expired at `t`.
    pub(crate) fn trim(&mut self, p: &Params, t: u64) {
        match self.expired(p, t) {
            Some((n, _)) if n == self.head.len() && self.last.0 + p.period <= t => {
                *self = Self::default();
            }
            Some((0, _)) | None => {}
            Some((n, units)) => {
                // `n` counts only entries held: the newest, known but not
                // held, never expires before the log does (the arm above).
                self.head.drain(..n);
                self.count -= n as u64;
                self.total -= units;
                let first = self.known().next().map_or(0, |e| e.0);
                self.first = first;
            }
        }
    }

    pub(crate) fn commit(&mut self, p: &Params, t: u64, cost: u64) {
        self.trim(p, t);
        let whole = self.whole();
        if self.count > 0 && self.last.0 == t {
            self.last.1 += cost;
            if whole {
                if let Some(back) = self.head.back_mut() {
                    back.1 += cost;
                }
            }
        } else {
            if self.count == 0 {
                self.first = t;
            }
            self.last = (t, cost);
            self.count += 1;
            if whole {
                self.head.push_back((t, cost));
            }
        }
        self.total += cost;
    }

    /// When `left + 1` units fit, for a partial view that does not hold
    /// the entries [`covers`](Self::covers) asks for: known from the log's
    /// header alone when nothing has expired by the time a request could
    /// go (as after any admission, which trims): at once if they fit then,
    /// else once the oldest entry, of at least one unit, expires. `None`
    /// when the view does not tell.
    pub(crate) fn refill_at(&self, p: &Params, now: u64, left: u64) -> Option<u64> {
        let t0 = now.max(self.last.0);
        match self.expired(p, t0)? {
            (0, _) if self.total + left < p.limit => Some(t0),
            (0, _) if self.count > 0 => Some(t0.max(self.first + p.period)),
            _ => None,
        }
    }

    pub(crate) fn remaining(&self, p: &Params, now: u64) -> u64 {
        if self.last.0 > now {
            return 0;
        }
        let gone = self.expired(p, now).map_or(0, |(_, units)| units);
        p.limit.saturating_sub(self.total - gone)
    }

    pub(crate) fn full_at(&self, p: &Params) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.last.0 + p.period
        }
    }
}
