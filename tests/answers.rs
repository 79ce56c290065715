//! What limited requests are answered with, to the letter of
//! draft-ietf-httpapi-ratelimit-headers-10 and RFC 9457: the fields parse
//! as structured fields, stacked layers add up, bodies follow `Accept`,
//! gRPC and gRPC-Web get their own answers, and a hook can answer instead.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use sfv::{BareItem, ListEntry, Parser};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_ratelimit::clock::FakeClock;
use tower_ratelimit::response::{MAX_FIELD_INTEGER, ResponseBody};
use tower_ratelimit::{Algorithm, HeaderStyle, MemoryStore, Policy, Quota, RateLimitLayer};

type Req = Request<String>;

fn ok_service() -> impl Service<Req, Response = Response<String>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(|_req: Req| async { Ok::<_, Infallible>(Response::new("ok".to_owned())) })
}

fn fake_store() -> MemoryStore<FakeClock> {
    MemoryStore::builder()
        .clock(FakeClock::new())
        .build()
        .unwrap()
}

fn header<B>(res: &Response<B>, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn body_of<B>(res: Response<B>) -> String
where
    B: http_body::Body<Error: std::fmt::Debug>,
{
    let bytes = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A `RateLimit` or `RateLimit-Policy` value parsed as a structured-field
/// List: each item's name and its parameters, every one checked to be a
/// valid Integer (or, for `qu`, a String).
fn parse(value: &str) -> Vec<(String, Vec<(String, i64)>)> {
    let list: sfv::List = Parser::new(value)
        .parse_list()
        .unwrap_or_else(|e| panic!("{value:?} is not a structured-field List: {e}"));
    list.into_iter()
        .map(|entry| {
            let ListEntry::Item(item) = entry else {
                panic!("an inner list in {value:?}")
            };
            let name = item.bare_item.as_string().expect("a String name");
            let params = item
                .params
                .iter()
                .filter_map(|(k, v)| match v {
                    BareItem::Integer(n) => Some((k.as_str().to_owned(), i64::from(*n))),
                    BareItem::String(_) if k.as_str() == "qu" => None,
                    other => panic!("{k:?}={other:?} is not an Integer"),
                })
                .collect();
            (name.as_str().to_owned(), params)
        })
        .collect()
}

fn params(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

async fn send<S>(svc: &S, req: Req) -> Response<ResponseBody<String>>
where
    S: Service<Req, Response = Response<ResponseBody<String>>, Error = Infallible> + Clone,
{
    svc.clone().oneshot(req).await.unwrap()
}

fn plain() -> Req {
    Request::new(String::new())
}

fn accepting(accept: &str) -> Req {
    Request::get("/")
        .header("accept", accept)
        .body(String::new())
        .unwrap()
}

fn one_per_minute() -> RateLimitLayer<tower_ratelimit::key::Global, MemoryStore<FakeClock>> {
    RateLimitLayer::builder()
        .store(fake_store())
        .policy(Policy::new("burst", Quota::per_minute(1)))
        .build()
        .unwrap()
}

#[tokio::test]
async fn every_field_parses_as_a_structured_field_list_of_integers() {
    let svc = RateLimitLayer::builder()
        .store(fake_store())
        .policy(Policy::new("burst", Quota::per_second(2)))
        .policy(Policy::new("daily", Quota::per_day(1000)).with_algorithm(Algorithm::FixedWindow))
        .policy(Policy::concurrency("in-flight", 4))
        .build()
        .unwrap()
        .layer(ok_service());
    let res = send(&svc, plain()).await;
    assert_eq!(
        parse(&header(&res, "ratelimit-policy").unwrap()),
        vec![
            ("burst".into(), params(&[("q", 2), ("w", 1)])),
            ("daily".into(), params(&[("q", 1000), ("w", 86_400)])),
            ("in-flight".into(), params(&[("q", 4)])),
        ]
    );
    let items = parse(&header(&res, "ratelimit").unwrap());
    assert_eq!(items[0], ("burst".into(), params(&[("r", 1), ("t", 1)])));
    assert_eq!(items[1].1[0], ("r".to_owned(), 999));
    assert_eq!(items[2], ("in-flight".into(), params(&[("r", 3)])));
}

#[tokio::test]
async fn numbers_beyond_fifteen_digits_are_clamped_to_stay_valid() {
    // A limit of 2^52 (16 digits) per 2^52 µs: q and r overflow 15 digits.
    let huge = 1_u64 << 52;
    let period = Duration::from_micros(huge);
    let svc = RateLimitLayer::builder()
        .store(fake_store())
        .policy(Policy::new("vast", Quota::new(huge, period)))
        .build()
        .unwrap()
        .layer(ok_service());
    let res = svc
        .clone()
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    let max = MAX_FIELD_INTEGER as i64;
    assert_eq!(
        parse(&header(&res, "ratelimit-policy").unwrap()),
        vec![("vast".into(), params(&[("q", max), ("w", 4_503_599_628)]))]
    );
    let items = parse(&header(&res, "ratelimit").unwrap());
    assert_eq!(items[0].1[0], ("r".to_owned(), max));
}

#[tokio::test]
async fn a_rejection_is_plain_text_unless_json_is_accepted() {
    let svc = one_per_minute().layer(ok_service());
    send(&svc, plain()).await;
    for req in [plain(), accepting("*/*"), accepting("text/html, */*;q=0.8")] {
        let res = send(&svc, req).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            header(&res, "content-type").as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(body_of(res).await, "Too many requests");
    }
}

#[tokio::test]
async fn a_client_accepting_json_gets_quota_exceeded_problem_details() {
    let svc = RateLimitLayer::builder()
        .store(fake_store())
        .policy(Policy::new("burst", Quota::per_second(10)))
        .policy(Policy::new("daily", Quota::per_day(1)))
        .build()
        .unwrap()
        .layer(ok_service());
    send(&svc, plain()).await;
    for accept in [
        "application/json",
        "application/problem+json, text/plain;q=0.5",
    ] {
        let res = send(&svc, accepting(accept)).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            header(&res, "content-type").as_deref(),
            Some("application/problem+json")
        );
        let len: usize = header(&res, "content-length").unwrap().parse().unwrap();
        let body = body_of(res).await;
        assert_eq!(body.len(), len);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
                "title": "Request cannot be satisfied as assigned quota has been exceeded",
                "status": 429,
                "detail": "Retry after 86400 seconds.",
                // Only the policy that refused: "burst" had room.
                "violated-policies": ["daily"],
            })
        );
    }
}

#[tokio::test]
async fn a_request_without_a_key_is_told_so() {
    let svc = RateLimitLayer::builder()
        .policy(Policy::new("per-key", Quota::per_minute(1)))
        .key(tower_ratelimit::key::Header::new("x-api-key"))
        .reject_missing_key()
        .build()
        .unwrap()
        .layer(ok_service());
    let res = send(&svc, plain()).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(body_of(res).await.contains("no rate limit key"));
    let res = send(&svc, accepting("application/json")).await;
    let json: serde_json::Value = serde_json::from_str(&body_of(res).await).unwrap();
    assert_eq!(json["type"], "about:blank");
    assert_eq!(json["detail"], "The request has no rate limit key.");
}

#[tokio::test]
async fn stacked_layers_show_both_policies() {
    let outer = RateLimitLayer::builder()
        .store(fake_store())
        .policy(Policy::new("global", Quota::per_minute(100)))
        .build()
        .unwrap();
    let inner = RateLimitLayer::builder()
        .store(fake_store())
        .policy(Policy::new("strict", Quota::per_minute(1)))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(outer)
        .layer(inner)
        .service(ok_service());
    let send = |svc: &_| {
        let svc: &_ = svc;
        tower::ServiceExt::oneshot(Clone::clone(svc), Request::new(String::new()))
    };
    let ok = send(&svc).await.unwrap();
    assert_eq!(
        header(&ok, "ratelimit-policy").as_deref(),
        Some("\"strict\";q=1;w=60, \"global\";q=100;w=60")
    );
    assert_eq!(
        parse(&header(&ok, "ratelimit").unwrap()),
        vec![
            ("strict".into(), params(&[("r", 0), ("t", 60)])),
            ("global".into(), params(&[("r", 99), ("t", 1)])),
        ]
    );
    // The inner layer refuses; its 429 names both, the refusing one first.
    let refused = send(&svc).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        header(&refused, "ratelimit-policy").as_deref(),
        Some("\"strict\";q=1;w=60, \"global\";q=100;w=60")
    );
    let items = parse(&header(&refused, "ratelimit").unwrap());
    assert_eq!(items[0], ("strict".into(), params(&[("r", 0), ("t", 60)])));
    assert_eq!(items[1].0, "global");
}

#[tokio::test]
async fn stacked_legacy_layers_show_the_policy_closest_to_its_limit() {
    let layer = |name: &str, limit| {
        RateLimitLayer::builder()
            .store(fake_store())
            .policy(Policy::new(name, Quota::per_minute(limit)))
            .headers(HeaderStyle::Legacy)
            .build()
            .unwrap()
    };
    for (outer, inner) in [(10, 3), (3, 10)] {
        let svc = ServiceBuilder::new()
            .layer(layer("outer", outer))
            .layer(layer("inner", inner))
            .service(ok_service());
        let res = svc.oneshot(Request::new(String::new())).await.unwrap();
        assert_eq!(header(&res, "x-ratelimit-limit").as_deref(), Some("3"));
        assert_eq!(header(&res, "x-ratelimit-remaining").as_deref(), Some("2"));
    }
}

#[tokio::test]
async fn grpc_rejections_carry_retry_pushback_in_milliseconds() {
    let svc = RateLimitLayer::builder()
        .store(fake_store())
        .policy(Policy::new(
            "rpc",
            Quota::new(1, Duration::from_millis(1500)),
        ))
        .build()
        .unwrap()
        .layer(ok_service());
    let grpc = || {
        Request::post("/pkg.Service/Method")
            .header("content-type", "application/grpc")
            .body(String::new())
            .unwrap()
    };
    send(&svc, grpc()).await;
    let res = send(&svc, grpc()).await;
    assert_eq!(header(&res, "grpc-status").as_deref(), Some("8"));
    assert_eq!(
        header(&res, "grpc-retry-pushback-ms").as_deref(),
        Some("1500")
    );
    assert_eq!(header(&res, "retry-after").as_deref(), Some("2"));
}

#[tokio::test]
async fn grpc_requests_that_can_never_fit_are_told_not_to_retry() {
    let svc = RateLimitLayer::builder()
        .policy(Policy::new("rpc", Quota::per_minute(1)))
        .cost(|_: &Req| 2)
        .build()
        .unwrap()
        .layer(ok_service());
    let req = Request::post("/")
        .header("content-type", "application/grpc")
        .body(String::new())
        .unwrap();
    let res = send(&svc, req).await;
    assert_eq!(header(&res, "grpc-status").as_deref(), Some("8"));
    assert_eq!(
        header(&res, "grpc-retry-pushback-ms").as_deref(),
        Some("-1")
    );
}

#[tokio::test]
async fn grpc_web_rejections_answer_in_grpc_web() {
    let svc = one_per_minute().layer(ok_service());
    for content_type in ["application/grpc-web+proto", "application/grpc-web-text"] {
        let req = || {
            Request::post("/pkg.Service/Method")
                .header("content-type", content_type)
                .body(String::new())
                .unwrap()
        };
        send(&svc, req()).await;
        let res = send(&svc, req()).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "content-type").as_deref(), Some(content_type));
        assert_eq!(header(&res, "grpc-status").as_deref(), Some("8"));
        assert!(header(&res, "grpc-retry-pushback-ms").is_some());
        assert_eq!(body_of(res).await, "");
    }
}

#[tokio::test]
async fn a_rejection_hook_builds_the_answer_from_the_decision() {
    let svc = RateLimitLayer::builder()
        .store(fake_store())
        .policy(Policy::new("burst", Quota::per_minute(1)))
        .on_rejection(|rejection| {
            if rejection.uri().path() == "/builtin" {
                return None;
            }
            let names: Vec<_> = rejection.violated_policies().collect();
            let wait = rejection.retry_after().unwrap().as_secs();
            let res = Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .header("content-type", "text/html")
                .body(Bytes::from(format!(
                    "<p>{} for {wait}s</p>",
                    names.join(",")
                )))
                .unwrap();
            Some(res)
        })
        .build()
        .unwrap()
        .layer(ok_service());
    send(&svc, plain()).await;
    let res = send(&svc, plain()).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&res, "content-type").as_deref(), Some("text/html"));
    // The layer adds what the hook left out.
    assert_eq!(header(&res, "retry-after").as_deref(), Some("60"));
    assert_eq!(
        header(&res, "ratelimit").as_deref(),
        Some("\"burst\";r=0;t=60")
    );
    assert_eq!(body_of(res).await, "<p>burst for 60s</p>");
    // `None` falls back to the built-in answer.
    let req = Request::get("/builtin").body(String::new()).unwrap();
    let res = send(&svc, req).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body_of(res).await, "Too many requests");
}

#[tokio::test]
async fn a_hook_keeps_the_fields_it_set_itself() {
    let svc = RateLimitLayer::builder()
        .store(fake_store())
        .policy(Policy::new("burst", Quota::per_minute(1)))
        .on_rejection(|_| {
            let res = Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header("retry-after", "3600")
                .header("ratelimit", "\"custom\";r=0")
                .body(Bytes::new())
                .unwrap();
            Some(res)
        })
        .build()
        .unwrap()
        .layer(ok_service());
    send(&svc, plain()).await;
    let res = send(&svc, plain()).await;
    assert_eq!(header(&res, "retry-after").as_deref(), Some("3600"));
    assert_eq!(header(&res, "ratelimit").as_deref(), Some("\"custom\";r=0"));
}

#[tokio::test]
async fn a_non_http_request_without_a_key_gets_an_error_that_says_so() {
    let mut svc = RateLimitLayer::builder()
        .policy(Policy::new("per-user", Quota::per_minute(1)))
        .key(|job: &Option<u32>| *job)
        .reject_missing_key()
        .reject_with_error()
        .build()
        .unwrap()
        .layer(service_fn(|_: Option<u32>| async {
            Ok::<_, Infallible>(())
        }));
    let err = svc.ready().await.unwrap().call(None).await.unwrap_err();
    let limited = err
        .downcast_ref::<tower_ratelimit::RateLimited>()
        .expect("a RateLimited error");
    assert!(limited.is_missing_key());
    assert_eq!(limited.retry_after(), None);
    assert_eq!(limited.decision(), None);
    assert_eq!(
        err.to_string(),
        "rate limited; the request has no rate limit key, and requests without one are rejected"
    );
}
