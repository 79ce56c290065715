//! [`RateLimitLayer`] and its builder, where the configuration is checked.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use crate::config::{FailurePolicy, OnLimit, Shared};
use crate::error::ConfigError;
use crate::key::{Global, UnitCost};
use crate::limiter::Engine;
use crate::quota::{Policy, PolicySet};
use crate::response::{ErrorRejection, HeaderStyle, HttpRejection, ResponseConfig};
use crate::service::RateLimit;
#[cfg(feature = "memory")]
use crate::store::MemoryStore;

/// Rate-limits the service it wraps. Every service it makes, and every
/// clone of them, shares one limiter.
///
/// ```
/// use std::time::Duration;
/// use tower_ratelimit::{OnLimit, Policy, Quota, RateLimitLayer, key::Header};
///
/// let layer = RateLimitLayer::builder()
///     .policy(Policy::new("burst", Quota::per_second(10)))
///     .policy(Policy::new("daily", Quota::per_day(10_000)))
///     .key(Header::new("x-api-key"))
///     .on_limit(OnLimit::Wait { max: Duration::from_millis(500) })
///     .build()
///     .expect("valid configuration");
/// # let _ = layer;
/// ```
pub struct RateLimitLayer<K, St, C = UnitCost, M = HttpRejection> {
    shared: Arc<Shared<K, St, C>>,
    _mode: std::marker::PhantomData<fn() -> M>,
}

impl<K, St, C, M> Clone for RateLimitLayer<K, St, C, M> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            _mode: std::marker::PhantomData,
        }
    }
}

impl<K, St, C, M> fmt::Debug for RateLimitLayer<K, St, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("policies", &self.shared.engine.policies.policies())
            .field("on_limit", &self.shared.on_limit)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "memory")]
impl RateLimitLayer<Global, MemoryStore> {
    /// Starts configuring a layer: one global key, the in-memory store,
    /// reject mode, IETF headers, fail open.
    pub fn builder() -> RateLimitLayerBuilder<Global, MemoryStore> {
        RateLimitLayerBuilder::with_store(MemoryStore::new())
    }
}

impl<K, St, C, M> RateLimitLayer<K, St, C, M> {
    /// The layer's policies.
    #[must_use]
    pub fn policies(&self) -> &PolicySet {
        &self.shared.engine.policies
    }

    /// The store the layer decides with.
    #[must_use]
    pub fn store(&self) -> &St {
        &self.shared.engine.store
    }
}

impl<S, K, St, C, M> Layer<S> for RateLimitLayer<K, St, C, M> {
    type Service = RateLimit<S, K, St, C, M>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, Arc::clone(&self.shared))
    }
}

/// Builds a [`RateLimitLayer`]; see [`RateLimitLayer::builder`].
#[must_use]
pub struct RateLimitLayerBuilder<K, St, C = UnitCost, M = HttpRejection> {
    settings: Settings,
    key: K,
    store: St,
    cost: C,
    _mode: std::marker::PhantomData<fn() -> M>,
}

/// The builder's settings that do not change its type.
#[derive(Debug)]
struct Settings {
    policies: Vec<Policy>,
    on_limit: OnLimit,
    headers: HeaderStyle,
    reject_missing_key: bool,
    failure: FailurePolicy,
    attach_decision: bool,
    hold_until_body_end: bool,
}

impl<K: fmt::Debug, St, C, M> fmt::Debug for RateLimitLayerBuilder<K, St, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayerBuilder")
            .field("settings", &self.settings)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<St> RateLimitLayerBuilder<Global, St> {
    /// Starts configuring a layer that decides with `store`.
    pub fn with_store(store: St) -> Self {
        Self {
            settings: Settings {
                policies: Vec::new(),
                on_limit: OnLimit::Reject,
                headers: HeaderStyle::Ietf,
                reject_missing_key: false,
                failure: FailurePolicy::FailOpen,
                attach_decision: true,
                hold_until_body_end: false,
            },
            key: Global,
            store,
            cost: UnitCost,
            _mode: std::marker::PhantomData,
        }
    }
}

impl<K, St, C, M> RateLimitLayerBuilder<K, St, C, M> {
    /// Adds a policy. A request must fit every policy; one that does not is
    /// charged to none of them.
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .policy(Policy::new("burst", Quota::per_second(5)))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(layer.policies().len(), 1);
    /// ```
    pub fn policy(mut self, policy: Policy) -> Self {
        self.settings.policies.push(policy);
        self
    }

    /// Adds several policies.
    pub fn policies(mut self, policies: impl IntoIterator<Item = Policy>) -> Self {
        self.settings.policies.extend(policies);
        self
    }

    /// Sets how requests are keyed: a [`KeyExtractor`](crate::key::KeyExtractor)
    /// such as [`PeerIp`](crate::key::PeerIp),
    /// [`Header`](crate::key::Header) or a closure. Default:
    /// [`Global`], one limit for all.
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimitLayer, key::PeerIp};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .policy(Policy::new("per-ip", Quota::per_minute(60)))
    ///     .key(PeerIp::new())
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn key<K2>(self, key: K2) -> RateLimitLayerBuilder<K2, St, C, M> {
        RateLimitLayerBuilder {
            settings: self.settings,
            key,
            store: self.store,
            cost: self.cost,
            _mode: std::marker::PhantomData,
        }
    }

    /// Decides with `store` instead of a new [`MemoryStore`].
    ///
    /// ```
    /// use tower_ratelimit::{MemoryStore, Policy, Quota, RateLimitLayer};
    ///
    /// let shared = MemoryStore::new();
    /// let layer = RateLimitLayer::builder()
    ///     .store(shared.clone())
    ///     .policy(Policy::new("burst", Quota::per_second(5)))
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn store<St2>(self, store: St2) -> RateLimitLayerBuilder<K, St2, C, M> {
        RateLimitLayerBuilder {
            settings: self.settings,
            key: self.key,
            store,
            cost: self.cost,
            _mode: std::marker::PhantomData,
        }
    }

    /// Sets each request's cost in units, a [`Cost`](crate::key::Cost) such
    /// as a closure. Default: 1.
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
    ///
    /// // Uploads cost one unit per started MiB.
    /// let layer = RateLimitLayer::builder()
    ///     .policy(Policy::new("upload", Quota::per_minute(100)))
    ///     .cost(|req: &http::Request<()>| {
    ///         let len: u64 = req
    ///             .headers()
    ///             .get(http::header::CONTENT_LENGTH)
    ///             .and_then(|v| v.to_str().ok()?.parse().ok())
    ///             .unwrap_or(0);
    ///         len.div_ceil(1 << 20).max(1)
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn cost<C2>(self, cost: C2) -> RateLimitLayerBuilder<K, St, C2, M> {
        RateLimitLayerBuilder {
            settings: self.settings,
            key: self.key,
            store: self.store,
            cost,
            _mode: std::marker::PhantomData,
        }
    }

    /// Answers limited requests with a boxed
    /// [`RateLimited`](crate::RateLimited) error instead of a `429`
    /// response: for services that are not HTTP services.
    ///
    /// ```
    /// use tower::{ServiceBuilder, service_fn};
    /// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .policy(Policy::new("jobs", Quota::per_second(100)))
    ///     .reject_with_error()
    ///     .build()
    ///     .unwrap();
    /// let svc = ServiceBuilder::new()
    ///     .layer(layer)
    ///     .service(service_fn(|job: u32| async move { Ok::<_, std::io::Error>(job * 2) }));
    /// # let _ = svc;
    /// ```
    pub fn reject_with_error(self) -> RateLimitLayerBuilder<K, St, C, ErrorRejection> {
        RateLimitLayerBuilder {
            settings: self.settings,
            key: self.key,
            store: self.store,
            cost: self.cost,
            _mode: std::marker::PhantomData,
        }
    }

    /// Sets what happens over the limit (default [`OnLimit::Reject`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_ratelimit::{OnLimit, Policy, Quota, RateLimitLayer};
    ///
    /// // Pace calls to a third-party API instead of failing them.
    /// let layer = RateLimitLayer::builder()
    ///     .policy(Policy::new("upstream", Quota::per_second(5)))
    ///     .on_limit(OnLimit::Wait { max: Duration::from_secs(10) })
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn on_limit(mut self, on_limit: OnLimit) -> Self {
        self.settings.on_limit = on_limit;
        self
    }

    /// Sets which rate-limit headers responses carry (default
    /// [`HeaderStyle::Ietf`]).
    ///
    /// ```
    /// use tower_ratelimit::{HeaderStyle, Policy, Quota, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .policy(Policy::new("burst", Quota::per_second(5)))
    ///     .headers(HeaderStyle::Legacy)
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn headers(mut self, style: HeaderStyle) -> Self {
        self.settings.headers = style;
        self
    }

    /// Rejects requests the key extractor finds no key for (as limited,
    /// with no retry time), instead of letting them through uncounted.
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimitLayer, key::Header};
    ///
    /// // No API key, no service.
    /// let layer = RateLimitLayer::builder()
    ///     .policy(Policy::new("per-key", Quota::per_second(5)))
    ///     .key(Header::new("x-api-key"))
    ///     .reject_missing_key()
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn reject_missing_key(mut self) -> Self {
        self.settings.reject_missing_key = true;
        self
    }

    /// Sets what happens when the store fails (default
    /// [`FailurePolicy::FailOpen`]).
    ///
    /// ```
    /// use tower_ratelimit::{FailurePolicy, Policy, Quota, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .policy(Policy::new("burst", Quota::per_second(5)))
    ///     .on_store_failure(FailurePolicy::FailClosed)
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn on_store_failure(mut self, failure: FailurePolicy) -> Self {
        self.settings.failure = failure;
        self
    }

    /// Whether admitted HTTP requests carry their [`Decision`](crate::Decision)
    /// in their extensions for handlers to read (default `true`). Turning it
    /// off saves the extension map's allocations on requests that arrive
    /// without one.
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .policy(Policy::new("burst", Quota::per_second(5)))
    ///     .decision_in_extensions(false)
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn decision_in_extensions(mut self, attach: bool) -> Self {
        self.settings.attach_decision = attach;
        self
    }

    /// Holds the units of [`Concurrency`](crate::Algorithm::Concurrency)
    /// policies until the response body has been sent (or dropped), not
    /// only until the inner service has produced the response: for
    /// streaming responses, whose work goes on while the body is written.
    ///
    /// ```
    /// use tower_ratelimit::{Policy, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .policy(Policy::concurrency("streams", 100))
    ///     .hold_permits_until_body_end()
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn hold_permits_until_body_end(mut self) -> Self {
        self.settings.hold_until_body_end = true;
        self
    }

    /// Checks the configuration and makes the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field: no policies, two policies with one
    /// name, a zero limit, period or burst, a burst on a window algorithm,
    /// numbers too large to count exactly.
    pub fn build(self) -> Result<RateLimitLayer<K, St, C, M>, ConfigError>
    where
        St: crate::store::Store,
    {
        let policies = PolicySet::new(self.settings.policies)?;
        let config = Arc::new(ResponseConfig::new(
            self.settings.headers,
            &policies,
            self.settings.attach_decision,
            self.settings.hold_until_body_end,
        ));
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                key: self.key,
                cost: self.cost,
                engine: Arc::new(Engine::new(self.store, policies)),
                on_limit: self.settings.on_limit,
                reject_missing_key: self.settings.reject_missing_key,
                failure: self.settings.failure,
                config,
            }),
            _mode: std::marker::PhantomData,
        })
    }
}
