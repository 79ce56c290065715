//! Run with `cargo run --example per_user`
//! (or, sharing the limits through Redis, `REDIS_URL=redis://127.0.0.1:6379
//! cargo run --example per_user --features redis`).
//!
//! An axum API limited to 5 requests per second per user, the user named by
//! the `x-api-key` header; requests without one are turned away. On start it
//! sends itself 7 requests as `alice` and 2 as `bob` — alice's last two are
//! refused, bob is not affected — then keeps serving.

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower_ratelimit::key::Header;
use tower_ratelimit::store::Store;
use tower_ratelimit::{BoxError, Policy, Quota, RateLimitLayer};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    #[cfg(feature = "redis")]
    if let Ok(url) = std::env::var("REDIS_URL") {
        println!("limits shared through {url}");
        return serve(tower_ratelimit::store::RedisStore::connect(&url).await?).await;
    }
    println!("limits in this process's memory");
    serve(tower_ratelimit::MemoryStore::new()).await
}

async fn serve<St: Store + Clone>(store: St) -> Result<(), BoxError> {
    let limit = RateLimitLayer::builder()
        .store(store)
        .policy(Policy::new("per-user", Quota::per_second(5)))
        .key(Header(http::HeaderName::from_static("x-api-key")))
        .reject_missing_key()
        .build()?;
    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .layer(limit);

    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = match TcpListener::bind(format!("127.0.0.1:{port}")).await {
        Ok(listener) => listener,
        Err(_) => TcpListener::bind("127.0.0.1:0").await?,
    };
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    println!("listening on http://{addr}");
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    for user in ["alice"; 7].into_iter().chain(["bob"; 2]) {
        let req = http::Request::get(format!("http://{addr}/"))
            .header("x-api-key", user)
            .body(Empty::new())?;
        let res = client.request(req).await?;
        let ratelimit = res
            .headers()
            .get("ratelimit")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        println!("  {user:<5} {}  RateLimit: {ratelimit}", res.status());
    }
    println!(
        "\nstill serving; try it yourself:\n  curl -i -H 'x-api-key: carol' http://{addr}/\n(Ctrl-C to stop)"
    );
    server.await??;
    Ok(())
}
