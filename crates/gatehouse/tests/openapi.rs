//! Validation against an OpenAPI 3.0 document (examples/openapi/orders.yaml: several
//! operations, `$ref`, `oneOf`, `nullable`): requests refused with every violation and its
//! JSON pointer before they reach the upstream; responses checked in log and enforce modes.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Json;
use common::{client, Gateway};
use serde_json::{json, Value};

#[derive(Clone, Default)]
struct Hits(Arc<AtomicUsize>);

async fn list(State(hits): State<Hits>) -> Json<Value> {
    hits.0.fetch_add(1, Ordering::SeqCst);
    Json(json!([{ "id": 1, "status": "open" }]))
}

async fn create(State(hits): State<Hits>) -> (StatusCode, Json<Value>) {
    hits.0.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::CREATED,
        Json(json!({ "id": 7, "status": "open" })),
    )
}

/// Order 13 is broken on purpose: no `status`, an `id` of the wrong type.
async fn one(State(hits): State<Hits>, Path(id): Path<u64>) -> Json<Value> {
    hits.0.fetch_add(1, Ordering::SeqCst);
    if id == 13 {
        Json(json!({ "id": "thirteen" }))
    } else {
        Json(json!({ "id": id, "status": "shipped" }))
    }
}

async fn start() -> (Gateway, Hits) {
    let hits = Hits::default();
    let upstream: SocketAddr = common::upstream(
        axum::Router::new()
            .route("/orders", get(list).post(create))
            .route("/orders/{id}", get(one))
            .with_state(hits.clone()),
    )
    .await;
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/openapi/orders.yaml")
        .canonicalize()
        .unwrap();
    let gateway = Gateway::start(&format!(
        r#"listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: orders
    endpoints: [{{ address: "{upstream}" }}]
openapi:
  orders: {{ path: "{spec}" }}
routes:
  - match: {{ path: {{ prefix: /api }} }}
    service: orders
    rewrite: {{ strip_prefix: true }}
    openapi: {{ spec: orders, strip_prefix: /api, validate_responses: enforce }}
  - match: {{ path: {{ prefix: /logged }} }}
    service: orders
    rewrite: {{ strip_prefix: true }}
    openapi: {{ spec: orders, strip_prefix: /logged, validate_responses: log }}
"#,
        spec = spec.display()
    ));
    (gateway, hits)
}

/// The pointers of a 400 `request_invalid`.
async fn violations(response: reqwest::Response) -> Vec<String> {
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "request_invalid", "{problem}");
    let mut pointers: Vec<String> = problem["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
            v["pointer"].as_str().unwrap().to_owned()
        })
        .collect();
    pointers.sort();
    pointers.dedup();
    pointers
}

#[tokio::test]
async fn parameters_are_checked_with_their_pointers() {
    let (gateway, hits) = start().await;
    let client = client();

    let ok = client
        .get(gateway.url("/api/orders?limit=10&status=open&ids=1,2,3"))
        .header("x-tenant", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(hits.0.load(Ordering::SeqCst), 1);

    let bad = client
        .get(gateway.url("/api/orders?limit=0&status=lost&ids=1,x"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        violations(bad).await,
        [
            "/header/x-tenant",
            "/query/ids/1",
            "/query/limit",
            "/query/status"
        ]
    );
    let bad_header = client
        .get(gateway.url("/api/orders?limit=500"))
        .header("x-tenant", "ACME!")
        .send()
        .await
        .unwrap();
    assert_eq!(
        violations(bad_header).await,
        ["/header/x-tenant", "/query/limit"]
    );
    let bad_path = client
        .get(gateway.url("/api/orders/abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(violations(bad_path).await, ["/path/id"]);
    let zero = client
        .get(gateway.url("/api/orders/0"))
        .send()
        .await
        .unwrap();
    assert_eq!(violations(zero).await, ["/path/id"]);
    assert_eq!(
        hits.0.load(Ordering::SeqCst),
        1,
        "nothing invalid reached the upstream"
    );

    let response = client
        .delete(gateway.url("/api/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, POST");
    let response = client
        .get(gateway.url("/api/customers"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "operation_not_found");
}

#[tokio::test]
async fn json_bodies_are_checked_against_refs_one_of_and_nullable() {
    let (gateway, hits) = start().await;
    let client = client();
    let post = |body: Value| {
        client
            .post(gateway.url("/api/orders"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };

    let card = json!({ "items": [{ "sku": "tea", "qty": 2 }], "payment": { "card_number": "4111111111111111" }, "note": null });
    let response = post(card).await.unwrap();
    assert_eq!(response.status(), 201);
    let invoice = json!({ "items": [{ "sku": "tea", "qty": 1 }], "payment": { "invoice_email": "ap@example.com" } });
    assert_eq!(post(invoice).await.unwrap().status(), 201);
    assert_eq!(hits.0.load(Ordering::SeqCst), 2);

    let bad = json!({
        "items": [{ "sku": "tea", "qty": 0 }, { "qty": 1 }],
        "payment": { "card_number": "123" },
        "note": "this note is far too long to pass",
        "coupon": "FREE"
    });
    assert_eq!(
        violations(post(bad).await.unwrap()).await,
        [
            "/body",
            "/body/items/0/qty",
            "/body/items/1",
            "/body/note",
            "/body/payment"
        ]
    );
    let empty_items = json!({ "items": [], "payment": { "invoice_email": "not-an-email" } });
    assert_eq!(
        violations(post(empty_items).await.unwrap()).await,
        ["/body/items", "/body/payment"]
    );

    let not_json = client
        .post(gateway.url("/api/orders"))
        .header("content-type", "application/json")
        .body("{ not json")
        .send()
        .await
        .unwrap();
    assert_eq!(violations(not_json).await, ["/body"]);
    let missing = client
        .post(gateway.url("/api/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(violations(missing).await, ["/body"]);
    let text = client
        .post(gateway.url("/api/orders"))
        .header("content-type", "text/plain")
        .body("tea")
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), 415);
    assert_eq!(
        hits.0.load(Ordering::SeqCst),
        2,
        "nothing invalid reached the upstream"
    );
}

#[tokio::test]
async fn responses_are_checked_in_enforce_and_log_modes() {
    let (gateway, _hits) = start().await;
    let client = client();

    let good = client
        .get(gateway.url("/api/orders/5"))
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), 200);
    let body: Value = good.json().await.unwrap();
    assert_eq!(body, json!({ "id": 5, "status": "shipped" }));

    let enforced = client
        .get(gateway.url("/api/orders/13"))
        .send()
        .await
        .unwrap();
    assert_eq!(enforced.status(), 502);
    let problem: Value = enforced.json().await.unwrap();
    assert_eq!(problem["code"], "response_invalid");
    let pointers: Vec<&str> = problem["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["pointer"].as_str().unwrap())
        .collect();
    assert!(pointers.contains(&"/body/id"), "{problem}");
    assert!(
        pointers.contains(&"/body"),
        "missing status reported at the object: {problem}"
    );

    let logged = client
        .get(gateway.url("/logged/orders/13"))
        .send()
        .await
        .unwrap();
    assert_eq!(logged.status(), 200, "log mode passes the response on");
    let body: Value = logged.json().await.unwrap();
    assert_eq!(body, json!({ "id": "thirteen" }));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !gateway
        .stderr()
        .contains("response does not match the API description")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no log line:\n{}",
            gateway.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[test]
fn broken_documents_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.yaml");
    common::write(&spec, "swagger: '2.0'\npaths: {}\n");
    let config = dir.path().join("gatehouse.yaml");
    common::write(
        &config,
        "openapi:\n  old: { path: spec.yaml }\nroutes:\n  - respond: { body: ok }\n    openapi: { spec: olld }\n",
    );
    let output = std::process::Command::new(common::binary())
        .args(["check", "-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("undefined OpenAPI document `olld`, did you mean `old`?"),
        "{stdout}"
    );
    common::write(
        &config,
        "openapi:\n  old: { path: spec.yaml }\nroutes:\n  - respond: { body: ok }\n    openapi: { spec: old }\n",
    );
    let output = std::process::Command::new(common::binary())
        .args(["check", "-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains(":2:16: OpenAPI document `old`")
            && stdout.contains("no `openapi` version field"),
        "{stdout}"
    );
}
