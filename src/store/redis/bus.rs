//! Calls for several keys in one: a store keeps at most a few calls of
//! requests that lead their key in flight per kind of call (policy set, op,
//! mode and given time: what may share a call), and the requests for other
//! keys that arrive meanwhile wait, then go to Redis together in one call
//! whose script decides each key's requests in turn, at one Redis `TIME`.
//! Kinds do not wait for each other.
//!
//! A request waits here only as the lead of its key's lane (see
//! [`coalesce`](super::coalesce)), and it keeps the lane until its call is
//! answered: keys in one call are distinct, and the key's lane sends
//! nothing meanwhile (only a request that finds 512 queued for its key
//! goes alone, as it would without this). Each key is decided by the body a call for that key alone
//! would run, so each request gets the answer it would have had alone, at
//! the call's time. Only acquires and peeks of one policy set, op, mode and
//! given time go together.
//!
//! A waiting request whose caller goes away is left out and counts for
//! nothing; one that a call has not taken within the store's deadline is
//! answered that it timed out, and counts for nothing either. At most
//! [`MAX_KINDS`] kinds are bounded at once (each given time is a kind of
//! its own); calls of others go at once, unbounded.

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

/// The most kinds of call bounded at once.
const MAX_KINDS: usize = 64;

/// A store's calls in flight, and the requests waiting for one to end.
pub(crate) struct Bus {
    /// The most calls of a kind in flight; 0: no bound (every key its own
    /// call).
    max: usize,
    /// The kinds with a call in flight: few (a store's policy sets by what
    /// is asked), so a list.
    kinds: Mutex<Vec<Kind>>,
}

/// Calls that may go together, their calls in flight and their waiting
/// requests.
struct Kind {
    call: Call,
    in_flight: usize,
    waiting: VecDeque<Waiter>,
}

/// A key's lead request waiting for a call, with its key's lane.
struct Waiter {
    key: Key,
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
            kinds: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Kind>> {
        self.kinds.lock().unwrap_or_else(PoisonError::into_inner)
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
        let mut kinds = self.lock();
        let kind = match kinds.iter().position(|k| k.call.alike(call)) {
            Some(i) => &mut kinds[i],
            None if kinds.len() >= MAX_KINDS => {
                // Too many kinds at once (given times, most likely): this
                // one goes unbounded.
                let permit = Permit {
                    inner: Arc::clone(inner),
                    conn: conn.clone(),
                    call: None,
                };
                return Ok((permit, lead));
            }
            None => {
                kinds.push(Kind {
                    call: call.clone(),
                    in_flight: 0,
                    waiting: VecDeque::new(),
                });
                let last = kinds.len() - 1;
                &mut kinds[last]
            }
        };
        if kind.in_flight < self.max {
            kind.in_flight += 1;
            let permit = Permit {
                inner: Arc::clone(inner),
                conn: conn.clone(),
                call: Some(call.clone()),
            };
            return Ok((permit, lead));
        }
        let (tx, rx) = oneshot::channel();
        kind.waiting.push_back(Waiter {
            key: key.clone(),
            request,
            since: Instant::now(),
            tx,
            lead,
        });
        Err(rx)
    }

    /// The oldest waiting requests of `call`'s kind, at most [`MAX_KEYS`],
    /// or `None` (and one call of the kind fewer in flight) when none
    /// waits. Requests given up on are left out, and those that waited
    /// longer than `deadline` are answered that they timed out; both count
    /// for nothing.
    fn next(&self, call: &Call, deadline: std::time::Duration) -> Option<Vec<Waiter>> {
        let mut out: Vec<Waiter> = Vec::new();
        let mut gone: Vec<Waiter> = Vec::new();
        {
            let mut kinds = self.lock();
            let i = kinds.iter().position(|k| k.call.alike(call))?;
            let kind = &mut kinds[i];
            let now = Instant::now();
            while out.len() < MAX_KEYS {
                let Some(w) = kind.waiting.pop_front() else {
                    break;
                };
                if w.tx.is_closed() || now.duration_since(w.since) > deadline {
                    gone.push(w);
                } else {
                    out.push(w);
                }
            }
            if out.is_empty() {
                kind.in_flight -= 1;
                if kind.in_flight == 0 {
                    kinds.swap_remove(i);
                }
            }
        }
        // Outside the lock: handing a lane on may send its next call.
        for w in gone {
            let _ = w.tx.send(Err(super::timed_out(deadline)));
        }
        (!out.is_empty()).then_some(out)
    }

    /// Gives a place of `call`'s kind back; with no other call of the kind
    /// in flight to send whatever of it waits, answers that with `error`.
    fn abandon(&self, call: &Call, error: impl Fn() -> StoreError) {
        let waiting = {
            let mut kinds = self.lock();
            let Some(i) = kinds.iter().position(|k| k.call.alike(call)) else {
                return;
            };
            let kind = &mut kinds[i];
            kind.in_flight -= 1;
            if kind.in_flight > 0 {
                return;
            }
            kinds.swap_remove(i).waiting
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
    /// Its kind; `None` for a call outside the bound.
    call: Option<Call>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else {
            return;
        };
        let Some(first) = self.inner.bus.next(&call, self.inner.timeout) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to send from: the waiting requests fail.
            for w in first {
                let _ = w.tx.send(Err(super::no_runtime()));
            }
            self.inner.bus.abandon(&call, super::no_runtime);
            return;
        };
        let drain = Drain {
            inner: Arc::clone(&self.inner),
            call,
            finished: false,
        };
        runtime.spawn(drain.run(self.conn.clone(), first));
    }
}

/// Sends what waits, call by call, until nothing does; holds one place in
/// flight meanwhile.
struct Drain {
    inner: Arc<Inner>,
    /// The kind it sends.
    call: Call,
    finished: bool,
}

impl Drain {
    async fn run(mut self, mut conn: RedisConnection, first: Vec<Waiter>) {
        let mut group = first;
        loop {
            // Callers gone since the group was taken count for nothing
            // either (their keys' lanes go on).
            group.retain(|w| !w.tx.is_closed());
            if group.is_empty() {
                match self.inner.bus.next(&self.call, self.inner.timeout) {
                    Some(next) => group = next,
                    None => break,
                }
                continue;
            }
            let call = &self.call;
            let keys: Vec<(&Key, &[Request])> = group
                .iter()
                .map(|w| (&w.key, std::slice::from_ref(&w.request)))
                .collect();
            let result = self.inner.decide_keys(&mut conn, call, &keys).await;
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
            match self.inner.bus.next(&self.call, self.inner.timeout) {
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
            self.inner.bus.abandon(&self.call, || {
                StoreError::new(
                    crate::error::StoreErrorKind::Unavailable,
                    "the task sending the calls this request waited for stopped",
                    None,
                )
            });
        }
    }
}
