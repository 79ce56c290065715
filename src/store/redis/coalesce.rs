//! Coalescing: requests for one key and policy set that arrive while a
//! call for them is in flight wait for it, then go to Redis together in
//! one call, whose script decides them one by one in the order they
//! arrived. Each gets the answer it would have had alone; a hot key costs
//! Redis one call per round trip, not one per request.
//!
//! A key's calls go one at a time ("a lane"): the first request sends its
//! own call; requests that find it in flight queue behind it. When it is
//! answered, a task takes the queue's oldest requests that ask alike (the
//! same op, mode and given time) and sends them as one call, and so on
//! until the queue is empty. A queued request dropped before its call is
//! sent (its caller went away, or it timed out) is left out and counts for
//! nothing. Requests in one call share Redis's `TIME`: the answer of
//! deciding them back to back within one call. Between calls, the oldest
//! queued requests that the denied cache denies are answered from it, so a
//! key over its limit leaves the lane once a call has refreshed its states.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hashbrown::HashTable;
use tokio::sync::oneshot;

use super::denied::Denied;
use super::{Call, Inner, RedisConnection, Request};
use crate::decision::Decision;
use crate::error::StoreError;
use crate::key::Key;
use crate::quota::PolicySet;
use crate::store::{Check, Op};

/// The most requests one call decides.
pub(crate) const MAX_BATCH: usize = 512;

/// The answer a queued request waits for.
pub(crate) type Answer = oneshot::Receiver<Result<Decision, StoreError>>;

#[derive(Default)]
pub(crate) struct Lanes {
    // Hashed once per request: joining and handing on find the lane by the
    // same hash.
    hasher: RandomState,
    by_key: Mutex<HashTable<Lane>>,
}

/// A key's policy set with a call in flight, and the requests waiting.
struct Lane {
    hash: u64,
    key: Key,
    set: PolicySet,
    queue: VecDeque<Waiter>,
}

impl Lane {
    fn is(&self, key: &Key, set: &PolicySet) -> bool {
        self.key == *key && self.set.same_as(set)
    }
}

struct Waiter {
    op: Op,
    wait: bool,
    at: Option<u64>,
    request: Request,
    tx: oneshot::Sender<Result<Decision, StoreError>>,
}

/// What a request does on arrival.
pub(crate) enum Joined {
    /// Nothing in flight for its key, and the denied cache answered it.
    Local(Decision),
    /// Nothing in flight for its key: it sends its own call, and hands the
    /// lane on when done.
    Lead(Lead),
    /// A call is in flight: it waits for its answer.
    Wait(Answer),
    /// The queue is full: it goes alone, outside the lane.
    Alone,
}

/// Requests that go to Redis in one call.
pub(crate) struct Batch {
    pub(crate) call: Call,
    pub(crate) requests: Vec<Request>,
    answers: Vec<oneshot::Sender<Result<Decision, StoreError>>>,
}

impl Batch {
    /// A call of one request, answered by its caller.
    pub(crate) fn one(call: Call, request: Request) -> Self {
        Self {
            call,
            requests: vec![request],
            answers: Vec::new(),
        }
    }

    /// Hands each request its answer.
    pub(crate) fn answer(self, result: Result<Vec<Decision>, StoreError>) {
        match result {
            Ok(decisions) => {
                for (tx, d) in self.answers.into_iter().zip(decisions) {
                    let _ = tx.send(Ok(d));
                }
            }
            Err(e) => {
                for tx in self.answers {
                    let _ = tx.send(Err(e.copy()));
                }
            }
        }
    }
}

impl Lanes {
    fn lock(&self) -> MutexGuard<'_, HashTable<Lane>> {
        self.by_key.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hash(&self, key: &Key) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Whether a call for `key` under `set` is in flight.
    pub(crate) fn busy(&self, key: &Key, set: &PolicySet) -> bool {
        self.lock()
            .find(self.hash(key), |l| l.is(key, set))
            .is_some()
    }

    /// Joins `key`'s lane for `call`'s policy set with `request`. With
    /// nothing in flight, `local` may answer it first: the denied cache,
    /// whose states are only current when no call of this store is about
    /// to change them.
    pub(crate) fn join(
        &self,
        inner: &Arc<Inner>,
        conn: &RedisConnection,
        key: &Key,
        call: &Call,
        request: Request,
        local: impl FnOnce() -> Option<Decision>,
    ) -> Joined {
        let hash = self.hash(key);
        let mut table = self.lock();
        if let Some(lane) = table.find_mut(hash, |l| l.is(key, &call.set)) {
            if lane.queue.len() >= MAX_BATCH {
                return Joined::Alone;
            }
            let (tx, rx) = oneshot::channel();
            lane.queue.push_back(Waiter {
                op: call.op,
                wait: call.wait,
                at: call.at,
                request,
                tx,
            });
            return Joined::Wait(rx);
        }
        if let Some(d) = local() {
            return Joined::Local(d);
        }
        table.insert_unique(
            hash,
            Lane {
                hash,
                key: key.clone(),
                set: call.set.clone(),
                queue: VecDeque::new(),
            },
            |l| l.hash,
        );
        Joined::Lead(Lead {
            inner: Arc::clone(inner),
            conn: conn.clone(),
            hash,
            key: key.clone(),
            set: call.set.clone(),
        })
    }

    /// The next requests of the lane, oldest first, that ask alike; `None`
    /// (and the lane closed) when none waits. Called between calls, when
    /// nothing is in flight: a request the denied cache now denies is
    /// answered from it (a denial changes nothing, so leaving it out of the
    /// sequence changes no other answer).
    fn next(&self, hash: u64, key: &Key, set: &PolicySet, denied: &Denied) -> Option<Batch> {
        let mut table = self.lock();
        let Ok(mut entry) = table.find_entry(hash, |l| l.is(key, set)) else {
            return None;
        };
        let lane = entry.get_mut();
        // Requests given up on before their call is sent count for nothing.
        lane.queue.retain(|w| !w.tx.is_closed());
        // The oldest requests the denied cache denies are answered from it,
        // up to the first it does not: a later one must see what the
        // earlier ones do.
        while let Some(w) = lane.queue.front() {
            let check = Check::new(key, &lane.set, w.request.cost)
                .with_op(w.op)
                .with_max_wait(w.request.max_wait)
                .with_at_micros(w.at)
                .with_lease(w.request.lease);
            let Some(d) = denied.answer(&check) else {
                break;
            };
            if let Some(w) = lane.queue.pop_front() {
                let _ = w.tx.send(Ok(d));
            }
        }
        let Some(head) = lane.queue.front() else {
            entry.remove();
            return None;
        };
        let (op, wait, at) = (head.op, head.wait, head.at);
        let alike = lane
            .queue
            .iter()
            .take(MAX_BATCH)
            .take_while(|w| (w.op, w.wait, w.at) == (op, wait, at))
            .count();
        let mut batch = Batch {
            call: Call {
                set: lane.set.clone(),
                op,
                wait,
                at,
            },
            requests: Vec::with_capacity(alike),
            answers: Vec::with_capacity(alike),
        };
        for w in lane.queue.drain(..alike) {
            batch.requests.push(w.request);
            batch.answers.push(w.tx);
        }
        Some(batch)
    }

    /// Closes the lane: whoever waits in it is answered with an error.
    fn abandon(&self, hash: u64, key: &Key, set: &PolicySet) {
        if let Ok(entry) = self.lock().find_entry(hash, |l| l.is(key, set)) {
            entry.remove();
        }
    }
}

/// The call in flight on a lane. Dropped (its call answered, or its
/// future dropped), it hands the lane to a task that sends what waits.
pub(crate) struct Lead {
    inner: Arc<Inner>,
    conn: RedisConnection,
    hash: u64,
    key: Key,
    set: PolicySet,
}

impl Drop for Lead {
    fn drop(&mut self) {
        let Some(batch) =
            self.inner
                .lanes
                .next(self.hash, &self.key, &self.set, &self.inner.denied)
        else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to send from: the waiting requests fail.
            batch.answer(Err(super::no_runtime()));
            self.inner.lanes.abandon(self.hash, &self.key, &self.set);
            return;
        };
        let drain = Drain {
            inner: Arc::clone(&self.inner),
            hash: self.hash,
            key: self.key.clone(),
            set: self.set.clone(),
            finished: false,
        };
        runtime.spawn(drain.run(self.conn.clone(), batch));
    }
}

/// Sends a lane's batches until none waits.
struct Drain {
    inner: Arc<Inner>,
    hash: u64,
    key: Key,
    set: PolicySet,
    finished: bool,
}

impl Drain {
    async fn run(mut self, mut conn: RedisConnection, first: Batch) {
        let mut batch = first;
        loop {
            let result = self.inner.decide_batch(&mut conn, &self.key, &batch).await;
            batch.answer(result);
            match self
                .inner
                .lanes
                .next(self.hash, &self.key, &self.set, &self.inner.denied)
            {
                Some(next) => batch = next,
                None => break,
            }
        }
        self.finished = true;
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        // The task stopped early (a panic, a runtime shutting down): no
        // request may wait on a lane nobody drains.
        if !self.finished {
            self.inner.lanes.abandon(self.hash, &self.key, &self.set);
        }
    }
}
