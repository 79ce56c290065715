//! Run with `cargo run --example behind_proxy --features axum`.
//!
//! A server behind a load balancer, limited per *client*: `ClientIp`
//! reads `X-Forwarded-For`, but only from the proxy network it is told to
//! trust (`TRUSTED_PROXIES`, comma-separated, default `10.0.0.0/8`).
//! Everyone else is keyed by their own address, whatever they claim.
//! 3 requests a minute; the body says which address was counted.
//!
//! Spoofing does not work: from your machine (127.0.0.1, not a trusted
//! proxy) a made-up header changes nothing, and the fourth request is
//! refused whatever address it claims:
//!
//! ```text
//! for ip in 1.1.1.1 2.2.2.2 3.3.3.3 4.4.4.4; do
//!   curl -s -w " %{http_code}\n" -H "X-Forwarded-For: $ip" localhost:3000/
//! done
//! # counted as 127.0.0.1 200   (three times)
//! # Too many requests 429
//! ```
//!
//! Now play the load balancer: trust loopback, and the header names the
//! client. Each client gets its own quota, and what a client wrote into the
//! header itself (left of the address the proxy appended) is ignored:
//!
//! ```text
//! TRUSTED_PROXIES=127.0.0.1/32 cargo run --example behind_proxy --features axum
//! curl -H "X-Forwarded-For: 203.0.113.7" localhost:3000/              # counted as 203.0.113.7
//! curl -H "X-Forwarded-For: 6.6.6.6, 203.0.113.7" localhost:3000/     # still 203.0.113.7
//! ```

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use axum::routing::get;
use tokio::net::TcpListener;
use tower_ratelimit::key::{ClientIp, IpNet};
use tower_ratelimit::{Policy, Quota, RateLimitLayer};

/// The application, limited per client as seen through proxies in
/// `trusted`.
pub fn app(trusted: Vec<IpNet>) -> Router {
    let key = ClientIp::trusting(trusted);
    let limit = RateLimitLayer::builder()
        .policy(Policy::new("per-client", Quota::per_minute(3)))
        .key(key.clone())
        .build()
        .expect("a valid rate limit");
    Router::new()
        .route(
            "/",
            get(
                move |ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap| async move {
                    // The same address the limit counts, for logs or replies.
                    format!("counted as {}", key.client_addr(peer.ip(), &headers))
                },
            ),
        )
        .layer(limit)
}

/// `TRUSTED_PROXIES` parsed, default `10.0.0.0/8`.
fn trusted_proxies() -> Result<Vec<IpNet>, tower_ratelimit::key::IpNetError> {
    std::env::var("TRUSTED_PROXIES")
        .unwrap_or_else(|_| "10.0.0.0/8".into())
        .split(',')
        .map(|net| net.trim().parse())
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let trusted = trusted_proxies()?;
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!(
        "listening on http://{}, trusting proxies in {trusted:?}",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        app(trusted).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
