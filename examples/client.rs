//! Run with `cargo run --example client`
//! (or, sharing the pace through Redis, `REDIS_URL=redis://127.0.0.1:6379
//! cargo run --example client --features redis`).
//!
//! An outgoing HTTP client paced to 4 calls a second. The rate limit layer
//! wraps a hyper-util client with one global key in wait mode: `poll_ready`
//! reserves the next slot and waits for it, so the client is paced by
//! backpressure and never holds a queue of requests. It calls a local
//! server 12 times and prints when each call went out.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_ratelimit::store::Store;
use tower_ratelimit::{BoxError, OnLimit, Policy, Quota, RateLimitLayer};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The API being called: a local server, so the example needs no network.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let api = Router::new().route("/", get(|| async { "pong" }));
    tokio::spawn(async move { axum::serve(listener, api).await });

    #[cfg(feature = "redis")]
    if let Ok(url) = std::env::var("REDIS_URL") {
        println!("pace shared through {url}");
        let store = tower_ratelimit::store::RedisStore::connect(&url).await?;
        return call(store, addr).await;
    }
    println!("pace kept in this process's memory");
    call(tower_ratelimit::MemoryStore::new(), addr).await
}

async fn call<St: Store>(store: St, addr: std::net::SocketAddr) -> Result<(), BoxError> {
    let pace = RateLimitLayer::builder()
        .store(store)
        .policy(Policy::new("upstream", Quota::per_second(4).burst(1)))
        .on_limit(OnLimit::Wait {
            max: Duration::from_secs(30),
        })
        .reject_with_error()
        .build()?;
    let mut client = ServiceBuilder::new()
        .layer(pace)
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());

    let start = Instant::now();
    for n in 1..=12 {
        let req = http::Request::get(format!("http://{addr}/")).body(Empty::new())?;
        // `ready` waits for the reserved slot; `call` then goes out at once.
        let res = client.ready().await?.call(req).await?;
        println!(
            "{:>5.2}s  call {n:>2}: {}",
            start.elapsed().as_secs_f64(),
            res.status()
        );
    }
    println!("12 calls, 250 ms apart: paced, none refused");
    Ok(())
}
