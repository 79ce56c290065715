//! Rejection bodies: RFC 9457 problem details for clients that accept
//! JSON, a line of text for the rest.

use std::fmt::Write as _;

use http::HeaderMap;
use http::header::ACCEPT;

use super::headers::{answer_wait, retry_after_seconds};
use crate::decision::Decision;

/// The problem type of draft-ietf-httpapi-ratelimit-headers-10 §7.1 (Quota
/// Exceeded).
pub(crate) const QUOTA_EXCEEDED: &str =
    "https://iana.org/assignments/http-problem-types#quota-exceeded";
const QUOTA_EXCEEDED_TITLE: &str =
    "Request cannot be satisfied as assigned quota has been exceeded";

/// Whether the request's `Accept` names JSON itself: `application/json`,
/// `application/problem+json` or any `+json` type, with a non-zero `q`.
/// Wildcards (`*/*`, `application/*`) and a missing `Accept` get text: a
/// client that did not ask for JSON is not sent it.
pub(crate) fn accepts_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let json = media == "application/json"
                || media.starts_with("application/") && media.ends_with("+json");
            json && !parts.any(is_zero_q)
        })
}

/// `q=0` (or `0.0`, `0.000`): "not acceptable".
fn is_zero_q(param: &str) -> bool {
    param.split_once('=').is_some_and(|(name, value)| {
        name.trim().eq_ignore_ascii_case("q") && value.trim().parse::<f32>().is_ok_and(|q| q == 0.0)
    })
}

/// The problem details of a rejection: the draft's quota-exceeded type
/// naming the policies that refused, or for a request that had no key a
/// plain `429` problem saying so.
pub(crate) fn problem_json(decision: Option<&Decision>) -> String {
    let mut out = String::with_capacity(256);
    let Some(d) = decision else {
        out.push_str(
            r#"{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"The request has no rate limit key."}"#,
        );
        return out;
    };
    out.push_str(r#"{"type":"#);
    push_json_string(&mut out, QUOTA_EXCEEDED);
    out.push_str(r#","title":"#);
    push_json_string(&mut out, QUOTA_EXCEEDED_TITLE);
    out.push_str(r#","status":429,"detail":"#);
    push_json_string(&mut out, &detail(d));
    out.push_str(r#","violated-policies":["#);
    for (i, p) in violated(d).enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, p);
    }
    out.push_str("]}");
    out
}

/// The names of the policies that refused `decision`.
pub(crate) fn violated(decision: &Decision) -> impl Iterator<Item = &str> {
    decision
        .policies()
        .iter()
        .filter(|p| !p.is_allowed())
        .map(|p| p.name())
}

/// One sentence on when to come back.
fn detail(d: &Decision) -> String {
    if d.is_busy() {
        return "Too many requests are in flight; retry once one completes.".into();
    }
    match answer_wait(d) {
        Some(wait) => match retry_after_seconds(wait) {
            1 => "Retry after 1 second.".into(),
            n => format!("Retry after {n} seconds."),
        },
        None => "The request costs more than the quota can ever allow.".into(),
    }
}

/// `s` as a JSON string, quoted and escaped (RFC 8259 §7).
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, v.parse().unwrap());
        h
    }

    #[test]
    fn json_only_when_json_is_named() {
        assert!(accepts_json(&accept("application/json")));
        assert!(accepts_json(&accept("application/problem+json")));
        assert!(accepts_json(&accept("text/html, Application/JSON;q=0.9")));
        assert!(!accepts_json(&accept("*/*")));
        assert!(!accepts_json(&accept("application/*")));
        assert!(!accepts_json(&accept("text/plain")));
        assert!(!accepts_json(&accept("application/json;q=0")));
        assert!(!accepts_json(&accept("application/json; q=0.000")));
        assert!(accepts_json(&accept("application/json;q=0.5")));
        assert!(!accepts_json(&HeaderMap::new()));
    }

    #[test]
    fn strings_are_escaped() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
    }
}
