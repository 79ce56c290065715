//! What the fuzz targets in `fuzz/` run, shared with the suite's proptests
//! over arbitrary bytes (`tests/fuzz_inputs.rs`): each function takes any
//! bytes, turns them into requests, and checks what must hold for every
//! input. A panic anywhere is a failure.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use tower_ratelimit::key::{ClientIp, Header, Key, KeyExtractor, Method, PeerIp, ProxyHeader};

/// Cuts `data` into header values at `0xff` bytes (a byte no header value
/// holds unescaped), dropping the pieces `HeaderValue` refuses.
fn values(data: &[u8]) -> Vec<HeaderValue> {
    data.split(|&b| b == 0xff)
        .filter_map(|piece| HeaderValue::from_bytes(piece).ok())
        .collect()
}

/// A peer address from the first bytes: v4, v6 or v4-mapped v6.
fn peer(data: &[u8]) -> IpAddr {
    let mut b = [0_u8; 17];
    for (i, x) in data.iter().take(17).enumerate() {
        b[i] = *x;
    }
    match b[0] % 3 {
        0 => IpAddr::V4(Ipv4Addr::new(b[1], b[2], b[3], b[4])),
        1 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&b[1..17]).unwrap())),
        _ => IpAddr::V6(Ipv4Addr::new(b[1], b[2], b[3], b[4]).to_ipv6_mapped()),
    }
}

/// The headers a proxy chain could carry, from the input's pieces.
fn proxy_headers(data: &[u8]) -> HeaderMap {
    let names = [
        HeaderName::from_static("forwarded"),
        HeaderName::from_static("x-forwarded-for"),
        HeaderName::from_static("x-real-ip"),
        HeaderName::from_static("x-api-key"),
        HeaderName::from_static("accept"),
        HeaderName::from_static("content-type"),
    ];
    let mut map = HeaderMap::new();
    for (i, v) in values(data).into_iter().enumerate() {
        map.append(names[i % names.len()].clone(), v);
    }
    map
}

/// Every key extractor on a request built from `data`: none panics, and
/// `ClientIp` keys by the peer or by an address the headers spell.
pub fn key_extractors(data: &[u8]) {
    let peer = peer(data);
    let headers = proxy_headers(data.get(17..).unwrap_or_default());
    let mut req = Request::new(());
    *req.headers_mut() = headers.clone();
    req.extensions_mut().insert(SocketAddr::new(peer, 443));

    let trusted: [tower_ratelimit::key::IpNet; 2] =
        ["10.0.0.0/8".parse().unwrap(), "::/0".parse().unwrap()];
    for extractor in [
        ClientIp::trusting(trusted),
        ClientIp::one_trusted_hop()
            .header(ProxyHeader::Forwarded)
            .header(ProxyHeader::XForwardedFor)
            .header(ProxyHeader::XRealIp),
        ClientIp::trusting([]).ipv6_prefix(48),
    ] {
        assert!(
            extractor.extract(&req).unwrap().is_some(),
            "a peer means a key"
        );
        let client = extractor.client_addr(peer, &headers);
        assert!(
            client == peer.to_canonical()
                || headers
                    .iter()
                    .any(|(_, v)| contains_ip(v.as_bytes(), client)),
            "{client} is neither the peer {peer} nor in {headers:?}"
        );
    }
    let _ = PeerIp::new()
        .ipv6_prefix(data.first().copied().unwrap_or(64))
        .extract(&req);
    let by_key = Header::new("x-api-key").extract(&req).unwrap();
    if let Some(v) = headers.get("x-api-key") {
        assert_eq!(by_key, Some(Key::from(v.as_bytes())));
    }
    let _ = (Method, Header::new("accept")).extract(&req).unwrap();
    let mut tagged = Vec::new();
    if let Some(k) = by_key {
        k.write_tagged(&mut tagged);
        assert!(!tagged.is_empty());
    }
}

/// Whether `text` spells `ip`: some run of address characters in it parses
/// as `ip` (IPv4-mapped IPv6 counting as IPv4).
fn contains_ip(text: &[u8], ip: IpAddr) -> bool {
    let text = String::from_utf8_lossy(text);
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
        .filter_map(|t| t.parse::<IpAddr>().ok())
        .any(|parsed| parsed.to_canonical() == ip)
}

/// A request with headers from `data` through a layer that has spent its
/// quota: every answer is a well-formed rejection, whatever `Accept` and
/// `Content-Type` say, and every number in the rate-limit fields is a
/// structured-field integer (at most 15 digits).
pub fn answers(data: &[u8]) {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    use tower::{Layer, Service};
    use tower_ratelimit::{Policy, Quota, RateLimitLayer};

    let layer = RateLimitLayer::builder()
        .policy(Policy::new("hourly", Quota::per_hour(1)))
        .policy(Policy::concurrency("in-flight", 5))
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|_: Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    }));
    let mut cx = Context::from_waker(Waker::noop());
    for round in 0..2 {
        let mut req = Request::new(());
        *req.headers_mut() = proxy_headers(data);
        let mut fut = std::pin::pin!(svc.call(req));
        // The in-memory store answers at once: one poll completes it.
        let Poll::Ready(Ok(res)) = fut.as_mut().poll(&mut cx) else {
            panic!("an in-memory decision is ready at once")
        };
        if round == 1 {
            let status = res.status().as_u16();
            let grpc = res.headers().contains_key("grpc-status");
            assert!(status == 429 || grpc, "status {status}");
        }
        for name in [
            "ratelimit",
            "ratelimit-policy",
            "retry-after",
            "grpc-retry-pushback-ms",
        ] {
            for v in res.headers().get_all(name) {
                let v = v.to_str().expect("rate-limit fields are ASCII");
                for digits in v
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|d| !d.is_empty())
                {
                    assert!(digits.len() <= 15, "{name}: {v}");
                }
            }
        }
    }
}
