//! How much ([`Quota`]), how it is counted ([`Algorithm`]), and under what
//! name ([`Policy`]).

use std::sync::Arc;
use std::time::Duration;

use crate::clock::duration_micros;
use crate::decision::PolicyInfo;
use crate::error::ConfigError;

/// The lease of [`Policy::concurrency`].
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The most a concurrency policy may hold: Redis counts its permits one
/// lease member per unit.
pub(crate) const MAX_CONCURRENCY: u64 = 100_000;

/// The largest integer every number in a decision must stay below, so the
/// Redis scripts (whose numbers are doubles) compute exactly what Rust does.
pub(crate) const MAX_EXACT: u64 = 1 << 53;

/// How much may be done: `limit` units per `period`, and at most `burst`
/// units at once.
///
/// `limit` and `period` give the rate; `burst` is the most that can be spent
/// back to back after a quiet spell. It defaults to `limit`, so
/// `Quota::per_second(10)` admits 10 requests at once and then one every
/// 100 ms. With `.burst(1)` the same rate admits one request every 100 ms and
/// never two closer together; with `.burst(50)` a client that has been idle
/// for 5 s may send 50 at once.
///
/// ```
/// use std::time::Duration;
/// use tower_ratelimit::Quota;
///
/// let q = Quota::per_minute(60).burst(5);
/// assert_eq!(q.limit(), 60);
/// assert_eq!(q.period(), Duration::from_secs(60));
/// assert_eq!(q.burst_size(), 5);
/// assert_eq!(Quota::per_second(10).burst_size(), 10);
/// ```
///
/// Constructors never fail; the layer's builder checks the numbers (zero
/// limit, zero period, zero burst, numbers too large to count exactly) and
/// returns a [`ConfigError`] naming the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: u64,
    period: Duration,
    burst: Option<u64>,
}

impl Quota {
    /// `limit` units per `period`.
    #[must_use]
    pub const fn new(limit: u64, period: Duration) -> Self {
        Self {
            limit,
            period,
            burst: None,
        }
    }

    /// `limit` units per second.
    #[must_use]
    pub const fn per_second(limit: u64) -> Self {
        Self::new(limit, Duration::from_secs(1))
    }

    /// `limit` units per minute.
    #[must_use]
    pub const fn per_minute(limit: u64) -> Self {
        Self::new(limit, Duration::from_secs(60))
    }

    /// `limit` units per hour.
    #[must_use]
    pub const fn per_hour(limit: u64) -> Self {
        Self::new(limit, Duration::from_secs(3600))
    }

    /// `limit` units per day.
    #[must_use]
    pub const fn per_day(limit: u64) -> Self {
        Self::new(limit, Duration::from_secs(86_400))
    }

    /// The most units that can be spent at once (default: `limit`).
    ///
    /// For [`Algorithm::TokenBucket`] it is the bucket's capacity, for
    /// [`Algorithm::LeakyBucket`] the number of requests the bucket holds.
    /// Window algorithms count exactly `limit` per window and have no burst;
    /// setting one for them is a configuration error.
    #[must_use]
    pub const fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Units per period.
    #[must_use]
    pub const fn limit(&self) -> u64 {
        self.limit
    }

    /// The period.
    #[must_use]
    pub const fn period(&self) -> Duration {
        self.period
    }

    /// The burst size: the one set, or `limit`.
    #[must_use]
    pub const fn burst_size(&self) -> u64 {
        match self.burst {
            Some(b) => b,
            None => self.limit,
        }
    }
}

/// How a policy counts. See the crate docs for a table of what each admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// Generic cell rate algorithm (the default): a bucket of `burst` units
    /// that refills continuously at `limit / period`. A request of cost `c`
    /// is admitted when `c` units are in the bucket.
    ///
    /// `Quota::per_second(10)` admits 10 at once, then one more every
    /// 100 ms; over any span `t` it admits at most `burst + limit·t/period`.
    ///
    /// ```
    /// use tower_ratelimit::algorithm::decide;
    /// use tower_ratelimit::{Algorithm, Policy, PolicySet, Quota};
    /// # fn admitted(set: &PolicySet, s: &mut Vec<Option<tower_ratelimit::algorithm::State>>, at: u64, n: usize) -> usize {
    /// #     (0..n).filter(|_| decide(set, s, at, 1, None).is_allowed()).count()
    /// # }
    /// let set = PolicySet::new(vec![Policy::new("p", Quota::per_second(10))]).unwrap();
    /// let mut state = vec![None];
    /// assert_eq!(admitted(&set, &mut state, 0, 20), 10); // the burst
    /// assert_eq!(admitted(&set, &mut state, 99_999, 5), 0); // times in µs
    /// assert_eq!(admitted(&set, &mut state, 100_000, 5), 1); // one per 100 ms
    /// assert_eq!(admitted(&set, &mut state, 1_100_000, 20), 10); // full again
    /// ```
    #[default]
    Gcra,
    /// A token bucket refilled in steps: `limit` tokens are added every
    /// `period`, up to `burst` (the capacity). The refill clock starts when
    /// a full bucket is first drawn from.
    ///
    /// `Quota::per_minute(100)` admits 100 at once, then nothing until the
    /// minute since the first draw is over, then 100 more.
    ///
    /// ```
    /// use tower_ratelimit::algorithm::decide;
    /// use tower_ratelimit::{Algorithm, Policy, PolicySet, Quota};
    /// # fn admitted(set: &PolicySet, s: &mut Vec<Option<tower_ratelimit::algorithm::State>>, at: u64, n: usize) -> usize {
    /// #     (0..n).filter(|_| decide(set, s, at, 1, None).is_allowed()).count()
    /// # }
    /// let set = PolicySet::new(vec![
    ///     Policy::new("p", Quota::per_minute(100)).with_algorithm(Algorithm::TokenBucket),
    /// ])
    /// .unwrap();
    /// let mut state = vec![None];
    /// assert_eq!(admitted(&set, &mut state, 0, 150), 100);
    /// assert_eq!(admitted(&set, &mut state, 59_999_999, 5), 0);
    /// assert_eq!(admitted(&set, &mut state, 60_000_000, 150), 100);
    /// ```
    TokenBucket,
    /// A token bucket refilled continuously (a "greedy" refill: one token
    /// every `period / limit`). It admits exactly what [`Algorithm::Gcra`]
    /// admits; GCRA is the same bucket stored as one timestamp.
    ///
    /// ```
    /// use tower_ratelimit::algorithm::decide;
    /// use tower_ratelimit::{Algorithm, Policy, PolicySet, Quota};
    /// # fn admitted(set: &PolicySet, s: &mut Vec<Option<tower_ratelimit::algorithm::State>>, at: u64, n: usize) -> usize {
    /// #     (0..n).filter(|_| decide(set, s, at, 1, None).is_allowed()).count()
    /// # }
    /// let set = PolicySet::new(vec![
    ///     Policy::new("p", Quota::per_minute(60).burst(5)).with_algorithm(Algorithm::GreedyTokenBucket),
    /// ])
    /// .unwrap();
    /// let mut state = vec![None];
    /// assert_eq!(admitted(&set, &mut state, 0, 10), 5);
    /// assert_eq!(admitted(&set, &mut state, 1_000_000, 10), 1); // a token a second
    /// ```
    GreedyTokenBucket,
    /// A bucket of `burst` requests draining one every `period / limit`.
    ///
    /// With [`OnLimit::Reject`](crate::OnLimit::Reject) it admits what GCRA
    /// admits. With [`OnLimit::Wait`](crate::OnLimit::Wait) it shapes: every
    /// request waits until the requests ahead of it have drained, so a burst
    /// leaves evenly spaced; a request finding `burst` requests queued ahead
    /// is rejected.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_ratelimit::algorithm::decide;
    /// use tower_ratelimit::{Algorithm, Policy, PolicySet, Quota};
    ///
    /// let set = PolicySet::new(vec![
    ///     Policy::new("p", Quota::per_second(10).burst(3)).with_algorithm(Algorithm::LeakyBucket),
    /// ])
    /// .unwrap();
    /// let mut state = vec![None];
    /// let max = Some(Duration::from_secs(1));
    /// let d: Vec<_> = (0..4).map(|_| decide(&set, &mut state, 0, 1, max)).collect();
    /// let ms = Duration::from_millis;
    /// // A burst leaves one every 100 ms…
    /// assert_eq!([d[0].wait(), d[1].wait(), d[2].wait()], [ms(0), ms(100), ms(200)]);
    /// // …and with three queued the bucket is full.
    /// assert!(!d[3].is_allowed());
    /// ```
    LeakyBucket,
    /// At most `limit` per window, windows aligned to multiples of `period`
    /// on the clock. Cheap, but a client can spend `limit` at the end of one
    /// window and `limit` at the start of the next: up to `2·limit` within
    /// one period around a window edge.
    ///
    /// ```
    /// use tower_ratelimit::algorithm::decide;
    /// use tower_ratelimit::{Algorithm, Policy, PolicySet, Quota};
    /// # fn admitted(set: &PolicySet, s: &mut Vec<Option<tower_ratelimit::algorithm::State>>, at: u64, n: usize) -> usize {
    /// #     (0..n).filter(|_| decide(set, s, at, 1, None).is_allowed()).count()
    /// # }
    /// let set = PolicySet::new(vec![
    ///     Policy::new("p", Quota::per_second(5)).with_algorithm(Algorithm::FixedWindow),
    /// ])
    /// .unwrap();
    /// let mut state = vec![None];
    /// assert_eq!(admitted(&set, &mut state, 999_999, 10), 5); // end of one window
    /// assert_eq!(admitted(&set, &mut state, 1_000_000, 10), 5); // 1 µs later: 10 in 1 µs
    /// ```
    FixedWindow,
    /// Exact: at most `limit` in any span of one `period`, by keeping a log
    /// of admitted requests (memory grows with `limit`).
    ///
    /// ```
    /// use tower_ratelimit::algorithm::decide;
    /// use tower_ratelimit::{Algorithm, Policy, PolicySet, Quota};
    /// # fn admitted(set: &PolicySet, s: &mut Vec<Option<tower_ratelimit::algorithm::State>>, at: u64, n: usize) -> usize {
    /// #     (0..n).filter(|_| decide(set, s, at, 1, None).is_allowed()).count()
    /// # }
    /// let set = PolicySet::new(vec![
    ///     Policy::new("p", Quota::per_second(5)).with_algorithm(Algorithm::SlidingWindowLog),
    /// ])
    /// .unwrap();
    /// let mut state = vec![None];
    /// assert_eq!(admitted(&set, &mut state, 999_999, 10), 5);
    /// assert_eq!(admitted(&set, &mut state, 1_000_000, 10), 0); // no edge effect
    /// assert_eq!(admitted(&set, &mut state, 1_999_999, 10), 5);
    /// ```
    SlidingWindowLog,
    /// The two-window approximation of a sliding window: the previous
    /// window's count weighted by how much of it still overlaps the sliding
    /// window, plus the current window's count, must stay within `limit`.
    /// Constant memory; never admits more than the fixed window would.
    ///
    /// ```
    /// use tower_ratelimit::algorithm::decide;
    /// use tower_ratelimit::{Algorithm, Policy, PolicySet, Quota};
    /// # fn admitted(set: &PolicySet, s: &mut Vec<Option<tower_ratelimit::algorithm::State>>, at: u64, n: usize) -> usize {
    /// #     (0..n).filter(|_| decide(set, s, at, 1, None).is_allowed()).count()
    /// # }
    /// let set = PolicySet::new(vec![
    ///     Policy::new("p", Quota::per_second(10)).with_algorithm(Algorithm::SlidingWindowCounter),
    /// ])
    /// .unwrap();
    /// let mut state = vec![None];
    /// assert_eq!(admitted(&set, &mut state, 0, 20), 10);
    /// // Half way into the next window, half of the last one still counts.
    /// assert_eq!(admitted(&set, &mut state, 1_500_000, 20), 5);
    /// ```
    SlidingWindowCounter,
    /// At most `limit` units in flight at once, across every instance: a
    /// distributed semaphore rather than a rate. A request takes its cost
    /// when admitted and gives it back when it completes (in the layer:
    /// when the inner service's response future finishes or is dropped;
    /// with [`RateLimiter`](crate::RateLimiter): when the
    /// [`Permit`](crate::Permit) is dropped or released).
    ///
    /// The quota's period is the *lease*: in Redis every permit is a lease
    /// that its holder renews while it runs, so the permits of an instance
    /// that crashed come back once their lease runs out.
    /// [`Policy::concurrency`] sets a 30 s lease. A full policy names no
    /// retry time ([`Decision::is_busy`](crate::Decision::is_busy)).
    ///
    /// ```
    /// use tower_ratelimit::algorithm::{decide, release};
    /// use tower_ratelimit::{Algorithm, Policy, PolicySet, Quota};
    ///
    /// let set = PolicySet::new(vec![Policy::concurrency("in-flight", 2)]).unwrap();
    /// assert_eq!(set.policies()[0].algorithm(), Algorithm::Concurrency);
    /// let mut state = vec![None];
    /// assert!(decide(&set, &mut state, 0, 1, None).is_allowed());
    /// assert!(decide(&set, &mut state, 0, 1, None).is_allowed());
    /// let third = decide(&set, &mut state, 0, 1, None);
    /// assert!(third.is_busy());
    /// release(&set, &mut state, 1); // one completes
    /// assert!(decide(&set, &mut state, 0, 1, None).is_allowed());
    /// ```
    Concurrency,
}

impl Algorithm {
    /// Every algorithm, in the order of the table in the crate docs.
    ///
    /// ```
    /// use tower_ratelimit::Algorithm;
    ///
    /// assert_eq!(Algorithm::ALL.len(), 8);
    /// assert_eq!(Algorithm::ALL[0], Algorithm::default());
    /// ```
    pub const ALL: [Algorithm; 8] = [
        Algorithm::Gcra,
        Algorithm::TokenBucket,
        Algorithm::GreedyTokenBucket,
        Algorithm::LeakyBucket,
        Algorithm::FixedWindow,
        Algorithm::SlidingWindowLog,
        Algorithm::SlidingWindowCounter,
        Algorithm::Concurrency,
    ];

    /// The algorithms that limit a rate: every one but
    /// [`Concurrency`](Algorithm::Concurrency).
    ///
    /// ```
    /// use tower_ratelimit::Algorithm;
    ///
    /// assert!(!Algorithm::RATES.contains(&Algorithm::Concurrency));
    /// assert_eq!(Algorithm::RATES.len() + 1, Algorithm::ALL.len());
    /// ```
    pub const RATES: [Algorithm; 7] = [
        Algorithm::Gcra,
        Algorithm::TokenBucket,
        Algorithm::GreedyTokenBucket,
        Algorithm::LeakyBucket,
        Algorithm::FixedWindow,
        Algorithm::SlidingWindowLog,
        Algorithm::SlidingWindowCounter,
    ];

    /// The name used in docs, errors and Redis script names.
    #[must_use]
    pub const fn as_str(&self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::GreedyTokenBucket => "greedy_token_bucket",
            Algorithm::LeakyBucket => "leaky_bucket",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindowLog => "sliding_window_log",
            Algorithm::SlidingWindowCounter => "sliding_window_counter",
            Algorithm::Concurrency => "concurrency",
        }
    }

    /// Whether the algorithm keeps a level that drains continuously: GCRA,
    /// the greedy token bucket and the leaky bucket.
    #[cfg(feature = "memory")]
    pub(crate) const fn is_level(&self) -> bool {
        matches!(
            self,
            Algorithm::Gcra | Algorithm::GreedyTokenBucket | Algorithm::LeakyBucket
        )
    }

    const fn has_burst(&self) -> bool {
        matches!(
            self,
            Algorithm::Gcra
                | Algorithm::TokenBucket
                | Algorithm::GreedyTokenBucket
                | Algorithm::LeakyBucket
        )
    }
}

/// A named quota counted by an algorithm.
///
/// The name identifies the policy's state in the store (together with the
/// request's key) and is what the `RateLimit-Policy` header shows. It may
/// use ASCII letters, digits, `-`, `_` and `.`.
///
/// ```
/// use tower_ratelimit::{Algorithm, Policy, Quota};
///
/// let burst = Policy::new("burst", Quota::per_second(10));
/// let daily = Policy::new("daily", Quota::per_day(10_000)).with_algorithm(Algorithm::FixedWindow);
/// assert_eq!(daily.name(), "daily");
/// assert_eq!(burst.algorithm(), Algorithm::Gcra);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Policy {
    name: Arc<str>,
    quota: Quota,
    algorithm: Algorithm,
}

impl Policy {
    /// A policy counting `quota` with [`Algorithm::Gcra`].
    #[must_use]
    pub fn new(name: impl Into<String>, quota: Quota) -> Self {
        Self {
            name: Arc::from(name.into()),
            quota,
            algorithm: Algorithm::Gcra,
        }
    }

    /// At most `limit` requests in flight at once
    /// ([`Algorithm::Concurrency`]), with a lease of 30 s: a permit whose
    /// holder stops renewing it (a crashed instance) comes back after at most
    /// that long. For another lease, give the quota yourself:
    /// `Policy::new(name, Quota::new(limit, lease)).with_algorithm(Algorithm::Concurrency)`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_ratelimit::{Algorithm, Policy};
    ///
    /// let p = Policy::concurrency("in-flight", 4);
    /// assert_eq!(p.algorithm(), Algorithm::Concurrency);
    /// assert_eq!(p.quota().limit(), 4);
    /// assert_eq!(p.quota().period(), Duration::from_secs(30));
    /// ```
    #[must_use]
    pub fn concurrency(name: impl Into<String>, limit: u64) -> Self {
        Self::new(name, Quota::new(limit, DEFAULT_LEASE)).with_algorithm(Algorithm::Concurrency)
    }

    /// Counts with `algorithm` instead.
    #[must_use]
    pub fn with_algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// The name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The quota.
    #[must_use]
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// The algorithm.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

/// A policy's numbers, checked and reduced to integers the algorithms use.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(
    not(feature = "memory"),
    allow(dead_code, reason = "the stores read what names a policy")
)]
pub(crate) struct Params {
    /// The policy's name, [interned](crate::intern): decisions carry it as
    /// a plain reference, and equal names are the same reference.
    pub(crate) name: &'static str,
    /// What its decisions say of it, interned.
    pub(crate) info: &'static PolicyInfo,
    /// Names the policy by name and fingerprint, process-wide.
    pub(crate) id: u32,
    pub(crate) algorithm: Algorithm,
    /// Units per period.
    pub(crate) limit: u64,
    /// The period in µs.
    pub(crate) period: u64,
    /// The burst (capacity) in units.
    pub(crate) burst: u64,
    /// Bucket algorithms count in ticks: one unit is `unit` ticks and the
    /// bucket drains `drain` ticks per µs. `unit / drain = period / limit`
    /// exactly, reduced by their common divisor so the numbers stay small.
    pub(crate) unit: u64,
    pub(crate) drain: u64,
    /// Division by `unit` and by `drain`, which every decision does.
    pub(crate) unit_div: Divisor,
    pub(crate) drain_div: Divisor,
    /// Names what the state means: algorithm, limit, period and burst.
    /// Stable across processes, so every instance agrees on it.
    pub(crate) fingerprint: u64,
}

/// One policy's numbers as every store decides with them, from
/// [`PolicySet::derived`].
#[derive(Debug, Clone, Copy)]
pub struct Derived<'a>(&'a Params);

impl Derived<'_> {
    /// The algorithm.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.0.algorithm
    }

    /// Units per period.
    #[must_use]
    pub fn limit(&self) -> u64 {
        self.0.limit
    }

    /// The period in µs, rounded up to a whole µs.
    #[must_use]
    pub fn period_micros(&self) -> u64 {
        self.0.period
    }

    /// The most units at once: the burst for buckets, the limit otherwise.
    #[must_use]
    pub fn burst(&self) -> u64 {
        self.0.burst
    }

    /// Ticks per unit: buckets count in ticks, `unit / drain` µs a unit,
    /// exactly `period / limit` reduced by their common divisor.
    #[must_use]
    pub fn unit(&self) -> u64 {
        self.0.unit
    }

    /// Ticks a bucket drains per µs.
    #[must_use]
    pub fn drain(&self) -> u64 {
        self.0.drain
    }

    /// Names the algorithm and quota (not the name), the same in every
    /// process: a stored state is read only under the fingerprint it was
    /// written with.
    #[must_use]
    pub fn fingerprint(&self) -> u64 {
        self.0.fingerprint
    }
}

impl Params {
    fn new(policy: &Policy) -> Result<Self, ConfigError> {
        let q = policy.quota;
        let algorithm = policy.algorithm;
        let err = |field, msg: String| ConfigError::new(field, msg).in_policy(&policy.name);
        if q.limit == 0 {
            return Err(err("limit", "must be at least 1".into()));
        }
        if q.period < Duration::from_micros(1) {
            return Err(err(
                "period",
                format!("must be at least 1µs (got {:?})", q.period),
            ));
        }
        // Rounded up to whole µs, so the rate never rises above the quota's.
        let period = duration_micros(q.period)
            .saturating_add(u64::from(q.period.subsec_nanos() % 1_000 != 0));
        if let Some(b) = q.burst {
            if !algorithm.has_burst() {
                return Err(err(
                    "burst",
                    format!(
                        "does not apply to {}: it admits exactly `limit` at once",
                        algorithm.as_str()
                    ),
                ));
            }
            if b == 0 {
                return Err(err("burst", "must be at least 1".into()));
            }
        }
        let burst = q.burst_size();
        if period >= MAX_EXACT {
            return Err(err(
                "period",
                format!("is too long to count ({:?})", q.period),
            ));
        }
        if q.limit >= MAX_EXACT {
            return Err(err(
                "limit",
                "is too large to count exactly (2^53 at most)".into(),
            ));
        }
        if burst >= MAX_EXACT {
            return Err(err(
                "burst",
                "is too large to count exactly (2^53 at most)".into(),
            ));
        }
        let g = gcd(period, q.limit);
        let (unit, drain) = (period / g, q.limit / g);
        if algorithm.has_burst() && burst.checked_mul(unit).is_none_or(|c| c >= MAX_EXACT) {
            return Err(err(
                "burst",
                format!(
                    "overflows: burst × period / gcd(period, limit) = {burst} × {unit} must stay below 2^53; \
                     choose a limit that divides the period in µs more evenly, or a smaller burst"
                ),
            ));
        }
        if algorithm == Algorithm::Concurrency && q.limit > MAX_CONCURRENCY {
            return Err(err(
                "limit",
                format!(
                    "is too large for a concurrency policy: at most {MAX_CONCURRENCY} in flight"
                ),
            ));
        }
        if algorithm == Algorithm::Concurrency && period < 1_000 {
            return Err(err(
                "period",
                format!(
                    "is the lease of a concurrency policy and must be at least 1ms (got {:?})",
                    q.period
                ),
            ));
        }
        if algorithm == Algorithm::SlidingWindowCounter && q.limit > (1 << 32) {
            return Err(err(
                "limit",
                "overflows: a sliding window counter counts at most 2^32 per window".into(),
            ));
        }
        let fingerprint = fnv1a(&[STATE_FORMAT, algorithm as u64, q.limit, period, burst]);
        let name = crate::intern::str(&policy.name);
        Ok(Self {
            name,
            id: crate::intern::policy_id(name, fingerprint),
            info: crate::intern::policy(PolicyInfo {
                name,
                #[cfg(feature = "metrics")]
                labels: crate::intern::metric_labels(name),
                concurrency: algorithm == Algorithm::Concurrency,
                limit: q.limit,
                period,
            }),
            algorithm,
            limit: q.limit,
            period,
            burst,
            unit,
            drain,
            unit_div: Divisor::new(unit),
            drain_div: Divisor::new(drain),
            fingerprint,
        })
    }

    /// Bucket capacity in ticks.
    #[inline]
    pub(crate) fn capacity(&self) -> u64 {
        self.burst * self.unit
    }
}

/// The version of the form states are stored in (in Redis). It is part of
/// every policy's fingerprint, and so of its Redis keys: state written in
/// another form is never read, it expires.
const STATE_FORMAT: u64 = 2;

/// Dividends [`Divisor`] divides with a multiplication.
pub(crate) const TAT_LIMIT: u64 = 1 << 62;

/// Division by a number fixed when a policy is checked: a multiplication
/// and a shift of its high word instead of a hardware division, exact for
/// every dividend below [`TAT_LIMIT`] (the bucket algorithms' numbers stay
/// below 2^54).
///
/// With `2^l ≥ d` and `m = ⌈2^(62+l) / d⌉`, `⌊n·m / 2^(62+l)⌋ = ⌊n / d⌋`
/// for every `n < 2^62`: `m·d = 2^(62+l) + e` with `0 ≤ e < d`, so the
/// product overshoots `n/d` by `n·e / (d·2^(62+l)) < 1/d`, too little to
/// reach the next integer. Taking `l ≥ 2` makes the shift at least 64, so
/// it is the high word of the product shifted by `l - 2`; `m` fits 64 bits
/// for every `d` but 1, which divides by returning the dividend.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Divisor {
    d: u64,
    /// 0 for `d = 1`.
    m: u64,
    /// `l - 2`: the shift of the product's high word.
    shift: u32,
}

impl Divisor {
    pub(crate) fn new(d: u64) -> Self {
        assert!(d > 0, "a divisor is positive");
        if d == 1 {
            return Self { d, m: 0, shift: 0 };
        }
        let l = (u64::BITS - (d - 1).leading_zeros()).max(2);
        // Below 2^64: d > 2^(l-1) (so the quotient is below 2^63), or
        // l = 2 and d is 2 (2^63), 3 or 4.
        let m = (1_u128 << (62 + l)).div_ceil(u128::from(d));
        Self {
            d,
            m: u64::try_from(m).expect("the multiplier fits 64 bits"),
            shift: l - 2,
        }
    }

    /// `⌊n / d⌋`.
    #[inline]
    pub(crate) fn div(self, n: u64) -> u64 {
        if self.m == 0 {
            return n;
        }
        if n >= TAT_LIMIT {
            return n / self.d;
        }
        (((u128::from(n) * u128::from(self.m)) >> 64) as u64) >> self.shift
    }

    /// `⌈n / d⌉`.
    #[inline]
    pub(crate) fn div_ceil(self, n: u64) -> u64 {
        let q = self.div(n);
        q + u64::from(q * self.d < n)
    }
}

/// FNV-1a over the numbers' little-endian bytes.
fn fnv1a(numbers: &[u64]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for n in numbers {
        for b in n.to_le_bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A checked, non-empty list of policies with distinct names: what a layer
/// and a store work with.
///
/// ```
/// use tower_ratelimit::{Policy, PolicySet, Quota};
///
/// let set = PolicySet::new(vec![
///     Policy::new("burst", Quota::per_second(10)),
///     Policy::new("hourly", Quota::per_hour(1000)),
/// ])
/// .unwrap();
/// assert_eq!(set.len(), 2);
///
/// let dup = PolicySet::new(vec![
///     Policy::new("a", Quota::per_second(1)),
///     Policy::new("a", Quota::per_second(2)),
/// ]);
/// assert_eq!(dup.unwrap_err().field(), "policies");
/// ```
#[derive(Debug, Clone)]
pub struct PolicySet {
    policies: Arc<[Policy]>,
    params: Arc<[Params]>,
    /// Whether a policy counts units in flight, which an admitted request
    /// holds until it completes.
    concurrency: bool,
}

impl PolicySet {
    /// The most policies one set may hold: a Redis decision script keeps
    /// every policy's numbers in Lua locals, of which a function has 200.
    pub const MAX_POLICIES: usize = 16;

    /// Checks every policy and the list as a whole: at least one, at most
    /// [`MAX_POLICIES`](Self::MAX_POLICIES), names distinct.
    ///
    /// Each distinct policy name is then kept for the life of the process,
    /// so that every [`Decision`](crate::Decision) refers to it instead of
    /// copying or sharing it: a program that makes policies with ever new
    /// names keeps each of them (at most 64 bytes apiece).
    pub fn new(policies: Vec<Policy>) -> Result<Self, ConfigError> {
        if policies.is_empty() {
            return Err(ConfigError::new(
                "policies",
                "is empty: add at least one policy with `.policy(..)`",
            ));
        }
        if policies.len() > Self::MAX_POLICIES {
            return Err(ConfigError::new(
                "policies",
                format!(
                    "has {} policies: at most {} are checked at once",
                    policies.len(),
                    Self::MAX_POLICIES
                ),
            ));
        }
        let mut params = Vec::with_capacity(policies.len());
        for (i, p) in policies.iter().enumerate() {
            check_name(&p.name)?;
            if policies[..i].iter().any(|q| q.name == p.name) {
                return Err(ConfigError::new(
                    "policies",
                    format!(
                        "has two policies named {:?}: names must be distinct",
                        &*p.name
                    ),
                ));
            }
            params.push(Params::new(p)?);
        }
        let concurrency = params.iter().any(|p| p.algorithm == Algorithm::Concurrency);
        Ok(Self {
            policies: policies.into(),
            params: params.into(),
            concurrency,
        })
    }

    /// The policies, in the order they were given.
    #[must_use]
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// How many policies.
    #[must_use]
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Always `false`: a set has at least one policy.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    pub(crate) fn params(&self) -> &[Params] {
        &self.params
    }

    /// The integers each policy is decided with, in order: what a backend
    /// that runs the algorithms itself (a script in another store) needs
    /// to agree exactly with [`algorithm::decide`](crate::algorithm::decide).
    ///
    /// ```
    /// use tower_ratelimit::{Policy, PolicySet, Quota};
    ///
    /// let set = PolicySet::new(vec![Policy::new("p", Quota::per_second(3))]).unwrap();
    /// let p = set.derived().next().unwrap();
    /// assert_eq!((p.limit(), p.period_micros(), p.burst()), (3, 1_000_000, 3));
    /// // One unit is `unit` ticks; the bucket drains `drain` ticks a µs.
    /// assert_eq!(p.unit() * 3, p.drain() * 1_000_000);
    /// ```
    pub fn derived(&self) -> impl ExactSizeIterator<Item = Derived<'_>> {
        self.params.iter().map(Derived)
    }

    /// Whether `other` has the same policies (names, algorithms and
    /// quotas) in the same order: the same state in every store.
    #[cfg_attr(not(any(feature = "memory", feature = "redis")), allow(dead_code))]
    pub(crate) fn same_as(&self, other: &PolicySet) -> bool {
        // A policy's id names its name and fingerprint.
        Arc::ptr_eq(&self.params, &other.params)
            || (self.len() == other.len()
                && self
                    .params
                    .iter()
                    .zip(other.params.iter())
                    .all(|(a, b)| a.id == b.id))
    }

    /// Whether a policy is a [`Concurrency`](Algorithm::Concurrency) one.
    pub(crate) fn has_concurrency(&self) -> bool {
        self.concurrency
    }
}

pub(crate) fn check_name(name: &str) -> Result<(), ConfigError> {
    let bad = |msg: &str| Err(ConfigError::new("name", format!("{name:?} {msg}")));
    if name.is_empty() {
        return bad("is empty: a policy needs a name");
    }
    if name.len() > 64 {
        return bad("is longer than 64 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return bad("may only use ASCII letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Divisor, TAT_LIMIT};

    /// A small deterministic generator, so the test needs no dependency.
    fn numbers(mut x: u64) -> impl Iterator<Item = u64> {
        std::iter::from_fn(move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Some(x)
        })
    }

    #[test]
    fn a_divisor_divides_exactly_like_the_hardware() {
        let divisors = [
            1,
            2,
            3,
            7,
            10,
            1_000,
            86_400_000_000,
            (1 << 53) - 1,
            u64::MAX,
        ];
        let dividends = [0, 1, 2, 999, TAT_LIMIT - 1, TAT_LIMIT, u64::MAX];
        let random = numbers(0x9e37_79b9_7f4a_7c15);
        for (i, x) in random.take(20_000).enumerate() {
            let d = if i < divisors.len() {
                divisors[i]
            } else {
                (x >> (x % 64)).max(1)
            };
            let div = Divisor::new(d);
            for n in dividends
                .iter()
                .copied()
                .chain(numbers(x).take(50).map(|n| n >> (n % 64)))
            {
                assert_eq!(div.div(n), n / d, "{n} / {d}");
                assert_eq!(div.div_ceil(n), n.div_ceil(d), "⌈{n} / {d}⌉");
            }
        }
    }
}
