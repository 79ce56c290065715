//! Where the in-memory store gets its time.
//!
//! Every algorithm works on integer microseconds. The store asks a [`Clock`]
//! for "now" once per decision, so a test can swap the system clock for a
//! [`FakeClock`] and script time exactly, or for a [`TokioClock`] and let
//! `tokio::time::pause` drive it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time in whole microseconds.
///
/// A clock must not step backwards: the algorithms keep requests in order,
/// so a state last touched "in the future" reads as a reservation ahead, and
/// requests wait for it. (The in-memory store does not go back with a
/// clock that does: its time stands still until the clock catches up. See
/// [`MemoryStore`](crate::MemoryStore).) Fixed and sliding windows align to multiples of the
/// period on this clock, so an epoch-based clock gives windows that start on
/// the minute or the hour.
///
/// Any `Send + Sync` type can be one: here a clock that reads a shared
/// counter of seconds.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use tower_ratelimit::clock::Clock;
/// use tower_ratelimit::{MemoryStore, Policy, Quota, RateLimiter};
///
/// struct Seconds(Arc<AtomicU64>);
///
/// impl Clock for Seconds {
///     fn now_micros(&self) -> u64 {
///         self.0.load(Ordering::SeqCst) * 1_000_000
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
/// let secs = Arc::new(AtomicU64::new(0));
/// let store = MemoryStore::builder().clock(Seconds(Arc::clone(&secs))).build()?;
/// let limiter = RateLimiter::builder()
///     .store(store)
///     .policy(Policy::new("p", Quota::per_second(1)))
///     .build()?;
/// assert!(limiter.try_acquire("k", 1).await?.is_allowed());
/// assert!(!limiter.try_acquire("k", 1).await?.is_allowed());
/// secs.store(1, Ordering::SeqCst);
/// assert!(limiter.try_acquire("k", 1).await?.is_allowed());
/// # Ok(())
/// # }
/// ```
pub trait Clock: Send + Sync + 'static {
    /// The current time in microseconds.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_ratelimit::clock::{Clock, FakeClock};
    ///
    /// let clock = FakeClock::at_micros(5);
    /// assert_eq!(clock.now_micros(), 5);
    /// clock.advance(Duration::from_micros(10));
    /// assert_eq!(clock.now_micros(), 15);
    /// ```
    fn now_micros(&self) -> u64;
}

/// Microseconds since the Unix epoch that never step back: the wall clock
/// read once, then advanced by the monotonic clock.
///
/// Windows line up with the wall clock (and with Redis's `TIME`) as they
/// were when the process first read this clock, while an NTP step cannot
/// move time backwards, which the algorithms would read as a reservation
/// ahead of every key.
///
/// ```
/// use std::time::{SystemTime, UNIX_EPOCH};
/// use tower_ratelimit::clock::{Clock, SystemClock};
///
/// let first = SystemClock.now_micros();
/// let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
/// assert!(wall.abs_diff(first) < 60_000_000); // on the wall clock
/// assert!(SystemClock.now_micros() >= first); // and never back
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now_micros(&self) -> u64 {
        static ANCHOR: OnceLock<(u64, Instant)> = OnceLock::new();
        let (wall, start) = ANCHOR.get_or_init(|| {
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, duration_micros);
            (wall, Instant::now())
        });
        let since = Instant::now().duration_since(*start);
        // In u64, not as_micros' u128: µs overflow u64 after 584,000 years.
        wall + since.as_secs() * 1_000_000 + u64::from(since.subsec_micros())
    }
}

/// The system clock read through the CPU's time-stamp counter (feature
/// `tsc`, with [`quanta`](https://docs.rs/quanta)): the same microseconds
/// since the Unix epoch as [`SystemClock`], for a third of the cost of a
/// read here (~8 ns against ~25).
///
/// The counter is scaled to nanoseconds by `quanta`'s calibration and set
/// against [`SystemClock`] when the clock is made and once a second after,
/// so it never drifts from the system clock by more than the calibration's
/// error over one second (microseconds). Where the processor has no
/// invariant counter, `quanta` reads the operating system's monotonic clock
/// instead, and this clock costs what [`SystemClock`] does.
///
/// Unlike [`SystemClock`] it can step back by a few microseconds: the
/// once-a-second correction may, and so may the counters of two cores that
/// disagree (governor#299). A [`MemoryStore`](crate::MemoryStore) on it
/// never decides at an earlier time than one it has decided at, so its
/// decisions do not go back; a store of your own on it should do the same.
///
/// ```
/// use tower_ratelimit::MemoryStore;
/// use tower_ratelimit::clock::{Clock, SystemClock, TscClock};
///
/// let clock = TscClock::new();
/// let (before, now, after) = (SystemClock.now_micros(), clock.now_micros(), SystemClock.now_micros());
/// assert!(before - 1_000 <= now && now <= after + 1_000); // the system's time
///
/// let store = MemoryStore::builder().clock(TscClock::new()).build()?;
/// # let _ = store;
/// # Ok::<(), tower_ratelimit::ConfigError>(())
/// ```
#[cfg(feature = "tsc")]
#[derive(Debug)]
pub struct TscClock {
    clock: quanta::Clock,
    /// The counter's raw reading when the clock was made.
    base: u64,
    /// µs: [`SystemClock`]'s time minus the counter's µs since `base`, as
    /// of the last correction.
    offset: AtomicU64,
    /// The counter's µs since `base` at which to correct next.
    next_sync: AtomicU64,
}

/// µs between corrections of a [`TscClock`].
#[cfg(feature = "tsc")]
const TSC_SYNC_MICROS: u64 = 1_000_000;

#[cfg(feature = "tsc")]
impl TscClock {
    /// A clock set to the system's time now. Making the first one in a
    /// process calibrates the counter, which takes a few milliseconds.
    ///
    /// ```
    /// use tower_ratelimit::clock::{Clock, TscClock};
    ///
    /// let clock = TscClock::new();
    /// let a = clock.now_micros();
    /// assert!(a > 1_600_000_000_000_000); // after September 2020
    /// ```
    #[must_use]
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let base = clock.raw();
        let this = Self {
            clock,
            base,
            offset: AtomicU64::new(0),
            next_sync: AtomicU64::new(0),
        };
        this.sync(0);
        this
    }

    /// The counter's µs since `base`.
    #[inline]
    fn counter_micros(&self) -> u64 {
        self.clock.delta_as_nanos(self.base, self.clock.raw()) / 1_000
    }

    /// Sets the clock to [`SystemClock`]'s time as the counter reads
    /// `since`; returns that time.
    #[cold]
    fn sync(&self, since: u64) -> u64 {
        let now = SystemClock.now_micros();
        self.offset
            .store(now.saturating_sub(since), Ordering::Relaxed);
        self.next_sync
            .store(since.saturating_add(TSC_SYNC_MICROS), Ordering::Relaxed);
        now
    }
}

#[cfg(feature = "tsc")]
impl Default for TscClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "tsc")]
impl Clone for TscClock {
    /// A clock on the same counter, corrected on its own.
    fn clone(&self) -> Self {
        Self {
            clock: self.clock.clone(),
            base: self.base,
            offset: AtomicU64::new(self.offset.load(Ordering::Relaxed)),
            next_sync: AtomicU64::new(self.next_sync.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(feature = "tsc")]
impl Clock for TscClock {
    #[inline]
    fn now_micros(&self) -> u64 {
        let since = self.counter_micros();
        if since >= self.next_sync.load(Ordering::Relaxed) {
            return self.sync(since);
        }
        self.offset.load(Ordering::Relaxed).saturating_add(since)
    }
}

/// A clock that only moves when told to. Clones share one time.
///
/// ```
/// use std::time::Duration;
/// use tower_ratelimit::clock::{Clock, FakeClock};
///
/// let clock = FakeClock::new();
/// let seen_by_store = clock.clone();
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(seen_by_store.now_micros(), 1_500_000);
/// ```
#[derive(Debug, Clone, Default)]
pub struct FakeClock {
    micros: Arc<AtomicU64>,
}

impl FakeClock {
    /// A clock standing at time zero.
    ///
    /// ```
    /// use tower_ratelimit::clock::{Clock, FakeClock};
    ///
    /// assert_eq!(FakeClock::new().now_micros(), 0);
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock standing at `micros`.
    ///
    /// ```
    /// use tower_ratelimit::clock::{Clock, FakeClock};
    ///
    /// assert_eq!(FakeClock::at_micros(1_000_000).now_micros(), 1_000_000);
    /// ```
    #[must_use]
    pub fn at_micros(micros: u64) -> Self {
        Self {
            micros: Arc::new(AtomicU64::new(micros)),
        }
    }

    /// Moves time forward by `by` (whole microseconds; the rest is dropped).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_ratelimit::clock::{Clock, FakeClock};
    ///
    /// let clock = FakeClock::new();
    /// clock.advance(Duration::from_millis(2));
    /// clock.advance(Duration::from_nanos(1_999)); // 1 µs; the 999 ns are dropped
    /// assert_eq!(clock.now_micros(), 2_001);
    /// ```
    pub fn advance(&self, by: Duration) {
        self.micros.fetch_add(duration_micros(by), Ordering::SeqCst);
    }

    /// Sets the time to `micros`, forwards or backwards. (A
    /// [`MemoryStore`](crate::MemoryStore) does not decide at a time
    /// earlier than one it has decided at: set back, its time stands still
    /// until this clock passes it again.)
    ///
    /// ```
    /// use tower_ratelimit::clock::{Clock, FakeClock};
    ///
    /// let clock = FakeClock::at_micros(500);
    /// clock.set_micros(2_000);
    /// assert_eq!(clock.now_micros(), 2_000);
    /// clock.set_micros(100);
    /// assert_eq!(clock.now_micros(), 100);
    /// ```
    pub fn set_micros(&self, micros: u64) {
        self.micros.store(micros, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_micros(&self) -> u64 {
        self.micros.load(Ordering::SeqCst)
    }
}

/// Tokio's clock: microseconds since this clock was made, on
/// `tokio::time::Instant`.
///
/// Under `tokio::time::pause()` it stands still and moves with
/// `tokio::time::advance` and with the auto-advance of paused sleeps, so the
/// limiter and the waits in [`OnLimit::Wait`](crate::OnLimit::Wait) share
/// one virtual time in tests.
///
/// ```
/// use std::time::Duration;
/// use tower_ratelimit::clock::{Clock, TokioClock};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let clock = TokioClock::new();
/// assert_eq!(clock.now_micros(), 0);
/// tokio::time::sleep(Duration::from_millis(250)).await; // auto-advanced
/// assert_eq!(clock.now_micros(), 250_000);
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading zero now. Call it inside a tokio runtime when time is
    /// paused, so it starts from the paused time.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_ratelimit::clock::{Clock, TokioClock};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// tokio::time::advance(Duration::from_secs(60)).await;
    /// let clock = TokioClock::new(); // reads zero from here
    /// assert_eq!(clock.now_micros(), 0);
    /// tokio::time::advance(Duration::from_secs(1)).await;
    /// assert_eq!(clock.now_micros(), 1_000_000);
    /// # }
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_micros(&self) -> u64 {
        duration_micros(self.start.elapsed())
    }
}

/// A duration in whole microseconds, saturating at `u64::MAX`.
pub(crate) fn duration_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(all(test, feature = "tsc"))]
mod tsc_tests {
    use super::*;

    /// Within a millisecond of the system clock read just before and after.
    fn close_to_system(clock: &TscClock) {
        let before = SystemClock.now_micros();
        let now = clock.now_micros();
        let after = SystemClock.now_micros();
        assert!(
            before - 1_000 <= now && now <= after + 1_000,
            "{before} <= {now} <= {after}, give or take 1 ms"
        );
    }

    #[test]
    fn reads_the_system_time() {
        let clock = TscClock::new();
        for _ in 0..10_000 {
            close_to_system(&clock);
        }
        close_to_system(&clock.clone());
    }

    #[test]
    fn a_correction_sets_it_back_to_the_system_time() {
        let clock = TscClock::new();
        // Ten seconds off, as if the counter had drifted that far.
        clock.offset.fetch_add(10_000_000, Ordering::Relaxed);
        let off = clock.now_micros();
        assert!(off > SystemClock.now_micros() + 9_000_000);
        // The next correction is due within a second of the counter; bring
        // it forward rather than wait.
        let due = clock.next_sync.swap(0, Ordering::Relaxed);
        assert!(due <= clock.counter_micros() + TSC_SYNC_MICROS);
        close_to_system(&clock);
        // And the one after is a second on.
        let next = clock.next_sync.load(Ordering::Relaxed);
        assert!(next >= TSC_SYNC_MICROS && next <= clock.counter_micros() + TSC_SYNC_MICROS);
    }
}
