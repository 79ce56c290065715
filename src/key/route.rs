use super::{Key, KeyExtractor};
use crate::error::KeyError;

/// The axum route the request matched, such as `/users/{id}` (feature
/// `axum`): one key per route, whatever the path parameters. A request
/// that matched no route (a fallback) has no key.
///
/// axum records the matched route when it routes a request, so this works
/// in layers added with `Router::layer`, `Router::route_layer` and
/// `MethodRouter::layer`, not in a layer wrapped around the whole router
/// from outside (`ServiceBuilder` around `Router`), which runs before
/// routing.
///
/// On its own it limits each route as a whole; combined with a client key
/// in a tuple, `(ClientIp, MatchedPath)`, each client on each route.
///
/// ```
/// use axum::{Router, routing::get};
/// use tower_ratelimit::key::{MatchedPath, PeerIp};
/// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
///
/// // 100 requests a minute on each route, per client.
/// let limit = RateLimitLayer::builder()
///     .policy(Policy::new("per-route", Quota::per_minute(100)))
///     .key((PeerIp::new(), MatchedPath))
///     .build()
///     .unwrap();
/// let app: Router = Router::new()
///     .route("/users/{id}", get(|| async { "user" }))
///     .layer(limit);
/// # let _ = app;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MatchedPath;

impl<B> KeyExtractor<http::Request<B>> for MatchedPath {
    fn extract(&self, req: &http::Request<B>) -> Result<Option<Key>, KeyError> {
        Ok(req
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map(|p| Key::from(p.as_str())))
    }
}
