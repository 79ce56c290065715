//! Run with `cargo bench --bench layer`.
//!
//! One request through a service, `ready().call()` on a `service_fn`, one
//! global key, side by side in one run so the figures read as ratios:
//! - `layer/allowed/*`: no layer; `RateLimitLayer` with default settings
//!   (IETF `RateLimit-Policy` and `RateLimit` on the response); lean
//!   (`HeaderStyle::None`, no `Decision` in the extensions); with the
//!   `Decision` in the extensions; `tower_governor` (its default: no
//!   headers) and `tower_governor` with its headers;
//! - `layer/rejected/*`: a service answering `429` itself (no layer), and
//!   the same over-limit request turned away by `RateLimitLayer` (default
//!   and lean) and by `tower_governor`;
//! - `layer/10k_client_keys`: `RateLimitLayer` keyed by 10,000 client
//!   addresses in turn.
//!
//! Every future here is ready at once, so it is polled once with a no-op
//! waker: no runtime is measured, only the service.

use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use axum::body::Body;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::GlobalKeyExtractor;
use tower_ratelimit::key::Global;
use tower_ratelimit::{HeaderStyle, MemoryStore, Policy, Quota, RateLimitLayer};

/// Never limits within a run, and the state stays (nothing refills
/// between two requests), as a busy client's does.
fn unlimited() -> Policy {
    Policy::new("burst", Quota::per_day(1_000).burst(100_000_000))
}

/// One a day: every request after the first is over the limit.
fn spent() -> Policy {
    Policy::new("daily", Quota::per_day(1))
}

type Inner = fn(Request<()>) -> Ready<Result<Response<Body>, std::convert::Infallible>>;

fn ok(_: Request<()>) -> Ready<Result<Response<Body>, std::convert::Infallible>> {
    ready(Ok(Response::new(Body::empty())))
}

fn too_many(_: Request<()>) -> Ready<Result<Response<Body>, std::convert::Infallible>> {
    let mut res = Response::new(Body::from("Too many requests"));
    *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    res.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from(86_400_u32),
    );
    ready(Ok(res))
}

/// The output of a future that is ready when first polled.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the benchmarked future was not ready at once"),
    }
}

/// One request through `svc`, made ready first, the way a server calls it.
fn one<S>(svc: &mut S, req: Request<()>) -> S::Response
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    now(svc.ready()).unwrap();
    now(svc.call(req)).unwrap()
}

fn ours(policy: Policy, style: HeaderStyle, attach: bool) -> RateLimitLayer<Global, MemoryStore> {
    RateLimitLayer::builder()
        .policy(policy)
        .headers(style)
        .decision_in_extensions(attach)
        .build()
        .unwrap()
}

fn bench<S, B>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut svc: S,
    status: StatusCode,
) where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    assert_eq!(one(&mut svc, Request::new(())).status(), status, "{name}");
    g.bench_function(name, |b| {
        b.iter(|| black_box(one(&mut svc, Request::new(()))));
    });
}

fn allowed(c: &mut Criterion) {
    let inner = service_fn(ok as Inner);
    let mut g = c.benchmark_group("layer/allowed");
    bench(&mut g, "no_layer", inner, StatusCode::OK);
    bench(
        &mut g,
        "ours_default",
        RateLimitLayer::builder()
            .policy(unlimited())
            .build()
            .unwrap()
            .layer(inner),
        StatusCode::OK,
    );
    bench(
        &mut g,
        "ours_lean",
        ours(unlimited(), HeaderStyle::None, false).layer(inner),
        StatusCode::OK,
    );
    bench(
        &mut g,
        "ours_ietf_with_extension",
        ours(unlimited(), HeaderStyle::Ietf, true).layer(inner),
        StatusCode::OK,
    );
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(GlobalKeyExtractor)
        .finish()
        .unwrap();
    let gov = tower_governor::GovernorLayer::new(config).layer(inner);
    bench(&mut g, "tower_governor", gov, StatusCode::OK);
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(GlobalKeyExtractor)
        .use_headers()
        .finish()
        .unwrap();
    let gov = tower_governor::GovernorLayer::new(config).layer(inner);
    bench(&mut g, "tower_governor_headers", gov, StatusCode::OK);
    g.finish();
}

fn rejected(c: &mut Criterion) {
    let inner = service_fn(ok as Inner);
    let mut g = c.benchmark_group("layer/rejected");
    bench(
        &mut g,
        "no_layer_429",
        service_fn(too_many as Inner),
        StatusCode::TOO_MANY_REQUESTS,
    );
    let mut default = RateLimitLayer::builder()
        .policy(spent())
        .build()
        .unwrap()
        .layer(inner);
    one(&mut default, Request::new(()));
    bench(
        &mut g,
        "ours_default",
        default,
        StatusCode::TOO_MANY_REQUESTS,
    );
    let mut lean = ours(spent(), HeaderStyle::None, false).layer(inner);
    one(&mut lean, Request::new(()));
    bench(&mut g, "ours_lean", lean, StatusCode::TOO_MANY_REQUESTS);
    let config = GovernorConfigBuilder::default()
        .per_second(86_400)
        .burst_size(1)
        .key_extractor(GlobalKeyExtractor)
        .finish()
        .unwrap();
    let mut gov = tower_governor::GovernorLayer::new(config).layer(inner);
    one(&mut gov, Request::new(()));
    bench(&mut g, "tower_governor", gov, StatusCode::TOO_MANY_REQUESTS);
    g.finish();
}

fn client_keys(c: &mut Criterion) {
    let inner = service_fn(ok as Inner);
    let mut g = c.benchmark_group("layer/10k_client_keys");
    let mut n = 0_u32;
    let mut next = move || {
        n = (n + 1) % 10_000;
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)));
        req
    };
    let mut svc = RateLimitLayer::builder()
        .policy(unlimited())
        .key(|req: &Request<()>| req.extensions().get::<IpAddr>().copied())
        .build()
        .unwrap()
        .layer(inner);
    g.bench_function("ours_default", |b| {
        b.iter(|| black_box(one(&mut svc, next())));
    });
    g.finish();
}

criterion_group!(benches, allowed, rejected, client_keys);
criterion_main!(benches);
