//! Run with `cargo run --example hyper`.
//!
//! A plain hyper server, no framework: hyper-util's `TowerToHyperService`
//! runs a tower stack whose rate limit keys by the peer's address (put on
//! each request by the connection loop). 2 requests a second, burst 2.
//!
//! ```text
//! for i in 1 2 3; do curl -s -o /dev/null -w "%{http_code} " localhost:3000/; done; echo
//! # 200 200 429
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_ratelimit::key::PeerIp;
use tower_ratelimit::{Policy, Quota, RateLimitLayer};

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
}

/// Serves connections from `listener` until it fails.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    // Built once: every connection's service shares this one limit.
    let limit = RateLimitLayer::builder()
        .policy(Policy::new("per-ip", Quota::per_second(2)))
        .key(PeerIp::new())
        .build()
        .expect("a valid rate limit");
    loop {
        let (stream, peer) = listener.accept().await?;
        let svc = ServiceBuilder::new()
            // `PeerIp` reads the peer's `SocketAddr` from the extensions.
            .map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert::<SocketAddr>(peer);
                req
            })
            .layer(limit.clone())
            .service_fn(hello);
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    serve(listener).await?;
    Ok(())
}
