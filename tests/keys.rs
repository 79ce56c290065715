//! The built-in key extractors beyond addresses: headers, methods, routes
//! and tuples of them.

use std::convert::Infallible;

use http::{Request, Response, StatusCode};
use tower::{Layer, ServiceExt, service_fn};
use tower_ratelimit::key::{Global, Header, Key, KeyExtractor, Method};
use tower_ratelimit::{Policy, Quota, RateLimitLayer};

fn post(api_key: &str) -> Request<()> {
    Request::post("/")
        .header("x-api-key", api_key)
        .body(())
        .unwrap()
}

#[test]
fn composite_keys_keep_their_parts_apart() {
    let pair = |a: &str, b: &str| Key::composite([Key::from(a), Key::from(b)]);
    assert_ne!(pair("a:b", "c"), pair("a", "b:c"));
    assert_ne!(pair("ab", ""), pair("a", "b"));
    assert_eq!(pair("a", "b"), pair("a", "b"));
    let tagged = |k: &Key| {
        let mut out = Vec::new();
        k.write_tagged(&mut out);
        out
    };
    // What a store writes keeps them apart too.
    assert_ne!(tagged(&pair("a:b", "c")), tagged(&pair("a", "b:c")));
    assert_ne!(tagged(&pair("1:s:a", "")), tagged(&pair("", "a")));
    // A pair is not the string it looks like, nor a pair of other kinds.
    assert_ne!(tagged(&pair("a", "b")), tagged(&Key::from("c:3:s:a3:s:b")));
    assert_ne!(
        pair("7", "x"),
        Key::composite([Key::from(7_u64), Key::from("x")])
    );
}

#[test]
fn a_tuple_has_a_key_only_when_every_part_does() {
    let key = (Header::new("x-api-key"), Method);
    assert_eq!(
        key.extract(&post("k1")).unwrap(),
        Some(Key::composite([Key::from("k1"), Key::from("POST")]))
    );
    assert_eq!(key.extract(&Request::new(())).unwrap(), None);
    let three = (Global, Method, Header::new("x-api-key"));
    assert_eq!(
        three.extract(&post("k1")).unwrap().unwrap().to_string(),
        "(global, POST, k1)"
    );
}

#[test]
fn a_tuple_of_fixed_keys_is_fixed() {
    assert_eq!(
        KeyExtractor::<Request<()>>::fixed(&(Global, Global)),
        Some(Key::composite([Key::global(), Key::global()]))
    );
    assert_eq!(KeyExtractor::<Request<()>>::fixed(&(Global, Method)), None);
}

#[test]
fn header_new_takes_any_case() {
    let key = Header::new("X-API-Key");
    assert_eq!(key.name(), "x-api-key");
    assert_eq!(key.extract(&post("k1")).unwrap(), Some(Key::from("k1")));
}

#[test]
#[should_panic(expected = "not a valid header name")]
fn header_new_panics_on_a_bad_name() {
    let _ = Header::new("x api key");
}

#[tokio::test]
async fn method_keys_count_each_method_apart() {
    let svc = RateLimitLayer::builder()
        .policy(Policy::new("per-method", Quota::per_minute(1)))
        .key(Method)
        .build()
        .unwrap()
        .layer(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    let status = |method: &str| {
        let svc = svc.clone();
        let req = Request::builder().method(method).body(()).unwrap();
        async move { svc.oneshot(req).await.unwrap().status() }
    };
    assert_eq!(status("GET").await, StatusCode::OK);
    assert_eq!(status("POST").await, StatusCode::OK);
    assert_eq!(status("GET").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(status("POST").await, StatusCode::TOO_MANY_REQUESTS);
}

#[cfg(feature = "axum")]
mod matched_path {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower_ratelimit::key::MatchedPath;

    use super::*;

    #[tokio::test]
    async fn each_route_is_one_key_whatever_its_parameters() {
        let app = Router::new()
            .route("/users/{id}", get(|| async { "user" }))
            .route("/teams/{id}", get(|| async { "team" }))
            .layer(
                RateLimitLayer::builder()
                    .policy(Policy::new("per-route", Quota::per_minute(2)))
                    .key(MatchedPath)
                    .build()
                    .unwrap(),
            );
        let status = |path: &'static str| {
            let app = app.clone();
            async move {
                let req = Request::get(path).body(Body::empty()).unwrap();
                app.oneshot(req).await.unwrap().status()
            }
        };
        assert_eq!(status("/users/1").await, StatusCode::OK);
        assert_eq!(status("/users/2").await, StatusCode::OK);
        assert_eq!(status("/users/3").await, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(status("/teams/1").await, StatusCode::OK);
    }

    #[test]
    fn a_request_that_matched_no_route_has_no_key() {
        let req = Request::get("/nowhere").body(()).unwrap();
        assert_eq!(MatchedPath.extract(&req).unwrap(), None);
    }
}
