//! Per-route request shaping (methods, head and body size, content types), CORS answered
//! at the edge, and traffic mirroring that never slows the client's response.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use common::{client, echo, Gateway};
use serde_json::Value;

async fn problem(
    response: reqwest::Response,
    status: u16,
    code: &str,
) -> reqwest::header::HeaderMap {
    assert_eq!(response.status(), status, "expected {status} {code}");
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    headers
}

fn shaping_config(upstream: SocketAddr) -> String {
    format!(
        r#"listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
authentication:
  api_key_secret: "test-api-key-secret-0123456789abcdef"
  methods:
    keys:
      api_key: {{ header: x-api-key }}
routes:
  - match: {{ path: {{ prefix: /orders }} }}
    service: echo
    request:
      max_body: 1KiB
      max_header_bytes: 2KiB
      methods: [GET, POST]
      content_types: [application/json, "text/*"]
  - match: {{ path: {{ prefix: /api }} }}
    service: echo
    auth: {{ methods: [keys] }}
    cors:
      allow_origins: ["https://app.example.com", "https://*.partners.test"]
      allow_methods: [GET, POST]
      allow_headers: [content-type, x-api-key]
      expose_headers: [ratelimit]
      allow_credentials: true
      max_age: 5m
"#
    )
}

#[tokio::test]
async fn routes_refuse_methods_sizes_and_media_types_before_the_upstream() {
    let upstream = echo("shaping").await;
    let gateway = Gateway::start(&shaping_config(upstream));
    let client = client();
    let url = gateway.url("/orders");

    let ok = client
        .post(&url)
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"item": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let text = client
        .post(&url)
        .header("content-type", "text/csv")
        .body("a,b")
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), 200, "text/* accepts text/csv");
    // A body-less request needs no content type.
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);

    let headers = problem(
        client.delete(&url).send().await.unwrap(),
        405,
        "method_not_allowed",
    )
    .await;
    assert_eq!(headers["allow"], "GET, POST");
    problem(
        client
            .post(&url)
            .header("content-type", "application/xml")
            .body("<a/>")
            .send()
            .await
            .unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    problem(
        client.post(&url).body("no type").send().await.unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    problem(
        client
            .post(&url)
            .header("content-type", "application/json")
            .body(vec![b'x'; 2048])
            .send()
            .await
            .unwrap(),
        413,
        "payload_too_large",
    )
    .await;
    // A streamed body without a length is cut at the route's limit too.
    let chunks = futures_util::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'y'; 512]))),
    );
    let streamed = client
        .post(&url)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 413);
    problem(
        client
            .get(&url)
            .header("x-padding", "p".repeat(3000))
            .send()
            .await
            .unwrap(),
        431,
        "headers_too_large",
    )
    .await;
}

#[tokio::test]
async fn cors_preflights_are_answered_at_the_edge() {
    let upstream = echo("cors").await;
    let gateway = Gateway::start(&shaping_config(upstream));
    let client = client();
    let url = gateway.url("/api/items");

    // The preflight carries no API key and still gets its answer: it never reaches auth.
    let preflight = client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type, x-api-key")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(h["access-control-allow-headers"], "content-type, x-api-key");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "300");
    assert!(
        h.get("x-demo-instance").is_none(),
        "answered by the gateway"
    );

    let wildcard = client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://eu.partners.test")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(wildcard.status(), 204);
    assert_eq!(
        wildcard.headers()["access-control-allow-origin"],
        "https://eu.partners.test"
    );

    for (origin, method, headers, case) in [
        ("https://evil.test", "POST", "", "unknown origin"),
        (
            "https://app.example.com.evil.test",
            "GET",
            "",
            "suffix trick",
        ),
        (
            "https://app.example.com",
            "DELETE",
            "",
            "method not allowed",
        ),
        (
            "https://app.example.com",
            "POST",
            "x-secret",
            "header not allowed",
        ),
    ] {
        let mut request = client
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", method);
        if !headers.is_empty() {
            request = request.header("access-control-request-headers", headers);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 403, "{case}");
        assert!(
            response
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{case}"
        );
    }

    // Actual requests: CORS headers for allowed origins, on errors too (the browser must
    // be able to read a 401).
    let denied = client
        .get(&url)
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    assert_eq!(
        denied.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let other = client
        .get(&url)
        .header("origin", "https://evil.test")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[derive(Clone, Default)]
struct MirrorState {
    hits: Arc<AtomicUsize>,
    bodies: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Slow (2 s) for `/all`, so a client that waited for the mirror would notice.
async fn slow_mirror(
    State(state): State<MirrorState>,
    uri: axum::http::Uri,
    body: String,
) -> &'static str {
    state.hits.fetch_add(1, Ordering::SeqCst);
    if uri.path().starts_with("/all") {
        state.bodies.lock().unwrap().push(body);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    "mirror"
}

#[tokio::test]
async fn mirroring_copies_requests_without_slowing_the_client() {
    let primary = echo("primary").await;
    let state = MirrorState::default();
    let mirror = common::upstream(
        axum::Router::new()
            .fallback(slow_mirror)
            .with_state(state.clone()),
    )
    .await;
    let down = common::closed_port();
    let gateway = Gateway::start(&format!(
        r#"listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: primary
    endpoints: [{{ address: "{primary}" }}]
  - name: shadow
    endpoints: [{{ address: "{mirror}" }}]
  - name: gone
    endpoints: [{{ address: "{down}" }}]
routes:
  - match: {{ path: {{ prefix: /all }} }}
    service: primary
    mirror: {{ service: shadow, percent: 100, max_in_flight: 4, timeout: 5s }}
  - match: {{ path: {{ prefix: /half }} }}
    service: primary
    mirror: {{ service: shadow, percent: 50 }}
  - match: {{ path: {{ prefix: /down }} }}
    service: primary
    mirror: {{ service: gone }}
"#
    ));
    let client = client();

    // The mirror takes 2 s per request; the client's answers do not wait for it.
    let started = Instant::now();
    for i in 0..3 {
        let response = client
            .post(gateway.url("/all/orders"))
            .body(format!("order-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let seen: Value = response.json().await.unwrap();
        assert_eq!(seen["instance"], "primary");
        assert_eq!(seen["body"], format!("order-{i}"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "primary answers were delayed by the mirror: {:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while state.hits.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut bodies = state.bodies.lock().unwrap().clone();
    bodies.sort();
    assert_eq!(
        bodies,
        ["order-0", "order-1", "order-2"],
        "the copies carry the bodies"
    );

    // A mirror that is down changes nothing for the client.
    for _ in 0..5 {
        let response = client.get(gateway.url("/down/x")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }

    // 50 %: roughly half of 200 requests are copied (bounds are wide: 200 draws).
    let before = state.hits.load(Ordering::SeqCst);
    for _ in 0..200 {
        assert_eq!(
            client
                .get(gateway.url("/half"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let copied = state.hits.load(Ordering::SeqCst) - before;
    assert!(
        (60..=140).contains(&copied),
        "{copied} of 200 copied at 50 %"
    );
}
