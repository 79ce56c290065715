//! The layer inside a common tower-http stack, in one `ServiceBuilder`:
//! CORS, a timeout and header validation outside the limit. Each of them
//! answers for the service with the response body's `Default`, which
//! `ResponseBody` provides.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{HeaderValue, Method, Request, StatusCode};
use tower::{ServiceBuilder, ServiceExt};
use tower_http::cors::CorsLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::validate_request::ValidateRequestHeaderLayer;
use tower_ratelimit::{Policy, Quota, RateLimitLayer};

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(
                    CorsLayer::new()
                        .allow_origin(HeaderValue::from_static("https://app.example"))
                        .allow_methods([Method::GET])
                        .expose_headers([
                            "ratelimit".parse().unwrap(),
                            "ratelimit-policy".parse().unwrap(),
                            "retry-after".parse().unwrap(),
                        ]),
                )
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    Duration::from_secs(1),
                ))
                .layer(ValidateRequestHeaderLayer::accept("application/json"))
                .layer(
                    RateLimitLayer::builder()
                        .policy(Policy::new("burst", Quota::per_minute(2)))
                        .build()
                        .unwrap(),
                ),
        )
}

fn request(method: Method, path: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("origin", "https://app.example")
        .header("accept", "application/json")
        .body(Body::empty())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn cors_timeout_and_validation_answer_outside_the_limit() {
    let app = app();
    let send = |req| app.clone().oneshot(req);

    // A preflight is answered by CORS and never reaches the limit.
    let mut preflight = request(Method::OPTIONS, "/");
    preflight
        .headers_mut()
        .insert("access-control-request-method", "GET".parse().unwrap());
    for _ in 0..3 {
        let res = send(preflight.clone_for_test()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get("ratelimit").is_none());
    }
    // A request that does not accept JSON is refused by validation, also
    // before the limit.
    let mut html = request(Method::GET, "/");
    html.headers_mut()
        .insert("accept", "text/html".parse().unwrap());
    assert_eq!(
        send(html).await.unwrap().status(),
        StatusCode::NOT_ACCEPTABLE
    );

    // The first counted request: allowed, with CORS and rate-limit fields.
    let ok = send(request(Method::GET, "/")).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["ratelimit"], "\"burst\";r=1;t=30");
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    // The second times out inside the limit: answered 408 by the timeout.
    let slow = send(request(Method::GET, "/slow")).await.unwrap();
    assert_eq!(slow.status(), StatusCode::REQUEST_TIMEOUT);
    // The third is over the limit: a browser can read why, through CORS.
    let limited = send(request(Method::GET, "/")).await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        limited.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let exposed = limited.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("ratelimit"), "{exposed}");
    assert_eq!(
        limited.headers()["content-type"],
        "application/problem+json"
    );
}

trait CloneForTest {
    fn clone_for_test(&self) -> Self;
}

impl CloneForTest for Request<Body> {
    fn clone_for_test(&self) -> Self {
        let mut req = Request::builder()
            .method(self.method().clone())
            .uri(self.uri().clone())
            .body(Body::empty())
            .unwrap();
        *req.headers_mut() = self.headers().clone();
        req
    }
}
