//! The configuration a layer hands to the services it makes: what to do
//! over the limit and when the store fails, which policies apply, and the
//! state every clone shares.

use std::sync::Arc;
use std::time::Duration;

use crate::limiter::Engine;
use crate::quota::PolicySet;
use crate::response::ResponseConfig;

/// What happens to a request over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
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
    /// Decide in a local in-memory store while the shared store fails,
    /// each policy's limit and burst divided by `instances` (rounded up):
    /// this instance's share of a quota that `instances` instances share.
    /// Every request still asks the shared store first (unless it is
    /// cooling down after repeated failures), so decisions go back to it as
    /// soon as it answers. Decisions made locally say so
    /// ([`Decision::is_degraded`](crate::Decision::is_degraded)).
    ///
    /// The local counts start empty and are not merged back: while the
    /// store fails, the instances together admit about what the shared
    /// quota would, if `instances` is right; fewer instances than that admit
    /// less, more admit more.
    ///
    /// ```
    /// use tower_ratelimit::{FailurePolicy, Policy, Quota, RateLimitLayer};
    ///
    /// // Four instances share 1000 a minute: 250 each while Redis is down.
    /// let layer = RateLimitLayer::builder()
    ///     .policy(Policy::new("api", Quota::per_minute(1000)))
    ///     .on_store_failure(FailurePolicy::Fallback { instances: 4 })
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    #[cfg(feature = "memory")]
    Fallback {
        /// How many instances share the quota (at least 1).
        instances: u32,
    },
}

impl FailurePolicy {
    /// Checks the policy's numbers.
    pub(crate) fn check(self) -> Result<Self, crate::ConfigError> {
        #[cfg(feature = "memory")]
        if let FailurePolicy::Fallback { instances: 0 } = self {
            return Err(crate::ConfigError::new(
                "instances",
                "of a fallback must be at least 1: the instances sharing the quota",
            ));
        }
        Ok(self)
    }
}

/// The state every clone of a [`RateLimit`](crate::RateLimit) service
/// shares.
pub(crate) struct Shared<K, St, C, P, F> {
    pub(crate) key: K,
    pub(crate) cost: C,
    pub(crate) select: P,
    pub(crate) skip: F,
    pub(crate) sets: Sets,
    pub(crate) engine: Arc<Engine<St>>,
    pub(crate) on_limit: OnLimit,
    pub(crate) reject_missing_key: bool,
    pub(crate) failure: FailurePolicy,
    pub(crate) config: Arc<ResponseConfig>,
}

/// A layer's policy sets: its own policies, if it has any, at index 0, then
/// the named sets. Indexes are what responses use to find a set's
/// `RateLimit-Policy` value.
#[derive(Debug)]
pub(crate) struct Sets {
    sets: Box<[PolicySet]>,
    /// The name of each set; `None` for the layer's own.
    names: Box<[Option<Box<str>>]>,
}

/// A selector named a set the layer does not have.
pub(crate) struct UnknownSet;

impl Sets {
    pub(crate) fn new(own: Option<PolicySet>, named: Vec<(String, PolicySet)>) -> Self {
        let mut sets = Vec::with_capacity(named.len() + 1);
        let mut names = Vec::with_capacity(named.len() + 1);
        if let Some(own) = own {
            sets.push(own);
            names.push(None);
        }
        for (name, set) in named {
            sets.push(set);
            names.push(Some(name.into_boxed_str()));
        }
        Self {
            sets: sets.into(),
            names: names.into(),
        }
    }

    /// The index of the layer's own set.
    #[inline]
    pub(crate) fn own(&self) -> Option<usize> {
        self.names.first().is_some_and(Option::is_none).then_some(0)
    }

    /// The index of the set a selector named: `None` names the layer's own.
    #[inline]
    pub(crate) fn choose(&self, name: Option<&str>) -> Result<Option<usize>, UnknownSet> {
        let Some(name) = name else {
            return Ok(self.own());
        };
        match self.names.iter().position(|n| n.as_deref() == Some(name)) {
            Some(i) => Ok(Some(i)),
            None => Err(UnknownSet),
        }
    }

    #[inline]
    pub(crate) fn get(&self, index: usize) -> &PolicySet {
        &self.sets[index]
    }

    /// The set named `name`.
    pub(crate) fn named(&self, name: &str) -> Option<&PolicySet> {
        let i = self.names.iter().position(|n| n.as_deref() == Some(name))?;
        Some(&self.sets[i])
    }

    pub(crate) fn all(&self) -> &[PolicySet] {
        &self.sets
    }
}

impl<K, St, C, P, F> Shared<K, St, C, P, F> {
    /// The longest wait for a slot: `None` in reject mode.
    #[inline]
    pub(crate) fn max_wait(&self) -> Option<Duration> {
        match self.on_limit {
            OnLimit::Reject => None,
            OnLimit::Wait { max } => Some(max),
        }
    }
}
