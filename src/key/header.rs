use http::HeaderName;

use super::{Key, KeyExtractor};
use crate::error::KeyError;

/// The value of a request header, such as an API key. A request without the
/// header has no key.
///
/// ```
/// use http::HeaderName;
/// use tower_ratelimit::key::{Header, Key, KeyExtractor};
///
/// let by_api_key = Header(HeaderName::from_static("x-api-key"));
/// let req = http::Request::builder().header("x-api-key", "k-123").body(()).unwrap();
/// assert_eq!(by_api_key.extract(&req).unwrap(), Some(Key::from("k-123")));
/// let anonymous = http::Request::new(());
/// assert_eq!(by_api_key.extract(&anonymous).unwrap(), None);
/// ```
#[derive(Debug, Clone)]
pub struct Header(pub HeaderName);

impl<B> KeyExtractor<http::Request<B>> for Header {
    fn extract(&self, req: &http::Request<B>) -> Result<Option<Key>, KeyError> {
        Ok(req.headers().get(&self.0).map(|v| Key::from(v.as_bytes())))
    }
}
