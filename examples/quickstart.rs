//! Run with `cargo run --example quickstart`.
//!
//! An axum server limited to 5 requests per second per client IP, on the
//! in-memory store: no setup. On start it sends itself a burst of 8 requests
//! and prints each status and `RateLimit` header, then keeps serving.

use std::net::{IpAddr, SocketAddr};

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower_ratelimit::{Policy, Quota, RateLimitLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let limit = RateLimitLayer::builder()
        .policy(Policy::new("burst", Quota::per_second(5)))
        // Key by client IP. (With the `axum` feature, `key::PeerIp` does this.)
        .key(|req: &Request| {
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| -> IpAddr { addr.ip() })
        })
        .build()?;

    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .layer(limit);

    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = match TcpListener::bind(format!("127.0.0.1:{port}")).await {
        Ok(listener) => listener,
        // Port taken: any free one will do for a demo.
        Err(_) => TcpListener::bind("127.0.0.1:0").await?,
    };
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });

    println!("listening on http://{addr}; sending a burst of 8 requests:");
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    for i in 1..=8 {
        let res = client.get(format!("http://{addr}/").parse()?).await?;
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        println!(
            "  request {i}: {}  RateLimit: {}  Retry-After: {}",
            res.status(),
            header("ratelimit"),
            header("retry-after"),
        );
    }
    println!("\nstill serving; try it yourself:\n  curl -i http://{addr}/\n(Ctrl-C to stop)");
    server.await??;
    Ok(())
}
