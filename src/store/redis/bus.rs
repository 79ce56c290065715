//! Calls for several keys in one: a store keeps at most a few calls in
//! flight, and the decisions for other keys that arrive meanwhile wait,
//! then go to Redis together in one call whose script decides each key's
//! requests in turn, at one Redis `TIME`.
//!
//! Keys in one call are distinct: a request waits here only as the lead of
//! its key's lane (see [`coalesce`](super::coalesce)), and a lane has one
//! lead. Each key's requests are decided by the body a call for that key
//! alone would run, so each gets the answer it would have had alone, at
//! the call's time. Only acquires and peeks of one policy set, one op,
//! mode and given time go together; a waiting request dropped before its
//! call is sent is left out and counts for nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use super::{Call, Inner, RedisConnection, Request};
use crate::decision::Decision;
use crate::error::StoreError;
use crate::key::Key;

/// The most keys one call decides.
pub(crate) const MAX_KEYS: usize = 64;

/// The most requests of several keys one call decides (a key's own call
/// decides up to [`MAX_BATCH`](super::coalesce::MAX_BATCH)).
const MAX_REQUESTS: usize = 512;

/// The answers a waiting key's requests get.
pub(crate) type Answers = oneshot::Receiver<Result<Vec<Decision>, StoreError>>;

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

/// A key's requests waiting for a call.
struct Waiter {
    key: Key,
    call: Call,
    requests: Vec<Request>,
    tx: oneshot::Sender<Result<Vec<Decision>, StoreError>>,
}

/// What a request does on arrival.
pub(crate) enum Entered {
    /// It sends its own call, and hands on what waits when done.
    Go(Permit),
    /// It waits for a call that takes it along.
    Wait(Answers),
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

    /// Enters `key`'s requests: a call of their own when fewer than the
    /// most are in flight, else a place among those waiting.
    pub(crate) fn enter(
        &self,
        inner: &Arc<Inner>,
        conn: &RedisConnection,
        key: &Key,
        call: &Call,
        requests: impl FnOnce() -> Vec<Request>,
    ) -> Entered {
        let mut state = self.lock();
        if state.in_flight < self.max {
            state.in_flight += 1;
            return Entered::Go(Permit {
                inner: Arc::clone(inner),
                conn: conn.clone(),
            });
        }
        let (tx, rx) = oneshot::channel();
        state.waiting.push_back(Waiter {
            key: key.clone(),
            call: call.clone(),
            requests: requests(),
            tx,
        });
        Entered::Wait(rx)
    }

    /// The oldest waiting requests that go together, or `None` (and one
    /// call fewer in flight) when none waits.
    fn next(&self) -> Option<Vec<Waiter>> {
        let mut state = self.lock();
        // Requests given up on before their call is sent count for nothing.
        state.waiting.retain(|w| !w.tx.is_closed());
        let Some(head) = state.waiting.front() else {
            state.in_flight -= 1;
            return None;
        };
        let call = head.call.clone();
        let mut out: Vec<Waiter> = Vec::with_capacity(state.waiting.len().min(MAX_KEYS));
        let mut rest = VecDeque::with_capacity(state.waiting.len());
        let mut requests = 0;
        for w in state.waiting.drain(..) {
            let fits = out.is_empty()
                || (out.len() < MAX_KEYS && requests + w.requests.len() <= MAX_REQUESTS);
            if fits && w.call.alike(&call) {
                requests += w.requests.len();
                out.push(w);
            } else {
                rest.push_back(w);
            }
        }
        state.waiting = rest;
        Some(out)
    }

    fn leave(&self) {
        self.lock().in_flight -= 1;
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
        let Some(first) = self.inner.bus.next() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to send from: the waiting requests fail.
            for w in first {
                let _ = w.tx.send(Err(super::no_runtime()));
            }
            self.inner.bus.leave();
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
                .map(|w| (&w.key, w.requests.as_slice()))
                .collect();
            let result = self.inner.decide_keys(&mut conn, &call, &keys).await;
            drop(keys);
            match result {
                Ok(decisions) => {
                    for (w, d) in group.into_iter().zip(decisions) {
                        let _ = w.tx.send(Ok(d));
                    }
                }
                Err(e) => {
                    for w in group {
                        let _ =
                            w.tx.send(Err(StoreError::new(e.kind(), e.to_string(), None)));
                    }
                }
            }
            match self.inner.bus.next() {
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
        // place in flight is given back; whoever waits is sent by the next
        // call to end.
        if !self.finished {
            self.inner.bus.leave();
        }
    }
}
