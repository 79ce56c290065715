//! Run with `cargo run --example batch_jobs`
//! (or, sharing the limits through Redis, `REDIS_URL=redis://127.0.0.1:6379
//! cargo run --example batch_jobs --features redis`).
//!
//! A batch of 50 jobs calling a third-party API that allows 10 calls a
//! second and 4 at a time. Each job takes one of 4 permits from
//! `RateLimiter::acquire_permit`, then waits its turn with
//! `RateLimiter::acquire` (a reserved slot, not a retry loop), and works;
//! the permit goes back when it is dropped. Run it twice at once against
//! one Redis and the two batches share both limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tower_ratelimit::store::Store;
use tower_ratelimit::{BoxError, Policy, Quota, RateLimiter};

const JOBS: u32 = 50;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    #[cfg(feature = "redis")]
    if let Ok(url) = std::env::var("REDIS_URL") {
        println!("limits shared through {url}");
        let store = tower_ratelimit::store::RedisStore::connect(&url).await?;
        return run(store).await;
    }
    println!("limits in this process's memory");
    run(tower_ratelimit::MemoryStore::new()).await
}

async fn run<St: Store + Clone>(store: St) -> Result<(), BoxError> {
    // 10 calls a second, one at a time: jobs start 100 ms apart.
    let pace = RateLimiter::builder()
        .store(store.clone())
        .policy(Policy::new("calls", Quota::per_second(10).burst(1)))
        .build()?;
    // At most 4 jobs in flight.
    let slots = RateLimiter::builder()
        .store(store)
        .policy(Policy::concurrency("in-flight", 4))
        .build()?;

    let start = Instant::now();
    let in_flight = Arc::new(AtomicU32::new(0));
    let mut jobs = Vec::new();
    for job in 1..=JOBS {
        let (pace, slots, in_flight) = (pace.clone(), slots.clone(), Arc::clone(&in_flight));
        jobs.push(tokio::spawn(async move {
            // A place among the 4 first, then the turn among the 10 a second:
            // starts are 100 ms apart at least, and 4 at most run at once.
            let permit = slots.acquire_permit("third-party-api", 1).await?;
            pace.acquire("third-party-api", 1).await?;
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            println!(
                "{:>6.2}s  job {job:>2} starts  ({now} in flight)",
                start.elapsed().as_secs_f64()
            );
            // The work: longer than the pace, so the cap of 4 is what holds.
            tokio::time::sleep(Duration::from_millis(600)).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            drop(permit); // the token-bucket design's `Release`
            Ok::<_, BoxError>(())
        }));
    }
    for job in jobs {
        job.await??;
    }
    println!(
        "{JOBS} jobs in {:.2}s: never more than 10 starts a second or 4 at once",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
