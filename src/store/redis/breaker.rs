//! Skipping a failing Redis (or one failing Cluster node) for a cool-down,
//! then letting one request probe it before all traffic goes back.
//!
//! Closed: every call goes; `threshold` availability failures in a row open
//! it. Open: calls are skipped, failing at once, until the cool-down ends.
//! Then the first call is the probe and the others are still skipped until
//! it answers: an answer closes the breaker, a failure opens it for another
//! cool-down. A probe dropped before it is answered hands the probe on to
//! the next call. Data errors on one key (`WRONGTYPE`) are answers: they
//! say the node works. A lost connection fails every call in flight on it
//! at once: that is one failure, not one per call, so a connection killed
//! under load (`CLIENT KILL`, a proxy's reset) costs a reconnection, not a
//! cool-down.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::clock::duration_micros;

/// Skips Redis for a cool-down after repeated failures.
pub(crate) struct Breaker {
    threshold: u32,
    /// µs, saturated: `Duration::MAX` opens it for good.
    cool_down: u64,
    failures: AtomicU32,
    start: Instant,
    /// µs since `start` until which calls are skipped; 0 while closed.
    open_until: AtomicU64,
    /// A probe is in flight.
    probing: AtomicBool,
    /// µs since `start` when the last lost connection was counted.
    lost_at: AtomicU64,
}

/// Whether a call may go.
pub(crate) enum Admit<'a> {
    /// Closed: go.
    Go,
    /// The cool-down is over and this call probes: its outcome closes or
    /// reopens the breaker.
    Probe(Probe<'a>),
    /// Open: fail at once.
    Skip,
}

/// The probe's right to close the breaker; dropped unanswered, it lets the
/// next call probe.
pub(crate) struct Probe<'a> {
    breaker: &'a Breaker,
    done: bool,
}

impl Probe<'_> {
    /// Takes in the probe's outcome: an answer (`true`) closes the breaker,
    /// an availability failure opens it for another cool-down.
    pub(crate) fn finish(mut self, answered: bool) {
        self.done = true;
        let b = self.breaker;
        if answered {
            b.failures.store(0, Ordering::Relaxed);
            if b.open_until.swap(0, Ordering::Relaxed) != 0 {
                crate::observe::skipping(-1.0);
            }
        } else {
            b.open();
        }
        b.probing.store(false, Ordering::Release);
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.probing.store(false, Ordering::Release);
        }
    }
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cool_down: Duration) -> Self {
        crate::observe::skipping(0.0);
        Self {
            threshold: threshold.max(1),
            cool_down: duration_micros(cool_down),
            failures: AtomicU32::new(0),
            start: Instant::now(),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            lost_at: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        // 0 means closed: the clock starts at 1.
        duration_micros(self.start.elapsed()).saturating_add(1)
    }

    fn open(&self) {
        let until = self.now().saturating_add(self.cool_down);
        self.open_until.store(until, Ordering::Relaxed);
    }

    /// Whether calls are being skipped: open, and either the cool-down has
    /// not ended or a probe is in flight.
    pub(crate) fn is_open(&self) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        until != 0 && (self.now() < until || self.probing.load(Ordering::Acquire))
    }

    /// Whether a call may go now.
    pub(crate) fn admit(&self) -> Admit<'_> {
        let until = self.open_until.load(Ordering::Relaxed);
        if until == 0 {
            return Admit::Go;
        }
        if self.now() < until {
            return Admit::Skip;
        }
        match self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => Admit::Probe(Probe {
                breaker: self,
                done: false,
            }),
            Err(_) => Admit::Skip,
        }
    }

    /// Takes in the outcome of a call admitted with [`Admit::Go`]:
    /// `threshold` availability failures in a row open the breaker.
    pub(crate) fn record(&self, answered: bool) {
        if answered {
            self.failures.store(0, Ordering::Relaxed);
        } else if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= self.threshold {
            self.failures.store(0, Ordering::Relaxed);
            // Calls sent before it opened do not push the cool-down on.
            if self.open_until.load(Ordering::Relaxed) == 0 {
                self.open();
                crate::observe::skipping(1.0);
            }
        }
    }

    /// Takes in a call admitted with [`Admit::Go`] and sent at `sent` that
    /// failed because its connection was lost: a failure, unless a loss
    /// counted since it was sent was the same one.
    pub(crate) fn record_lost(&self, sent: Instant) {
        let sent = duration_micros(sent.saturating_duration_since(self.start)).saturating_add(1);
        if self.lost_at.fetch_max(self.now(), Ordering::Relaxed) <= sent {
            self.record(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(b: &Breaker, n: u32) {
        for _ in 0..n {
            b.record(false);
        }
    }

    #[test]
    fn an_endless_cool_down_opens_for_good_without_overflowing() {
        let b = Breaker::new(2, Duration::MAX);
        fail(&b, 2);
        assert!(b.is_open());
        assert!(matches!(b.admit(), Admit::Skip));
    }

    #[test]
    fn after_the_cool_down_one_call_probes_and_its_answer_closes() {
        let b = Breaker::new(1, Duration::ZERO);
        fail(&b, 1);
        let Admit::Probe(probe) = b.admit() else {
            panic!("the first call after the cool-down probes");
        };
        assert!(matches!(b.admit(), Admit::Skip), "one probe at a time");
        probe.finish(true);
        assert!(matches!(b.admit(), Admit::Go));
    }

    #[test]
    fn a_failed_probe_reopens_and_a_dropped_one_hands_the_probe_on() {
        let b = Breaker::new(1, Duration::from_secs(60));
        fail(&b, 1);
        b.open_until.store(1, Ordering::Relaxed);
        let Admit::Probe(probe) = b.admit() else {
            panic!("probe")
        };
        drop(probe);
        let Admit::Probe(probe) = b.admit() else {
            panic!("the next call probes")
        };
        probe.finish(false);
        assert!(matches!(b.admit(), Admit::Skip), "open for another minute");
    }

    #[test]
    fn calls_in_flight_on_a_lost_connection_fail_as_one() {
        let b = Breaker::new(2, Duration::from_secs(60));
        let sent = Instant::now();
        std::thread::sleep(Duration::from_millis(1));
        for _ in 0..10 {
            b.record_lost(sent);
        }
        assert!(matches!(b.admit(), Admit::Go), "ten calls, one loss");
        std::thread::sleep(Duration::from_millis(1));
        b.record_lost(Instant::now());
        assert!(
            matches!(b.admit(), Admit::Skip),
            "a call sent after it: a second"
        );
    }

    #[test]
    fn failures_below_the_threshold_or_broken_by_an_answer_do_not_open() {
        let b = Breaker::new(3, Duration::from_secs(60));
        fail(&b, 2);
        b.record(true);
        fail(&b, 2);
        assert!(matches!(b.admit(), Admit::Go));
        fail(&b, 1);
        assert!(matches!(b.admit(), Admit::Skip));
    }
}
