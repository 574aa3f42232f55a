//! Route transformations through the real gateway in front of the echo upstream (which
//! answers with the request it saw, as JSON): header and query edits, JSON bodies rewritten
//! by jq programs both ways, status mapping, the body size limit, errors as problem+json,
//! and jq programs refused by `gatehouse check` with their location.

mod common;

use std::net::SocketAddr;

use common::{check_text, client, echo, Gateway};
use serde_json::{json, Value};

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
routes:
  - name: edited
    match: {{ path: {{ prefix: /edited }} }}
    service: echo
    transform:
      request:
        headers:
          remove: [x-internal]
          rename: {{ x-old: x-new }}
          set: {{ x-set: "1" }}
          add: {{ x-add: "2" }}
        query:
          remove: [utm]
          rename: {{ q: search }}
          set: {{ limit: "10" }}
        body: '{{full_name: (.first + " " + .last)}} + del(.first, .last)'
      response:
        headers:
          remove: [x-demo-instance]
          add: {{ x-transformed: "yes" }}
        body: |
          {{seen: {{
            method, path, query,
            body: ((.body | fromjson?) // .body),
            x_new: .headers["x-new"], x_set: .headers["x-set"], x_add: .headers["x-add"],
            x_internal: .headers["x-internal"],
            accept_encoding: .headers["accept-encoding"]
          }}}}
  - name: mapped
    match: {{ path: {{ prefix: /status }} }}
    service: echo
    transform:
      response:
        status: {{ 404: 200, 503: 502 }}
  - name: failing
    match: {{ path: {{ prefix: /failing }} }}
    service: echo
    transform:
      request: {{ body: '.x | tonumber | {{x: .}}' }}
      response: {{ body: 'if .method == "GET" then error("no GET here") else . end' }}
  - name: small
    match: {{ path: {{ prefix: /small }} }}
    service: echo
    transform:
      max_body: 1KiB
      request: {{ body: . }}
      response: {{ body: . }}
"#
    )
}

async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "transform_failed", "{body}");
    body
}

#[tokio::test]
async fn headers_query_and_json_bodies_are_rewritten_both_ways() {
    let gateway = Gateway::start(&config(echo("transform").await));
    let response = client()
        .post(gateway.url("/edited/orders?q=shoes&utm=x&limit=500"))
        .header("x-internal", "secret")
        .header("x-old", "moved")
        .header("x-set", "0")
        .header("accept-encoding", "gzip")
        .json(&json!({ "first": "Ada", "last": "Lovelace", "age": 36 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["x-transformed"], "yes");
    assert!(!headers.contains_key("x-demo-instance"));
    let text = response.text().await.unwrap();
    assert_eq!(
        headers["content-length"].to_str().unwrap(),
        text.len().to_string()
    );
    let seen: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        seen,
        json!({ "seen": {
            "method": "POST",
            "path": "/edited/orders",
            "query": "search=shoes&limit=10",
            "body": { "full_name": "Ada Lovelace", "age": 36 },
            "x_new": "moved",
            "x_set": "1",
            "x_add": "2",
            "x_internal": null,
            "accept_encoding": null,
        }})
    );

    // A body that is not JSON passes through untouched (only JSON bodies are rewritten).
    let plain: Value = client()
        .post(gateway.url("/edited/notes"))
        .header("content-type", "text/plain")
        .body("first=Ada")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plain["seen"]["body"], "first=Ada");
}

#[tokio::test]
async fn statuses_are_mapped() {
    let gateway = Gateway::start(&config(echo("transform").await));
    let not_found = client()
        .get(gateway.url("/status/404"))
        .send()
        .await
        .unwrap();
    assert_eq!(not_found.status(), 200);
    assert_eq!(not_found.text().await.unwrap(), "status 404\n");
    let unavailable = client()
        .get(gateway.url("/status/503"))
        .send()
        .await
        .unwrap();
    assert_eq!(unavailable.status(), 502);
    let untouched = client()
        .get(gateway.url("/status/418"))
        .send()
        .await
        .unwrap();
    assert_eq!(untouched.status(), 418);
}

#[tokio::test]
async fn failing_programs_and_oversized_bodies_are_problems() {
    let gateway = Gateway::start(&config(echo("transform").await));
    // The request program fails on this client's input: 400, nothing forwarded.
    let body = problem(
        client()
            .post(gateway.url("/failing"))
            .json(&json!({ "x": "not a number" }))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("request transform: the program failed"),
        "{body}"
    );
    let body = problem(
        client()
            .post(gateway.url("/failing"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("not JSON"),
        "{body}"
    );
    // The request program works; the response program refuses GETs: 502.
    let ok: Value = client()
        .post(gateway.url("/failing"))
        .json(&json!({ "x": "42" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ok["body"], r#"{"x":42}"#);
    let body = problem(
        client().get(gateway.url("/failing")).send().await.unwrap(),
        502,
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("no GET here"),
        "{body}"
    );

    // Above max_body: the request is refused (413); the upstream's answer (the echo of
    // any request is larger than 1 KiB with its headers) becomes a 502.
    let big = json!({ "data": "x".repeat(2000) });
    let refused = client()
        .post(gateway.url("/small"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 413);
    let padded = client()
        .get(gateway.url("/small"))
        .header("x-padding", "p".repeat(1500))
        .send()
        .await
        .unwrap();
    let body = problem(padded, 502).await;
    assert!(
        body["detail"].as_str().unwrap().contains("1024 bytes"),
        "{body}"
    );
}

#[test]
fn check_refuses_a_broken_program_with_its_location() {
    let (code, text) = check_text(
        r#"listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: echo
    endpoints: [{ address: "127.0.0.1:9" }]
routes:
  - name: broken
    match: { path: { prefix: / } }
    service: echo
    transform:
      response:
        body: '{a: .b | nosuchfilter}'
      request:
        body: '{a: (.b | .[0)}'
"#,
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(":13:15: `transform.response.body`: `nosuchfilter` is not defined"),
        "{text}"
    );
    assert!(
        text.contains(":15:15: `transform.request.body`: expected the `[` opened here to be closed (program line 1, column"),
        "{text}"
    );

    let (code, text) = check_text(
        r#"listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: echo
    endpoints: [{ address: "127.0.0.1:9" }]
routes:
  - name: broken
    match: { path: { prefix: / } }
    service: echo
    transform:
      request:
        headers: { set: { "bad header": "x" } }
      response:
        status: { 404: 99 }
"#,
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("99 is not an HTTP status"), "{text}");
    assert!(
        text.contains("`bad header` is not a valid header name"),
        "{text}"
    );
}

#[tokio::test]
async fn rewritten_bodies_get_a_weak_validator_and_encoded_or_head_answers_are_handled() {
    use axum::response::IntoResponse;
    let router = axum::Router::new()
        .route(
            "/etag",
            axum::routing::get(|| async {
                (
                    [("etag", "\"v1\""), ("content-type", "application/json")],
                    r#"{"a":1}"#,
                )
                    .into_response()
            }),
        )
        .route(
            "/gzipped",
            axum::routing::get(|| async {
                (
                    [
                        ("content-encoding", "gzip"),
                        ("content-type", "application/json"),
                    ],
                    vec![0x1f_u8, 0x8b, 0x08, 0x00],
                )
                    .into_response()
            }),
        );
    let upstream = common::upstream(router).await;
    let gateway = Gateway::start(&format!(
        r#"listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: origin
    endpoints: [{{ address: "{upstream}" }}]
routes:
  - name: rewritten
    match: {{ path: {{ prefix: / }} }}
    service: origin
    transform:
      response: {{ body: '. + {{b: 2}}' }}
"#
    ));
    let response = client().get(gateway.url("/etag")).send().await.unwrap();
    assert_eq!(response.headers()["etag"], "W/\"v1\"");
    assert_eq!(response.headers()["content-length"], "13");
    assert_eq!(response.text().await.unwrap(), r#"{"a":1,"b":2}"#);
    // The rewritten GET body's length is unknown to a HEAD: no stale Content-Length.
    let head = client().head(gateway.url("/etag")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert!(
        head.headers().get("content-length").is_none(),
        "{:?}",
        head.headers()
    );
    // An encoded body cannot be rewritten: a 502, not a garbled answer.
    let body = problem(
        client().get(gateway.url("/gzipped")).send().await.unwrap(),
        502,
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("encoded"),
        "{body}"
    );
}
