//! The local cache of denials: a key Redis turned away is turned away here,
//! with no Redis call, for as long as that is certain.
//!
//! After a reply whose last request was denied, the store keeps the states
//! the reply left (the script's view, with the replies' requests applied)
//! for the key and its policy set. A later request for them is decided on
//! those states at Redis's time, with the algorithms the memory store uses;
//! when that denies it, the denial is the answer. It is exact because a
//! denial can only become an admission through time, never through other
//! requests:
//!
//! - Every rate algorithm is monotone in what it has counted: from the
//!   states Redis holds now, which are the cached ones plus whatever other
//!   instances (or other policy sets sharing a policy) were admitted since,
//!   no request is admitted that the cached states deny at the same time.
//! - It is monotone in time too: a request denied at some time is denied
//!   at every earlier one. The time used is the latest Redis's clock can
//!   show: the reply's time plus what has elapsed here since the call was
//!   sent, plus 0.1% (Redis's clock running that much faster than this
//!   machine's). So a request denied here is denied by Redis.
//!
//! Not cached: policy sets with a concurrency policy (a release frees units
//! at any time). Forgotten: when any request for the key is admitted here
//! (the states moved), on a reset of the key here, on a quota change (the
//! policies' fingerprints differ, and so do their Redis keys), after the
//! denial's retry time, and after `max_age` (default 1 s), which bounds how
//! long a reset of the key by another instance goes unseen here. The answer
//! is what the script would answer at that time from the cached states:
//! when no other instance spent on the key since, exactly its answer; else
//! the same denial, with `remaining` and the retry time as of this
//! instance's last reply (in reject mode a retry time no later than
//! Redis's).
//!
//! While a call of this store for the key is in flight, its states are
//! about to change: with coalescing (the default) a request then waits for
//! that call instead of being answered here.
//!
//! Memory is bounded: at most `max_keys` keys, expired entries swept when
//! it is full, then an eighth of them dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::algorithm::{self, State};
use crate::clock::duration_micros;
use crate::decision::Decision;
use crate::key::Key;
use crate::quota::PolicySet;
use crate::store::{Check, Op};

pub(crate) struct Denied {
    entries: Mutex<HashMap<Key, Vec<Entry>>>,
    /// Keys held, read without the lock.
    len: AtomicUsize,
    max_keys: usize,
    /// µs.
    max_age: u64,
}

struct Entry {
    set: PolicySet,
    states: Vec<Option<State>>,
    /// Redis's time when the states were current, µs.
    read_at: u64,
    /// This machine's clock when the call that read them was sent.
    sent: Instant,
    /// Redis's time from which the entry is not used.
    until: u64,
}

impl Entry {
    /// The latest time Redis's clock can show now.
    fn redis_now(&self) -> u64 {
        let elapsed = duration_micros(self.sent.elapsed());
        self.read_at + elapsed + elapsed / 1000 + 1
    }
}

/// What a reply left for a key: the states, and when and how it was read.
pub(crate) struct Read<'a> {
    pub(crate) states: &'a [Option<State>],
    pub(crate) read_at: u64,
    pub(crate) sent: Instant,
}

impl Denied {
    pub(crate) fn new(max_keys: usize, max_age: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            len: AtomicUsize::new(0),
            max_keys,
            max_age: duration_micros(max_age),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<Entry>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The decision for `check`, when the states held for its key and
    /// policies deny it.
    pub(crate) fn answer(&self, check: &Check<'_>) -> Option<Decision> {
        if self.len.load(Ordering::Relaxed) == 0 || !matches!(check.op(), Op::Acquire | Op::Peek) {
            return None;
        }
        let set = check.policies();
        let mut map = self.lock();
        let list = map.get_mut(check.key())?;
        let i = list.iter().position(|e| e.set.same_as(set))?;
        let e = &list[i];
        let t = check.at_micros().unwrap_or_else(|| e.redis_now());
        if t < e.read_at || t >= e.until {
            list.swap_remove(i);
            if list.is_empty() {
                map.remove(check.key());
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
            return None;
        }
        let d = algorithm::check_view(set, &e.states, t, check.cost(), check.max_wait())?;
        (!d.is_allowed()).then_some(d)
    }

    /// Takes in a reply for `key` under `set` whose last decision was
    /// `last`: holds the states it left if that was a denial, else forgets
    /// the key.
    pub(crate) fn update(&self, key: &Key, set: &PolicySet, read: Read<'_>, last: &Decision) {
        if self.max_keys == 0 {
            return;
        }
        if last.is_allowed() || set.has_concurrency() {
            self.forget(key);
            return;
        }
        let wait = last.retry_after().map_or(u64::MAX, duration_micros);
        let entry = Entry {
            set: set.clone(),
            states: read.states.to_vec(),
            read_at: read.read_at,
            sent: read.sent,
            until: read.read_at.saturating_add(wait.min(self.max_age)),
        };
        let mut map = self.lock();
        if let Some(list) = map.get_mut(key) {
            match list.iter_mut().find(|e| e.set.same_as(set)) {
                Some(e) => *e = entry,
                None => list.push(entry),
            }
            return;
        }
        if map.len() >= self.max_keys {
            let now = read.read_at;
            map.retain(|_, list| {
                list.retain(|e| e.until > now);
                !list.is_empty()
            });
            if map.len() >= self.max_keys {
                let mut drop = (self.max_keys / 8).max(1);
                map.retain(|_, _| {
                    if drop > 0 {
                        drop -= 1;
                        false
                    } else {
                        true
                    }
                });
            }
        }
        map.insert(key.clone(), vec![entry]);
        self.len.store(map.len(), Ordering::Relaxed);
    }

    /// Forgets every state held for `key`.
    pub(crate) fn forget(&self, key: &Key) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut map = self.lock();
        if map.remove(key).is_some() {
            self.len.store(map.len(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Policy, Quota};

    /// A denial, and the states it left, for a spent 1-per-minute policy.
    fn denied(set: &PolicySet, now: u64) -> (Vec<Option<State>>, Decision) {
        let mut states = vec![None];
        assert!(algorithm::decide(set, &mut states, now, 1, None).is_allowed());
        let d = algorithm::decide(set, &mut states, now, 1, None);
        assert!(!d.is_allowed());
        (states, d)
    }

    #[test]
    fn the_cache_holds_at_most_max_keys() {
        let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(1))]).unwrap();
        let cache = Denied::new(8, Duration::from_secs(60));
        let sent = Instant::now();
        for n in 0..100_u64 {
            let (states, d) = denied(&set, 1_000);
            let read = Read {
                states: &states,
                read_at: 1_000,
                sent,
            };
            cache.update(&Key::from(n), &set, read, &d);
            assert!(cache.len.load(Ordering::Relaxed) <= 8);
            assert_eq!(cache.len.load(Ordering::Relaxed), cache.lock().len());
        }
        // The newest is held, and answers.
        let last = Key::from(99_u64);
        let check = Check::new(&last, &set, 1).with_at_micros(Some(2_000));
        assert!(cache.answer(&check).is_some_and(|d| !d.is_allowed()));
    }

    #[test]
    fn an_admission_forgets_the_key_and_expired_entries_are_not_used() {
        let set = PolicySet::new(vec![Policy::new("p", Quota::per_minute(1))]).unwrap();
        let cache = Denied::new(8, Duration::from_secs(60));
        let key = Key::from("k");
        let (states, d) = denied(&set, 1_000);
        let read = |states| Read {
            states,
            read_at: 1_000,
            sent: Instant::now(),
        };
        cache.update(&key, &set, read(&states), &d);
        let at = |t| Check::new(&key, &set, 1).with_at_micros(Some(t));
        assert!(cache.answer(&at(30_000_000)).is_some());
        // The retry time has come: no longer used, and dropped.
        assert!(cache.answer(&at(60_001_000)).is_none());
        assert_eq!(cache.len.load(Ordering::Relaxed), 0);
        cache.update(&key, &set, read(&states), &d);
        let mut fresh = vec![None];
        let admitted = algorithm::decide(&set, &mut fresh, 5_000, 1, None);
        cache.update(&key, &set, read(&fresh), &admitted);
        assert!(cache.answer(&at(6_000)).is_none());
    }
}
