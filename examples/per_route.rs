//! Run with `cargo run --example per_route --features axum`.
//!
//! One `Router`, one rate-limit layer, four shapes of limit, per client IP:
//!
//! - `/login`: 5 a minute (password guessing), plus the global limit;
//! - `/api/...`: 60 a minute, plus the global limit;
//! - `/health`: never limited, never counted;
//! - everything else: the global limit alone, 100 a minute.
//!
//! Each request is decided against its route's policies in one atomic
//! check, so a login refused by the `login` policy is not charged to
//! `global`, and each 429 names the policies that apply to it.
//!
//! ```text
//! for i in $(seq 6); do curl -s -o /dev/null -w "%{http_code} " -X POST localhost:3000/login; done; echo
//! # 200 200 200 200 200 429
//! curl -i localhost:3000/api/items     # ratelimit-policy: "api";q=60;w=60, "global";q=100;w=60
//! curl -i localhost:3000/health        # no rate-limit fields at all
//! ```

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tower_ratelimit::key::PeerIp;
use tower_ratelimit::{Policy, Quota, RateLimitLayer};

/// The application, limited.
pub fn app() -> Router {
    let global = Policy::new("global", Quota::per_minute(100));
    let limit = RateLimitLayer::builder()
        .key(PeerIp::new())
        .policy(global.clone())
        .policy_set(
            "login",
            [Policy::new("login", Quota::per_minute(5)), global.clone()],
        )
        .policy_set("api", [Policy::new("api", Quota::per_minute(60)), global])
        // axum records the matched route before calling a `Router::layer`.
        .policies_by(|req: &Request| {
            match req
                .extensions()
                .get::<MatchedPath>()
                .map(MatchedPath::as_str)
            {
                Some("/login") => Some("login"),
                Some(route) if route.starts_with("/api/") => Some("api"),
                _ => None, // the layer's own policy: "global"
            }
        })
        .skip_if(|req: &Request| req.uri().path() == "/health")
        .build()
        .expect("a valid rate limit");

    Router::new()
        .route("/", get(|| async { "home\n" }))
        .route("/login", post(|| async { "welcome\n" }))
        .route("/api/items", get(|| async { "[]\n" }))
        .route("/api/items/{id}", get(|| async { "{}\n" }))
        .route("/health", get(|| async { "ok\n" }))
        .layer(limit)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app().into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
