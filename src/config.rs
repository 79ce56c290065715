//! The configuration a layer hands to the services it makes: what to do
//! over the limit and when the store fails, and the state every clone
//! shares.

use std::sync::Arc;
use std::time::Duration;

use crate::limiter::Engine;
use crate::response::ResponseConfig;

/// What happens to a request over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnLimit {
    /// Turn it away at once: `429`, or a [`RateLimited`](crate::RateLimited)
    /// error. The default.
    #[default]
    Reject,
    /// Reserve the earliest slot the policies allow and wait for it, if it
    /// is at most `max` away; otherwise turn the request away without
    /// spending anything.
    ///
    /// A waiting request holds its reservation: if it is dropped while
    /// waiting (the client went away, a timeout fired), the slot stays
    /// spent. Refunding it could let a later request through early under
    /// algorithms that count by time, and a client that gives up still
    /// asked.
    Wait {
        /// The longest a request may wait.
        max: Duration,
    },
}

/// What happens when the store cannot decide (Redis down or slow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Let the request through uncounted (logged with the `tracing`
    /// feature). The default: a rate limiter outage should not be an outage.
    #[default]
    FailOpen,
    /// Turn the request away: `503 Service Unavailable` (gRPC status 14),
    /// or the [`StoreError`](crate::StoreError) for non-HTTP services.
    FailClosed,
}

/// The state every clone of a [`RateLimit`](crate::RateLimit) service
/// shares.
pub(crate) struct Shared<K, St, C> {
    pub(crate) key: K,
    pub(crate) cost: C,
    pub(crate) engine: Arc<Engine<St>>,
    pub(crate) on_limit: OnLimit,
    pub(crate) reject_missing_key: bool,
    pub(crate) failure: FailurePolicy,
    pub(crate) config: Arc<ResponseConfig>,
}

impl<K, St, C> Shared<K, St, C> {
    /// The longest wait for a slot: `None` in reject mode.
    pub(crate) fn max_wait(&self) -> Option<Duration> {
        match self.on_limit {
            OnLimit::Reject => None,
            OnLimit::Wait { max } => Some(max),
        }
    }
}
