//! Run with `cargo bench --bench http`.
//!
//! End to end over HTTP/1.1: one axum server on 127.0.0.1 with one tokio
//! worker, driven by `wrk -t1 -c32` when it is installed (else by a load
//! generator of its own, 32 keep-alive connections on one thread). Routes,
//! each measured in turn, in a rotating order, for several rounds:
//!
//! | route | what answers |
//! |---|---|
//! | `plain` | a handler, `200` "Hello, World!" |
//! | `plain_429` | a handler answering `429` with `Retry-After` itself |
//! | `ours_allowed` | `RateLimitLayer`, default settings, a quota that never limits |
//! | `ours_allowed_lean` | the same, `HeaderStyle::None` |
//! | `ours_rejecting` | `RateLimitLayer`, default settings, a quota spent for the day |
//!
//! Each ratio, `ours_allowed / plain`, `ours_allowed_lean / plain` and
//! `ours_rejecting / plain_429`, is measured from its two routes run back
//! to back, in alternating order, round after round; it prints every
//! round, then each route's median and each ratio's median and range.
//!
//! Bounded: `HTTP_BENCH_ROUNDS` rounds (default 7) of `HTTP_BENCH_SECS`
//! seconds (default 2) per route and ratio, about 90 s; it stops by
//! itself. `HTTP_BENCH_WRK=0`
//! uses the built-in generator even when `wrk` is installed. Under
//! `cargo test` it sends a few hundred requests with the built-in
//! generator and checks the answers.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tower_ratelimit::{HeaderStyle, Policy, Quota, RateLimitLayer};

const ROUTES: [(&str, StatusCode); 5] = [
    ("plain", StatusCode::OK),
    ("plain_429", StatusCode::TOO_MANY_REQUESTS),
    ("ours_allowed", StatusCode::OK),
    ("ours_allowed_lean", StatusCode::OK),
    ("ours_rejecting", StatusCode::TOO_MANY_REQUESTS),
];

const RATIOS: [(&str, &str); 3] = [
    ("ours_allowed", "plain"),
    ("ours_allowed_lean", "plain"),
    ("ours_rejecting", "plain_429"),
];

const CONNECTIONS: usize = 32;

async fn hello() -> &'static str {
    "Hello, World!"
}

async fn too_many() -> impl IntoResponse {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, "86400")],
        "Too many requests",
    )
}

fn app() -> Router {
    let unlimited = || Policy::new("burst", Quota::per_day(1_000).burst(100_000_000));
    let allowed = RateLimitLayer::builder()
        .policy(unlimited())
        .build()
        .unwrap();
    let lean = RateLimitLayer::builder()
        .policy(unlimited())
        .headers(HeaderStyle::None)
        .build()
        .unwrap();
    let rejecting = RateLimitLayer::builder()
        .policy(Policy::new("daily", Quota::per_day(1)))
        .build()
        .unwrap();
    Router::new()
        .route("/plain", get(hello))
        .route("/plain_429", get(too_many))
        .route("/ours_allowed", get(hello).layer(allowed))
        .route("/ours_allowed_lean", get(hello).layer(lean))
        .route("/ours_rejecting", get(hello).layer(rejecting))
}

/// Serves `app` on 127.0.0.1 from a thread of its own running one tokio
/// worker; the address, once it listens.
fn serve() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app()).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// One keep-alive connection's requests to `path` until `stop`, counted
/// in `done`; or `limit` requests when it is given. Every answer must have
/// `status`.
async fn connection(
    addr: SocketAddr,
    path: &'static str,
    status: StatusCode,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    limit: Option<u64>,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let uri = format!("http://{addr}/{path}");
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) && limit.is_none_or(|l| sent < l) {
        let req = http::Request::get(&uri)
            .header(header::HOST, "127.0.0.1")
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.ready().await.unwrap();
        let res = send.send_request(req).await.unwrap();
        assert_eq!(res.status(), status, "/{path}");
        res.into_body().collect().await.unwrap();
        sent += 1;
        done.fetch_add(1, Ordering::Relaxed);
    }
    drop(send);
    let _ = conn.await;
}

/// Requests per second on `path` with the built-in generator: 32
/// connections on one thread for `secs`, or `limit` requests each.
fn generate(
    addr: SocketAddr,
    path: &'static str,
    status: StatusCode,
    secs: f64,
    limit: Option<u64>,
) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let conns: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                tokio::spawn(connection(
                    addr,
                    path,
                    status,
                    Arc::clone(&stop),
                    Arc::clone(&done),
                    limit,
                ))
            })
            .collect();
        if limit.is_none() {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            stop.store(true, Ordering::Relaxed);
        }
        for c in conns {
            c.await.unwrap();
        }
        done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
    })
}

/// The status of one request to `path`.
fn status_of(addr: SocketAddr, path: &str) -> StatusCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(format!("http://{addr}/{path}"))
            .header(header::HOST, "127.0.0.1")
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.unwrap().status()
    })
}

/// Requests per second on `path` by `wrk -t1 -c32`.
fn wrk(addr: SocketAddr, path: &str, secs: u64) -> f64 {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{secs}s")])
        .arg(format!("http://{addr}/{path}"))
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{text}"))
}

fn has_wrk() -> bool {
    std::env::var("HTTP_BENCH_WRK").map_or(true, |v| v != "0")
        && Command::new("wrk")
            .arg("--version")
            .output()
            .is_ok_and(|o| !o.stdout.is_empty() || !o.stderr.is_empty())
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let addr = serve();
    // Every route answers as it should before anything is measured; this
    // also spends the rejecting route's quota.
    assert_eq!(status_of(addr, "ours_rejecting"), StatusCode::OK);
    for (path, status) in ROUTES {
        assert_eq!(status_of(addr, path), status, "/{path}");
    }
    if !full {
        smoke(addr);
        return;
    }
    let rounds = env_or("HTTP_BENCH_ROUNDS", 7).max(1) as usize;
    let secs = env_or("HTTP_BENCH_SECS", 2).max(1);
    let use_wrk = has_wrk();
    println!(
        "HTTP/1.1, axum on one tokio worker, {} -c{CONNECTIONS}; each ratio from {rounds} rounds \
         of its two routes back to back, {secs}s each, in alternating order",
        if use_wrk {
            "wrk -t1"
        } else {
            "built-in generator"
        }
    );
    let measure = |path: &'static str| {
        let status = ROUTES.iter().find(|r| r.0 == path).unwrap().1;
        if use_wrk {
            wrk(addr, path, secs)
        } else {
            generate(addr, path, status, secs as f64, None)
        }
    };
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); ROUTES.len()];
    let index = |name: &str| ROUTES.iter().position(|r| r.0 == name).unwrap();
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); RATIOS.len()];
    for round in 0..rounds {
        for (k, (ours, base)) in RATIOS.iter().enumerate() {
            let (o, b) = if (round + k) % 2 == 0 {
                let b = measure(base);
                (measure(ours), b)
            } else {
                let o = measure(ours);
                (o, measure(base))
            };
            println!(
                "round {round} {ours:<20} {o:>9.0} req/s  {base:<10} {b:>9.0} req/s  {:.3}",
                o / b
            );
            rps[index(ours)].push(o);
            rps[index(base)].push(b);
            ratios[k].push(o / b);
        }
    }
    println!();
    println!("{:<20} {:>12}", "route", "median req/s");
    for (i, (path, _)) in ROUTES.iter().enumerate() {
        println!("{path:<20} {:>12.0}", median(rps[i].clone()));
    }
    println!();
    println!("{:<34} {:>7} {:>15}", "ratio", "median", "range");
    for ((ours, base), per_round) in RATIOS.iter().zip(ratios) {
        let lo = per_round.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = per_round.iter().copied().fold(0.0, f64::max);
        println!(
            "{:<34} {:>7.3} {:>7.3}-{:.3}",
            format!("{ours} / {base}"),
            median(per_round),
            lo,
            hi
        );
    }
}

/// Under `cargo test`: a few hundred requests per route, answers checked.
fn smoke(addr: SocketAddr) {
    for (path, status) in ROUTES {
        let rps = generate(addr, path, status, 0.0, Some(8));
        assert!(rps > 0.0, "/{path}");
    }
    println!("http bench: every route answers as expected");
}
