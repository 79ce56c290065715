//! Calls for several keys in one: a store keeps at most a few calls of
//! requests that lead their key in flight, and the requests for other keys
//! that arrive meanwhile wait, then go to Redis together in one call whose
//! script decides each key's requests in turn, at one Redis `TIME`.
//!
//! A request waits here only as the lead of its key's lane (see
//! [`coalesce`](super::coalesce)), and it keeps the lane until its call is
//! answered: keys in one call are distinct, and a key never has two calls
//! in flight. Each key is decided by the body a call for that key alone
//! would run, so each request gets the answer it would have had alone, at
//! the call's time. Only acquires and peeks of one policy set, op, mode and
//! given time go together.
//!
//! A waiting request whose caller goes away is left out and counts for
//! nothing; one that a call has not taken within the store's deadline is
//! answered that it timed out, and counts for nothing either.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::oneshot;

use super::coalesce::{Answer, Lead};
use super::{Call, Inner, RedisConnection, Request};
use crate::decision::Decision;
use crate::error::StoreError;
use crate::key::Key;

/// The most keys one call decides.
pub(crate) const MAX_KEYS: usize = 64;

/// A store's calls in flight, and the requests waiting for one to end.
pub(crate) struct Bus {
    /// The most calls in flight; 0: no bound (every key its own call).
    max: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    in_flight: usize,
    waiting: VecDeque<Waiter>,
}

/// A key's lead request waiting for a call, with its key's lane.
struct Waiter {
    key: Key,
    call: Call,
    request: Request,
    since: Instant,
    tx: oneshot::Sender<Result<Decision, StoreError>>,
    /// Handed on once the request is answered (or left out).
    lead: Lead,
}

impl Bus {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether calls are bounded, so that requests may wait here.
    pub(crate) fn bounded(&self) -> bool {
        self.max > 0
    }

    /// Enters the request leading `key`'s lane: a call of its own (the
    /// lead given back) when fewer than the most are in flight, else a
    /// place among those waiting, which keeps the lead until answered.
    pub(crate) fn enter(
        &self,
        inner: &Arc<Inner>,
        conn: &RedisConnection,
        key: &Key,
        call: &Call,
        request: Request,
        lead: Lead,
    ) -> Result<(Permit, Lead), Answer> {
        let mut state = self.lock();
        if state.in_flight < self.max {
            state.in_flight += 1;
            let permit = Permit {
                inner: Arc::clone(inner),
                conn: conn.clone(),
            };
            return Ok((permit, lead));
        }
        let (tx, rx) = oneshot::channel();
        state.waiting.push_back(Waiter {
            key: key.clone(),
            call: call.clone(),
            request,
            since: Instant::now(),
            tx,
            lead,
        });
        Err(rx)
    }

    /// The oldest waiting requests that go together, or `None` (and one
    /// call fewer in flight) when none waits. Requests given up on are
    /// left out, and those that waited longer than `deadline` are answered
    /// that they timed out; both count for nothing.
    fn next(&self, deadline: std::time::Duration) -> Option<Vec<Waiter>> {
        let mut out: Vec<Waiter> = Vec::new();
        let mut gone: Vec<Waiter> = Vec::new();
        {
            let mut state = self.lock();
            let now = Instant::now();
            let mut rest = VecDeque::with_capacity(state.waiting.len());
            let mut call: Option<Call> = None;
            for w in state.waiting.drain(..) {
                if w.tx.is_closed() || now.duration_since(w.since) > deadline {
                    gone.push(w);
                    continue;
                }
                let head = call.get_or_insert_with(|| w.call.clone());
                if out.len() < MAX_KEYS && w.call.alike(head) {
                    out.push(w);
                } else {
                    rest.push_back(w);
                }
            }
            state.waiting = rest;
            if out.is_empty() {
                state.in_flight -= 1;
            }
        }
        // Outside the lock: handing a lane on may send its next call.
        for w in gone {
            let _ = w.tx.send(Err(super::timed_out(deadline)));
        }
        (!out.is_empty()).then_some(out)
    }

    /// Gives a place in flight back, answering whatever waits with
    /// `error`: nobody is left to send it.
    fn abandon(&self, error: impl Fn() -> StoreError) {
        let waiting = {
            let mut state = self.lock();
            state.in_flight -= 1;
            std::mem::take(&mut state.waiting)
        };
        for w in waiting {
            let _ = w.tx.send(Err(error()));
        }
    }
}

/// A call in flight. Dropped (its call answered, or its future dropped),
/// it hands its place to a task that sends what waits.
pub(crate) struct Permit {
    inner: Arc<Inner>,
    conn: RedisConnection,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(first) = self.inner.bus.next(self.inner.timeout) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to send from: the waiting requests fail.
            for w in first {
                let _ = w.tx.send(Err(super::no_runtime()));
            }
            self.inner.bus.abandon(super::no_runtime);
            return;
        };
        let drain = Drain {
            inner: Arc::clone(&self.inner),
            finished: false,
        };
        runtime.spawn(drain.run(self.conn.clone(), first));
    }
}

/// Sends what waits, call by call, until nothing does; holds one place in
/// flight meanwhile.
struct Drain {
    inner: Arc<Inner>,
    finished: bool,
}

impl Drain {
    async fn run(mut self, mut conn: RedisConnection, first: Vec<Waiter>) {
        let mut group = first;
        loop {
            let call = group[0].call.clone();
            let keys: Vec<(&Key, &[Request])> = group
                .iter()
                .map(|w| (&w.key, std::slice::from_ref(&w.request)))
                .collect();
            let result = self.inner.decide_keys(&mut conn, &call, &keys).await;
            drop(keys);
            match result {
                Ok(answers) => {
                    for (w, answer) in group.into_iter().zip(answers) {
                        let _ = w.tx.send(answer.map(|mut d| d.swap_remove(0)));
                        // Then the key's lane goes on.
                        drop(w.lead);
                    }
                }
                Err(e) => {
                    for w in group {
                        let _ =
                            w.tx.send(Err(StoreError::new(e.kind(), e.to_string(), None)));
                    }
                }
            }
            match self.inner.bus.next(self.inner.timeout) {
                Some(next) => group = next,
                None => break,
            }
        }
        self.finished = true;
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        // The task stopped early (a panic, a runtime shutting down): its
        // place in flight is given back, and whoever waits is answered.
        if !self.finished {
            self.inner.bus.abandon(|| {
                StoreError::new(
                    crate::error::StoreErrorKind::Unavailable,
                    "the task sending the calls this request waited for stopped",
                    None,
                )
            });
        }
    }
}
