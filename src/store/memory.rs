use std::future::{Ready, ready};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hashbrown::HashTable;

use super::{Check, Op, Store};
use crate::algorithm::{self, Level, Repr, State};
use crate::clock::{Clock, SystemClock};
use crate::decision::Decision;
use crate::error::{ConfigError, StoreError};
use crate::key::{Key, Parts};
use crate::quota::Params;

/// The default cap on keys held at once, per policy.
const DEFAULT_MAX_KEYS: usize = 1_000_000;
/// A table is swept for full state when it grows past this many keys and
/// then each time it doubles.
const MIN_SWEEP: usize = 1024;
/// At the cap, this share of a table's keys is forgotten at once, so the
/// work of choosing them is spread over as many new keys.
const EVICT_SHARE: usize = 16;

/// State in this process's memory: one machine, no setup.
///
/// Keys are spread over shards, each behind its own lock, so requests for
/// different keys rarely contend. A request for one key is decided against
/// all of its policies under one lock, all or nothing.
///
/// # Memory
///
/// A key of one GCRA-family policy ([`Gcra`](crate::Algorithm::Gcra),
/// [`GreedyTokenBucket`](crate::Algorithm::GreedyTokenBucket),
/// [`LeakyBucket`](crate::Algorithm::LeakyBucket)) costs one table slot and no
/// allocation of its own: the key inline (an integer, an IPv4 or IPv6
/// address, or the global key; other keys are kept as the [`Key`]) and its
/// state as one word. Each policy keeps its own table per shard, so
/// several policies on one key cost a slot each.
///
/// Memory is bounded. State that is back to full is forgotten (a table is
/// swept each time it doubles, dropping every key whose state has
/// refilled), and each policy holds at most `max_keys` keys (default
/// 1,000,000): a store built for `N` keys holds `N` keys of a policy before
/// it forgets any. When a new key finds the policy at its cap, its shard
/// first drops the keys that have refilled, then, if none had, forgets the
/// sixteenth of that policy's keys in the shard that are closest to
/// refilling. A forgotten key starts full again, so under a flood of
/// distinct keys the keys forgotten are those that had spent the least.
/// The default number of shards is chosen so that tables full at the cap
/// are densely used.
///
/// # Time
///
/// The store never decides at a time earlier than one it has already
/// decided at for a key of the same shard: a check arriving with an
/// earlier time (a clock read a moment before another thread's, a
/// [`FakeClock`](crate::clock::FakeClock) set back, an explicit
/// [`at_micros`](Check::at_micros) in the past) is decided, and reported,
/// at that later time. A clock that steps back makes time stand still until
/// it catches up, as [`Clock`] asks of a clock anyway. What this buys is a
/// state of one word for GCRA: with time that never runs back, a bucket's
/// level and when it was last drawn from fold into one number.
///
/// Clones share one store. Policies are identified by name and
/// configuration: two layers sharing a store and naming the same policy
/// share its state per key.
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
    hasher: KeyHasher,
    shards: Box<[Padded]>,
    max_keys: usize,
    /// Each policy's number of keys across all shards, by name and
    /// fingerprint; a table takes its count from here when it is made.
    counts: Mutex<Vec<(&'static str, u64, Arc<AtomicUsize>)>>,
}

/// A shard on a cache line of its own, so two threads locking neighbouring
/// shards do not pass one line back and forth.
#[repr(align(128))]
struct Padded(Mutex<Shard>);

#[derive(Default)]
struct Shard {
    /// The latest time a decision here was made at.
    now: u64,
    /// One table per policy with keys in this shard.
    tables: Vec<Table>,
    /// A policy's [id](Params::id) → 1 + the index of its table; 0 for
    /// none.
    index: Vec<u32>,
}

/// One policy's keys in one shard.
struct Table {
    params: Params,
    /// The policy's keys in every shard.
    count: Arc<AtomicUsize>,
    /// Swept for full state when it holds this many keys.
    sweep_at: usize,
    states: States,
}

enum States {
    /// The GCRA family's states: as one word when the bucket was last drawn
    /// from no later than the shard's time (nearly always), else as the
    /// level and that time (a reservation ahead, in wait mode, or a word
    /// too large for the [`Divisor`](crate::quota::Divisor)).
    Level {
        tats: Keyed<Tat>,
        ahead: Keyed<Level>,
    },
    Other(Keyed<State>),
}

/// A GCRA-family state as one number: `last · drain + level`, the
/// theoretical arrival time in ticks. With `last` no later than now, the
/// level at any time `t ≥ now` is `tat - t · drain` (or zero), so this one
/// number decides exactly what the level and `last` would. Two halves, so
/// a slot keyed by an IPv4 address takes 12 bytes.
#[derive(Clone, Copy)]
struct Tat([u32; 2]);

impl Tat {
    #[inline]
    fn new(tat: u64) -> Self {
        Tat([tat as u32, (tat >> 32) as u32])
    }

    #[inline]
    fn get(self) -> u64 {
        u64::from(self.0[0]) | (u64::from(self.0[1]) << 32)
    }
}

/// Keys by kind, each kind inline in its own table.
struct Keyed<V> {
    global: Option<V>,
    ints: HashTable<(u64, V)>,
    v4: HashTable<(u32, V)>,
    v6: HashTable<([u64; 2], V)>,
    other: HashTable<(Key, V)>,
}

impl<V> Default for Keyed<V> {
    fn default() -> Self {
        Self {
            global: None,
            ints: HashTable::new(),
            v4: HashTable::new(),
            v6: HashTable::new(),
            other: HashTable::new(),
        }
    }
}

/// A request's key as the tables see it, with its hash.
struct Slot<'a> {
    parts: Parts<'a>,
    hash: u64,
}

impl<V> Keyed<V> {
    fn len(&self) -> usize {
        usize::from(self.global.is_some())
            + self.ints.len()
            + self.v4.len()
            + self.v6.len()
            + self.other.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline(always)]
    fn get_mut(&mut self, key: &Slot<'_>) -> Option<&mut V> {
        let h = key.hash;
        match key.parts {
            Parts::Global => self.global.as_mut(),
            Parts::Int(k) => self.ints.find_mut(h, |e| e.0 == k).map(|e| &mut e.1),
            Parts::V4(k) => self.v4.find_mut(h, |e| e.0 == k).map(|e| &mut e.1),
            Parts::V6(k) => self.v6.find_mut(h, |e| e.0 == k).map(|e| &mut e.1),
            Parts::Other(k) => self.other.find_mut(h, |e| e.0 == *k).map(|e| &mut e.1),
        }
    }

    fn contains(&mut self, key: &Slot<'_>) -> bool {
        self.get_mut(key).is_some()
    }

    fn remove(&mut self, key: &Slot<'_>) -> Option<V> {
        let h = key.hash;
        match key.parts {
            Parts::Global => self.global.take(),
            Parts::Int(k) => self
                .ints
                .find_entry(h, |e| e.0 == k)
                .ok()
                .map(|e| e.remove().0.1),
            Parts::V4(k) => self
                .v4
                .find_entry(h, |e| e.0 == k)
                .ok()
                .map(|e| e.remove().0.1),
            Parts::V6(k) => self
                .v6
                .find_entry(h, |e| e.0 == k)
                .ok()
                .map(|e| e.remove().0.1),
            Parts::Other(k) => self
                .other
                .find_entry(h, |e| e.0 == *k)
                .ok()
                .map(|e| e.remove().0.1),
        }
    }

    /// Adds `key`, which is not here yet.
    fn insert(&mut self, key: &Slot<'_>, value: V, hasher: &KeyHasher) {
        let h = key.hash;
        match key.parts {
            Parts::Global => self.global = Some(value),
            Parts::Int(k) => {
                self.ints.insert_unique(h, (k, value), |e| hasher.int(e.0));
            }
            Parts::V4(k) => {
                self.v4
                    .insert_unique(h, (k, value), |e| hasher.int(u64::from(e.0)));
            }
            Parts::V6(k) => {
                self.v6.insert_unique(h, (k, value), |e| hasher.pair(e.0));
            }
            Parts::Other(k) => {
                self.other
                    .insert_unique(h, (k.clone(), value), |e| hasher.other(&e.0));
            }
        }
    }

    /// Keeps the values `keep` says to; the number dropped.
    fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) -> usize {
        let before = self.len();
        if self.global.as_ref().is_some_and(|v| !keep(v)) {
            self.global = None;
        }
        self.ints.retain(|e| keep(&e.1));
        self.v4.retain(|e| keep(&e.1));
        self.v6.retain(|e| keep(&e.1));
        self.other.retain(|e| keep(&e.1));
        before - self.len()
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.global
            .iter()
            .chain(self.ints.iter().map(|e| &e.1))
            .chain(self.v4.iter().map(|e| &e.1))
            .chain(self.v6.iter().map(|e| &e.1))
            .chain(self.other.iter().map(|e| &e.1))
    }
}

/// Hashes keys with secret per-store seeds: inline keys with two rounds of
/// a folded multiply, others with std's SipHash.
struct KeyHasher {
    seeds: [u64; 4],
    other: RandomState,
}

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl KeyHasher {
    fn new() -> Self {
        let other = RandomState::new();
        let seed = |i: u64| other.hash_one(i) | 1;
        Self {
            seeds: [seed(0), seed(1), seed(2), seed(3)],
            other,
        }
    }

    #[inline]
    fn int(&self, k: u64) -> u64 {
        let s = &self.seeds;
        fold(fold(k ^ s[0], s[1]) ^ s[2], s[3])
    }

    #[inline]
    fn pair(&self, k: [u64; 2]) -> u64 {
        let s = &self.seeds;
        fold(fold(k[0] ^ s[0], k[1] ^ s[1]) ^ s[2], s[3])
    }

    fn other(&self, key: &Key) -> u64 {
        self.other.hash_one(key)
    }

    #[inline(always)]
    fn slot<'a>(&self, key: &'a Key) -> Slot<'a> {
        let parts = key.parts();
        let hash = match parts {
            Parts::Global => 0,
            Parts::Int(k) => self.int(k),
            Parts::V4(k) => self.int(u64::from(k)),
            Parts::V6(k) => self.pair(k),
            Parts::Other(k) => self.other(k),
        };
        Slot { parts, hash }
    }
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
            .field("max_keys", &self.inner.max_keys)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// A store on the system clock holding at most 1,000,000 keys per
    /// policy.
    #[must_use]
    pub fn new() -> Self {
        Self::with(
            SystemClock,
            DEFAULT_MAX_KEYS,
            default_shards(DEFAULT_MAX_KEYS),
        )
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

/// About four shards per core (between 4 and 64), the count in that range
/// whose tables, holding `max_keys` keys between them, are densest: a hash
/// table doubles in size once it is 7/8 full, so a store whose shards
/// fill up just past that line would hold twice the memory it needs.
fn default_shards(max_keys: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
    let target = (cores * 4).next_power_of_two().clamp(4, 64);
    let buckets = |shards: usize| {
        let per = max_keys.div_ceil(shards);
        // Keys land in shards unevenly: leave room for a few standard
        // deviations more than the average.
        let need = per + 4 * per.isqrt() + 16;
        shards * (need * 8).div_ceil(7).next_power_of_two()
    };
    (target..=target * 2)
        .filter(|&s| s <= max_keys.max(1))
        .min_by_key(|&s| (buckets(s), s))
        .unwrap_or(1)
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

    /// Holds at most `max_keys` keys per policy (default 1,000,000), and
    /// that many before it forgets any.
    ///
    /// ```
    /// use tower_ratelimit::key::Key;
    /// use tower_ratelimit::store::Check;
    /// use tower_ratelimit::{MemoryStore, Policy, PolicySet, Quota};
    ///
    /// let store = MemoryStore::builder().max_keys(1_000).build().unwrap();
    /// let set = PolicySet::new(vec![Policy::new("p", Quota::per_hour(10))]).unwrap();
    /// for n in 0..1_000_u64 {
    ///     store.decide_now(Check::new(&Key::from(n), &set, 1));
    /// }
    /// assert_eq!(store.len(), 1_000);
    /// store.decide_now(Check::new(&Key::from(1_000_u64), &set, 1));
    /// assert!(store.len() <= 1_000);
    /// ```
    #[must_use]
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Spreads keys over `shards` locks (default: about four per core,
    /// between 4 and 64, the number that fills tables densely at the key
    /// cap).
    #[must_use]
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// The store, or an error naming a bad setting.
    pub fn build(self) -> Result<MemoryStore<C>, ConfigError> {
        let shards = self.shards.unwrap_or_else(|| default_shards(self.max_keys));
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
        // A first read sets a clock up (`SystemClock` calibrates the
        // counter), here rather than in the first request.
        clock.now_micros();
        Self {
            inner: Arc::new(Inner {
                clock,
                hasher: KeyHasher::new(),
                shards: (0..shards).map(|_| Padded(Mutex::default())).collect(),
                max_keys,
                counts: Mutex::default(),
            }),
        }
    }

    /// The number of keys held now (state not yet forgotten), counting a
    /// key once per policy that holds state for it.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| lock(s).tables.iter().map(Table::len).sum::<usize>())
            .sum()
    }

    /// Whether no key is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides `check` now, synchronously: [`Store::decide_now`], which
    /// for this store always answers and never fails.
    pub fn decide_now(&self, check: Check<'_>) -> Decision {
        let inner = &*self.inner;
        let asked = check
            .at_micros()
            .unwrap_or_else(|| inner.clock.now_micros());
        let key = inner.hasher.slot(check.key());
        let mut shard = lock(&inner.shards[inner.shard_of(&key)]);
        let now = asked.max(shard.now);
        shard.now = now;
        let set = check.policies();
        if let [p] = set.params() {
            if p.algorithm.is_level() && check.op() == Op::Acquire && check.max_wait().is_none() {
                if let Some(d) = shard.decide_tat(inner, p, &key, now, check.cost()) {
                    return d;
                }
            }
        }
        shard.decide(inner, &check, &key, now)
    }
}

impl<C> Inner<C> {
    #[inline]
    fn shard_of(&self, key: &Slot<'_>) -> usize {
        // The tables use the low bits of the hash and the top seven; the
        // shard is picked by bits 32 to 56.
        let bits = (key.hash >> 32) & ((1 << 25) - 1);
        ((bits * self.shards.len() as u64) >> 25) as usize
    }

    /// The count of keys of the policy `p` names, shared by every shard.
    fn count(&self, p: &Params) -> Arc<AtomicUsize> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((.., c)) = counts
            .iter()
            .find(|(n, f, _)| std::ptr::eq(*n, p.name) && *f == p.fingerprint)
        {
            return Arc::clone(c);
        }
        let c = Arc::new(AtomicUsize::new(0));
        counts.push((p.name, p.fingerprint, Arc::clone(&c)));
        c
    }
}

impl<C: Clock> Store for MemoryStore<C> {
    type Future = Ready<Result<Decision, StoreError>>;

    fn decide(&self, check: Check<'_>) -> Self::Future {
        ready(Ok(MemoryStore::decide_now(self, check)))
    }

    #[inline]
    fn decide_now(&self, check: Check<'_>) -> Option<Result<Decision, StoreError>> {
        Some(Ok(MemoryStore::decide_now(self, check)))
    }
}

#[inline]
fn lock(shard: &Padded) -> MutexGuard<'_, Shard> {
    // A panic while holding the lock cannot leave a shard half-written in a
    // way that matters: states are replaced whole, and at worst those being
    // decided are lost, as if forgotten.
    shard.0.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shard {
    /// The index of policy `p`'s table, made if it has none here yet.
    #[inline]
    fn table<C>(&mut self, inner: &Inner<C>, p: &Params) -> usize {
        match self.index.get(p.id as usize) {
            Some(&i) if i > 0 => i as usize - 1,
            _ => self.new_table(inner, p),
        }
    }

    #[cold]
    fn new_table<C>(&mut self, inner: &Inner<C>, p: &Params) -> usize {
        let id = p.id as usize;
        if self.index.len() <= id {
            self.index.resize(id + 1, 0);
        }
        self.index[id] = u32::try_from(self.tables.len() + 1).expect("fewer than 2^32 tables");
        self.tables.push(Table {
            params: *p,
            count: inner.count(p),
            sweep_at: MIN_SWEEP,
            states: if p.algorithm.is_level() {
                States::Level {
                    tats: Keyed::default(),
                    ahead: Keyed::default(),
                }
            } else {
                States::Other(Keyed::default())
            },
        });
        self.tables.len() - 1
    }

    /// The common case, decided on the state's one word: a GCRA-family
    /// policy alone, in reject mode. `None` when the key's state is a
    /// reservation ahead, which [`decide`](Self::decide) handles.
    #[inline]
    fn decide_tat<C>(
        &mut self,
        inner: &Inner<C>,
        p: &Params,
        key: &Slot<'_>,
        now: u64,
        cost: u64,
    ) -> Option<Decision> {
        let i = self.table(inner, p);
        let table = &mut self.tables[i];
        let States::Level { tats, .. } = &mut table.states else {
            unreachable!("a GCRA-family policy keeps levels")
        };
        let Some(tat) = tats.get_mut(key) else {
            return table.decide_new(inner, key, now, cost);
        };
        let (decision, after) = algorithm::decide_tat(p, tat.get(), now, cost);
        if let Some(level) = after {
            match level.tat(p) {
                Some(t) => *tat = Tat::new(t),
                None => table.spill(inner, key, level),
            }
        }
        Some(decision)
    }

    /// Any check: the states of every policy of the set are taken out of
    /// their tables, decided on by [`algorithm`], and put back.
    #[inline(never)]
    fn decide<C>(
        &mut self,
        inner: &Inner<C>,
        check: &Check<'_>,
        key: &Slot<'_>,
        now: u64,
    ) -> Decision {
        let set = check.policies();
        let mut tables = Few::<usize>::new(set.len());
        for (t, p) in tables.as_mut().iter_mut().zip(set.params()) {
            *t = self.table(inner, p);
        }
        let mut states = Few::<Option<State>>::new(set.len());
        let mut held = Few::<bool>::new(set.len());
        for ((s, h), &t) in states
            .as_mut()
            .iter_mut()
            .zip(held.as_mut())
            .zip(tables.as_mut().iter())
        {
            (*h, *s) = self.tables[t].take(key, now);
        }
        let states = states.as_mut();
        algorithm::trim(set, states, now);
        let cost = check.cost();
        let decision = match check.op() {
            Op::Acquire => algorithm::decide(set, states, now, cost, check.max_wait()),
            Op::Peek => algorithm::check(set, states, now, cost, check.max_wait()),
            Op::Release => {
                algorithm::release(set, states, cost);
                algorithm::check(set, states, now, 0, None)
            }
            // Permits in memory are counted, not leased: nothing runs out.
            Op::Renew => algorithm::check(set, states, now, 0, None),
            Op::Reset => {
                states.iter_mut().for_each(|s| *s = None);
                algorithm::check(set, states, now, 0, None)
            }
        };
        for ((s, &h), &t) in states
            .iter_mut()
            .zip(held.as_mut().iter())
            .zip(tables.as_mut().iter())
        {
            let table = &mut self.tables[t];
            match (s.take(), h) {
                (Some(state), true) => table.put(inner, key, state, now),
                (Some(state), false) => table.add(inner, key, state, now),
                (None, true) => {
                    table.count.fetch_sub(1, Ordering::Relaxed);
                }
                (None, false) => {}
            }
        }
        decision
    }
}

impl Table {
    /// [`Shard::decide_tat`] for a key with no state in `tats`.
    #[inline(never)]
    fn decide_new<C>(
        &mut self,
        inner: &Inner<C>,
        key: &Slot<'_>,
        now: u64,
        cost: u64,
    ) -> Option<Decision> {
        let States::Level { ahead, .. } = &mut self.states else {
            unreachable!("a GCRA-family policy keeps levels")
        };
        if !ahead.is_empty() && ahead.contains(key) {
            return None;
        }
        let (decision, after) = algorithm::decide_tat(&self.params, 0, now, cost);
        if let Some(level) = after {
            self.add(inner, key, State(Repr::Level(level)), now);
        }
        Some(decision)
    }

    /// Moves a key's state whose one word does not fit from `tats` to
    /// `ahead`.
    #[cold]
    fn spill<C>(&mut self, inner: &Inner<C>, key: &Slot<'_>, level: Level) {
        let States::Level { tats, ahead } = &mut self.states else {
            unreachable!("a GCRA-family policy keeps levels")
        };
        tats.remove(key);
        ahead.insert(key, level, &inner.hasher);
    }

    fn len(&self) -> usize {
        match &self.states {
            States::Level { tats, ahead } => tats.len() + ahead.len(),
            States::Other(states) => states.len(),
        }
    }

    /// Takes `key`'s state out, as [`algorithm`] sees it at `now`: whether
    /// the key was here, and its state (`None` for a bucket that has
    /// refilled, which is no state at all).
    fn take(&mut self, key: &Slot<'_>, now: u64) -> (bool, Option<State>) {
        match &mut self.states {
            States::Level { tats, ahead } => {
                if let Some(t) = tats.remove(key) {
                    let level = Level::from_tat(&self.params, t.get(), now);
                    return (true, level.map(|l| State(Repr::Level(l))));
                }
                let level = ahead.remove(key);
                (level.is_some(), level.map(|l| State(Repr::Level(l))))
            }
            States::Other(states) => {
                let state = states.remove(key);
                (state.is_some(), state)
            }
        }
    }

    /// Puts back the state of a key that was here.
    fn put<C>(&mut self, inner: &Inner<C>, key: &Slot<'_>, state: State, now: u64) {
        let hasher = &inner.hasher;
        match (&mut self.states, state.0) {
            (States::Level { tats, ahead }, Repr::Level(level)) => {
                match level.tat(&self.params).filter(|_| level.last <= now) {
                    Some(t) => tats.insert(key, Tat::new(t), hasher),
                    None => ahead.insert(key, level, hasher),
                }
            }
            (States::Other(states), repr) => states.insert(key, State(repr), hasher),
            (States::Level { .. }, _) => unreachable!("a GCRA-family policy keeps levels"),
        }
    }

    /// Adds the state of a key new to this policy, making room for it
    /// within the cap. A key the cap leaves no room for is not kept: it is
    /// forgotten at once, as evicted keys are.
    fn add<C>(&mut self, inner: &Inner<C>, key: &Slot<'_>, state: State, now: u64) {
        let len = self.len();
        let over = self.count.fetch_add(1, Ordering::Relaxed) >= inner.max_keys;
        if over || len >= self.sweep_at {
            let mut freed = self.sweep(now);
            if over && freed == 0 {
                freed = self.evict((len / EVICT_SHARE).max(1));
            }
            self.sweep_at = (self.len() * 2).max(MIN_SWEEP);
            self.count.fetch_sub(freed, Ordering::Relaxed);
            if over && freed == 0 {
                self.count.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        }
        self.put(inner, key, state, now);
    }

    /// Drops every key whose state is full at `now`; how many.
    fn sweep(&mut self, now: u64) -> usize {
        let p = &self.params;
        match &mut self.states {
            States::Level { tats, ahead } => {
                let drained = now.saturating_mul(p.drain);
                tats.retain(|t| t.get() > drained) + ahead.retain(|l| l.full_at(p) > now)
            }
            States::Other(states) => states.retain(|s| s.full_at(p) > now),
        }
    }

    /// Forgets the `n` keys closest to refilling; how many.
    fn evict(&mut self, n: usize) -> usize {
        let p = self.params;
        let tat_full = |t: &Tat| p.drain_div.div_ceil(t.get());
        let mut times: Vec<u64> = match &self.states {
            States::Level { tats, ahead } => tats
                .values()
                .map(tat_full)
                .chain(ahead.values().map(|l| l.full_at(&p)))
                .collect(),
            States::Other(states) => states.values().map(|s| s.full_at(&p)).collect(),
        };
        if times.is_empty() {
            return 0;
        }
        let n = n.min(times.len());
        let (_, &mut cutoff, _) = times.select_nth_unstable(n - 1);
        let mut budget = n;
        let mut evict = |full_at: u64| {
            if full_at <= cutoff && budget > 0 {
                budget -= 1;
                false
            } else {
                true
            }
        };
        match &mut self.states {
            States::Level { tats, ahead } => {
                tats.retain(|t| evict(tat_full(t))) + ahead.retain(|l| evict(l.full_at(&p)))
            }
            States::Other(states) => states.retain(|s| evict(s.full_at(&p))),
        }
    }
}

/// A few values on the stack (the usual one to four policies), more on
/// the heap.
enum Few<T> {
    Stack([T; 4], usize),
    Heap(Vec<T>),
}

impl<T: Default> Few<T> {
    fn new(n: usize) -> Self {
        if n <= 4 {
            Few::Stack(Default::default(), n)
        } else {
            Few::Heap((0..n).map(|_| T::default()).collect())
        }
    }

    fn as_mut(&mut self) -> &mut [T] {
        match self {
            Few::Stack(v, n) => &mut v[..*n],
            Few::Heap(v) => v,
        }
    }
}
