//! Which policies a request is counted against, and which requests are not
//! counted at all: [`SelectPolicies`] and [`Skip`].
//!
//! One layer can hold several policy sets: its own policies (added with
//! [`policy`](crate::RateLimitLayerBuilder::policy)) and named sets (added
//! with [`policy_set`](crate::RateLimitLayerBuilder::policy_set)). A
//! selector, set with
//! [`policies_by`](crate::RateLimitLayerBuilder::policies_by), names the
//! set each request is checked against; every policy of that set is
//! decided in one atomic check, so a request refused by one of them is
//! charged to none.
//!
//! A policy that appears in several sets (a global limit beside per-route
//! ones) keeps one state per key, whichever set it was reached through.
//!
//! ```
//! use tower_ratelimit::{Policy, Quota, RateLimitLayer, key::Header};
//!
//! let global = Policy::new("global", Quota::per_minute(100));
//! let layer = RateLimitLayer::builder()
//!     .policy(global.clone())
//!     .policy_set("login", [Policy::new("login", Quota::per_minute(5)), global])
//!     .policies_by(|req: &http::Request<()>| match req.uri().path() {
//!         "/login" => Some("login"),
//!         _ => None, // the layer's own policies: "global"
//!     })
//!     .key(Header::new("x-api-key"))
//!     .build()
//!     .unwrap();
//! assert_eq!(layer.policy_set("login").unwrap().len(), 2);
//! ```

/// Names the policy set a request is checked against; see the
/// [module docs](self).
///
/// Any closure `Fn(&Req) -> Option<&'static str>` is a selector: `Some(name)`
/// names a set added with
/// [`policy_set`](crate::RateLimitLayerBuilder::policy_set), `None` means the
/// layer's own policies (added with
/// [`policy`](crate::RateLimitLayerBuilder::policy)); a layer without any of
/// its own lets such a request through uncounted. A name the layer does not
/// have is a configuration mistake: the request is answered `500` with a
/// message naming the fix (an error for non-HTTP services).
///
/// ```
/// use tower_ratelimit::select::SelectPolicies;
///
/// let by_route = |req: &http::Request<()>| match req.uri().path() {
///     "/login" => Some("login"),
///     _ => None,
/// };
/// assert_eq!(by_route.select(&http::Request::get("/login").body(()).unwrap()), Some("login"));
/// assert_eq!(by_route.select(&http::Request::get("/").body(()).unwrap()), None);
/// assert!(!by_route.is_fixed());
/// ```
pub trait SelectPolicies<Req>: Send + Sync + 'static {
    /// The name of `req`'s set, or `None` for the layer's own policies.
    ///
    /// ```
    /// use tower_ratelimit::select::SelectPolicies;
    ///
    /// let by_method = |req: &http::Request<()>| (req.method() == http::Method::POST).then_some("writes");
    /// assert_eq!(by_method.select(&http::Request::post("/").body(()).unwrap()), Some("writes"));
    /// assert_eq!(by_method.select(&http::Request::get("/").body(()).unwrap()), None);
    /// ```
    fn select<'a>(&'a self, req: &'a Req) -> Option<&'a str>;

    /// Whether every request gets the same set (as with [`LayerPolicies`]),
    /// so that a layer in [`OnLimit::Wait`](crate::OnLimit::Wait) mode with
    /// a fixed key and cost can pace its caller in `poll_ready`. Default:
    /// `false`.
    ///
    /// ```
    /// use tower_ratelimit::select::{LayerPolicies, SelectPolicies};
    ///
    /// assert!(SelectPolicies::<()>::is_fixed(&LayerPolicies));
    /// let by_route = |_: &()| Some("route");
    /// assert!(!by_route.is_fixed()); // a closure may choose per request
    /// ```
    fn is_fixed(&self) -> bool {
        false
    }
}

impl<F, Req> SelectPolicies<Req> for F
where
    F: Fn(&Req) -> Option<&'static str> + Send + Sync + 'static,
{
    fn select<'a>(&'a self, req: &'a Req) -> Option<&'a str> {
        self(req)
    }
}

/// Every request is checked against the layer's own policies: the default
/// selector.
///
/// ```
/// use tower_ratelimit::select::{LayerPolicies, SelectPolicies};
///
/// assert_eq!(LayerPolicies.select(&"any request"), None);
/// assert!(SelectPolicies::<&str>::is_fixed(&LayerPolicies));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct LayerPolicies;

impl<Req> SelectPolicies<Req> for LayerPolicies {
    fn select<'a>(&'a self, _: &'a Req) -> Option<&'a str> {
        None
    }

    fn is_fixed(&self) -> bool {
        true
    }
}

/// Says which requests bypass the limiter entirely: no key is extracted,
/// the store is not asked, no header is added. Set with
/// [`skip_if`](crate::RateLimitLayerBuilder::skip_if).
///
/// Any closure `Fn(&Req) -> bool` is one.
///
/// ```
/// use tower_ratelimit::select::Skip;
///
/// let health_checks = |req: &http::Request<()>| req.uri().path() == "/health";
/// assert!(health_checks.skip(&http::Request::get("/health").body(()).unwrap()));
/// assert!(!health_checks.skip(&http::Request::get("/api").body(()).unwrap()));
/// ```
pub trait Skip<Req>: Send + Sync + 'static {
    /// Whether `req` bypasses the limiter.
    ///
    /// ```
    /// use tower_ratelimit::select::Skip;
    ///
    /// let internal = |req: &http::Request<()>| req.headers().contains_key("x-internal");
    /// let req = http::Request::get("/").header("x-internal", "1").body(()).unwrap();
    /// assert!(internal.skip(&req));
    /// assert!(!internal.skip(&http::Request::new(())));
    /// ```
    fn skip(&self, req: &Req) -> bool;

    /// Whether no request is ever skipped (as with [`NeverSkip`]), which
    /// lets `poll_ready` pace a fixed key. Default: `false`.
    ///
    /// ```
    /// use tower_ratelimit::select::{NeverSkip, Skip};
    ///
    /// assert!(Skip::<()>::is_never(&NeverSkip));
    /// let health = |req: &http::Request<()>| req.uri().path() == "/health";
    /// assert!(!health.is_never());
    /// ```
    fn is_never(&self) -> bool {
        false
    }
}

impl<F, Req> Skip<Req> for F
where
    F: Fn(&Req) -> bool + Send + Sync + 'static,
{
    fn skip(&self, req: &Req) -> bool {
        self(req)
    }
}

/// No request bypasses the limiter: the default.
///
/// ```
/// use tower_ratelimit::select::{NeverSkip, Skip};
///
/// assert!(!NeverSkip.skip(&"any request"));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct NeverSkip;

impl<Req> Skip<Req> for NeverSkip {
    fn skip(&self, _: &Req) -> bool {
        false
    }

    fn is_never(&self) -> bool {
        true
    }
}
