//! API products, plans and subscriptions kept in the store and enforced by every gateway
//! following it: a product's routes need an approved subscription, the plan's limits and
//! quota apply per application, and changes reach the gateways within a second.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{admin_block, client, echo, Gateway, TestDatabase, ADMIN_TOKEN};
use serde_json::{json, Value};

const KEY_SECRET: &str = "test-api-key-secret-0123456789abcdef";

fn config(store_url: &str, upstream: SocketAddr) -> String {
    format!(
        r#"{admin}listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: backend
    endpoints: [{{ address: "{upstream}" }}]
store:
  url: "{store_url}"
  poll_interval: 200ms
authentication:
  api_key_secret: "{KEY_SECRET}"
  methods:
    keys:
      api_key: {{ header: x-api-key }}
routes:
  - name: books
    match: {{ path: {{ prefix: /books }} }}
    service: backend
    auth: {{ methods: [keys] }}
  - name: open
    match: {{ path: {{ prefix: /open }} }}
    service: backend
"#,
        admin = admin_block()
    )
}

async fn admin(gateway: &Gateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client()
        .request(method, gateway.admin_url(path))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn created(gateway: &Gateway, path: &str, body: Value) -> Value {
    let (status, answer) = admin(gateway, "POST", path, Some(body)).await;
    assert_eq!(status, 201, "POST {path}: {answer}");
    answer
}

/// A consumer (application) of the store with a fresh key.
async fn application(gateway: &Gateway, id: &str) -> String {
    created(gateway, "/admin/consumers", json!({ "id": id })).await;
    let issued = created(gateway, &format!("/admin/consumers/{id}/keys"), json!({})).await;
    issued["key"].as_str().unwrap().to_owned()
}

/// Status and `code` (of a problem answer) of GET /books with `key`.
async fn call(gateway: &Gateway, key: &str) -> (u16, String) {
    let response = client()
        .get(gateway.url("/books/1"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["code"].as_str().unwrap_or_default().to_owned())
}

/// How long until `gateway` answers `expected` for `key` (polled every 20 ms, at most 5 s).
async fn until_status(gateway: &Gateway, key: &str, expected: u16) -> Duration {
    let started = Instant::now();
    loop {
        if call(gateway, key).await.0 == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no {expected} for the key within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Requests admitted before the first 429 (at most 50 sent).
async fn admitted_until_limited(gateway: &Gateway, key: &str) -> (usize, String) {
    for admitted in 0..50 {
        let (status, code) = call(gateway, key).await;
        match status {
            200 => {}
            429 => return (admitted, code),
            other => panic!("unexpected {other} {code}"),
        }
    }
    panic!("no 429 within 50 requests");
}

/// The whole lifecycle, administered through `control` and observed on `edge` (the same
/// gateway, or another of the fleet).
async fn lifecycle(control: &Gateway, edge: &Gateway) {
    let alice = application(control, "alice-app").await;
    let bob = application(control, "bob-app").await;
    until_status(edge, &alice, 200).await;

    // A product's routes must exist and identify the caller.
    let (status, problem) = admin(
        control,
        "POST",
        "/admin/products",
        Some(json!({"id": "books", "name": "Books", "routes": ["open", "nowhere"]})),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    let errors = problem["errors"].to_string();
    assert!(errors.contains("route `open` has no `auth`"), "{errors}");
    assert!(errors.contains("no route `nowhere`"), "{errors}");

    let product = created(
        control,
        "/admin/products",
        json!({"id": "books", "name": "Books API", "routes": ["books"], "version": "v1",
               "description": "Every book we know."}),
    )
    .await;
    assert_eq!(product["visibility"], "public");
    // From now on the route needs a subscription, on every gateway within a second.
    let waited = until_status(edge, &alice, 403).await;
    assert!(waited < Duration::from_secs(1), "took {waited:?}");
    assert_eq!(call(edge, &alice).await.1, "subscription_required");

    let (status, problem) = admin(
        control,
        "POST",
        "/admin/products/books/plans",
        Some(json!({"id": "broken", "name": "Broken",
                    "terms": {"pricing": {"tiers": [{"cents_per_1000": 1}, {"up_to": 5, "cents_per_1000": 1}]}}})),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("only the last tier"));
    created(
        control,
        "/admin/products/books/plans",
        json!({"id": "starter", "name": "Starter",
               "terms": {"limits": [{"requests": 5, "per_seconds": 60}],
                         "pricing": {"monthly_fee_cents": 0}}}),
    )
    .await;
    created(
        control,
        "/admin/products/books/plans",
        json!({"id": "gold", "name": "Gold", "requires_approval": true,
               "terms": {"quota": {"requests_per_month": 3},
                         "pricing": {"monthly_fee_cents": 9900,
                                     "tiers": [{"up_to": 1000, "cents_per_1000": 0}, {"cents_per_1000": 50}]}}}),
    )
    .await;

    // A plan without approval: in force at once, its limit counted per application.
    let subscription = created(
        control,
        "/admin/subscriptions",
        json!({"consumer_id": "alice-app", "plan_id": "starter"}),
    )
    .await;
    assert_eq!(subscription["status"], "approved");
    let (status, _) = admin(
        control,
        "POST",
        "/admin/subscriptions",
        Some(json!({"consumer_id": "alice-app", "plan_id": "gold"})),
    )
    .await;
    assert_eq!(status, 409, "one open subscription per product");
    let waited = until_status(edge, &alice, 200).await;
    assert!(waited < Duration::from_secs(1), "took {waited:?}");
    let response = client()
        .get(edge.url("/books/1"))
        .header("x-api-key", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let policy = response.headers()["ratelimit-policy"].to_str().unwrap();
    assert!(policy.contains("q=5"), "{policy}");
    // Two admitted so far; three more, then the plan's limit.
    let (admitted, code) = admitted_until_limited(edge, &alice).await;
    assert_eq!((admitted, code.as_str()), (3, "rate_limited"));

    // An admin raises the plan's limit: enforced within a second, with a fresh allowance.
    let (status, plan) = admin(
        control,
        "PATCH",
        "/admin/plans/starter",
        Some(json!({"terms": {"limits": [{"requests": 8, "per_seconds": 60}]}})),
    )
    .await;
    assert_eq!(status, 200, "{plan}");
    let waited = until_status(edge, &alice, 200).await;
    assert!(waited < Duration::from_secs(1), "took {waited:?}");
    let (admitted, _) = admitted_until_limited(edge, &alice).await;
    assert_eq!(admitted, 7);

    // A plan that needs approval: pending grants nothing; approved, in force.
    let pending = created(
        control,
        "/admin/subscriptions",
        json!({"consumer_id": "bob-app", "plan_id": "gold"}),
    )
    .await;
    assert_eq!(pending["status"], "pending");
    let id = pending["id"].as_str().unwrap().to_owned();
    let (_, listed) = admin(control, "GET", "/admin/subscriptions?status=pending", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], id.as_str());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        call(edge, &bob).await,
        (403, "subscription_required".into())
    );
    let (status, approved) = admin(
        control,
        "POST",
        &format!("/admin/subscriptions/{id}/approve"),
        None,
    )
    .await;
    assert_eq!(
        (status, approved["status"].as_str()),
        (200, Some("approved"))
    );
    let (status, _) = admin(
        control,
        "POST",
        &format!("/admin/subscriptions/{id}/approve"),
        None,
    )
    .await;
    assert_eq!(status, 409, "only a pending subscription is decided");
    let waited = until_status(edge, &bob, 200).await;
    assert!(waited < Duration::from_secs(1), "took {waited:?}");
    // Gold has no rate limit but a hard monthly quota of 3: one used above.
    let (admitted, code) = admitted_until_limited(edge, &bob).await;
    assert_eq!((admitted, code.as_str()), (2, "quota_exceeded"));

    // Moving Bob to Starter applies Starter's limit instead of Gold's quota.
    let (status, moved) = admin(
        control,
        "POST",
        &format!("/admin/subscriptions/{id}/plan"),
        Some(json!({"plan_id": "starter"})),
    )
    .await;
    assert_eq!((status, moved["plan_id"].as_str()), (200, Some("starter")));
    let waited = until_status(edge, &bob, 200).await;
    assert!(waited < Duration::from_secs(1), "took {waited:?}");

    // A product with open subscriptions is not deleted by accident.
    let (status, _) = admin(control, "DELETE", "/admin/products/books", None).await;
    assert_eq!(status, 409);
    // Cancelled: refused within a second.
    let (status, _) = admin(
        control,
        "POST",
        &format!("/admin/subscriptions/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let waited = until_status(edge, &bob, 403).await;
    assert!(waited < Duration::from_secs(1), "took {waited:?}");

    let (_, detail) = admin(control, "GET", "/admin/products/books", None).await;
    let plans: Vec<&str> = detail["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(plans, ["gold", "starter"]);
    assert_eq!(detail["plans"][1]["terms"]["limits"][0]["requests"], 8);

    // Without credentials, a product's route says what it needs.
    let response = client().get(edge.url("/books/1")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    // Routes outside every product are untouched.
    let response = client().get(edge.url("/open")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn sqlite_products_need_subscriptions_and_enforce_plans() {
    let backend = echo("books").await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("store.db").display());
    let gateway = Gateway::start(&config(&url, backend));
    lifecycle(&gateway, &gateway).await;
}

#[tokio::test]
async fn a_postgresql_fleet_enforces_what_another_gateway_changed() {
    let database = TestDatabase::create("products");
    let url = database.url_via("127.0.0.1:5432");
    let backend = echo("books").await;
    let control = Gateway::start(&config(&url, backend));
    let edge = Gateway::start(&config(&url, backend));
    lifecycle(&control, &edge).await;
}
