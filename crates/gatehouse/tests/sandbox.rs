//! Sandboxes: sandbox keys call a product's sandbox (a mock made from its OpenAPI document,
//! or a sandbox service) without a subscription, limited, metered and never billed; they
//! open nothing else.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{admin_block, client, echo, Gateway, ADMIN_TOKEN};
use serde_json::{json, Value};

const KEY_SECRET: &str = "test-api-key-secret-0123456789abcdef";

fn config(store: &str, live: SocketAddr, sandbox: SocketAddr) -> String {
    format!(
        r#"{admin}listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: live
    endpoints: [{{ address: "{live}" }}]
  - name: orders-sandbox
    endpoints: [{{ address: "{sandbox}" }}]
store:
  url: "{store}"
  poll_interval: 200ms
  usage_flush_interval: 200ms
authentication:
  api_key_secret: "{KEY_SECRET}"
  methods:
    keys:
      api_key: {{ header: x-api-key }}
routes:
  - name: books
    match: {{ path: {{ prefix: /books }} }}
    service: live
    auth: {{ methods: [keys] }}
  - name: orders
    match: {{ path: {{ prefix: /orders }} }}
    service: live
    auth: {{ methods: [keys] }}
  - name: account
    match: {{ path: {{ prefix: /account }} }}
    service: live
    auth: {{ methods: [keys] }}
"#,
        admin = admin_block()
    )
}

/// The Books API: `GET /books/{id}` answers a Book (its example is wrong on purpose: the
/// mock must make a conforming one), `POST /books` answers 201 with a `Location` header.
fn books_openapi() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Books", "version": "1"},
        "paths": {
            "/books/{id}": {"get": {
                "operationId": "getBook",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 1}}],
                "responses": {
                    "200": {"description": "The book", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Book"},
                        "example": {"id": "one", "title": "Dune"}}}},
                    "404": {"description": "No such book"}}}},
            "/books": {"post": {
                "operationId": "addBook",
                "responses": {"201": {"description": "Added",
                    "headers": {"Location": {"schema": {"type": "string"}, "example": "/books/42"}},
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Book"},
                        "example": {"id": 42, "title": "Solaris", "tags": ["sf"], "published": "1961-06-01"}}}}}}}
        },
        "components": {"schemas": {"Book": {
            "type": "object", "required": ["id", "title", "tags"],
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "title": {"type": "string", "minLength": 1},
                "tags": {"type": "array", "items": {"type": "string", "enum": ["sf", "classic"]}},
                "published": {"type": "string", "format": "date"}}}}}
    })
}

async fn admin(gateway: &Gateway, path: &str, body: Value) -> Value {
    let response = client()
        .post(gateway.admin_url(path))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "POST {path}: {status} {answer}");
    answer
}

async fn call(gateway: &Gateway, method: &str, path: &str, key: &str) -> reqwest::Response {
    client()
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            gateway.url(path),
        )
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
}

async fn until_status(gateway: &Gateway, path: &str, key: &str, expected: u16) {
    let started = Instant::now();
    while call(gateway, "GET", path, key).await.status() != expected {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no {expected} on {path}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sandbox_keys_call_mocks_and_sandbox_services_and_are_never_billed() {
    let live = echo("live").await;
    let sandbox_service = echo("orders-sandbox").await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("store.db").display());
    let gateway = Gateway::start(&config(&store, live, sandbox_service));

    admin(&gateway, "/admin/consumers", json!({"id": "acme"})).await;
    let live_key = admin(&gateway, "/admin/consumers/acme/keys", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let sandbox_key = admin(
        &gateway,
        "/admin/consumers/acme/keys",
        json!({"sandbox": true}),
    )
    .await;
    assert_eq!(
        sandbox_key["key"].as_str().unwrap().split('_').next(),
        Some("sandbox")
    );
    let sandbox_key = sandbox_key["key"].as_str().unwrap().to_owned();
    // A sandbox service must exist in the configuration.
    let refused = client()
        .post(gateway.admin_url("/admin/products"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"id": "x", "name": "X", "routes": ["orders"], "sandbox": {"service": "nowhere"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    admin(
        &gateway,
        "/admin/products",
        json!({"id": "books", "name": "Books", "routes": ["books"], "openapi": books_openapi(),
               "sandbox": {"limits": [{"requests": 3, "per_seconds": 60}]}}),
    )
    .await;
    admin(
        &gateway,
        "/admin/products",
        json!({"id": "orders", "name": "Orders", "routes": ["orders"], "sandbox": {"service": "orders-sandbox"}}),
    )
    .await;
    admin(
        &gateway,
        "/admin/products/books/plans",
        json!({"id": "paid", "name": "Paid",
               "terms": {"pricing": {"tiers": [{"cents_per_1000": 1000}]}}}),
    )
    .await;

    // No subscription: the live key is refused, the sandbox key reaches the mock.
    until_status(&gateway, "/books/7", &sandbox_key, 200).await;
    assert_eq!(
        call(&gateway, "GET", "/books/7", &live_key).await.status(),
        403
    );
    let mocked = call(&gateway, "GET", "/books/7", &sandbox_key).await;
    assert_eq!(mocked.status(), 200);
    assert_eq!(mocked.headers()["x-gatehouse-sandbox"], "mock");
    assert_eq!(mocked.headers()["content-type"], "application/json");
    let book: Value = mocked.json().await.unwrap();
    // The document's example is wrong (a string id): the mock made a conforming book.
    let schema = json!({
        "type": "object", "required": ["id", "title", "tags"],
        "properties": {"id": {"type": "integer", "minimum": 1}, "title": {"type": "string", "minLength": 1},
                       "tags": {"type": "array", "items": {"type": "string", "enum": ["sf", "classic"]}},
                       "published": {"type": "string", "format": "date"}}});
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    assert!(validator.is_valid(&book), "{book}");
    assert_eq!(book["id"], 1);
    let created = call(&gateway, "POST", "/books", &sandbox_key).await;
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["location"], "/books/42");
    let created: Value = created.json().await.unwrap();
    assert!(validator.is_valid(&created));
    assert_eq!(created["title"], "Solaris");
    let bad = call(&gateway, "GET", "/books/seven", &sandbox_key).await;
    assert_eq!(
        bad.status(),
        429,
        "the sandbox's limit of 3 a minute is used up"
    );
    assert_eq!(bad.json::<Value>().await.unwrap()["code"], "rate_limited");

    // A sandbox service: the sandbox key goes there, not to the live service.
    let forwarded = call(&gateway, "GET", "/orders/1", &sandbox_key).await;
    assert_eq!(forwarded.status(), 200);
    let echoed: Value = forwarded.json().await.unwrap();
    assert_eq!(echoed["instance"], "orders-sandbox", "{echoed}");
    // Sandbox keys open nothing outside the sandboxes.
    let outside = call(&gateway, "GET", "/account", &sandbox_key).await;
    assert_eq!(outside.status(), 403);
    assert_eq!(
        outside.json::<Value>().await.unwrap()["code"],
        "sandbox_key"
    );
    assert_eq!(
        call(&gateway, "GET", "/account", &live_key).await.status(),
        200
    );

    // Live calls under a paid subscription are billed; the sandbox's are metered only.
    admin(
        &gateway,
        "/admin/subscriptions",
        json!({"consumer_id": "acme", "plan_id": "paid"}),
    )
    .await;
    until_status(&gateway, "/books/7", &live_key, 200).await;
    assert_eq!(
        call(&gateway, "GET", "/books/8", &live_key).await.status(),
        200
    );
    let started = Instant::now();
    let (live_requests, sandbox_requests) = loop {
        let usage = gateway.admin_json("/admin/usage?consumer_id=acme").await;
        let rows = usage["rows"].as_array().unwrap().clone();
        let sum = |sandbox: bool| -> u64 {
            rows.iter()
                .filter(|r| r["sandbox"] == sandbox)
                .map(|r| r["requests"].as_u64().unwrap())
                .sum()
        };
        if sum(false) >= 2 && sum(true) >= 4 {
            break (sum(false), sum(true));
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "usage: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Live: 2 on books. Sandbox: the mock's GET, GET and POST, and the orders service's
    // one (refused requests are not metered).
    assert_eq!(live_requests, 2);
    assert_eq!(sandbox_requests, 4);
    let invoice = gateway.admin_json("/admin/invoices/acme").await;
    let billed: u64 = invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "requests")
        .map(|l| l["quantity"].as_u64().unwrap())
        .sum();
    assert_eq!(billed, 2, "sandbox requests are never billed: {invoice}");
    assert!(invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["plan_id"] != "sandbox"));
}

#[tokio::test]
async fn mock_requests_are_checked_against_the_document() {
    let live = echo("live").await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("store.db").display());
    let gateway = Gateway::start(&config(&store, live, live));
    admin(&gateway, "/admin/consumers", json!({"id": "acme"})).await;
    let key = admin(
        &gateway,
        "/admin/consumers/acme/keys",
        json!({"sandbox": true}),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    admin(
        &gateway,
        "/admin/products",
        json!({"id": "books", "name": "Books", "routes": ["books"], "openapi": books_openapi(), "sandbox": {}}),
    )
    .await;
    until_status(&gateway, "/books/1", &key, 200).await;
    let bad = call(&gateway, "GET", "/books/seven", &key).await;
    assert_eq!(bad.status(), 400);
    let problem: Value = bad.json().await.unwrap();
    assert!(problem.to_string().contains("/path/id"), "{problem}");
    assert_eq!(
        call(&gateway, "GET", "/books/1/reviews", &key)
            .await
            .status(),
        404
    );
    assert_eq!(
        call(&gateway, "DELETE", "/books/1", &key).await.status(),
        405
    );
    // A product without a document: its sandbox says why it cannot answer.
    admin(
        &gateway,
        "/admin/products",
        json!({"id": "orders", "name": "Orders", "routes": ["orders"], "sandbox": {}}),
    )
    .await;
    until_status(&gateway, "/orders/1", &key, 503).await;
}
