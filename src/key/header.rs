use http::HeaderName;

use super::{Key, KeyExtractor};
use crate::error::KeyError;

/// The value of a request header, such as an API key. A request without the
/// header has no key.
///
/// ```
/// use tower_ratelimit::key::{Header, Key, KeyExtractor};
///
/// let by_api_key = Header::new("x-api-key");
/// let req = http::Request::builder().header("x-api-key", "k-123").body(()).unwrap();
/// assert_eq!(by_api_key.extract(&req).unwrap(), Some(Key::from("k-123")));
/// let anonymous = http::Request::new(());
/// assert_eq!(by_api_key.extract(&anonymous).unwrap(), None);
/// ```
///
/// For gRPC, metadata is carried in headers: `Header::new("x-api-key")`
/// reads the `x-api-key` metadata of a tonic request.
#[derive(Debug, Clone)]
pub struct Header(pub HeaderName);

impl Header {
    /// Keys by the header `name` (case does not matter).
    ///
    /// ```
    /// use tower_ratelimit::key::Header;
    ///
    /// assert_eq!(Header::new("X-Api-Key").name().as_str(), "x-api-key");
    /// ```
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name (empty, or holding spaces or
    /// other characters a header name may not): a programming error, as
    /// with [`HeaderName::from_static`].
    #[must_use]
    #[track_caller]
    pub fn new(name: &str) -> Self {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => Header(name),
            Err(_) => panic!("key::Header::new: {name:?} is not a valid header name"),
        }
    }

    /// The header's name.
    #[must_use]
    pub fn name(&self) -> &HeaderName {
        &self.0
    }
}

impl From<HeaderName> for Header {
    fn from(name: HeaderName) -> Self {
        Header(name)
    }
}

impl<B> KeyExtractor<http::Request<B>> for Header {
    fn extract(&self, req: &http::Request<B>) -> Result<Option<Key>, KeyError> {
        Ok(req.headers().get(&self.0).map(|v| Key::from(v.as_bytes())))
    }
}
