//! [`RateLimitLayer`] and its builder, where the configuration is checked.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use bytes::Bytes;

use crate::config::{FailurePolicy, OnLimit, Sets, Shared};
use crate::error::ConfigError;
use crate::key::{Global, UnitCost};
use crate::limiter::Engine;
use crate::quota::{Policy, PolicySet, check_name};
use crate::response::{
    Answering, ErrorRejection, HeaderStyle, Hook, HttpRejection, Rejection, ResponseConfig,
};
use crate::select::{LayerPolicies, NeverSkip};
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
pub struct RateLimitLayer<K, St, C = UnitCost, M = HttpRejection, P = LayerPolicies, F = NeverSkip>
{
    shared: Arc<Shared<K, St, C, P, F>>,
    _mode: std::marker::PhantomData<fn() -> M>,
}

impl<K, St, C, M, P, F> Clone for RateLimitLayer<K, St, C, M, P, F> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            _mode: std::marker::PhantomData,
        }
    }
}

impl<K, St, C, M, P, F> fmt::Debug for RateLimitLayer<K, St, C, M, P, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("policy_sets", &self.shared.sets)
            .field("on_limit", &self.shared.on_limit)
            .field("shadow", &self.shared.config.shadow)
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

impl<K, St, C, M, P, F> RateLimitLayer<K, St, C, M, P, F> {
    /// The layer's own policies (added with
    /// [`policy`](RateLimitLayerBuilder::policy)); for a layer with only
    /// named sets, the first of them.
    #[must_use]
    pub fn policies(&self) -> &PolicySet {
        &self.shared.sets.all()[0]
    }

    /// The policy set added as `name` with
    /// [`policy_set`](RateLimitLayerBuilder::policy_set).
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .policy_set("free", [Policy::new("free", Quota::per_minute(10))])
    ///     .policy_set("pro", [Policy::new("pro", Quota::per_minute(1000))])
    ///     .policies_by(|req: &http::Request<()>| {
    ///         Some(if req.headers().contains_key("x-pro") { "pro" } else { "free" })
    ///     })
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(layer.policy_set("pro").unwrap().policies()[0].quota().limit(), 1000);
    /// assert!(layer.policy_set("enterprise").is_none());
    /// ```
    #[must_use]
    pub fn policy_set(&self, name: &str) -> Option<&PolicySet> {
        self.shared.sets.named(name)
    }

    /// The store the layer decides with.
    #[must_use]
    pub fn store(&self) -> &St {
        &self.shared.engine.store
    }
}

impl<S, K, St, C, M, P, F> Layer<S> for RateLimitLayer<K, St, C, M, P, F> {
    type Service = RateLimit<S, K, St, C, M, P, F>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, Arc::clone(&self.shared))
    }
}

/// Builds a [`RateLimitLayer`]; see [`RateLimitLayer::builder`].
#[must_use]
pub struct RateLimitLayerBuilder<
    K,
    St,
    C = UnitCost,
    M = HttpRejection,
    P = LayerPolicies,
    F = NeverSkip,
> {
    settings: Settings,
    key: K,
    store: St,
    cost: C,
    select: P,
    skip: F,
    _mode: std::marker::PhantomData<fn() -> M>,
}

/// The builder's settings that do not change its type.
#[derive(Debug)]
struct Settings {
    policies: Vec<Policy>,
    sets: Vec<(String, Vec<Policy>)>,
    selects: bool,
    on_limit: OnLimit,
    headers: HeaderStyle,
    reject_missing_key: bool,
    failure: FailurePolicy,
    attach_decision: bool,
    hold_until_body_end: bool,
    shadow: bool,
    on_rejection: HookSlot,
}

/// A rejection hook, shown by whether it is set.
#[derive(Default)]
struct HookSlot(Option<Hook>);

impl fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

impl<K: fmt::Debug, St, C, M, P, F> fmt::Debug for RateLimitLayerBuilder<K, St, C, M, P, F> {
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
                sets: Vec::new(),
                selects: false,
                on_limit: OnLimit::Reject,
                headers: HeaderStyle::Ietf,
                reject_missing_key: false,
                failure: FailurePolicy::FailOpen,
                attach_decision: false,
                hold_until_body_end: false,
                shadow: false,
                on_rejection: HookSlot(None),
            },
            key: Global,
            store,
            cost: UnitCost,
            select: LayerPolicies,
            skip: NeverSkip,
            _mode: std::marker::PhantomData,
        }
    }
}

impl<K, St, C, M, P, F> RateLimitLayerBuilder<K, St, C, M, P, F> {
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
    pub fn key<K2>(self, key: K2) -> RateLimitLayerBuilder<K2, St, C, M, P, F> {
        RateLimitLayerBuilder {
            settings: self.settings,
            key,
            store: self.store,
            cost: self.cost,
            select: self.select,
            skip: self.skip,
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
    pub fn store<St2>(self, store: St2) -> RateLimitLayerBuilder<K, St2, C, M, P, F> {
        RateLimitLayerBuilder {
            settings: self.settings,
            key: self.key,
            store,
            cost: self.cost,
            select: self.select,
            skip: self.skip,
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
    pub fn cost<C2>(self, cost: C2) -> RateLimitLayerBuilder<K, St, C2, M, P, F> {
        RateLimitLayerBuilder {
            settings: self.settings,
            key: self.key,
            store: self.store,
            cost,
            select: self.select,
            skip: self.skip,
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
    pub fn reject_with_error(self) -> RateLimitLayerBuilder<K, St, C, ErrorRejection, P, F> {
        RateLimitLayerBuilder {
            settings: self.settings,
            key: self.key,
            store: self.store,
            cost: self.cost,
            select: self.select,
            skip: self.skip,
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
    /// in their extensions for handlers to read (default `false`). Off, a
    /// request costs no allocation for it: on, the decision is boxed into
    /// the request's extension map, which is made too when the request
    /// came without one. The response's rate-limit fields are there either
    /// way.
    ///
    /// ```
    /// use axum::Extension;
    /// use tower_ratelimit::{Decision, Policy, Quota, RateLimitLayer};
    ///
    /// async fn handler(Extension(decision): Extension<Decision>) -> String {
    ///     format!("{} left", decision.remaining())
    /// }
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .policy(Policy::new("burst", Quota::per_second(5)))
    ///     .decision_in_extensions(true)
    ///     .build()
    ///     .unwrap();
    /// let app: axum::Router = axum::Router::new()
    ///     .route("/", axum::routing::get(handler))
    ///     .layer(layer);
    /// # let _ = app;
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

    /// Adds a named policy set, for
    /// [`policies_by`](Self::policies_by) to choose per request: tiers
    /// (`free`, `pro`), routes (`login`), or anything a request shows. A
    /// request checked against a set must fit every policy in it, and one
    /// that does not is charged to none of them. A policy may appear in
    /// several sets (a global limit beside per-route ones): the sets share
    /// its state, so a key's global count is one count whichever set it
    /// was reached through.
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
    ///
    /// let global = Policy::new("global", Quota::per_minute(100));
    /// let layer = RateLimitLayer::builder()
    ///     .policy(global.clone())
    ///     .policy_set("login", [Policy::new("login", Quota::per_minute(5)), global])
    ///     .policies_by(|req: &http::Request<()>| {
    ///         (req.uri().path() == "/login").then_some("login")
    ///     })
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(layer.policy_set("login").unwrap().len(), 2);
    /// ```
    pub fn policy_set(
        mut self,
        name: impl Into<String>,
        policies: impl IntoIterator<Item = Policy>,
    ) -> Self {
        self.settings
            .sets
            .push((name.into(), policies.into_iter().collect()));
        self
    }

    /// Chooses each request's policy set: a
    /// [`SelectPolicies`](crate::select::SelectPolicies), such as a closure
    /// `Fn(&Req) -> Option<&'static str>` returning the name of a set added
    /// with [`policy_set`](Self::policy_set), or `None` for the layer's own
    /// policies (a layer without any lets such requests through uncounted).
    ///
    /// Every policy of the chosen set is decided in one atomic check, so a
    /// global limit and a per-route limit live in one layer and a request
    /// refused by either is charged to neither. Without a selector every
    /// request gets the layer's own policies, at no cost per request.
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimitLayer, key::Header};
    ///
    /// // Free keys get 10 a minute; keys starting with "pro_" get 1000.
    /// let layer = RateLimitLayer::builder()
    ///     .policy_set("free", [Policy::new("free", Quota::per_minute(10))])
    ///     .policy_set("pro", [Policy::new("pro", Quota::per_minute(1000))])
    ///     .policies_by(|req: &http::Request<()>| {
    ///         let key = req.headers().get("x-api-key")?.to_str().ok()?;
    ///         Some(if key.starts_with("pro_") { "pro" } else { "free" })
    ///     })
    ///     .key(Header::new("x-api-key"))
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn policies_by<P2>(self, select: P2) -> RateLimitLayerBuilder<K, St, C, M, P2, F> {
        let mut settings = self.settings;
        settings.selects = true;
        RateLimitLayerBuilder {
            settings,
            key: self.key,
            store: self.store,
            cost: self.cost,
            select,
            skip: self.skip,
            _mode: std::marker::PhantomData,
        }
    }

    /// Lets the requests `skip` picks bypass the limiter entirely: no key
    /// is extracted, the store is not asked, no header is added. For health
    /// checks, internal networks, trusted callers. A
    /// [`Skip`](crate::select::Skip), such as a closure `Fn(&Req) -> bool`.
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .policy(Policy::new("burst", Quota::per_second(10)))
    ///     .skip_if(|req: &http::Request<()>| req.uri().path() == "/health")
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn skip_if<F2>(self, skip: F2) -> RateLimitLayerBuilder<K, St, C, M, P, F2> {
        RateLimitLayerBuilder {
            settings: self.settings,
            key: self.key,
            store: self.store,
            cost: self.cost,
            select: self.select,
            skip,
            _mode: std::marker::PhantomData,
        }
    }

    /// Shadow mode: every request is decided and counted as usual, its
    /// headers and [`Decision`](crate::Decision) say what would have
    /// happened, and none is turned away. A request that would have been
    /// rejected is let through (with the `tracing` feature, logged at
    /// `info` with the names of the policies that would have refused it,
    /// never its key); in wait mode nothing waits; a request without a key
    /// or a failed store lets the request through even with
    /// [`reject_missing_key`](Self::reject_missing_key) or
    /// [`FailurePolicy::FailClosed`]. For trying a limit on real traffic
    /// before enforcing it.
    ///
    /// ```
    /// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .policy(Policy::new("burst", Quota::per_second(10)))
    ///     .shadow()
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn shadow(mut self) -> Self {
        self.settings.shadow = true;
        self
    }

    /// Answers rejected HTTP requests with a response of your own: `hook`
    /// sees the [`Rejection`] (the decision and the request's head) and
    /// returns a response, or `None` to give the built-in answer. The
    /// layer adds `Retry-After` and the rate-limit fields to the response
    /// unless it set them itself. Services set to
    /// [`reject_with_error`](Self::reject_with_error) return errors and do
    /// not call it.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .policy(Policy::new("burst", Quota::per_second(10)))
    ///     .on_rejection(|rejection| {
    ///         if rejection.is_grpc() {
    ///             return None; // the built-in RESOURCE_EXHAUSTED
    ///         }
    ///         let policies: Vec<_> = rejection.violated_policies().collect();
    ///         let body = format!("<h1>Slow down</h1><p>{}</p>", policies.join(", "));
    ///         let res = http::Response::builder()
    ///             .status(http::StatusCode::TOO_MANY_REQUESTS)
    ///             .header("content-type", "text/html")
    ///             .body(Bytes::from(body))
    ///             .unwrap();
    ///         Some(res)
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn on_rejection<H>(mut self, hook: H) -> Self
    where
        H: Fn(&Rejection<'_>) -> Option<http::Response<Bytes>> + Send + Sync + 'static,
    {
        self.settings.on_rejection = HookSlot(Some(Arc::new(hook)));
        self
    }

    /// Checks the configuration and makes the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field: no policies, two policies with one
    /// name, a zero limit, period or burst, a burst on a window algorithm,
    /// numbers too large to count exactly; for policy sets, two sets with
    /// one name, one name for two different policies in different sets,
    /// sets without [`policies_by`](Self::policies_by) to choose among them
    /// or a selector with no sets to choose.
    pub fn build(self) -> Result<RateLimitLayer<K, St, C, M, P, F>, ConfigError>
    where
        St: crate::store::Store,
    {
        let settings = self.settings;
        let sets = policy_sets(settings.policies, settings.sets, settings.selects)?;
        let all: Vec<&PolicySet> = sets.all().iter().collect();
        let config = Arc::new(ResponseConfig::new(Answering {
            style: settings.headers,
            sets: &all,
            on_rejection: settings.on_rejection.0,
            attach_decision: settings.attach_decision,
            hold_until_body_end: settings.hold_until_body_end,
            shadow: settings.shadow,
        }));
        let first = sets.all()[0].clone();
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                key: self.key,
                cost: self.cost,
                select: self.select,
                skip: self.skip,
                sets,
                engine: Arc::new(Engine::new(self.store, first)),
                on_limit: settings.on_limit,
                reject_missing_key: settings.reject_missing_key,
                failure: settings.failure,
                config,
            }),
            _mode: std::marker::PhantomData,
        })
    }
}

/// Checks the layer's own policies and its named sets, and the sets
/// against each other.
fn policy_sets(
    own: Vec<Policy>,
    named: Vec<(String, Vec<Policy>)>,
    selects: bool,
) -> Result<Sets, ConfigError> {
    if !named.is_empty() && !selects {
        return Err(ConfigError::new(
            "policies_by",
            "is not set: add `.policies_by(..)` to choose among the policy sets",
        ));
    }
    if named.is_empty() && selects {
        return Err(ConfigError::new(
            "policy_set",
            "is missing: `.policies_by(..)` has no sets to choose; add them with `.policy_set(..)`",
        ));
    }
    let own = if own.is_empty() && !named.is_empty() {
        None
    } else {
        Some(PolicySet::new(own)?)
    };
    let mut checked: Vec<(String, PolicySet)> = Vec::with_capacity(named.len());
    for (name, policies) in named {
        check_name(&name).map_err(|e| ConfigError::new("policy_set", e.message()))?;
        if checked.iter().any(|(n, _)| *n == name) {
            return Err(ConfigError::new(
                "policy_set",
                format!("has two sets named {name:?}: names must be distinct"),
            ));
        }
        let set = PolicySet::new(policies).map_err(|e| e.in_set(&name))?;
        checked.push((name, set));
    }
    // One name, one policy: the store keeps a policy's state by its name.
    let mut seen: Vec<&Policy> = Vec::new();
    for set in own.iter().chain(checked.iter().map(|(_, s)| s)) {
        for p in set.policies() {
            match seen.iter().find(|q| q.name() == p.name()) {
                Some(q) if *q != p => {
                    return Err(ConfigError::new(
                        "policies",
                        format!(
                            "has two different policies named {:?} in different sets: \
                             a name shared by sets must be the same policy",
                            p.name()
                        ),
                    ));
                }
                Some(_) => {}
                None => seen.push(p),
            }
        }
    }
    Ok(Sets::new(own, checked))
}
