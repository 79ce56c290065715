//! How a limited request is answered, and the headers every answer carries.
//!
//! HTTP services answer with a response, never an error, since an error
//! would make hyper drop the connection: `429 Too Many Requests` with
//! `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers-10). Its body is RFC 9457 problem
//! details of the draft's quota-exceeded type (`application/problem+json`)
//! when the request's `Accept` names JSON, and a line of text otherwise:
//!
//! ```json
//! {"type":"https://iana.org/assignments/http-problem-types#quota-exceeded",
//!  "title":"Request cannot be satisfied as assigned quota has been exceeded",
//!  "status":429,"detail":"Retry after 1 second.","violated-policies":["burst"]}
//! ```
//!
//! gRPC requests (`content-type: application/grpc*`) get a trailers-only
//! response with `grpc-status: 8` (`RESOURCE_EXHAUSTED`) and
//! `grpc-retry-pushback-ms`, the wait a gRPC client's retry policy honours
//! (`-1`, "do not retry", when waiting cannot help); gRPC-Web requests
//! (`application/grpc-web*`) get the same in their own content type. Other
//! services return a [`RateLimited`] error, boxed.
//!
//! [`on_rejection`](crate::RateLimitLayerBuilder::on_rejection) replaces any
//! of these with a response of your own.

mod body;
mod headers;
mod problem;
mod rejection;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, StatusCode};

pub use body::ResponseBody;
pub use headers::Stamp;
pub use headers::{HeaderStyle, MAX_FIELD_INTEGER, whole_seconds};
pub use rejection::Rejection;

pub(crate) use rejection::Hook;
use rejection::Protocol;

use crate::decision::Decision;
use crate::error::{BoxError, KeyError, RateLimited, StoreError};
use crate::limiter::Held;
use crate::quota::PolicySet;

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_PUSHBACK: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
// Checked once, at compile time; cloning a static value copies a pointer.
static TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
static PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");
static GRPC: HeaderValue = HeaderValue::from_static("application/grpc");

/// What the layer knows about answering, fixed at build time.
///
/// Made by the layer's builder and shared by every service of the layer
/// (nothing outside the crate makes or reads one), so it is `Send + Sync`:
///
/// ```
/// use tower_ratelimit::response::ResponseConfig;
///
/// fn shared_across_threads<T: Send + Sync + 'static>() {}
/// shared_across_threads::<ResponseConfig>();
/// ```
pub struct ResponseConfig {
    style: HeaderStyle,
    /// What the fields say of each of the layer's policy sets.
    fields: Box<[headers::SetFields]>,
    on_rejection: Option<Hook>,
    pub(crate) attach_decision: bool,
    pub(crate) hold_until_body_end: bool,
    pub(crate) shadow: bool,
}

impl std::fmt::Debug for ResponseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseConfig")
            .field("style", &self.style)
            .field("fields", &self.fields)
            .field("on_rejection", &self.on_rejection.is_some())
            .field("shadow", &self.shadow)
            .finish_non_exhaustive()
    }
}

/// What [`ResponseConfig::new`] is made from.
pub(crate) struct Answering<'a> {
    pub(crate) style: HeaderStyle,
    pub(crate) sets: &'a [&'a PolicySet],
    pub(crate) on_rejection: Option<Hook>,
    pub(crate) attach_decision: bool,
    pub(crate) hold_until_body_end: bool,
    pub(crate) shadow: bool,
}

impl ResponseConfig {
    pub(crate) fn new(a: Answering<'_>) -> Self {
        Self {
            style: a.style,
            fields: a.sets.iter().map(|s| headers::SetFields::new(s)).collect(),
            on_rejection: a.on_rejection,
            attach_decision: a.attach_decision,
            hold_until_body_end: a.hold_until_body_end,
            shadow: a.shadow,
        }
    }

    /// The configured rate-limit fields for `decision`, made against
    /// policy set `set`.
    #[inline]
    pub(crate) fn stamp(&self, set: usize, decision: &Decision) -> Stamp {
        headers::stamp(self.style, self.fields.get(set), decision)
    }
}

mod sealed {
    pub trait Sealed {}
}

/// How a [`RateLimit`](crate::RateLimit) service answers; sealed.
///
/// [`HttpRejection`] (the default) answers HTTP requests with responses;
/// [`ErrorRejection`] (chosen with
/// [`reject_with_error`](crate::RateLimitLayerBuilder::reject_with_error))
/// answers any request with errors.
///
/// Both are chosen through the layer's builder, never named in a bound of
/// your own.
///
/// ```
/// use tower::Layer;
/// use tower_ratelimit::response::{ErrorRejection, HttpRejection};
/// use tower_ratelimit::{Policy, Quota, RateLimit, RateLimitLayer};
///
/// # fn service() -> Result<(), tower_ratelimit::BoxError> {
/// let http = RateLimitLayer::builder().policy(Policy::new("p", Quota::per_second(10))).build()?;
/// let jobs = RateLimitLayer::builder()
///     .policy(Policy::new("p", Quota::per_second(10)))
///     .reject_with_error()
///     .build()?;
/// let _: RateLimit<(), _, _, _, HttpRejection, _, _> = http.layer(());
/// let _: RateLimit<(), _, _, _, ErrorRejection, _, _> = jobs.layer(());
/// # Ok(())
/// # }
/// # service().unwrap();
/// ```
pub trait Respond<Req, Res, E>: sealed::Sealed + Send + Sync + 'static {
    /// The service's response.
    type Response;
    /// The service's error.
    type Error;

    #[doc(hidden)]
    fn attach(req: &mut Req, decision: Decision);
    #[doc(hidden)]
    fn allowed(res: Res, stamp: Stamp, held: Option<Held>) -> Self::Response;
    #[doc(hidden)]
    fn rejected(
        cfg: &ResponseConfig,
        set: usize,
        req: &Req,
        decision: Option<&Decision>,
    ) -> Result<Self::Response, Self::Error>;
    #[doc(hidden)]
    fn key_error(req: &Req, err: KeyError) -> Result<Self::Response, Self::Error>;
    #[doc(hidden)]
    fn store_error(req: &Req, err: StoreError) -> Result<Self::Response, Self::Error>;
    #[doc(hidden)]
    fn inner_error(err: E) -> Self::Error;
}

/// HTTP services answer limited requests with `429` (or gRPC status 8).
///
/// ```
/// use http::{Request, Response, StatusCode};
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_ratelimit::{Policy, Quota, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
/// let layer = RateLimitLayer::builder()
///     .policy(Policy::new("p", Quota::per_minute(1)))
///     .build()?;
/// let svc = layer.layer(service_fn(|_: Request<String>| async {
///     Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
/// }));
/// let ok = svc.clone().oneshot(Request::new(String::new())).await?;
/// assert_eq!(ok.status(), StatusCode::OK);
/// let limited = svc.oneshot(Request::new(String::new())).await?;
/// assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
/// assert!(limited.headers().contains_key("retry-after"));
/// assert_eq!(limited.headers()["content-type"], "text/plain; charset=utf-8");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpRejection;

/// Any service answers limited requests with a boxed [`RateLimited`] error.
///
/// ```
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_ratelimit::{Policy, Quota, RateLimitLayer, RateLimited};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_ratelimit::BoxError> {
/// let layer = RateLimitLayer::builder()
///     .policy(Policy::new("jobs", Quota::per_minute(1)))
///     .reject_with_error()
///     .build()?;
/// let svc = layer.layer(service_fn(|job: u32| async move { Ok::<_, std::io::Error>(job * 2) }));
/// assert_eq!(svc.clone().oneshot(1).await?, 2);
/// let err = svc.oneshot(2).await.unwrap_err();
/// let limited = err.downcast_ref::<RateLimited>().expect("a RateLimited error");
/// assert!(limited.retry_after().is_some());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorRejection;

impl sealed::Sealed for HttpRejection {}
impl sealed::Sealed for ErrorRejection {}

/// An answer of the layer's own: `status` with `text`, or for gRPC a
/// trailers-only response with `grpc_status` and `text` as its message.
fn plain<ReqB, B>(
    req: &http::Request<ReqB>,
    status: StatusCode,
    grpc_status: &'static str,
    text: &'static str,
) -> http::Response<ResponseBody<B>> {
    let protocol = Protocol::of(req.headers());
    if protocol.is_grpc() {
        return trailers_only(req, protocol, grpc_status, text);
    }
    full(status, &TEXT, Bytes::from_static(text.as_bytes()))
}

fn full<B>(
    status: StatusCode,
    content_type: &'static HeaderValue,
    body: Bytes,
) -> http::Response<ResponseBody<B>> {
    let len = body.len();
    let mut res = http::Response::new(ResponseBody::full(body));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, content_type.clone());
    headers.insert(CONTENT_LENGTH, headers::integer(len as u64));
    res
}

/// A gRPC status in the response head, with no message: what gRPC calls a
/// trailers-only response. gRPC-Web answers in the request's content type.
fn trailers_only<ReqB, B>(
    req: &http::Request<ReqB>,
    protocol: Protocol,
    grpc_status: &'static str,
    message: &'static str,
) -> http::Response<ResponseBody<B>> {
    let mut res = http::Response::new(ResponseBody::full(Bytes::new()));
    let headers = res.headers_mut();
    let content_type = match protocol {
        Protocol::GrpcWeb | Protocol::GrpcWebText => req.headers().get(CONTENT_TYPE).cloned(),
        _ => None,
    };
    headers.insert(CONTENT_TYPE, content_type.unwrap_or_else(|| GRPC.clone()));
    headers.insert(GRPC_STATUS.clone(), HeaderValue::from_static(grpc_status));
    let message = HeaderValue::from_str(message).unwrap_or(HeaderValue::from_static("error"));
    headers.insert(GRPC_MESSAGE.clone(), message);
    res
}

/// The built-in `429`, its gRPC twin, or problem details.
fn built_in<ReqB, B>(
    req: &http::Request<ReqB>,
    protocol: Protocol,
    decision: Option<&Decision>,
) -> http::Response<ResponseBody<B>> {
    if protocol.is_grpc() {
        let message = match decision {
            Some(_) => "Too many requests",
            None => "Too many requests: the request has no rate limit key",
        };
        let mut res = trailers_only(req, protocol, "8", message);
        let pushback = match decision {
            // A full concurrency policy frees at no known time: the
            // client's own backoff serves better than a guess.
            Some(d) if d.is_busy() => None,
            Some(d) => Some(match headers::answer_wait(d) {
                Some(wait) => HeaderValue::from(headers::pushback_millis(wait)),
                // Waiting cannot help: ask the client not to retry.
                None => HeaderValue::from_static("-1"),
            }),
            None => Some(HeaderValue::from_static("-1")),
        };
        if let Some(v) = pushback {
            res.headers_mut().insert(GRPC_PUSHBACK.clone(), v);
        }
        return res;
    }
    if problem::accepts_json(req.headers()) {
        let json = problem::problem_json(decision);
        return full(
            StatusCode::TOO_MANY_REQUESTS,
            &PROBLEM_JSON,
            Bytes::from(json),
        );
    }
    let text = match decision {
        Some(_) => "Too many requests",
        None => "Too many requests: the request has no rate limit key",
    };
    full(
        StatusCode::TOO_MANY_REQUESTS,
        &TEXT,
        Bytes::from_static(text.as_bytes()),
    )
}

impl<ReqBody, ResBody, E> Respond<http::Request<ReqBody>, http::Response<ResBody>, E>
    for HttpRejection
{
    type Response = http::Response<ResponseBody<ResBody>>;
    type Error = E;

    fn attach(req: &mut http::Request<ReqBody>, decision: Decision) {
        req.extensions_mut().insert(decision);
    }

    /// `held` is what the body keeps until it ends: `None` unless the
    /// layer holds permits until then.
    fn allowed(res: http::Response<ResBody>, stamp: Stamp, held: Option<Held>) -> Self::Response {
        let mut res = res.map(|body| ResponseBody::holding(body, held));
        stamp.apply(res.headers_mut());
        res
    }

    fn rejected(
        cfg: &ResponseConfig,
        set: usize,
        req: &http::Request<ReqBody>,
        decision: Option<&Decision>,
    ) -> Result<Self::Response, E> {
        let protocol = Protocol::of(req.headers());
        let custom = cfg.on_rejection.as_ref().and_then(|hook| {
            hook(&Rejection {
                decision,
                method: req.method(),
                uri: req.uri(),
                headers: req.headers(),
                extensions: req.extensions(),
                protocol,
            })
        });
        let (mut res, custom) = match custom {
            Some(res) => (res.map(ResponseBody::full), true),
            None => (built_in(req, protocol, decision), false),
        };
        let Some(d) = decision else {
            return Ok(res);
        };
        let headers = res.headers_mut();
        // A custom answer keeps the fields it set itself.
        if let Some(wait) = headers::answer_wait(d).filter(|_| !headers.contains_key(RETRY_AFTER)) {
            headers.insert(
                RETRY_AFTER,
                headers::integer(headers::retry_after_seconds(wait)),
            );
        }
        let has_own = custom
            && (headers.contains_key(&headers::RATELIMIT)
                || headers.contains_key(&X_RATELIMIT_REMAINING));
        if !has_own {
            cfg.stamp(set, d).apply(headers);
        }
        Ok(res)
    }

    fn key_error(req: &http::Request<ReqBody>, err: KeyError) -> Result<Self::Response, E> {
        #[cfg(feature = "tracing")]
        tracing::error!(error = %err, "rate limit key extractor failed");
        Ok(plain(
            req,
            StatusCode::INTERNAL_SERVER_ERROR,
            "13",
            err.message(),
        ))
    }

    fn store_error(req: &http::Request<ReqBody>, _err: StoreError) -> Result<Self::Response, E> {
        Ok(plain(
            req,
            StatusCode::SERVICE_UNAVAILABLE,
            "14",
            "Rate limiter unavailable",
        ))
    }

    fn inner_error(err: E) -> E {
        err
    }
}

impl<Req, Res, E> Respond<Req, Res, E> for ErrorRejection
where
    E: Into<BoxError>,
{
    type Response = Res;
    type Error = BoxError;

    fn attach(_: &mut Req, _: Decision) {}

    fn allowed(res: Res, _: Stamp, _: Option<Held>) -> Res {
        res
    }

    fn rejected(
        _: &ResponseConfig,
        _: usize,
        _: &Req,
        decision: Option<&Decision>,
    ) -> Result<Res, BoxError> {
        Err(match decision {
            Some(d) => RateLimited::new(Some(d.clone())),
            None => RateLimited::missing_key(),
        }
        .into())
    }

    fn key_error(_: &Req, err: KeyError) -> Result<Res, BoxError> {
        Err(err.into())
    }

    fn store_error(_: &Req, err: StoreError) -> Result<Res, BoxError> {
        Err(err.into())
    }

    fn inner_error(err: E) -> BoxError {
        err.into()
    }
}
