//! Skipping a failing Redis for a cool-down.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::clock::duration_micros;

/// Skips Redis for a cool-down after repeated failures.
pub(crate) struct Breaker {
    threshold: u32,
    cool_down: Duration,
    failures: AtomicU32,
    start: Instant,
    /// µs since `start` until which calls are skipped.
    open_until: AtomicU64,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold,
            cool_down,
            failures: AtomicU32::new(0),
            start: Instant::now(),
            open_until: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        duration_micros(self.start.elapsed())
    }

    pub(crate) fn is_open(&self) -> bool {
        self.now() < self.open_until.load(Ordering::Relaxed)
    }

    pub(crate) fn record(&self, ok: bool) {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
        } else if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= self.threshold {
            self.failures.store(0, Ordering::Relaxed);
            let until = self.now() + duration_micros(self.cool_down);
            self.open_until.store(until, Ordering::Relaxed);
        }
    }
}
