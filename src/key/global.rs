use super::{Key, KeyExtractor};
use crate::error::KeyError;

/// One key for every request: a limit on the service as a whole.
///
/// ```
/// use tower_ratelimit::key::{Global, Key, KeyExtractor};
///
/// assert_eq!(Global.extract(&"any request").unwrap(), Some(Key::global()));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Global;

impl<Req> KeyExtractor<Req> for Global {
    fn extract(&self, _: &Req) -> Result<Option<Key>, KeyError> {
        Ok(Some(Key::global()))
    }

    fn fixed(&self) -> Option<Key> {
        Some(Key::global())
    }
}
