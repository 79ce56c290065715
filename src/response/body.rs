//! [`ResponseBody`]: the inner service's body, or the layer's own.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::limiter::Held;

pin_project! {
    /// The body of a rate-limited service's response: the inner service's
    /// body, or the body of an answer the layer gave itself (a rejection,
    /// or a [custom rejection](crate::RateLimitLayerBuilder::on_rejection)'s
    /// bytes).
    ///
    /// It is `Default` when the inner body is, as tower-http's `Cors`,
    /// `Timeout` and `ValidateRequestHeader` need of the services they
    /// wrap:
    ///
    /// ```
    /// use http_body::Body as _;
    /// use tower_ratelimit::response::ResponseBody;
    ///
    /// let body: ResponseBody<String> = ResponseBody::default();
    /// assert!(body.is_end_stream());
    /// ```
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
        Full { bytes: Option<Bytes> },
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
            Kind::Full { bytes } => f
                .debug_struct("ResponseBody")
                .field("bytes", bytes)
                .finish(),
        }
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    ///
    /// ```
    /// use tower_ratelimit::response::ResponseBody;
    ///
    /// let body = ResponseBody::inner(String::from("hello"));
    /// # let _ = body;
    /// ```
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body, held: None },
        }
    }

    /// A body of `bytes`, sent as one frame.
    ///
    /// ```
    /// use http_body::Body as _;
    /// use tower_ratelimit::response::ResponseBody;
    ///
    /// let body = ResponseBody::<String>::full("slow down".into());
    /// assert_eq!(body.size_hint().exact(), Some(9));
    /// ```
    pub fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                bytes: (!bytes.is_empty()).then_some(bytes),
            },
        }
    }

    pub(crate) fn holding(body: B, held: Option<Held>) -> Self {
        Self {
            kind: Kind::Inner { body, held },
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
            KindProj::Full { bytes } => {
                Poll::Ready(bytes.take().map(|b| Ok(Frame::data(B::Data::from(b)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body, .. } => body.is_end_stream(),
            Kind::Full { bytes } => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body, .. } => body.size_hint(),
            Kind::Full { bytes } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
