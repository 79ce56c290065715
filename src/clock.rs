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

/// Microseconds since the Unix epoch that never step back, on any core:
/// the clock a [`MemoryStore`](crate::MemoryStore) reads unless told
/// otherwise.
///
/// It reads [`OsClock`]'s time. With feature `tsc` (on by default) it
/// reads it through the CPU's time-stamp counter, with
/// [`quanta`](https://docs.rs/quanta) as `governor` does, for about a third
/// of the cost (~8 ns a read here, against ~25):
/// - the counter is scaled to time by `quanta`'s calibration and set
///   against [`OsClock`] when first read and once a second after, so it
///   stays within microseconds of it;
/// - it never steps back: the counters of two cores may disagree by a
///   little (governor#299), and a correction may set the time back by a
///   few microseconds, so the clock keeps the latest time it has given, to
///   every thread, and gives none earlier; across a step back it stands
///   still until the counter catches up;
/// - where the processor has no invariant counter, `quanta` reads the
///   operating system's monotonic clock instead, and it costs what
///   [`OsClock`] does.
///
/// Without feature `tsc` it is [`OsClock`].
///
/// ```
/// use std::time::{SystemTime, UNIX_EPOCH};
/// use tower_ratelimit::clock::{Clock, OsClock, SystemClock};
///
/// let first = SystemClock.now_micros();
/// let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
/// assert!(wall.abs_diff(first) < 60_000_000); // on the wall clock
/// assert!(SystemClock.now_micros() >= first); // and never back
/// assert!(OsClock.now_micros().abs_diff(SystemClock.now_micros()) < 1_000); // OsClock's time
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now_micros(&self) -> u64 {
        #[cfg(feature = "tsc")]
        {
            tsc::now_micros()
        }
        #[cfg(not(feature = "tsc"))]
        {
            OsClock.now_micros()
        }
    }
}

/// Microseconds since the Unix epoch that never step back, read from the
/// operating system on every call: the wall clock read once, then advanced
/// by the monotonic clock (`std::time::Instant`).
///
/// Windows line up with the wall clock (and with Redis's `TIME`) as they
/// were when the process first read this clock, while an NTP step cannot
/// move time backwards, which the algorithms would read as a reservation
/// ahead of every key. [`SystemClock`] reads the same time, more cheaply
/// with feature `tsc`.
///
/// ```
/// use tower_ratelimit::MemoryStore;
/// use tower_ratelimit::clock::{Clock, OsClock};
///
/// let first = OsClock.now_micros();
/// assert!(OsClock.now_micros() >= first);
/// let store = MemoryStore::builder().clock(OsClock).build()?;
/// # let _ = store;
/// # Ok::<(), tower_ratelimit::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct OsClock;

impl Clock for OsClock {
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

/// [`SystemClock`]'s time through the time-stamp counter.
#[cfg(feature = "tsc")]
mod tsc {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::{Clock, OsClock};

    /// µs between corrections against [`OsClock`].
    pub(super) const SYNC_MICROS: u64 = 1_000_000;

    /// The time on the process's one counter clock: every thread shares
    /// its latest time, so none reads an earlier time than another has.
    #[inline]
    pub(super) fn now_micros() -> u64 {
        static TSC: OnceLock<Tsc> = OnceLock::new();
        TSC.get_or_init(Tsc::new).now_micros()
    }

    #[derive(Debug)]
    pub(super) struct Tsc {
        clock: quanta::Clock,
        /// The counter's raw reading when the clock was made.
        base: u64,
        /// µs: [`OsClock`]'s time minus the counter's µs since `base`, as
        /// of the last correction.
        pub(super) offset: AtomicU64,
        /// The counter's µs since `base` at which to correct next.
        pub(super) next_sync: AtomicU64,
        /// The latest time given, on a line of its own: it is written
        /// about once a microsecond, `offset` and `next_sync` once a
        /// second.
        pub(super) last: Padded,
    }

    /// An atomic alone on its cache line.
    #[derive(Debug)]
    #[repr(align(128))]
    pub(super) struct Padded(pub(super) AtomicU64);

    impl Tsc {
        /// Calibrating the counter takes a few milliseconds, once.
        pub(super) fn new() -> Self {
            let clock = quanta::Clock::new();
            let base = clock.raw();
            let tsc = Self {
                clock,
                base,
                offset: AtomicU64::new(0),
                next_sync: AtomicU64::new(0),
                last: Padded(AtomicU64::new(0)),
            };
            tsc.sync(0);
            tsc
        }

        /// The counter's µs since `base`.
        #[inline]
        pub(super) fn counter_micros(&self) -> u64 {
            self.clock.delta_as_nanos(self.base, self.clock.raw()) / 1_000
        }

        /// Sets the clock to [`OsClock`]'s time as the counter reads
        /// `since`; returns that time.
        #[cold]
        fn sync(&self, since: u64) -> u64 {
            let now = OsClock.now_micros();
            self.offset
                .store(now.saturating_sub(since), Ordering::Relaxed);
            self.next_sync
                .store(since.saturating_add(SYNC_MICROS), Ordering::Relaxed);
            now
        }

        /// The counter's time, or the latest given if that is later.
        #[inline]
        pub(super) fn now_micros(&self) -> u64 {
            let since = self.counter_micros();
            let now = if since >= self.next_sync.load(Ordering::Relaxed) {
                self.sync(since)
            } else {
                self.offset.load(Ordering::Relaxed).saturating_add(since)
            };
            // A read of `last` sees no older value than any this thread
            // has seen or that happened before it (coherence); written
            // only forwards, it gives no time earlier than one given.
            let last = self.last.0.load(Ordering::Relaxed);
            if now <= last {
                return last;
            }
            now.max(self.last.0.fetch_max(now, Ordering::Relaxed))
        }
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
    use super::tsc::{SYNC_MICROS, Tsc};
    use super::*;

    /// Within a millisecond of the OS clock read just before and after.
    fn close_to_os(now: impl Fn() -> u64) {
        let before = OsClock.now_micros();
        let now = now();
        let after = OsClock.now_micros();
        assert!(
            before - 1_000 <= now && now <= after + 1_000,
            "{before} <= {now} <= {after}, give or take 1 ms"
        );
    }

    #[test]
    fn reads_the_os_time() {
        for _ in 0..10_000 {
            close_to_os(|| SystemClock.now_micros());
        }
    }

    #[test]
    fn a_correction_brings_a_slow_clock_to_the_os_time() {
        let tsc = Tsc::new();
        // Ten seconds behind, as if the counter had run that much slow.
        tsc.offset.fetch_sub(10_000_000, Ordering::Relaxed);
        tsc.last.0.store(0, Ordering::Relaxed);
        let off = tsc.now_micros();
        assert!(off + 9_000_000 < OsClock.now_micros());
        // The next correction is due within a second of the counter; bring
        // it forward rather than wait.
        let due = tsc.next_sync.swap(0, Ordering::Relaxed);
        assert!(due <= tsc.counter_micros() + SYNC_MICROS);
        close_to_os(|| tsc.now_micros());
        // And the one after is a second on.
        let next = tsc.next_sync.load(Ordering::Relaxed);
        assert!(next >= SYNC_MICROS && next <= tsc.counter_micros() + SYNC_MICROS);
    }

    #[test]
    fn a_correction_back_does_not_step_the_clock_back() {
        let tsc = Tsc::new();
        // Half a second ahead, as if the counter had run that much fast.
        tsc.offset.fetch_add(500_000, Ordering::Relaxed);
        let ahead = tsc.now_micros();
        assert!(ahead > OsClock.now_micros() + 400_000);
        // Corrected now, the counter's time is half a second earlier than
        // the last given: the clock stands still at that instead.
        tsc.next_sync.store(0, Ordering::Relaxed);
        let corrected = tsc.now_micros();
        assert!(corrected >= ahead, "{corrected} < {ahead}");
        assert!(tsc.offset.load(Ordering::Relaxed) + tsc.counter_micros() < ahead);
        // Once the OS's time passes it, the clock moves with it again.
        while OsClock.now_micros() <= ahead + 1_000 {
            std::thread::yield_now();
        }
        assert!(tsc.now_micros() > ahead);
        close_to_os(|| tsc.now_micros());
    }

    #[test]
    fn never_back_across_threads() {
        // Each read is taken under a lock holding the latest read by any
        // thread: whichever thread (core) reads next must not read less.
        let latest = std::sync::Mutex::new(0_u64);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..50_000 {
                        let mut seen = latest.lock().unwrap();
                        let now = SystemClock.now_micros();
                        assert!(now >= *seen, "{now} < {seen}");
                        *seen = now;
                    }
                });
            }
        });
    }
}
