//! `ClientIp`: the client behind trusted proxies, from `X-Forwarded-For`,
//! `Forwarded` and `X-Real-IP`; `IpNet`; `PeerIp` on tonic; and a real axum
//! server behind a "proxy" on 127.0.0.1.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::{HeaderMap, HeaderValue, Request};
use proptest::prelude::*;
use tower_ratelimit::key::{ClientIp, IpNet, Key, KeyExtractor, PeerIp, ProxyHeader};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Trusts the proxies at 10.0.0.0/8 and fd00::/8.
fn behind_proxies() -> ClientIp {
    ClientIp::trusting([net("10.0.0.0/8"), net("fd00::/8")])
}

/// Every header `ClientIp` knows, in its documented order.
fn reading_all(key: ClientIp) -> ClientIp {
    key.header(ProxyHeader::Forwarded)
        .header(ProxyHeader::XForwardedFor)
        .header(ProxyHeader::XRealIp)
}

fn headers(lines: &[(&str, &[u8])]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in lines {
        let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        map.append(name, HeaderValue::from_bytes(value).unwrap());
    }
    map
}

fn xff(value: &str) -> HeaderMap {
    headers(&[("x-forwarded-for", value.as_bytes())])
}

fn fwd(value: &str) -> HeaderMap {
    headers(&[("forwarded", value.as_bytes())])
}

/// A request from `peer` (a socket address) with `headers`.
fn request(peer: &str, headers: HeaderMap) -> Request<()> {
    let mut req = Request::new(());
    *req.headers_mut() = headers;
    req.extensions_mut()
        .insert(peer.parse::<SocketAddr>().unwrap());
    req
}

fn key_of(key: &ClientIp, peer: &str, headers: HeaderMap) -> Key {
    key.extract(&request(peer, headers)).unwrap().unwrap()
}

const PROXY: &str = "10.0.0.5";

#[test]
fn a_spoofed_header_from_an_untrusted_peer_changes_nothing() {
    let key = reading_all(behind_proxies());
    let spoofed = headers(&[
        ("forwarded", b"for=203.0.113.7"),
        ("x-forwarded-for", b"203.0.113.8"),
        ("x-real-ip", b"203.0.113.9"),
    ]);
    let peer = ip("192.0.2.66");
    assert_eq!(key.client_addr(peer, &spoofed), peer);
    assert_eq!(
        key_of(&key, "192.0.2.66:4000", spoofed.clone()),
        key_of(&key, "192.0.2.66:4001", HeaderMap::new()),
    );
    // A client's own claim to be a trusted proxy changes nothing either.
    let claims_proxy = xff("203.0.113.8, 10.0.0.9");
    assert_eq!(key.client_addr(peer, &claims_proxy), peer);
    assert_eq!(ClientIp::trusting([]).client_addr(peer, &spoofed), peer);
}

#[test]
fn a_trusted_proxys_x_forwarded_for_gives_the_rightmost_untrusted_address() {
    let key = behind_proxies();
    let addr = |h: &str| key.client_addr(ip(PROXY), &xff(h));
    assert_eq!(addr("203.0.113.7"), ip("203.0.113.7"));
    // What the client wrote itself, left of what the proxy appended, is not read.
    assert_eq!(
        addr("198.51.100.1, 6.6.6.6, 203.0.113.7"),
        ip("203.0.113.7")
    );
    assert_eq!(addr("garbage,,\"[, 203.0.113.7"), ip("203.0.113.7"));
    assert_eq!(addr("2001:db8::7"), ip("2001:db8::7"));
    assert_eq!(
        key_of(&key, "10.0.0.5:4000", xff("198.51.100.1, 203.0.113.7")),
        Key::from(ip("203.0.113.7")),
    );
}

#[test]
fn a_chain_of_trusted_proxies_is_skipped_from_the_right() {
    let key = behind_proxies();
    let peer = ip(PROXY);
    assert_eq!(
        key.client_addr(
            peer,
            &xff("6.6.6.6, 203.0.113.7, 10.1.2.3, fd00::2, 10.0.0.9")
        ),
        ip("203.0.113.7"),
    );
    // The same chain over several header lines, the last line rightmost.
    let lines = headers(&[
        ("x-forwarded-for", b"6.6.6.6, 203.0.113.7"),
        ("x-forwarded-for", b"10.1.2.3, fd00::2"),
        ("x-forwarded-for", b"10.0.0.9"),
    ]);
    assert_eq!(key.client_addr(peer, &lines), ip("203.0.113.7"));
    // A v6 peer in a trusted network is a proxy too.
    assert_eq!(
        key.client_addr(ip("fd00::1"), &xff("203.0.113.7")),
        ip("203.0.113.7")
    );
}

#[test]
fn a_chain_of_only_trusted_proxies_falls_back_to_the_peer() {
    let key = behind_proxies();
    let peer = ip(PROXY);
    assert_eq!(key.client_addr(peer, &xff("10.0.0.1, 10.0.0.2")), peer);
    assert_eq!(key.client_addr(peer, &HeaderMap::new()), peer);
    let real_ip = headers(&[("x-real-ip", b"10.0.0.3")]);
    assert_eq!(
        key.header(ProxyHeader::XRealIp).client_addr(peer, &real_ip),
        peer
    );
}

#[test]
fn forwarded_for_values_are_parsed() {
    let key = behind_proxies().header(ProxyHeader::Forwarded);
    let addr = |h: &str| key.client_addr(ip(PROXY), &fwd(h));
    assert_eq!(addr("for=192.0.2.60"), ip("192.0.2.60"));
    assert_eq!(addr(r#"for="192.0.2.60:8080""#), ip("192.0.2.60"));
    assert_eq!(addr(r#"for="192.0.2.60:_port-1""#), ip("192.0.2.60"));
    assert_eq!(
        addr(r#"for="[2001:db8:cafe::17]:4711""#),
        ip("2001:db8:cafe::17")
    );
    assert_eq!(
        addr(r#"for="[2001:db8:cafe::17]""#),
        ip("2001:db8:cafe::17")
    );
    assert_eq!(addr(r#"For="[2001:db8::1]""#), ip("2001:db8::1"));
    assert_eq!(
        addr("FOR=192.0.2.61;proto=https;by=203.0.113.43"),
        ip("192.0.2.61")
    );
    assert_eq!(
        addr("proto=http; for=192.0.2.62 ;;by=_hidden"),
        ip("192.0.2.62")
    );
    assert_eq!(
        addr(r#"for=192.0.2.63;host="a,b;c=\"d\"""#),
        ip("192.0.2.63")
    );
    assert_eq!(addr(r#"for="[::ffff:192.0.2.64]""#), ip("192.0.2.64"));
}

#[test]
fn forwarded_with_several_elements_and_lines_is_read_from_the_right() {
    let key = behind_proxies().header(ProxyHeader::Forwarded);
    let peer = ip(PROXY);
    let one_line =
        fwd(r#"for=6.6.6.6, for=203.0.113.7;proto=https, for="[fd00::2]:80", for=10.0.0.9"#);
    assert_eq!(key.client_addr(peer, &one_line), ip("203.0.113.7"));
    let lines = headers(&[
        ("forwarded", b"for=6.6.6.6"),
        ("forwarded", br#"for=203.0.113.7;host="x,for=1.1.1.1""#),
        ("forwarded", b"for=10.0.0.8, for=10.0.0.9"),
    ]);
    assert_eq!(key.client_addr(peer, &lines), ip("203.0.113.7"));
}

#[test]
fn forwarded_unknown_or_obfuscated_client_falls_back_to_the_peer() {
    let key = behind_proxies().header(ProxyHeader::Forwarded);
    let peer = ip(PROXY);
    for value in [
        "for=unknown",
        "for=UNKNOWN",
        r#"for="unknown:80""#,
        "for=_hidden",
        r#"for="_x:_port""#,
        // The rightmost untrusted hop is obfuscated: what is left of it is not read.
        "for=203.0.113.7, for=_proxy",
        "for=203.0.113.7, for=unknown, for=10.0.0.9",
    ] {
        assert_eq!(key.client_addr(peer, &fwd(value)), peer, "{value}");
    }
}

#[test]
fn malformed_values_fall_back_to_the_peer() {
    let peer = ip(PROXY);
    let key = behind_proxies();
    for value in [
        "garbage",
        "",
        " ",
        ",",
        "203.0.113.7,",
        "203.0.113.7, ,10.0.0.9",
        "1.2.3.4:80",
        "[2001:db8::1]",
        "[2001:db8::1]:80",
        "203.0.113.7 198.51.100.1",
        "01.2.3.4",
        "1.2.3",
        "fe80::1%eth0",
        "\"203.0.113.7\"",
        "for=203.0.113.7",
    ] {
        assert_eq!(key.client_addr(peer, &xff(value)), peer, "{value:?}");
    }

    let key = behind_proxies().header(ProxyHeader::Forwarded);
    for value in [
        "",
        "garbage",
        "for=",
        r#"for="""#,
        "for=2001:db8::1",
        r#"for="2001:db8::1""#,
        r#"for="[2001:db8::1""#,
        r#"for="[2001:db8::1]:80x""#,
        r#"for="[2001:db8::1]:""#,
        r#"for="1.2.3.4:123456""#,
        r#"for="1.2.3.4:_""#,
        r#"for="1.2.3.4"#,
        r#"for=1.2.3.4""#,
        r#"for="1.2\.3.4""#,
        "for=1.2.3.4;for=5.6.7.8",
        "by=203.0.113.43;proto=http",
        "for=1.2.3.4;garbage",
        "for=1.2.3.4;=x",
        "for=[2001:db8::1]:80x",
        "for=1.2.3.4, ",
    ] {
        assert_eq!(key.client_addr(peer, &fwd(value)), peer, "{value:?}");
    }

    let key = behind_proxies().header(ProxyHeader::XRealIp);
    for lines in [
        &[("x-real-ip", &b"203.0.113.7, 198.51.100.1"[..])][..],
        &[
            ("x-real-ip", b"203.0.113.7"),
            ("x-real-ip", b"198.51.100.1"),
        ],
        &[("x-real-ip", b"203.0.113.7:80")],
        &[("x-real-ip", b"")],
    ] {
        assert_eq!(key.client_addr(peer, &headers(lines)), peer, "{lines:?}");
    }
    assert_eq!(
        key.client_addr(peer, &headers(&[("x-real-ip", b" 203.0.113.7 ")])),
        ip("203.0.113.7")
    );
}

#[test]
fn non_utf8_header_bytes_fall_back_to_the_peer() {
    let peer = ip(PROXY);
    let all = reading_all(behind_proxies());
    for name in ["x-forwarded-for", "forwarded", "x-real-ip"] {
        for value in [
            &b"\xff\xfe"[..],
            b"203.0.113.\xb7",
            b"for=\xc3\x28, 10.0.0.9",
        ] {
            let map = headers(&[(name, value)]);
            assert_eq!(all.client_addr(peer, &map), peer, "{name}: {value:?}");
        }
    }
    // Bytes left of the client, which are never read, do not matter.
    let map = headers(&[("x-forwarded-for", b"\xff\xfe, 203.0.113.7")]);
    assert_eq!(behind_proxies().client_addr(peer, &map), ip("203.0.113.7"));
}

#[test]
fn thousands_of_hops_are_read_from_the_right_and_no_further_than_64() {
    let key = behind_proxies();
    let peer = ip(PROXY);
    let trusted_hops = |n: usize| vec!["10.0.0.9"; n].join(", ");

    // Thousands of trusted hops: the chain is given up on, not walked.
    let all_trusted = trusted_hops(5000);
    assert_eq!(key.client_addr(peer, &xff(&all_trusted)), peer);
    let fwd_trusted = vec!["for=10.0.0.9"; 5000].join(", ");
    let forwarded = key.clone().header(ProxyHeader::Forwarded);
    assert_eq!(forwarded.client_addr(peer, &fwd(&fwd_trusted)), peer);

    // The client as the 64th hop from the right is found; as the 65th, not.
    let at = |n: usize| format!("198.51.100.1, 203.0.113.7, {}", trusted_hops(n - 1));
    assert_eq!(key.client_addr(peer, &xff(&at(64))), ip("203.0.113.7"));
    assert_eq!(key.client_addr(peer, &xff(&at(65))), peer);

    // Thousands of untrusted hops written by the client: the proxy's is read.
    let padded = format!("{}, 203.0.113.7", vec!["6.6.6.6"; 5000].join(", "));
    assert_eq!(key.client_addr(peer, &xff(&padded)), ip("203.0.113.7"));

    // One enormous hop is not parsed.
    let huge = "1".repeat(200_000);
    assert_eq!(key.client_addr(peer, &xff(&huge)), peer);
    let huge_quoted = format!("for=\"{}\"", "\\".repeat(200_000));
    assert_eq!(forwarded.client_addr(peer, &fwd(&huge_quoted)), peer);
    let spaced = format!("203.0.113.7{}", " ".repeat(5000));
    assert_eq!(key.client_addr(peer, &xff(&spaced)), peer);
}

/// `ip` as a key is grouped: IPv4 as it is, IPv6 by its first `bits` bits.
fn grouped(ip: IpAddr, bits: u32) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => IpAddr::V4(v6.to_ipv4_mapped().unwrap()),
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        v4 => v4,
    }
}

#[test]
fn ipv6_clients_are_grouped_and_ipv4_mapped_addresses_are_ipv4() {
    let key = behind_proxies();
    let v6 = xff("2001:db8:1:2:3:4:5:6");
    assert_eq!(
        key_of(&key, "10.0.0.5:1", v6.clone()),
        Key::from(ip("2001:db8:1:2::"))
    );
    let same_64 = xff("2001:db8:1:2:ffff::1");
    assert_eq!(
        key_of(&key, "10.0.0.5:1", same_64),
        Key::from(ip("2001:db8:1:2::"))
    );
    let by_48 = key.clone().ipv6_prefix(48);
    assert_eq!(
        key_of(&by_48, "10.0.0.5:1", v6.clone()),
        Key::from(ip("2001:db8:1::"))
    );
    let by_200 = key.clone().ipv6_prefix(200);
    assert_eq!(
        key_of(&by_200, "10.0.0.5:1", v6),
        Key::from(ip("2001:db8:1:2:3:4:5:6"))
    );

    // A mapped client is its IPv4 address, whatever the grouping.
    let mapped = xff("::ffff:203.0.113.7");
    assert_eq!(
        key_of(&by_48, "10.0.0.5:1", mapped),
        Key::from(ip("203.0.113.7"))
    );
    // A mapped peer in a trusted IPv4 network is a trusted proxy.
    let via_mapped_peer = key_of(&key, "[::ffff:10.0.0.5]:1", xff("203.0.113.7"));
    assert_eq!(via_mapped_peer, Key::from(ip("203.0.113.7")));
    // A mapped hop in a trusted IPv4 network is skipped.
    let mapped_hop = xff("203.0.113.7, ::ffff:10.0.0.9");
    assert_eq!(key.client_addr(ip(PROXY), &mapped_hop), ip("203.0.113.7"));
    // An untrusted v6 peer is grouped like PeerIp groups it.
    let peer_v6 = key_of(&key, "[2001:db8:9:9::1]:1", xff("203.0.113.7"));
    assert_eq!(peer_v6, Key::from(ip("2001:db8:9:9::")));
    let mut req = Request::new(());
    req.extensions_mut()
        .insert("[2001:db8:9:9::1]:1".parse::<SocketAddr>().unwrap());
    assert_eq!(PeerIp::new().extract(&req).unwrap(), Some(peer_v6));
}

#[test]
fn one_trusted_hop_takes_the_rightmost_address_from_any_peer() {
    let key = ClientIp::one_trusted_hop();
    for peer in ["192.0.2.66", "10.0.0.5", "2001:db8::1"] {
        let peer = ip(peer);
        let chain = xff("198.51.100.1, 10.0.0.9, 203.0.113.7");
        assert_eq!(key.client_addr(peer, &chain), ip("203.0.113.7"));
        // No hop is skipped: a private address on the right is the client.
        let private = xff("203.0.113.7, 10.0.0.9");
        assert_eq!(key.client_addr(peer, &private), ip("10.0.0.9"));
        assert_eq!(key.client_addr(peer, &xff("203.0.113.7, garbage")), peer);
        assert_eq!(key.client_addr(peer, &HeaderMap::new()), peer);
    }
    let forwarded = ClientIp::one_trusted_hop().header(ProxyHeader::Forwarded);
    let via = fwd(r#"for=198.51.100.1, for="[2001:db8::7]:4711""#);
    assert_eq!(
        forwarded.client_addr(ip("192.0.2.66"), &via),
        ip("2001:db8::7")
    );
}

#[test]
fn only_x_forwarded_for_is_read_unless_headers_are_named() {
    let peer = ip(PROXY);
    let both = headers(&[
        ("forwarded", b"for=203.0.113.1"),
        ("x-forwarded-for", b"203.0.113.2"),
        ("x-real-ip", b"203.0.113.3"),
    ]);
    assert_eq!(behind_proxies().client_addr(peer, &both), ip("203.0.113.2"));
    let others = headers(&[
        ("forwarded", b"for=203.0.113.1"),
        ("x-real-ip", b"203.0.113.3"),
    ]);
    assert_eq!(behind_proxies().client_addr(peer, &others), peer);
    let real_ip = behind_proxies().header(ProxyHeader::XRealIp);
    assert_eq!(real_ip.client_addr(peer, &both), ip("203.0.113.3"));
}

#[test]
fn the_first_named_header_present_is_the_one_read() {
    let peer = ip(PROXY);
    let key = reading_all(behind_proxies());
    let all = headers(&[
        ("x-real-ip", b"203.0.113.3"),
        ("x-forwarded-for", b"203.0.113.2"),
        ("forwarded", b"for=203.0.113.1"),
    ]);
    assert_eq!(key.client_addr(peer, &all), ip("203.0.113.1"));
    let no_forwarded = headers(&[
        ("x-real-ip", b"203.0.113.3"),
        ("x-forwarded-for", b"203.0.113.2"),
    ]);
    assert_eq!(key.client_addr(peer, &no_forwarded), ip("203.0.113.2"));
    let real_ip_only = headers(&[("x-real-ip", b"203.0.113.3")]);
    assert_eq!(key.client_addr(peer, &real_ip_only), ip("203.0.113.3"));
    // A header that is present but yields no client does not pass the
    // choice on to the next one, which the client may have written.
    let bad_forwarded = headers(&[
        ("forwarded", b"for=unknown"),
        ("x-forwarded-for", b"203.0.113.2"),
    ]);
    assert_eq!(key.client_addr(peer, &bad_forwarded), peer);
    // The order is the order named.
    let xff_first = behind_proxies()
        .header(ProxyHeader::XForwardedFor)
        .header(ProxyHeader::Forwarded);
    assert_eq!(xff_first.client_addr(peer, &all), ip("203.0.113.2"));
}

#[test]
fn no_peer_address_is_a_key_error_naming_the_fix() {
    let req = Request::builder()
        .header("x-forwarded-for", "203.0.113.7")
        .body(())
        .unwrap();
    for err in [
        ClientIp::one_trusted_hop().extract(&req).unwrap_err(),
        PeerIp::new().extract(&req).unwrap_err(),
    ] {
        let message = err.to_string();
        assert!(
            message.contains("into_make_service_with_connect_info"),
            "{message}"
        );
        assert!(message.contains("SocketAddr"), "{message}");
    }
    let err = ClientIp::one_trusted_hop().extract(&req).unwrap_err();
    assert!(err.message().starts_with("ClientIp "), "{err}");
}

#[test]
fn ip_net_parses_cidr_and_names_the_bad_input() {
    let v4 = net("10.0.0.0/8");
    assert_eq!((v4.addr(), v4.prefix_len()), (ip("10.0.0.0"), 8));
    assert!(v4.contains(ip("10.255.255.255")));
    assert!(!v4.contains(ip("11.0.0.0")));
    assert!(v4.contains(ip("::ffff:10.1.1.1")));
    assert!(
        !v4.contains(ip("::a01:101")),
        "IPv4-compatible is not IPv4-mapped"
    );
    assert_eq!(net("::ffff:10.0.0.0/104"), v4);
    assert_eq!(net("192.0.2.7"), net("192.0.2.7/32"));
    assert_eq!(net("2001:db8::7"), net("2001:db8::7/128"));
    assert!(net("0.0.0.0/0").contains(ip("203.0.113.7")));
    assert!(!net("0.0.0.0/0").contains(ip("2001:db8::1")));
    let v6 = net("2001:db8::/32");
    assert!(v6.contains(ip("2001:db8:ffff::1")));
    assert!(!v6.contains(ip("2001:db9::1")));
    assert!(!v6.contains(ip("10.0.0.1")));
    assert!(net("::/0").contains(ip("10.0.0.1")), "mapped into ::/0");
    assert_eq!(v6.to_string(), "2001:db8::/32");
    assert_eq!(IpNet::new(ip("10.0.0.0"), 8), Ok(v4));

    let err = |s: &str| s.parse::<IpNet>().unwrap_err().to_string();
    assert_eq!(err("10.0.0.0/33"), "10.0.0.0/33: prefix longer than 32");
    assert_eq!(err("10.0.0.0/300"), "10.0.0.0/300: prefix longer than 32");
    assert_eq!(
        err("2001:db8::/129"),
        "2001:db8::/129: prefix longer than 128"
    );
    assert_eq!(
        err("10.0.0.0/"),
        "10.0.0.0/: the prefix length is not a number"
    );
    assert_eq!(
        err("10.0.0.0/+8"),
        "10.0.0.0/+8: the prefix length is not a number"
    );
    assert_eq!(
        err("10.0.0.0/8/8"),
        "10.0.0.0/8/8: the prefix length is not a number"
    );
    assert_eq!(err("10.0.0/8"), "10.0.0/8: not an IP address");
    assert_eq!(err(""), ": not an IP address");
    assert_eq!(err(" 10.0.0.0/8"), " 10.0.0.0/8: not an IP address");
    assert_eq!(
        err("10.1.0.0/8"),
        "10.1.0.0/8: bits set after the prefix (the network is 10.0.0.0/8)"
    );
    let e = IpNet::new(ip("10.0.0.0"), 40).unwrap_err();
    assert_eq!(e.input(), "10.0.0.0/40");
    assert_eq!(e.to_string(), "10.0.0.0/40: prefix longer than 32");
}

#[cfg(feature = "tonic")]
#[test]
fn peer_ip_and_client_ip_read_tonic_tcp_connect_info() {
    use tonic::transport::server::TcpConnectInfo;

    let with_info = |remote_addr: Option<&str>| {
        let mut req = Request::builder()
            .header("x-forwarded-for", "203.0.113.7")
            .body(())
            .unwrap();
        req.extensions_mut().insert(TcpConnectInfo {
            local_addr: Some("127.0.0.1:50051".parse().unwrap()),
            remote_addr: remote_addr.map(|a| a.parse().unwrap()),
        });
        req
    };
    let req = with_info(Some("10.0.0.5:4000"));
    assert_eq!(
        PeerIp::new().extract(&req).unwrap(),
        Some(Key::from(ip("10.0.0.5")))
    );
    assert_eq!(
        behind_proxies().extract(&req).unwrap(),
        Some(Key::from(ip("203.0.113.7")))
    );
    let v6 = with_info(Some("[2001:db8::1]:4000"));
    assert_eq!(
        PeerIp::new().extract(&v6).unwrap(),
        Some(Key::from(ip("2001:db8::")))
    );
    // Connection info without a peer address is no peer.
    assert!(PeerIp::new().extract(&with_info(None)).is_err());
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn a_real_server_limits_each_client_only_behind_a_trusted_proxy() {
    use axum::Router;
    use axum::routing::get;
    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tower_ratelimit::{Policy, Quota, RateLimitLayer};

    /// The statuses of requests through a server keyed by `key`, from a
    /// client on 127.0.0.1 naming a forwarded client on each.
    async fn statuses(key: ClientIp) -> Vec<u16> {
        let app = Router::new().route("/", get(|| async { "hello" })).layer(
            RateLimitLayer::builder()
                .policy(Policy::new("per-client", Quota::per_minute(2)))
                .key(key)
                .build()
                .unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let mut statuses = Vec::new();
        for client_ip in [
            "203.0.113.1",
            "203.0.113.1",
            "203.0.113.1",
            "203.0.113.2",
            "203.0.113.3",
        ] {
            let req = Request::get(format!("http://{addr}/"))
                .header("x-forwarded-for", format!("198.51.100.9, {client_ip}"))
                .body(Empty::new())
                .unwrap();
            statuses.push(client.request(req).await.unwrap().status().as_u16());
        }
        server.abort();
        statuses
    }

    // The loopback peer is the trusted proxy: each forwarded client has its own limit.
    let trusted = statuses(ClientIp::trusting([net("127.0.0.0/8"), net("::1")])).await;
    assert_eq!(trusted, [200, 200, 429, 200, 200]);
    // The loopback peer is not trusted: its header is ignored and every
    // request counts against the peer.
    let untrusted = statuses(ClientIp::trusting([net("10.0.0.0/8")])).await;
    assert_eq!(untrusted, [200, 200, 429, 429, 429]);
}

const FRAGMENTS: &[&[u8]] = &[
    b"10.0.0.9",
    b"203.0.113.7",
    b"198.51.100.1",
    b"2001:db8::1",
    b"fd00::2",
    b"[2001:db8:1:2::3]:4711",
    b"::ffff:10.0.0.9",
    b"::ffff:203.0.113.8",
    b"for=",
    b"For=",
    b";",
    b",",
    b", ",
    b"\"",
    b"\\",
    b"[",
    b"]",
    b":80",
    b"unknown",
    b"_hidden",
    b"proto=https",
];

/// Header bytes as a proxy or attacker might send them: pieces of valid
/// syntax and addresses, among arbitrary bytes a `HeaderValue` accepts.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    let byte = prop_oneof![Just(b'\t'), 0x20_u8..0x7f, 0x80_u8..=0xff];
    let fragment = proptest::sample::select(FRAGMENTS).prop_map(<[u8]>::to_vec);
    let piece = prop_oneof![
        3 => fragment,
        1 => proptest::collection::vec(byte, 0..6),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|pieces| {
        HeaderValue::from_bytes(&pieces.concat()).expect("only bytes a header value may hold")
    })
}

fn any_peer() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        Just(ip("10.0.0.5")),
        Just(ip("::ffff:10.0.0.5")),
        Just(ip("fd00::1")),
        Just(ip("192.0.2.66")),
        Just(ip("2001:db8:aa::1")),
        any::<u32>().prop_map(|n| IpAddr::from(n.to_be_bytes())),
        any::<u128>().prop_map(|n| IpAddr::from(n.to_be_bytes())),
    ]
}

/// Every address a substring of `map`'s values spells, grouped as a key.
fn addresses_in(map: &HeaderMap) -> Vec<IpAddr> {
    let mut found = Vec::new();
    for value in map.values() {
        let bytes = value.as_bytes();
        for start in 0..bytes.len() {
            for end in start + 1..=bytes.len().min(start + 45) {
                let parsed = std::str::from_utf8(&bytes[start..end])
                    .ok()
                    .and_then(|s| s.parse::<IpAddr>().ok());
                if let Some(ip) = parsed {
                    found.push(grouped(ip, 64));
                }
            }
        }
    }
    found
}

proptest! {
    #[test]
    fn any_header_bytes_key_by_the_peer_or_an_address_written_in_them(
        peer in any_peer(),
        forwarded in proptest::collection::vec(header_value(), 0..3),
        x_forwarded_for in proptest::collection::vec(header_value(), 0..3),
        x_real_ip in proptest::collection::vec(header_value(), 0..2),
    ) {
        let mut map = HeaderMap::new();
        for v in forwarded { map.append("forwarded", v); }
        for v in x_forwarded_for { map.append("x-forwarded-for", v); }
        for v in x_real_ip { map.append("x-real-ip", v); }
        let req = request(&SocketAddr::new(peer, 4000).to_string(), map.clone());
        let written = addresses_in(&map);
        let own = Key::from(grouped(peer, 64));

        for key in [reading_all(behind_proxies()), reading_all(ClientIp::one_trusted_hop())] {
            let got = key.extract(&req).unwrap().unwrap();
            prop_assert!(
                got == own || written.iter().any(|ip| Key::from(*ip) == got),
                "{got:?} is neither the peer {peer} nor written in {map:?}"
            );
        }

        let trusted = [net("10.0.0.0/8"), net("fd00::/8")].iter().any(|n| n.contains(peer));
        if !trusted {
            let got = reading_all(behind_proxies()).extract(&req).unwrap().unwrap();
            prop_assert_eq!(got, own, "an untrusted peer is its own key");
        }
    }
}
