//! Tuples of extractors: a key made of every part.

use super::{Key, KeyExtractor};
use crate::error::KeyError;

macro_rules! composite {
    ($($part:ident . $i:tt),+) => {
        /// A key made of every part: a request is counted under the
        /// combination, and has no key if any part has none. The parts are
        /// kept apart in the key, so `("a:b", "c")` and `("a", "b:c")` never
        /// meet.
        impl<Req, $($part),+> KeyExtractor<Req> for ($($part,)+)
        where
            $($part: KeyExtractor<Req>),+
        {
            fn extract(&self, req: &Req) -> Result<Option<Key>, KeyError> {
                let parts = [$(match self.$i.extract(req)? {
                    Some(key) => key,
                    None => return Ok(None),
                }),+];
                Ok(Some(Key::composite(parts)))
            }

            fn fixed(&self) -> Option<Key> {
                Some(Key::composite([$(KeyExtractor::<Req>::fixed(&self.$i)?),+]))
            }
        }
    };
}

composite!(A.0, B.1);
composite!(A.0, B.1, C.2);
composite!(A.0, B.1, C.2, D.3);
