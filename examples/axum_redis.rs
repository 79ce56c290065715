//! Run with `cargo run --example axum_redis --features redis,axum,metrics`.
//!
//! An axum server whose limit lives in Redis, so every instance shares it,
//! with its decisions counted on `/metrics` for Prometheus. Reads
//! `REDIS_URL` (default `redis://127.0.0.1:6379`) and `PORT` (default
//! 3000). Start two on different ports and watch them share one quota:
//!
//! ```text
//! PORT=3000 cargo run --example axum_redis --features redis,axum,metrics &
//! PORT=3001 cargo run --example axum_redis --features redis,axum,metrics &
//! for p in 3000 3001 3000 3001 3000 3001; do curl -s -o /dev/null -w "$p %{http_code}\n" localhost:$p/; done
//! curl -s localhost:3000/metrics
//! ```

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::net::TcpListener;
use tower_ratelimit::key::PeerIp;
use tower_ratelimit::store::RedisStore;
use tower_ratelimit::{Policy, Quota, RateLimitLayer};

#[tokio::main]
async fn main() -> Result<(), tower_ratelimit::BoxError> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());

    // Every `ratelimit_*` metric, rendered for Prometheus on `/metrics`.
    let prometheus = PrometheusBuilder::new().install_recorder()?;

    let store = RedisStore::connect(&url).await?;
    let limit = RateLimitLayer::builder()
        .store(store)
        .policy(Policy::new("burst", Quota::per_second(2)))
        .policy(Policy::new("minute", Quota::per_minute(20)))
        .key(PeerIp::new())
        .build()?;

    let app = Router::new()
        .route("/", get(|| async { "hello from a shared limit\n" }))
        .layer(limit)
        // Outside the limit: scraping is never refused.
        .route("/metrics", get(move || async move { prometheus.render() }));
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!(
        "listening on http://{}, limits in {url}",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
