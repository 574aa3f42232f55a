//! Usage metering and billing: requests under a subscription are metered in the log phase,
//! written to the store off the request path (SQLite, and PostgreSQL shared by a fleet),
//! priced into invoices (JSON and CSV), and sent to a signed webhook that retries.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{admin_block, client, echo, upstream, Gateway, TestDatabase, ADMIN_TOKEN};
use serde_json::{json, Value};

const KEY_SECRET: &str = "test-api-key-secret-0123456789abcdef";
const WEBHOOK_SECRET: &str = "whsec-test-0123456789abcdef";

fn config(store_url: &str, upstream: SocketAddr, webhook: SocketAddr, flush: &str) -> String {
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
  usage_flush_interval: {flush}
  usage_webhook:
    url: "http://{webhook}/usage"
    secret: "{WEBHOOK_SECRET}"
    timeout: 2s
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
"#,
        admin = admin_block()
    )
}

/// What the webhook receiver was sent: (delivery id, signature header, body).
type Received = Arc<Mutex<Vec<(String, String, String)>>>;

/// A usage webhook receiver that refuses the first `failures` deliveries with 500.
async fn receiver(failures: usize) -> (SocketAddr, Received) {
    let received: Received = Arc::default();
    let log = received.clone();
    let addr = upstream(axum::Router::new().route(
        "/usage",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let log = log.clone();
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let mut log = log.lock().unwrap();
                log.push((
                    header("gatehouse-delivery"),
                    header("gatehouse-signature"),
                    body,
                ));
                if log.len() <= failures {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    ))
    .await;
    (addr, received)
}

/// Checks `t=...,v1=...` the way a receiver would.
fn verify_signature(header: &str, body: &str) {
    let (t, v1) = header
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
        .unwrap_or_else(|| panic!("malformed signature `{header}`"));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, WEBHOOK_SECRET.as_bytes());
    let expected: String = aws_lc_rs::hmac::sign(&key, format!("{t}.{body}").as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, expected, "signature of {body}");
    let age = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - t.parse::<i64>().unwrap();
    assert!((0..60).contains(&age), "timestamp {t} is {age} s old");
}

async fn admin(gateway: &Gateway, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client()
        .request(method, gateway.admin_url(path))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn created(gateway: &Gateway, path: &str, body: Value) -> Value {
    let (status, text) = admin(gateway, "POST", path, Some(body)).await;
    assert_eq!(status, 201, "POST {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// A product whose Metered plan costs 49.00 a month, the first 5 requests free, then
/// 1,000¢ per 1,000 (1¢ a request); a subscribed application; its key.
async fn subscribed(gateway: &Gateway) -> String {
    created(gateway, "/admin/consumers", json!({"id": "acme"})).await;
    let key = created(gateway, "/admin/consumers/acme/keys", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    created(
        gateway,
        "/admin/products",
        json!({"id": "books", "name": "Books", "routes": ["books"]}),
    )
    .await;
    created(
        gateway,
        "/admin/products/books/plans",
        json!({"id": "metered", "name": "Metered",
               "terms": {"limits": [{"requests": 8, "per_seconds": 3600}],
                         "pricing": {"monthly_fee_cents": 4900,
                                     "tiers": [{"up_to": 5, "cents_per_1000": 0},
                                               {"cents_per_1000": 1000}]}}}),
    )
    .await;
    created(
        gateway,
        "/admin/subscriptions",
        json!({"consumer_id": "acme", "plan_id": "metered"}),
    )
    .await;
    key
}

/// GET /books/1 with `key`.
async fn get(gateway: &Gateway, key: &str) -> reqwest::Response {
    client()
        .get(gateway.url("/books/1"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
}

async fn call(gateway: &Gateway, key: &str) -> u16 {
    get(gateway, key).await.status().as_u16()
}

/// Requests `gateway` sends until the key is admitted under its plan (the store follower's
/// delay). The key can be in force a moment before the product and its subscription are, when
/// the route still answers without a plan, unmetered: only an answer carrying the plan's
/// `RateLimit-Policy` counts.
async fn until_admitted(gateway: &Gateway, key: &str) {
    let started = Instant::now();
    loop {
        let response = get(gateway, key).await;
        if response.status() == 200 && response.headers().contains_key("ratelimit-policy") {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never admitted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The usage rows once their request count reaches `total` (at most 10 s).
async fn usage_reaching(gateway: &Gateway, total: u64) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let report = gateway.admin_json("/admin/usage?consumer_id=acme").await;
        let rows = report["rows"].as_array().unwrap().clone();
        let sum: u64 = rows.iter().map(|r| r["requests"].as_u64().unwrap()).sum();
        if sum >= total {
            assert_eq!(sum, total, "{rows:?}");
            return rows;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "usage stuck at {sum} of {total}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Requests the receiver was sent in accepted deliveries once they reach `total`
/// (at most 15 s: a refused delivery is retried after 5 s); every delivery is signed.
async fn delivered_reaching(received: &Received, total: u64, failures: usize) -> Vec<String> {
    let started = Instant::now();
    loop {
        let log = received.lock().unwrap().clone();
        for (_, signature, body) in &log {
            verify_signature(signature, body);
        }
        let accepted: Vec<&(String, String, String)> = log.iter().skip(failures).collect();
        let sum: u64 = accepted
            .iter()
            .flat_map(|(_, _, body)| {
                let body: Value = serde_json::from_str(body).unwrap();
                body["records"].as_array().unwrap().clone()
            })
            .map(|record| record["requests"].as_u64().unwrap())
            .sum();
        if sum >= total {
            assert_eq!(sum, total);
            return log.iter().map(|(id, _, _)| id.clone()).collect();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "deliveries stuck at {sum} of {total}: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn usage_is_metered_invoiced_and_delivered_signed_with_retries() {
    let backend = echo("books").await;
    let (webhook, received) = receiver(1).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("store.db").display());
    let gateway = Gateway::start(&config(&url, backend, webhook, "200ms"));
    let key = subscribed(&gateway).await;

    // 8 admitted (the plan's limit), then 2 refused: refused requests are not metered.
    until_admitted(&gateway, &key).await;
    for _ in 0..7 {
        assert_eq!(call(&gateway, &key).await, 200);
    }
    for _ in 0..2 {
        assert_eq!(call(&gateway, &key).await, 429);
    }
    let rows = usage_reaching(&gateway, 8).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(
        (
            row["product_id"].as_str(),
            row["plan_id"].as_str(),
            row["route"].as_str()
        ),
        (Some("books"), Some("metered"), Some("books"))
    );
    assert_eq!(row["sandbox"], false);
    assert_eq!(row["server_errors"], 0);
    let buckets: u64 = row["latency_buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .sum();
    assert_eq!(buckets, 8);

    // The invoice to date: the fee prorated from the subscription to the month's end,
    // 5 free requests and 3 at 1¢.
    let invoice = gateway.admin_json("/admin/invoices/acme").await;
    let lines = invoice["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 3, "{invoice}");
    let month_secs = (invoice["period_end"].as_i64().unwrap()
        - invoice["period_start"].as_i64().unwrap()) as u128;
    let fee_secs = lines[0]["quantity"].as_u64().unwrap() as u128;
    assert_eq!(lines[0]["kind"], "fee");
    assert_eq!(
        lines[0]["amount_cents"].as_u64().unwrap() as u128,
        (4900 * fee_secs * 2 + month_secs) / (month_secs * 2)
    );
    assert_eq!(
        (
            lines[1]["quantity"].as_u64(),
            lines[1]["amount_cents"].as_u64()
        ),
        (Some(5), Some(0))
    );
    assert_eq!(
        (
            lines[2]["quantity"].as_u64(),
            lines[2]["amount_cents"].as_u64()
        ),
        (Some(3), Some(3))
    );
    let total = invoice["totals"][0]["amount_cents"].as_u64().unwrap();
    assert_eq!(total, lines[0]["amount_cents"].as_u64().unwrap() + 3);

    // The month's invoices as CSV.
    let (status, csv) = admin(&gateway, "GET", "/admin/invoices?format=csv", None).await;
    assert_eq!(status, 200);
    let mut rows = csv.lines();
    assert!(rows
        .next()
        .unwrap()
        .starts_with("consumer_id,month,product_id,plan_id,kind"));
    let requests_rows: Vec<&str> = rows.filter(|r| r.contains(",requests,")).collect();
    assert_eq!(requests_rows.len(), 2, "{csv}");
    assert!(requests_rows[1].ends_with(",3,1000,3,USD"), "{csv}");
    let (status, _) = admin(&gateway, "GET", "/admin/invoices?month=2026-13", None).await;
    assert_eq!(status, 400);

    // Every flush became a signed delivery; the first was refused and sent again with
    // the same id.
    let ids = delivered_reaching(&received, 8, 1).await;
    assert!(
        ids[1..].contains(&ids[0]),
        "the refused delivery was retried: {ids:?}"
    );
    let pending = gateway.admin_json("/admin/usage/deliveries").await;
    assert_eq!(pending["pending"], json!([]));
}

#[tokio::test]
async fn usage_metered_before_shutdown_is_written_at_shutdown() {
    let backend = echo("books").await;
    let (webhook, _received) = receiver(0).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("store.db").display());
    let mut gateway = Gateway::start(&config(&url, backend, webhook, "1h"));
    let key = subscribed(&gateway).await;
    until_admitted(&gateway, &key).await;
    for _ in 0..2 {
        assert_eq!(call(&gateway, &key).await, 200);
    }
    gateway.signal("TERM");
    assert!(gateway.wait_exit(Duration::from_secs(10)).is_some());

    let restarted = Gateway::start(&config(&url, backend, webhook, "1h"));
    usage_reaching(&restarted, 3).await;
}

#[tokio::test]
async fn a_postgresql_fleet_adds_its_usage_into_the_same_rows() {
    let database = TestDatabase::create("billing");
    let url = database.url_via("127.0.0.1:5432");
    let backend = echo("books").await;
    let (webhook, received) = receiver(0).await;
    let first = Gateway::start(&config(&url, backend, webhook, "200ms"));
    let second = Gateway::start(&config(&url, backend, webhook, "200ms"));
    let key = subscribed(&first).await;
    // Each gateway counts the plan's limit of 8 on its own (plan_limits: local).
    until_admitted(&first, &key).await;
    until_admitted(&second, &key).await;
    for _ in 0..3 {
        assert_eq!(call(&first, &key).await, 200);
        assert_eq!(call(&second, &key).await, 200);
    }
    let rows = usage_reaching(&second, 8).await;
    assert_eq!(rows.len(), 1, "one aggregate for the fleet: {rows:?}");
    let invoice = first.admin_json("/admin/invoices/acme").await;
    assert_eq!(invoice["lines"][2]["quantity"], 3);
    delivered_reaching(&received, 8, 0).await;
}
