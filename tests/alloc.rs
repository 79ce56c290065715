//! Heap allocations on the in-memory path, counted by a global allocator,
//! once the keys are known: none per decision of one policy, one per
//! decision of several (their shared list of per-policy parts), none for
//! a request through a lean layer, and one for the `RateLimit` value of
//! the default layer's response (plus the header map's own two when the
//! response had no headers yet). Numbers below 1000 in the other fields
//! are static; a larger one costs one allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_ratelimit::clock::FakeClock;
use tower_ratelimit::key::Key;
use tower_ratelimit::store::{Check, Op};
use tower_ratelimit::{
    Algorithm, HeaderStyle, MemoryStore, Policy, PolicySet, Quota, RateLimitLayer,
};

struct Counting;

thread_local! {
    // Counted per thread, so tests running side by side do not mix.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// count is a thread-local cell with a constant initialiser, which does not
// allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocations made on this thread by `n` runs of `f`, per run.
fn per_run(n: u64, mut f: impl FnMut()) -> f64 {
    let before = ALLOCATIONS.with(Cell::get);
    for _ in 0..n {
        f();
    }
    (ALLOCATIONS.with(Cell::get) - before) as f64 / n as f64
}

fn store() -> (MemoryStore<FakeClock>, FakeClock) {
    let clock = FakeClock::new();
    (
        MemoryStore::builder().clock(clock.clone()).build().unwrap(),
        clock,
    )
}

#[test]
fn a_decision_of_one_policy_allocates_nothing_for_every_rate_algorithm() {
    for algorithm in Algorithm::RATES {
        let (store, clock) = store();
        let set = PolicySet::new(vec![
            Policy::new("p", Quota::per_second(50)).with_algorithm(algorithm),
        ])
        .unwrap();
        let keys: Vec<Key> = (0..64_u64).map(Key::from).collect();
        let run = |i: &mut usize| {
            clock.advance(Duration::from_micros(7_919));
            let key = &keys[*i % keys.len()];
            *i += 1;
            let d = store.decide_now(Check::new(key, &set, 1));
            std::hint::black_box(d);
        };
        let mut i = 0;
        // Warm-up: every key and table is made, every log has grown.
        for _ in 0..10_000 {
            run(&mut i);
        }
        assert_eq!(per_run(10_000, || run(&mut i)), 0.0, "{algorithm:?}");
    }
}

#[test]
fn a_rejection_allocates_nothing() {
    let (store, _) = store();
    let set = PolicySet::new(vec![Policy::new("p", Quota::per_hour(1))]).unwrap();
    let key = Key::from("spent");
    assert!(store.decide_now(Check::new(&key, &set, 1)).is_allowed());
    let allocations = per_run(1_000, || {
        assert!(!store.decide_now(Check::new(&key, &set, 1)).is_allowed());
    });
    assert_eq!(allocations, 0.0);
}

#[test]
fn wait_mode_peeks_and_the_global_key_allocate_nothing() {
    let (store, clock) = store();
    let set = PolicySet::new(vec![Policy::new("p", Quota::per_second(1_000).burst(5))]).unwrap();
    let key = Key::global();
    store.decide_now(Check::new(&key, &set, 1));
    let allocations = per_run(1_000, || {
        clock.advance(Duration::from_micros(300));
        let wait = Some(Duration::from_millis(10));
        std::hint::black_box(store.decide_now(Check::new(&key, &set, 1).with_max_wait(wait)));
        std::hint::black_box(store.decide_now(Check::new(&key, &set, 1).with_op(Op::Peek)));
    });
    assert_eq!(allocations, 0.0);
}

#[test]
fn a_decision_of_two_policies_allocates_their_shared_list_once() {
    let (store, clock) = store();
    let set = PolicySet::new(vec![
        Policy::new("burst", Quota::per_second(100)),
        Policy::new("daily", Quota::per_day(10_000_000)).with_algorithm(Algorithm::FixedWindow),
    ])
    .unwrap();
    let key = Key::from(42_u64);
    store.decide_now(Check::new(&key, &set, 1));
    let allocations = per_run(1_000, || {
        clock.advance(Duration::from_millis(10));
        assert!(store.decide_now(Check::new(&key, &set, 1)).is_allowed());
    });
    assert_eq!(allocations, 1.0);
}

// ---------------------------------------------------------------- layer

type Inner = fn(Request<()>) -> Ready<Result<Response<String>, Infallible>>;

/// A response that already has a header, as a framework's does.
fn with_a_header(_: Request<()>) -> Ready<Result<Response<String>, Infallible>> {
    let mut res = Response::new(String::new());
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    ready(Ok(res))
}

/// A response with no headers at all.
fn bare(_: Request<()>) -> Ready<Result<Response<String>, Infallible>> {
    ready(Ok(Response::new(String::new())))
}

fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the in-memory path answers at once"),
    }
}

/// Allocations per request through `svc` beyond those of the inner
/// service alone, once warm; and the status answered.
fn layer_allocations<S>(inner: Inner, mut svc: S) -> (f64, StatusCode)
where
    S: Service<Request<()>, Response = Response<tower_ratelimit::response::ResponseBody<String>>>,
    S::Error: std::fmt::Debug,
{
    let mut plain = service_fn(inner);
    let mut status = StatusCode::OK;
    let mut one = |svc: &mut S| {
        now(svc.ready()).unwrap();
        let res = now(svc.call(Request::new(()))).unwrap();
        status = res.status();
    };
    // Warm: the key is known, and the unlimited policy's figures have
    // grown past 1000 (its reset is 86.4 s a request).
    for _ in 0..20 {
        one(&mut svc);
    }
    let with = per_run(1_000, || one(&mut svc));
    let without = per_run(1_000, || {
        now(plain.ready()).unwrap();
        std::hint::black_box(now(plain.call(Request::new(()))).unwrap());
    });
    (with - without, status)
}

fn layer(
    policy: Policy,
    style: HeaderStyle,
) -> RateLimitLayer<tower_ratelimit::key::Global, MemoryStore> {
    RateLimitLayer::builder()
        .policy(policy)
        .headers(style)
        .build()
        .unwrap()
}

fn unlimited() -> Policy {
    Policy::new("burst", Quota::per_day(1_000).burst(100_000_000))
}

#[test]
fn an_admitted_request_through_a_lean_layer_allocates_nothing() {
    for inner in [with_a_header as Inner, bare] {
        let svc = layer(unlimited(), HeaderStyle::None).layer(service_fn(inner));
        assert_eq!(layer_allocations(inner, svc), (0.0, StatusCode::OK));
    }
}

#[test]
fn an_admitted_request_through_the_default_layer_allocates_its_ratelimit_value() {
    let inner = with_a_header as Inner;
    let svc = layer(unlimited(), HeaderStyle::Ietf).layer(service_fn(inner));
    assert_eq!(layer_allocations(inner, svc), (1.0, StatusCode::OK));
    // A response without headers also makes its header map: two more.
    let svc = layer(unlimited(), HeaderStyle::Ietf).layer(service_fn(bare as Inner));
    assert_eq!(layer_allocations(bare, svc), (3.0, StatusCode::OK));
    // The legacy fields: numbers below 1000 are static, larger ones one
    // allocation each.
    let small = Policy::new("burst", Quota::new(999, Duration::from_micros(1)));
    let svc = layer(small, HeaderStyle::Legacy).layer(service_fn(with_a_header as Inner));
    assert_eq!(layer_allocations(with_a_header, svc), (0.0, StatusCode::OK));
    let svc = layer(unlimited(), HeaderStyle::Legacy).layer(service_fn(with_a_header as Inner));
    assert_eq!(layer_allocations(with_a_header, svc), (3.0, StatusCode::OK));
}

#[test]
fn a_rejected_request_allocates_its_header_map_and_ratelimit_value() {
    // Retry-After is below 1000 seconds, so static.
    let spent = || Policy::new("hourly", Quota::per_hour(10).burst(1));
    // The inner service is not called: what its answer would cost is
    // saved, so count the layer alone.
    for (style, expected) in [(HeaderStyle::Ietf, 3.0), (HeaderStyle::None, 2.0)] {
        let mut svc = layer(spent(), style).layer(service_fn(bare as Inner));
        now(svc.ready()).unwrap();
        assert!(
            now(svc.call(Request::new(())))
                .unwrap()
                .status()
                .is_success()
        );
        let mut status = StatusCode::OK;
        let allocations = per_run(1_000, || {
            now(svc.ready()).unwrap();
            status = now(svc.call(Request::new(()))).unwrap().status();
        });
        assert_eq!(
            (allocations, status),
            (expected, StatusCode::TOO_MANY_REQUESTS),
            "{style:?}"
        );
    }
}
