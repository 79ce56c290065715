//! Run with `cargo run --example tonic --features tonic`.
//!
//! A tonic gRPC server (the standard health service, so no protoc is
//! needed) limited per API key, read from the `x-api-key` metadata: 2 calls
//! a minute per key; a call without a key is refused. The client calls it
//! three times and prints each outcome: the third is `RESOURCE_EXHAUSTED`,
//! with `grpc-retry-pushback-ms` (what a gRPC retry policy waits) and the
//! `ratelimit` fields in its metadata.
//!
//! ```text
//! call 1: SERVING
//! call 2: SERVING
//! call 3: ResourceExhausted "Too many requests", grpc-retry-pushback-ms: 30000, ratelimit: "per-key";r=0;t=60
//! ```

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tower_ratelimit::key::Header;
use tower_ratelimit::{Policy, Quota, RateLimitLayer};

/// Serves the health service on `listener`, limited per API key.
pub async fn serve(listener: TcpListener) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let limit = RateLimitLayer::builder()
        .policy(Policy::new("per-key", Quota::per_minute(2)))
        .key(Header::new("x-api-key"))
        .reject_missing_key()
        .build()
        .expect("a valid rate limit");
    Server::builder()
        .layer(limit)
        .add_service(health)
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
}

/// One health check as `api_key`.
pub async fn check(addr: SocketAddr, api_key: &str) -> Result<ServingStatus, Status> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let api_key: MetadataValue<_> = api_key.parse().expect("ASCII");
    let mut client = HealthClient::with_interceptor(channel, move |mut req: Request<()>| {
        req.metadata_mut().insert("x-api-key", api_key.clone());
        Ok(req)
    });
    let res = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(res.into_inner().status())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener));
    println!("gRPC health service on {addr}, 2 calls a minute per API key");
    for i in 1..=3 {
        match check(addr, "key-1").await {
            Ok(status) => println!("call {i}: {}", status.as_str_name()),
            Err(status) if status.code() == Code::ResourceExhausted => {
                let meta = |name| {
                    status
                        .metadata()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned()
                };
                println!(
                    "call {i}: {:?} {:?}, grpc-retry-pushback-ms: {}, ratelimit: {}",
                    status.code(),
                    status.message(),
                    meta("grpc-retry-pushback-ms"),
                    meta("ratelimit"),
                );
            }
            Err(status) => return Err(status.into()),
        }
    }
    Ok(())
}
