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
    kinds: Mutex<Kinds>,
}

#[derive(Default)]
struct Kinds {
    /// The kinds with a call in flight: few (a store's policy sets by what
    /// is asked), so a list.
    list: Vec<Kind>,
    /// The id the next kind gets.
    next_id: u64,
}

impl Kinds {
    fn index(&self, id: u64) -> Option<usize> {
        self.list.iter().position(|k| k.id == id)
    }
}

/// Calls that may go together, their calls in flight and their waiting
/// requests.
struct Kind {
    /// What a call in flight names its kind by: no copy of `call` per
    /// request.
    id: u64,
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

    fn lock(&self) -> MutexGuard<'_, Kinds> {
        self.kinds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether calls are bounded, so that requests may wait here.
    pub(crate) fn bounded(&self) -> bool {
        self.max > 0
    }

    /// Enters the request leading `key`'s lane: a call of its own (the
    /// lead given back) when fewer than the most are in flight, else a
    /// place among those waiting, which keeps the lead until answered. A
    /// call outside the bound (too many kinds at once) has no permit.
    pub(crate) fn enter(
        &self,
        inner: &Arc<Inner>,
        conn: &RedisConnection,
        key: &Key,
        call: &Call,
        request: Request,
        lead: Lead,
    ) -> Result<(Option<Permit>, Lead), Answer> {
        let mut kinds = self.lock();
        let kind = match kinds.list.iter().position(|k| k.call.alike(call)) {
            Some(i) => &mut kinds.list[i],
            // Too many kinds at once (given times, most likely): this one
            // goes unbounded.
            None if kinds.list.len() >= MAX_KINDS => return Ok((None, lead)),
            None => {
                let id = kinds.next_id;
                kinds.next_id += 1;
                kinds.list.push(Kind {
                    id,
                    call: call.clone(),
                    in_flight: 0,
                    waiting: VecDeque::new(),
                });
                let last = kinds.list.len() - 1;
                &mut kinds.list[last]
            }
        };
        if kind.in_flight < self.max {
            kind.in_flight += 1;
            let permit = Permit {
                inner: Arc::clone(inner),
                conn: conn.clone(),
                kind: kind.id,
            };
            return Ok((Some(permit), lead));
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

    /// The oldest waiting requests of kind `id`, at most [`MAX_KEYS`],
    /// with the kind's call; or `None` (and one call of the kind fewer in
    /// flight) when none waits. Requests given up on are left out, and
    /// those that waited longer than `deadline` are answered that they
    /// timed out; both count for nothing.
    fn next(&self, id: u64, deadline: std::time::Duration) -> Option<(Call, Vec<Waiter>)> {
        let mut out: Vec<Waiter> = Vec::new();
        let mut gone: Vec<Waiter> = Vec::new();
        let mut call = None;
        {
            let mut kinds = self.lock();
            let i = kinds.index(id)?;
            let kind = &mut kinds.list[i];
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
                    kinds.list.swap_remove(i);
                }
            } else {
                call = Some(kind.call.clone());
            }
        }
        // Outside the lock: handing a lane on may send its next call.
        for w in gone {
            let _ = w.tx.send(Err(super::timed_out(deadline)));
        }
        call.map(|c| (c, out))
    }

    /// Gives a place of kind `id` back; with no other call of the kind
    /// in flight to send whatever of it waits, answers that with `error`.
    fn abandon(&self, id: u64, error: impl Fn() -> StoreError) {
        let waiting = {
            let mut kinds = self.lock();
            let Some(i) = kinds.index(id) else {
                return;
            };
            let kind = &mut kinds.list[i];
            kind.in_flight -= 1;
            if kind.in_flight > 0 {
                return;
            }
            kinds.list.swap_remove(i).waiting
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
    /// Its kind.
    kind: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let kind = self.kind;
        let Some((call, first)) = self.inner.bus.next(kind, self.inner.timeout) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to send from: the waiting requests fail.
            for w in first {
                let _ = w.tx.send(Err(super::no_runtime()));
            }
            self.inner.bus.abandon(kind, super::no_runtime);
            return;
        };
        let drain = Drain {
            inner: Arc::clone(&self.inner),
            kind,
            finished: false,
        };
        runtime.spawn(drain.run(self.conn.clone(), call, first));
    }
}

/// Sends what waits, call by call, until nothing does; holds one place in
/// flight meanwhile.
struct Drain {
    inner: Arc<Inner>,
    /// The kind it sends.
    kind: u64,
    finished: bool,
}

impl Drain {
    async fn run(mut self, mut conn: RedisConnection, call: Call, first: Vec<Waiter>) {
        let mut group = first;
        loop {
            // Callers gone since the group was taken count for nothing
            // either (their keys' lanes go on).
            group.retain(|w| !w.tx.is_closed());
            if !group.is_empty() {
                self.send(&mut conn, &call, group).await;
            }
            match self.inner.bus.next(self.kind, self.inner.timeout) {
                Some((_, next)) => group = next,
                None => break,
            }
        }
        self.finished = true;
    }

    /// Decides `group` in one call and answers each; then each key's lane
    /// goes on.
    async fn send(&self, conn: &mut RedisConnection, call: &Call, group: Vec<Waiter>) {
        let keys: Vec<(&Key, Request)> = group.iter().map(|w| (&w.key, w.request)).collect();
        let result = self.inner.decide_keys(conn, call, &keys).await;
        drop(keys);
        let answers: Vec<Result<Decision, StoreError>> = match result {
            Ok(answers) => answers,
            Err(e) => group.iter().map(|_| Err(e.copy())).collect(),
        };
        for (w, answer) in group.into_iter().zip(answers) {
            let _ = w.tx.send(answer);
            // Then the key's lane goes on.
            drop(w.lead);
        }
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        // The task stopped early (a panic, a runtime shutting down): its
        // place in flight is given back, and whoever waits is answered.
        if !self.finished {
            self.inner.bus.abandon(self.kind, || {
                StoreError::new(
                    crate::error::StoreErrorKind::Unavailable,
                    "the task sending the calls this request waited for stopped",
                    None,
                )
            });
        }
    }
}
