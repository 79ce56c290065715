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
