//! Each example, served on 127.0.0.1 and driven over a real connection:
//! hyper's client for the HTTP ones, tonic's for the gRPC one. The
//! examples' own code is compiled in here, so what they show is what is
//! tested.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Status, `RateLimit-Policy` and body of one request.
async fn fetch(
    client: &HttpClient,
    req: Request<Empty<Bytes>>,
) -> (StatusCode, Option<String>, String) {
    let res = client.request(req).await.unwrap();
    let status = res.status();
    let policy = res
        .headers()
        .get("ratelimit-policy")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, policy, String::from_utf8(body.to_vec()).unwrap())
}

fn request(method: &str, addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap()
}

#[cfg(feature = "axum")]
#[allow(dead_code)]
#[path = "../examples/per_route.rs"]
mod per_route;

#[cfg(feature = "axum")]
#[tokio::test]
async fn per_route_example_limits_login_api_and_global_in_one_layer() {
    let (listener, addr) = listener().await;
    let app = per_route::app().into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = client();

    let mut logins = Vec::new();
    for _ in 0..6 {
        let (status, policy, _) = fetch(&client, request("POST", addr, "/login")).await;
        logins.push(status.as_u16());
        assert_eq!(
            policy.as_deref(),
            Some("\"login\";q=5;w=60, \"global\";q=100;w=60")
        );
    }
    assert_eq!(logins, [200, 200, 200, 200, 200, 429]);

    let (status, policy, _) = fetch(&client, request("GET", addr, "/api/items/7")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        policy.as_deref(),
        Some("\"api\";q=60;w=60, \"global\";q=100;w=60")
    );
    let (status, policy, _) = fetch(&client, request("GET", addr, "/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(policy.as_deref(), Some("\"global\";q=100;w=60"));
    // The refused login was charged to nothing: 5 logins, 1 API call and
    // two home page requests are 8 of the global 100.
    let res = client.request(request("GET", addr, "/")).await.unwrap();
    let ratelimit = res.headers()["ratelimit"].to_str().unwrap();
    assert!(ratelimit.starts_with("\"global\";r=92;"), "{ratelimit}");
    for _ in 0..10 {
        let (status, policy, _) = fetch(&client, request("GET", addr, "/health")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(policy, None);
    }
    server.abort();
}

#[cfg(feature = "axum")]
#[allow(dead_code)]
#[path = "../examples/behind_proxy.rs"]
mod behind_proxy;

#[cfg(feature = "axum")]
async fn serve_behind_proxy(trusted: &str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (listener, addr) = listener().await;
    let app = behind_proxy::app(vec![trusted.parse().unwrap()])
        .into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, server)
}

#[cfg(feature = "axum")]
fn forwarded_for(addr: SocketAddr, xff: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{addr}/"))
        .header("x-forwarded-for", xff)
        .body(Empty::new())
        .unwrap()
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn behind_proxy_example_ignores_spoofed_headers_from_untrusted_peers() {
    let (addr, server) = serve_behind_proxy("10.0.0.0/8").await;
    let client = client();
    let mut seen = Vec::new();
    for ip in ["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"] {
        let (status, _, body) = fetch(&client, forwarded_for(addr, ip)).await;
        seen.push((status.as_u16(), body));
    }
    let counted = |s: &str| (200, s.to_owned());
    assert_eq!(
        seen,
        [
            counted("counted as 127.0.0.1"),
            counted("counted as 127.0.0.1"),
            counted("counted as 127.0.0.1"),
            (429, "Too many requests".to_owned()),
        ]
    );
    server.abort();
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn behind_proxy_example_keys_by_the_client_a_trusted_proxy_names() {
    let (addr, server) = serve_behind_proxy("127.0.0.1/32").await;
    let client = client();
    for _ in 0..3 {
        let (status, _, body) = fetch(&client, forwarded_for(addr, "203.0.113.7")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "counted as 203.0.113.7")
        );
    }
    // What the client wrote left of the proxy's entry changes nothing.
    let (status, _, body) = fetch(&client, forwarded_for(addr, "6.6.6.6, 203.0.113.7")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "Too many requests")
    );
    // Another client has its own quota.
    let (status, _, body) = fetch(&client, forwarded_for(addr, "198.51.100.2")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "counted as 198.51.100.2")
    );
    server.abort();
}

#[allow(dead_code)]
#[path = "../examples/hyper.rs"]
mod hyper_example;

#[tokio::test]
async fn hyper_example_limits_each_peer_through_tower_to_hyper_service() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(hyper_example::serve(listener));
    let client = client();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (status, policy, _) = fetch(&client, request("GET", addr, "/")).await;
        statuses.push(status.as_u16());
        assert_eq!(policy.as_deref(), Some("\"per-ip\";q=2;w=1"));
    }
    assert_eq!(statuses, [200, 200, 429]);
    server.abort();
}

#[cfg(feature = "tonic")]
#[allow(dead_code)]
#[path = "../examples/tonic.rs"]
mod tonic_example;

#[cfg(feature = "tonic")]
#[tokio::test]
async fn tonic_example_answers_resource_exhausted_with_retry_metadata() {
    use tonic::Code;
    use tonic_health::pb::health_check_response::ServingStatus;

    let (listener, addr) = listener().await;
    let server = tokio::spawn(tonic_example::serve(listener));
    for _ in 0..2 {
        let status = tonic_example::check(addr, "key-1").await.unwrap();
        assert_eq!(status, ServingStatus::Serving);
    }
    let refused = tonic_example::check(addr, "key-1").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    let meta = |name| {
        refused
            .metadata()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let pushback: u64 = meta("grpc-retry-pushback-ms").unwrap().parse().unwrap();
    assert!((29_000..=30_000).contains(&pushback), "{pushback}");
    // One unit back within 30 s: when more is available, as the pushback.
    assert_eq!(meta("ratelimit").as_deref(), Some("\"per-key\";r=0;t=30"));
    // Another key has its own quota.
    assert!(tonic_example::check(addr, "key-2").await.is_ok());
    server.abort();
}
