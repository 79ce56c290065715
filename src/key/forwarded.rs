//! Reading the headers proxies set, from the right: each hop of
//! `X-Forwarded-For`, `Forwarded` and `X-Real-IP` as an address, or as
//! unusable when it is obfuscated, `unknown` or malformed.
//!
//! Work is bounded whatever the input: hops are produced lazily, right to
//! left, and an element longer than [`MAX_ELEMENT_LEN`] is unusable, so a
//! caller that stops after `n` hops reads at most about `n` KiB.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::HeaderValue;
use http::header::GetAll;

use super::ip::canonical;

/// The longest list element read; anything longer is unusable. A
/// `Forwarded` element with every parameter at a plausible length is well
/// under it.
const MAX_ELEMENT_LEN: usize = 1024;

/// One hop of a forwarded chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hop {
    /// The address a proxy saw, IPv4-mapped IPv6 as IPv4.
    Addr(IpAddr),
    /// `unknown`, an obfuscated identifier, or not well-formed.
    Unusable,
}

/// The hops of `X-Forwarded-For`, rightmost first: comma-separated bare
/// addresses, over every header line.
pub(super) fn x_forwarded_for(values: GetAll<'_, HeaderValue>) -> impl Iterator<Item = Hop> + '_ {
    values.into_iter().rev().flat_map(|line| {
        RevElements::new(line.as_bytes(), false)
            .map(|element| element.map_or(Hop::Unusable, bare_addr))
    })
}

/// The hops of `Forwarded` (RFC 7239), rightmost first: the `for=`
/// parameter of each element, over every header line.
pub(super) fn forwarded(values: GetAll<'_, HeaderValue>) -> impl Iterator<Item = Hop> + '_ {
    values.into_iter().rev().flat_map(|line| {
        RevElements::new(line.as_bytes(), true)
            .map(|element| element.map_or(Hop::Unusable, forwarded_for))
    })
}

/// The one hop of `X-Real-IP`: a single bare address on a single line.
pub(super) fn x_real_ip(values: GetAll<'_, HeaderValue>) -> Hop {
    let mut lines = values.iter();
    match (lines.next(), lines.next()) {
        (Some(line), None) if line.len() <= MAX_ELEMENT_LEN => bare_addr(line.as_bytes()),
        _ => Hop::Unusable,
    }
}

/// The elements of one header line as a comma-separated list, right to
/// left, each trimmed of surrounding whitespace. With `quotes`, commas in
/// quoted strings do not split. An element that is too long, or whose quotes
/// do not balance, is `Err` and ends the list.
struct RevElements<'a> {
    rest: Option<&'a [u8]>,
    quotes: bool,
}

impl<'a> RevElements<'a> {
    fn new(line: &'a [u8], quotes: bool) -> Self {
        Self {
            rest: Some(line),
            quotes,
        }
    }
}

impl<'a> Iterator for RevElements<'a> {
    type Item = Result<&'a [u8], ()>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest.take()?;
        let mut in_quotes = false;
        let mut start = rest.len();
        while start > 0 {
            if rest.len() - start > MAX_ELEMENT_LEN {
                return Some(Err(()));
            }
            let b = rest[start - 1];
            if b == b',' && !in_quotes {
                break;
            }
            if b == b'"' && self.quotes && !escaped(&rest[..start - 1]) {
                in_quotes = !in_quotes;
            }
            start -= 1;
        }
        if in_quotes {
            return Some(Err(()));
        }
        let element = &rest[start..];
        if start > 0 {
            self.rest = Some(&rest[..start - 1]);
        }
        if element.len() > MAX_ELEMENT_LEN {
            return Some(Err(()));
        }
        Some(Ok(trim(element)))
    }
}

/// Whether a `"` right after `before` is a quoted-pair: preceded by an odd
/// run of backslashes. A run too long to be real counts as escaped, which
/// leaves the quotes unbalanced and the element unusable.
fn escaped(before: &[u8]) -> bool {
    let run = before
        .iter()
        .rev()
        .take(MAX_ELEMENT_LEN + 1)
        .take_while(|&&b| b == b'\\')
        .count();
    run > MAX_ELEMENT_LEN || run % 2 == 1
}

/// `s` without leading and trailing spaces and tabs.
fn trim(s: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = s.iter().position(|b| !is_ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ows(b)).map_or(start, |i| i + 1);
    &s[start..end]
}

/// A bare IPv4 or IPv6 address: no port, no brackets, no zone.
fn bare_addr(s: &[u8]) -> Hop {
    match std::str::from_utf8(trim(s))
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(ip) => Hop::Addr(canonical(ip)),
        None => Hop::Unusable,
    }
}

/// The node of the one `for=` parameter of a `Forwarded` element.
fn forwarded_for(element: &[u8]) -> Hop {
    let mut node = None;
    for pair in split_unquoted(element, b';') {
        let pair = trim(pair);
        if pair.is_empty() {
            continue; // `for=a;;proto=http` is allowed.
        }
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            return Hop::Unusable;
        };
        let (name, value) = (trim(&pair[..eq]), trim(&pair[eq + 1..]));
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Hop::Unusable;
        }
        if name.eq_ignore_ascii_case(b"for") {
            if node.is_some() {
                return Hop::Unusable; // RFC 7239 §4: at most once per element.
            }
            node = Some(value);
        }
    }
    node.map_or(Hop::Unusable, forwarded_node)
}

/// A `for=` value: `192.0.2.1`, `"192.0.2.1:80"`, `"[2001:db8::1]:4711"`;
/// `unknown` and obfuscated `_names` are unusable.
fn forwarded_node(value: &[u8]) -> Hop {
    let unquoted = match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => value,
    };
    // No address needs a quoted-pair, and a quote left over is malformed.
    if unquoted.is_empty() || unquoted.iter().any(|&b| b == b'\\' || b == b'"') {
        return Hop::Unusable;
    }
    let Ok(node) = std::str::from_utf8(unquoted) else {
        return Hop::Unusable;
    };
    let (ip, port) = if let Some(v6) = node.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Hop::Unusable;
        };
        let Ok(addr) = addr.parse::<Ipv6Addr>() else {
            return Hop::Unusable;
        };
        (IpAddr::V6(addr), after)
    } else {
        let (addr, after) = node.find(':').map_or((node, ""), |i| node.split_at(i));
        let Ok(addr) = addr.parse::<Ipv4Addr>() else {
            return Hop::Unusable; // Includes `unknown` and `_hidden`.
        };
        (IpAddr::V4(addr), after)
    };
    match port.strip_prefix(':') {
        None if port.is_empty() => Hop::Addr(canonical(ip)),
        Some(port) if is_port(port) => Hop::Addr(canonical(ip)),
        _ => Hop::Unusable,
    }
}

/// `1*5DIGIT` or an obfuscated port, `_` and then letters, digits, `.`, `_`, `-`.
fn is_port(port: &str) -> bool {
    let b = port.as_bytes();
    match b {
        [b'_', rest @ ..] => {
            !rest.is_empty()
                && rest
                    .iter()
                    .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        }
        _ => (1..=5).contains(&b.len()) && b.iter().all(u8::is_ascii_digit),
    }
}

/// An HTTP token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `s` split at `sep` where it is outside quoted strings.
fn split_unquoted(s: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut in_quotes = false;
    let mut escape = false;
    s.split(move |&b| {
        if escape {
            escape = false;
        } else if in_quotes && b == b'\\' {
            escape = true;
        } else if b == b'"' {
            in_quotes = !in_quotes;
        }
        b == sep && !in_quotes
    })
}
