//! [`Rejection`]: what a custom rejection hook is told.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Extensions, HeaderMap, Method, Uri};

use super::problem;
use crate::decision::Decision;

/// A custom rejection: see
/// [`on_rejection`](crate::RateLimitLayerBuilder::on_rejection).
pub(crate) type Hook = Arc<dyn Fn(&Rejection<'_>) -> Option<http::Response<Bytes>> + Send + Sync>;

/// What a request speaks, which decides how it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http,
    /// `application/grpc*`.
    Grpc,
    /// `application/grpc-web` and `application/grpc-web+proto`.
    GrpcWeb,
    /// `application/grpc-web-text*`: base64 frames.
    GrpcWebText,
}

impl Protocol {
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let Some(ct) = headers.get(CONTENT_TYPE).map(|v| v.as_bytes()) else {
            return Protocol::Http;
        };
        if ct.starts_with(b"application/grpc-web-text") {
            Protocol::GrpcWebText
        } else if ct.starts_with(b"application/grpc-web") {
            Protocol::GrpcWeb
        } else if ct.starts_with(b"application/grpc") {
            Protocol::Grpc
        } else {
            Protocol::Http
        }
    }

    pub(crate) fn is_grpc(self) -> bool {
        self != Protocol::Http
    }
}

/// A request the layer is turning away, as a
/// [custom rejection hook](crate::RateLimitLayerBuilder::on_rejection) sees
/// it: the decision and the request's head.
///
/// ```
/// use bytes::Bytes;
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = RateLimitLayer::builder()
///     .policy(Policy::new("burst", Quota::per_minute(1)))
///     .on_rejection(|rejection| {
///         assert!(!rejection.is_grpc() && !rejection.is_missing_key());
///         let who = rejection.uri().path().to_owned();
///         let names: Vec<_> = rejection.violated_policies().collect();
///         let body = format!("{who}: over {}", names.join(", "));
///         Some(http::Response::new(Bytes::from(body)))
///     })
///     .build()
///     .unwrap()
///     .layer(service_fn(|_: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     }));
/// let req = || http::Request::get("/items").body(String::new()).unwrap();
/// svc.clone().oneshot(req()).await.unwrap();
/// let res = svc.oneshot(req()).await.unwrap();
/// let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
/// assert_eq!(&body[..], b"/items: over burst");
/// # }
/// ```
pub struct Rejection<'a> {
    pub(crate) decision: Option<&'a Decision>,
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) extensions: &'a Extensions,
    pub(crate) protocol: Protocol,
}

impl<'a> Rejection<'a> {
    /// The store's decision; `None` for a request turned away for having no
    /// key (see
    /// [`reject_missing_key`](crate::RateLimitLayerBuilder::reject_missing_key)).
    #[must_use]
    pub fn decision(&self) -> Option<&'a Decision> {
        self.decision
    }

    /// Whether the request was turned away for having no key.
    #[must_use]
    pub fn is_missing_key(&self) -> bool {
        self.decision.is_none()
    }

    /// How long until the same request could be admitted, when that is
    /// known (see [`Decision::retry_after`]).
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        self.decision.and_then(Decision::retry_after)
    }

    /// The names of the policies that refused the request.
    pub fn violated_policies(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.decision.into_iter().flat_map(problem::violated)
    }

    /// The request's method.
    #[must_use]
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The request's URI.
    #[must_use]
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The request's headers.
    #[must_use]
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The request's extensions (axum's `MatchedPath`, `ConnectInfo`, …).
    #[must_use]
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }

    /// Whether it is a gRPC or gRPC-Web request (`content-type:
    /// application/grpc*`), which expects a gRPC status, not a `429`.
    #[must_use]
    pub fn is_grpc(&self) -> bool {
        self.protocol.is_grpc()
    }

    /// Whether the request's `Accept` names JSON (`application/json`,
    /// `application/problem+json` or another `+json` type), as the
    /// built-in answer decides between problem details and text.
    #[must_use]
    pub fn accepts_json(&self) -> bool {
        problem::accepts_json(self.headers)
    }
}

impl fmt::Debug for Rejection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejection")
            .field("decision", &self.decision)
            .field("method", self.method)
            .field("uri", self.uri)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}
