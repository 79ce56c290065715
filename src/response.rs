//! How a limited request is answered, and the headers every answer carries.
//!
//! HTTP services answer with a response, never an error, since an error
//! would make hyper drop the connection: `429 Too Many Requests` with
//! `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers), or for gRPC requests
//! (`content-type: application/grpc*`) a trailers-only response with
//! `grpc-status: 8` (`RESOURCE_EXHAUSTED`). Other services return a
//! [`RateLimited`] error, boxed.

use std::fmt::{self, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::decision::Decision;
use crate::error::{BoxError, KeyError, RateLimited, StoreError};
use crate::limiter::Held;
use crate::quota::{Algorithm, PolicySet};

/// Which rate-limit headers responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderStyle {
    /// `RateLimit-Policy: "burst";q=10;w=1` and `RateLimit: "burst";r=3;t=1`
    /// (draft-ietf-httpapi-ratelimit-headers, structured fields), one item
    /// per policy. The default.
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
    /// (seconds) for the policy with the fewest units left.
    Legacy,
    /// No rate-limit headers (`429` responses still carry `Retry-After`).
    None,
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// What the layer knows about answering, fixed at build time.
#[derive(Debug)]
pub struct ResponseConfig {
    style: HeaderStyle,
    policy_header: Option<HeaderValue>,
    pub(crate) attach_decision: bool,
    pub(crate) hold_until_body_end: bool,
}

impl ResponseConfig {
    pub(crate) fn new(
        style: HeaderStyle,
        policies: &PolicySet,
        attach_decision: bool,
        hold_until_body_end: bool,
    ) -> Self {
        let mut value = String::new();
        for (i, p) in policies.policies().iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(value, "{sep}\"{}\";q={}", p.name(), p.quota().limit());
            // A concurrency policy has no window; its unit says what it counts.
            let _ = match p.get_algorithm() {
                Algorithm::Concurrency => write!(value, ";qu=\"concurrent-requests\""),
                _ => write!(value, ";w={}", whole_seconds(p.quota().period())),
            };
        }
        Self {
            style,
            // Names are checked to be plain ASCII, so this cannot fail.
            policy_header: HeaderValue::try_from(value).ok(),
            attach_decision,
            hold_until_body_end,
        }
    }

    /// Adds the configured rate-limit headers for `decision` to `headers`.
    pub fn add_headers(&self, headers: &mut HeaderMap, decision: &Decision) {
        let policies = decision.policies();
        if policies.is_empty() {
            return;
        }
        match self.style {
            HeaderStyle::Ietf => {
                if let Some(v) = &self.policy_header {
                    headers.insert(RATELIMIT_POLICY.clone(), v.clone());
                }
                // Hand-built: this runs on every response.
                let mut value = Vec::with_capacity(32 * policies.len());
                for (i, p) in policies.iter().enumerate() {
                    if i > 0 {
                        value.extend_from_slice(b", ");
                    }
                    value.push(b'"');
                    value.extend_from_slice(p.name().as_bytes());
                    value.extend_from_slice(b"\";r=");
                    push_u64(&mut value, p.remaining());
                    if !p.is_concurrency() {
                        value.extend_from_slice(b";t=");
                        push_u64(&mut value, whole_seconds(p.reset_after()));
                    }
                }
                if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
                    headers.insert(RATELIMIT.clone(), v);
                }
            }
            HeaderStyle::Legacy => {
                // The policy closest to its limit speaks for the request.
                if let Some(p) = policies.iter().min_by_key(|p| p.remaining()) {
                    headers.insert(X_LIMIT.clone(), p.limit().into());
                    headers.insert(X_REMAINING.clone(), p.remaining().into());
                    headers.insert(X_RESET.clone(), whole_seconds(p.reset_after()).into());
                }
            }
            HeaderStyle::None => {}
        }
    }
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0_u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A duration in whole seconds, rounded up: never 0 for a positive
/// duration.
#[must_use]
pub fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

pin_project! {
    /// The body of a rate-limited service's response: the inner service's
    /// body, or the short text of a rejection.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        // `held`: concurrency units kept until the body is done.
        Inner { #[pin] body: B, held: Option<Held> },
        Text { text: Option<Bytes> },
    }
}

impl<B: Default> Default for ResponseBody<B> {
    /// The inner body type's default: what tower-http's `Cors`, `Timeout`
    /// and others answer with when they answer for the service.
    fn default() -> Self {
        Self::inner(B::default())
    }
}

impl<B: fmt::Debug> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { body, held } => f
                .debug_struct("ResponseBody")
                .field("inner", body)
                .field("holds_permit", &held.is_some())
                .finish(),
            Kind::Text { text } => f.debug_struct("ResponseBody").field("text", text).finish(),
        }
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body, held: None },
        }
    }

    fn holding(body: B, held: Option<Held>) -> Self {
        Self {
            kind: Kind::Inner { body, held },
        }
    }

    fn text(text: &'static str) -> Self {
        Self {
            kind: Kind::Text {
                text: (!text.is_empty()).then(|| Bytes::from_static(text.as_bytes())),
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body, held } => {
                let frame = body.poll_frame(cx);
                if let Poll::Ready(None) = frame {
                    // The body is over: so is the request.
                    *held = None;
                }
                frame
            }
            KindProj::Text { text } => {
                Poll::Ready(text.take().map(|t| Ok(Frame::data(B::Data::from(t)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body, .. } => body.is_end_stream(),
            Kind::Text { text } => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body, .. } => body.size_hint(),
            Kind::Text { text } => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
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
pub trait Respond<Req, Res, E>: sealed::Sealed + Send + Sync + 'static {
    /// The service's response.
    type Response;
    /// The service's error.
    type Error;
    /// What is remembered about the request to answer it (gRPC or not).
    type Info: Copy + Send + Unpin;

    #[doc(hidden)]
    fn info(req: &Req) -> Self::Info;
    #[doc(hidden)]
    fn attach(req: &mut Req, decision: &Decision);
    #[doc(hidden)]
    fn allowed(
        cfg: &ResponseConfig,
        res: Res,
        decision: Option<&Decision>,
        held: Option<Held>,
    ) -> Self::Response;
    #[doc(hidden)]
    fn rejected(
        cfg: &ResponseConfig,
        info: Self::Info,
        decision: Option<&Decision>,
    ) -> Result<Self::Response, Self::Error>;
    #[doc(hidden)]
    fn key_error(info: Self::Info, err: KeyError) -> Result<Self::Response, Self::Error>;
    #[doc(hidden)]
    fn store_error(info: Self::Info, err: StoreError) -> Result<Self::Response, Self::Error>;
    #[doc(hidden)]
    fn inner_error(err: E) -> Self::Error;
}

/// HTTP services answer limited requests with `429` (or gRPC status 8).
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpRejection;

/// Any service answers limited requests with a boxed [`RateLimited`] error.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorRejection;

impl sealed::Sealed for HttpRejection {}
impl sealed::Sealed for ErrorRejection {}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A response with no inner body: the status, or for gRPC a trailers-only
/// response with `grpc_status`.
fn plain<B>(
    grpc: bool,
    status: StatusCode,
    grpc_status: &'static str,
    text: &'static str,
) -> http::Response<ResponseBody<B>> {
    let mut res = http::Response::new(ResponseBody::text(if grpc { "" } else { text }));
    if !grpc {
        *res.status_mut() = status;
    }
    let headers = res.headers_mut();
    if grpc {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(GRPC_STATUS.clone(), HeaderValue::from_static(grpc_status));
        let message = HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("error"));
        headers.insert(GRPC_MESSAGE.clone(), message);
    } else {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(CONTENT_LENGTH, text.len().into());
    }
    res
}

impl<ReqBody, ResBody, E> Respond<http::Request<ReqBody>, http::Response<ResBody>, E>
    for HttpRejection
{
    type Response = http::Response<ResponseBody<ResBody>>;
    type Error = E;
    type Info = bool;

    fn info(req: &http::Request<ReqBody>) -> bool {
        is_grpc(req.headers())
    }

    fn attach(req: &mut http::Request<ReqBody>, decision: &Decision) {
        req.extensions_mut().insert(decision.clone());
    }

    fn allowed(
        cfg: &ResponseConfig,
        res: http::Response<ResBody>,
        decision: Option<&Decision>,
        held: Option<Held>,
    ) -> Self::Response {
        let held = held.filter(|_| cfg.hold_until_body_end);
        let mut res = res.map(|body| ResponseBody::holding(body, held));
        if let Some(d) = decision {
            cfg.add_headers(res.headers_mut(), d);
        }
        res
    }

    fn rejected(
        cfg: &ResponseConfig,
        grpc: bool,
        decision: Option<&Decision>,
    ) -> Result<Self::Response, E> {
        let mut res = plain(
            grpc,
            StatusCode::TOO_MANY_REQUESTS,
            "8",
            "Too many requests",
        );
        if let Some(d) = decision {
            if let Some(wait) = d.retry_after() {
                res.headers_mut()
                    .insert(RETRY_AFTER, whole_seconds(wait).into());
            }
            cfg.add_headers(res.headers_mut(), d);
        }
        Ok(res)
    }

    fn key_error(grpc: bool, err: KeyError) -> Result<Self::Response, E> {
        #[cfg(feature = "tracing")]
        tracing::error!(error = %err, "rate limit key extractor failed");
        Ok(plain(
            grpc,
            StatusCode::INTERNAL_SERVER_ERROR,
            "13",
            err.message(),
        ))
    }

    fn store_error(grpc: bool, _err: StoreError) -> Result<Self::Response, E> {
        Ok(plain(
            grpc,
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
    type Info = ();

    fn info(_: &Req) {}

    fn attach(_: &mut Req, _: &Decision) {}

    fn allowed(_: &ResponseConfig, res: Res, _: Option<&Decision>, _: Option<Held>) -> Res {
        res
    }

    fn rejected(_: &ResponseConfig, _: (), decision: Option<&Decision>) -> Result<Res, BoxError> {
        Err(match decision {
            Some(d) => RateLimited::new(Some(d.clone())),
            None => RateLimited::missing_key(),
        }
        .into())
    }

    fn key_error(_: (), err: KeyError) -> Result<Res, BoxError> {
        Err(err.into())
    }

    fn store_error(_: (), err: StoreError) -> Result<Res, BoxError> {
        Err(err.into())
    }

    fn inner_error(err: E) -> BoxError {
        err.into()
    }
}
