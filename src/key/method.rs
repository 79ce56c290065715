use super::{Key, KeyExtractor};
use crate::error::KeyError;

/// The request's method: `GET`, `POST`, … Mostly useful as part of a
/// composite key, such as `(Method, ClientIp)`, so that writes and reads
/// are counted apart.
///
/// ```
/// use tower_ratelimit::key::{Key, KeyExtractor, Method};
///
/// let post = http::Request::post("/").body(()).unwrap();
/// assert_eq!(Method.extract(&post).unwrap(), Some(Key::from("POST")));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Method;

impl<B> KeyExtractor<http::Request<B>> for Method {
    fn extract(&self, req: &http::Request<B>) -> Result<Option<Key>, KeyError> {
        Ok(Some(Key::from(req.method().as_str())))
    }
}
