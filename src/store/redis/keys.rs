//! What goes between a Redis key's braces: the rate-limit key, tagged with
//! its kind, or a hash of it.
//!
//! - With key hashing (the default), string and byte keys become `k:` and
//!   the first 128 bits of HMAC-SHA1 over their tagged bytes, in hex: what
//!   clients send (API keys, tokens) never reaches Redis, where `SCAN`,
//!   `MONITOR` and the slowlog would show it.
//! - Integers, IP addresses and the global key stay readable.
//! - Anything longer than [`MAX_KEY_BYTES`] or holding a brace becomes `h:`
//!   and its SHA-1 (only reached without key hashing: a hashed key is
//!   short and brace-free).

use crate::key::Key;

/// Tagged keys longer than this are hashed.
pub(crate) const MAX_KEY_BYTES: usize = 64;

/// The HMAC key when no secret is given: public, so the hash hides keys
/// from whoever reads Redis but not from a guess.
pub(crate) const PUBLIC_KEY: &[u8] = b"tower-ratelimit key hash v1";

const BLOCK: usize = 64;

/// HMAC-SHA1 under one secret, its padded key blocks absorbed once.
pub(crate) struct KeyHash {
    inner: sha1_smol::Sha1,
    outer: sha1_smol::Sha1,
}

impl KeyHash {
    pub(crate) fn new(secret: &[u8]) -> Self {
        let mut key = [0_u8; BLOCK];
        if secret.len() > BLOCK {
            key[..20].copy_from_slice(&sha1_smol::Sha1::from(secret).digest().bytes());
        } else {
            key[..secret.len()].copy_from_slice(secret);
        }
        let pad = |byte: u8| {
            let mut block = key;
            for b in &mut block {
                *b ^= byte;
            }
            let mut h = sha1_smol::Sha1::new();
            h.update(&block);
            h
        };
        Self {
            inner: pad(0x36),
            outer: pad(0x5c),
        }
    }

    fn mac(&self, message: &[u8]) -> [u8; 20] {
        let mut inner = self.inner.clone();
        inner.update(message);
        let mut outer = self.outer.clone();
        outer.update(&inner.digest().bytes());
        outer.digest().bytes()
    }
}

fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        out.push(b"0123456789abcdef"[usize::from(b >> 4)]);
        out.push(b"0123456789abcdef"[usize::from(b & 0xf)]);
    }
}

/// Writes what goes between `key`'s braces.
pub(crate) fn write_tag(out: &mut Vec<u8>, hash: Option<&KeyHash>, key: &Key) {
    let start = out.len();
    key.write_tagged(out);
    let tagged = &out[start..];
    let from_client = tagged.starts_with(b"s:") || tagged.starts_with(b"b:");
    if let (Some(hash), true) = (hash, from_client) {
        let mac = hash.mac(tagged);
        out.truncate(start);
        out.extend_from_slice(b"k:");
        hex(out, &mac[..16]);
    } else if tagged.len() > MAX_KEY_BYTES || tagged.iter().any(|b| matches!(b, b'{' | b'}')) {
        let digest = sha1_smol::Sha1::from(tagged).digest().bytes();
        out.truncate(start);
        out.extend_from_slice(b"h:");
        hex(out, &digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha1_matches_rfc_2202() {
        // RFC 2202 test case 2.
        let mac = KeyHash::new(b"Jefe").mac(b"what do ya want for nothing?");
        let mut out = Vec::new();
        hex(&mut out, &mac);
        assert_eq!(out, b"effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
        // Test case 6: a key longer than a block.
        let mac = KeyHash::new(&[0xaa; 80])
            .mac(b"Test Using Larger Than Block-Size Key - Hash Key First");
        let mut out = Vec::new();
        hex(&mut out, &mac);
        assert_eq!(out, b"aa4ae5e15272d00e95705637ce8a3b55ed402112");
    }

    #[test]
    fn string_keys_are_hashed_and_the_rest_stay_readable() {
        let hash = KeyHash::new(PUBLIC_KEY);
        let tag = |k: &Key, h: Option<&KeyHash>| {
            let mut out = Vec::new();
            write_tag(&mut out, h, k);
            String::from_utf8(out).unwrap()
        };
        let token = tag(&Key::from("sk_live_abc"), Some(&hash));
        assert!(token.starts_with("k:") && token.len() == 34, "{token}");
        assert_ne!(token, tag(&Key::from("sk_live_abd"), Some(&hash)));
        assert_ne!(
            token,
            tag(&Key::from("sk_live_abc"), Some(&KeyHash::new(b"other")))
        );
        assert_eq!(tag(&Key::from(42_u64), Some(&hash)), "n:42");
        assert_eq!(tag(&Key::from("alice"), None), "s:alice");
        assert!(tag(&Key::from("a{b}"), None).starts_with("h:"));
    }
}
