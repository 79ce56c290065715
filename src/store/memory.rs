use std::future::{Ready, ready};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hashbrown::HashTable;

use super::{Check, Op, Store};
use crate::algorithm::{self, State};
use crate::clock::{Clock, SystemClock};
use crate::decision::Decision;
use crate::error::{ConfigError, StoreError};
use crate::key::Key;
use crate::quota::PolicySet;

/// The default cap on keys held at once.
const DEFAULT_MAX_KEYS: usize = 1_000_000;
/// A shard is swept for full state when it grows past this many keys and
/// then each time it doubles.
const MIN_SWEEP: usize = 1024;

/// State in this process's memory: one machine, no setup.
///
/// Keys are spread over shards, each behind its own lock, so requests for
/// different keys rarely contend. A request for one key is decided against
/// all of its policies under one lock.
///
/// Memory is bounded. State that is back to full is forgotten (a swept
/// shard drops every key whose state has refilled), and the number of keys
/// is capped (default 1,000,000): when a shard reaches its share of the cap
/// and sweeping frees less than an eighth of it, the eighth of its keys
/// closest to refilling are forgotten. A forgotten key starts full again, so
/// under a flood of distinct keys the keys evicted are those that had spent
/// the least.
///
/// Clones share one store. Policies are identified by name: two layers
/// sharing a store and naming the same policy share its state per key.
///
/// ```
/// use tower_ratelimit::{MemoryStore, clock::FakeClock};
///
/// let store = MemoryStore::new();
/// let for_tests = MemoryStore::builder().clock(FakeClock::new()).max_keys(10_000).build().unwrap();
/// # let _ = (store, for_tests);
/// ```
pub struct MemoryStore<C = SystemClock> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    clock: C,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    shard_cap: usize,
}

#[derive(Default)]
struct Shard {
    // Hashed once per request: the same hash picks the shard and the slot.
    table: HashTable<Slot>,
    sweep_at: usize,
}

struct Slot {
    hash: u64,
    key: Key,
    entry: Entry,
}

/// The states of one key, one per policy: its name and the fingerprint of
/// its algorithm and quota, so a differently configured policy of the same
/// name never reads this state, and when each state is full again.
struct Entry {
    names: Vec<Name>,
    states: Vec<Option<State>>,
    /// The latest of the states' `full_at`: from then on the entry can go.
    full_at: u64,
}

struct Name {
    name: Arc<str>,
    fingerprint: u64,
    full_at: u64,
}

impl<C> Clone for MemoryStore<C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C> std::fmt::Debug for MemoryStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.inner.shards.len())
            .field(
                "max_keys",
                &(self.inner.shard_cap * self.inner.shards.len()),
            )
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// A store on the system clock holding at most 1,000,000 keys.
    #[must_use]
    pub fn new() -> Self {
        Self::with(SystemClock, DEFAULT_MAX_KEYS, default_shards())
    }

    /// Configures a store: clock, key cap, shard count.
    #[must_use]
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            clock: SystemClock,
            max_keys: DEFAULT_MAX_KEYS,
            shards: None,
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

fn default_shards() -> usize {
    let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
    (cores * 4).next_power_of_two().clamp(4, 64)
}

/// Builds a [`MemoryStore`]. See [`MemoryStore::builder`].
#[derive(Debug)]
pub struct MemoryStoreBuilder<C = SystemClock> {
    clock: C,
    max_keys: usize,
    shards: Option<usize>,
}

impl<C: Clock> MemoryStoreBuilder<C> {
    /// Uses `clock` for time (a [`FakeClock`](crate::clock::FakeClock) in
    /// tests).
    #[must_use]
    pub fn clock<C2: Clock>(self, clock: C2) -> MemoryStoreBuilder<C2> {
        MemoryStoreBuilder {
            clock,
            max_keys: self.max_keys,
            shards: self.shards,
        }
    }

    /// Holds at most `max_keys` keys (default 1,000,000).
    #[must_use]
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Spreads keys over `shards` locks (default: four per core, rounded up
    /// to a power of two, between 4 and 64).
    #[must_use]
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// The store, or an error naming a bad setting.
    pub fn build(self) -> Result<MemoryStore<C>, ConfigError> {
        let shards = self.shards.unwrap_or_else(default_shards);
        if shards == 0 {
            return Err(ConfigError::new("shards", "must be at least 1"));
        }
        if self.max_keys < shards {
            return Err(ConfigError::new(
                "max_keys",
                format!("must be at least the number of shards ({shards})"),
            ));
        }
        Ok(MemoryStore::with(self.clock, self.max_keys, shards))
    }
}

impl<C: Clock> MemoryStore<C> {
    fn with(clock: C, max_keys: usize, shards: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                clock,
                hasher: RandomState::new(),
                shards: (0..shards).map(|_| Mutex::default()).collect(),
                shard_cap: max_keys / shards,
            }),
        }
    }

    /// The number of keys held now (state not yet forgotten).
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).table.len()).sum()
    }

    /// Whether no key is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides `check` now, synchronously.
    pub fn decide_now(&self, check: Check<'_>) -> Decision {
        let inner = &*self.inner;
        let now = check
            .get_at_micros()
            .unwrap_or_else(|| inner.clock.now_micros());
        let set = check.policies();
        let key = check.key();
        let hash = inner.hasher.hash_one(key);
        // The table uses the low bits and the top seven; the shard the middle.
        let index = ((hash >> 32) % inner.shards.len() as u64) as usize;
        let mut shard = lock(&inner.shards[index]);
        let max_wait = check.get_max_wait();
        let cost = check.cost();

        let op = check.get_op();
        if op == Op::Reset {
            if let Ok(found) = shard.table.find_entry(hash, |s| s.key == *key) {
                let (mut slot, _) = found.remove();
                if slot.entry.forget(set) {
                    shard.table.insert_unique(hash, slot, |s| s.hash);
                }
            }
            return algorithm::check(set, &vec![None; set.len()], now, 0, None);
        }
        if let Some(slot) = shard.table.find_mut(hash, |s| s.key == *key) {
            return slot.entry.with_states(set, |states| {
                algorithm::trim(set, states, now);
                match op {
                    Op::Peek => algorithm::check(set, states, now, cost, max_wait),
                    Op::Release => {
                        algorithm::release(set, states, cost);
                        algorithm::check(set, states, now, 0, None)
                    }
                    // Permits in memory are counted, not leased: nothing runs out.
                    Op::Renew | Op::Reset => algorithm::check(set, states, now, 0, None),
                    Op::Acquire => algorithm::decide(set, states, now, cost, max_wait),
                }
            });
        }
        if op != Op::Acquire {
            // Nothing is held for a key the store does not know.
            let cost = if op == Op::Peek { cost } else { 0 };
            return algorithm::check(set, &vec![None; set.len()], now, cost, max_wait);
        }
        let mut entry = Entry::new(set);
        let decision = entry.with_states(set, |states| {
            algorithm::decide(set, states, now, cost, max_wait)
        });
        if decision.is_allowed() && cost > 0 {
            shard.make_room(now, inner.shard_cap);
            let slot = Slot {
                hash,
                key: key.clone(),
                entry,
            };
            shard.table.insert_unique(hash, slot, |s| s.hash);
        }
        decision
    }
}

impl<C: Clock> Store for MemoryStore<C> {
    type Future = Ready<Result<Decision, StoreError>>;

    fn decide(&self, check: Check<'_>) -> Self::Future {
        ready(Ok(self.decide_now(check)))
    }

    fn decide_sync(&self, check: Check<'_>) -> Option<Result<Decision, StoreError>> {
        Some(Ok(self.decide_now(check)))
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic while holding the lock cannot leave a shard half-written in a
    // way that matters: every state is replaced whole.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shard {
    /// Makes room for one more key within `cap`.
    fn make_room(&mut self, now: u64, cap: usize) {
        let len = self.table.len();
        if len < cap && len < self.sweep_at.max(MIN_SWEEP) {
            return;
        }
        self.table.retain(|s| s.entry.full_at > now);
        let evict = (cap / 8).max(1);
        if self.table.len() + evict > cap {
            // Forget the eighth closest to refilling.
            let mut times: Vec<u64> = self.table.iter().map(|s| s.entry.full_at).collect();
            let evict = evict.min(times.len());
            let (_, &mut cutoff, _) = times.select_nth_unstable(evict - 1);
            let mut budget = evict;
            self.table.retain(|s| {
                if s.entry.full_at <= cutoff && budget > 0 {
                    budget -= 1;
                    false
                } else {
                    true
                }
            });
        }
        self.sweep_at = self.table.len() * 2;
    }
}

impl Entry {
    fn new(set: &PolicySet) -> Self {
        Self {
            names: set
                .policies()
                .iter()
                .zip(set.params())
                .map(|(p, params)| Name {
                    name: Arc::clone(p.shared_name()),
                    fingerprint: params.fingerprint,
                    full_at: 0,
                })
                .collect(),
            states: vec![None; set.len()],
            full_at: 0,
        }
    }

    /// Where policy `p` of a set keeps its state here, if it has one.
    fn position(&self, p: &crate::Policy, fingerprint: u64) -> Option<usize> {
        self.names
            .iter()
            .position(|n| n.fingerprint == fingerprint && *n.name == *p.name())
    }

    /// Runs `f` on the states of `set`'s policies, in the set's order.
    fn with_states<R>(&mut self, set: &PolicySet, f: impl FnOnce(&mut [Option<State>]) -> R) -> R {
        let same = self.names.len() == set.len()
            && self
                .names
                .iter()
                .zip(set.policies().iter().zip(set.params()))
                .all(|(n, (p, params))| {
                    n.fingerprint == params.fingerprint
                        && (Arc::ptr_eq(&n.name, p.shared_name()) || *n.name == *p.name())
                });
        if same {
            let out = f(&mut self.states);
            for ((n, state), p) in self.names.iter_mut().zip(&self.states).zip(set.params()) {
                n.full_at = state.as_ref().map_or(0, |s| s.full_at(p));
            }
            self.full_at = self.names.iter().map(|n| n.full_at).max().unwrap_or(0);
            return out;
        }
        // Another policy set shares this key: gather its states.
        let mut states: Vec<Option<State>> = set
            .policies()
            .iter()
            .zip(set.params())
            .map(|(p, params)| {
                self.position(p, params.fingerprint)
                    .and_then(|i| self.states[i].take())
            })
            .collect();
        let out = f(&mut states);
        for ((p, params), state) in set.policies().iter().zip(set.params()).zip(states) {
            let full_at = state.as_ref().map_or(0, |s| s.full_at(params));
            match self.position(p, params.fingerprint) {
                Some(i) => {
                    self.states[i] = state;
                    self.names[i].full_at = full_at;
                }
                None => {
                    self.names.push(Name {
                        name: Arc::clone(p.shared_name()),
                        fingerprint: params.fingerprint,
                        full_at,
                    });
                    self.states.push(state);
                }
            }
        }
        self.full_at = self.names.iter().map(|n| n.full_at).max().unwrap_or(0);
        out
    }

    /// Forgets the states of `set`'s policies; `true` if others remain.
    fn forget(&mut self, set: &PolicySet) -> bool {
        for (p, params) in set.policies().iter().zip(set.params()) {
            if let Some(i) = self.position(p, params.fingerprint) {
                self.names.swap_remove(i);
                self.states.swap_remove(i);
            }
        }
        self.full_at = self.names.iter().map(|n| n.full_at).max().unwrap_or(0);
        !self.names.is_empty()
    }
}
