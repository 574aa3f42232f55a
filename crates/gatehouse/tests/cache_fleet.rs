//! The response cache shared by a fleet through the real Redis at 127.0.0.1:6379: what one
//! gateway stores, another serves without asking the upstream; a purge sent to one gateway
//! reaches the other's memory; a Redis outage leaves each gateway its own memory.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use common::{admin_block, client, Gateway, ADMIN_TOKEN};

#[derive(Clone, Default)]
struct Counts(Arc<Mutex<HashMap<String, usize>>>);

impl Counts {
    fn get(&self, key: &str) -> usize {
        self.0.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

/// `/{case}`: fresh for a minute, tagged with its own name, the body counting the requests.
async fn origin(State(counts): State<Counts>, Path(case): Path<String>) -> Response {
    let n = {
        let mut counts = counts.0.lock().unwrap();
        let count = counts.entry(case.clone()).or_default();
        *count += 1;
        *count
    };
    let mut response = format!("{case} #{n}").into_response();
    let headers = response.headers_mut();
    headers.insert("cache-control", HeaderValue::from_static("max-age=60"));
    headers.insert("surrogate-key", HeaderValue::from_str(&case).unwrap());
    response
}

fn config(upstream: std::net::SocketAddr, redis: &str, prefix: &str) -> String {
    format!(
        r#"{admin}listeners:
  - name: public
    listen: 127.0.0.1:0
redis:
  url: {redis}
  timeout: 200ms
cache:
  redis: true
  redis_prefix: "{prefix}"
services:
  - name: origin
    endpoints: [{{ address: "{upstream}" }}]
routes:
  - name: cached
    match: {{ path: {{ prefix: / }} }}
    service: origin
    cache: {{}}
"#,
        admin = admin_block()
    )
}

/// Whether Redis holds `key`, asked over RESP by hand (the key contains a newline).
fn redis_exists(key: &str) -> bool {
    let mut stream = std::net::TcpStream::connect("127.0.0.1:6379").expect("Redis at :6379");
    let command = format!("*2\r\n$6\r\nEXISTS\r\n${}\r\n{key}\r\n", key.len());
    stream.write_all(command.as_bytes()).unwrap();
    let mut reply = [0u8; 16];
    let n = stream.read(&mut reply).unwrap();
    &reply[..n] == b":1\r\n"
}

async fn get(gateway: &Gateway, path: &str) -> (String, String) {
    let response = client().get(gateway.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!response.headers().contains_key("surrogate-key"));
    (status, response.text().await.unwrap())
}

fn unique_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("gatehouse-test:{}-{nanos}:", std::process::id())
}

#[tokio::test]
async fn gateways_share_entries_and_purges_through_redis() {
    let counts = Counts::default();
    let router = axum::Router::new()
        .route("/{case}", axum::routing::get(origin))
        .with_state(counts.clone());
    let upstream = common::upstream(router).await;
    let prefix = unique_prefix();
    let yaml = config(upstream, "redis://127.0.0.1:6379", &prefix);
    let a = Gateway::start(&yaml);
    let b = Gateway::start(&yaml);

    assert_eq!(
        get(&a, "/shared").await,
        ("gatehouse; fwd=miss; stored".into(), "shared #1".into())
    );
    // Written to Redis off the request path: wait (bounded) until it is there.
    let redis_key = format!("{prefix}e:cached\n127.0.0.1/shared");
    for _ in 0..100 {
        if redis_exists(&redis_key) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(redis_exists(&redis_key), "the entry reached Redis");
    // The other gateway serves it without asking the upstream.
    assert_eq!(
        get(&b, "/shared").await,
        ("gatehouse; hit".into(), "shared #1".into())
    );
    assert_eq!(get(&b, "/shared").await.0, "gatehouse; hit");
    assert_eq!(counts.get("shared"), 1);

    // A purge by tag sent to A removes the entry from Redis and from B's memory.
    let purged: serde_json::Value = client()
        .post(a.admin_url("/admin/cache/purge"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "tag": "shared" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(purged, serde_json::json!({ "purged": 1, "fleet": 1 }));
    assert!(!redis_exists(&redis_key));
    let mut answer = get(&b, "/shared").await;
    for _ in 0..100 {
        if answer.0 != "gatehouse; hit" {
            break;
        }
        // B's memory is purged when the published message arrives.
        tokio::time::sleep(Duration::from_millis(20)).await;
        answer = get(&b, "/shared").await;
    }
    assert_eq!(
        answer,
        ("gatehouse; fwd=miss; stored".into(), "shared #2".into())
    );
    assert_eq!(counts.get("shared"), 2);
}

#[tokio::test]
async fn without_redis_each_gateway_keeps_its_own_memory() {
    let counts = Counts::default();
    let router = axum::Router::new()
        .route("/{case}", axum::routing::get(origin))
        .with_state(counts.clone());
    let upstream = common::upstream(router).await;
    let down = format!("redis://{}", common::closed_port());
    let gateway = Gateway::start(&config(upstream, &down, &unique_prefix()));
    let started = std::time::Instant::now();
    assert_eq!(
        get(&gateway, "/alone").await.0,
        "gatehouse; fwd=miss; stored"
    );
    assert_eq!(
        get(&gateway, "/alone").await,
        ("gatehouse; hit".into(), "alone #1".into())
    );
    assert_eq!(
        get(&gateway, "/other").await.0,
        "gatehouse; fwd=miss; stored"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "Redis being down did not stall requests"
    );
    // A purge still empties this gateway's memory, and says the fleet was not reached.
    let response = client()
        .post(gateway.admin_url("/admin/cache/purge"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "all": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "redis_unavailable");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("purged 2 keys"),
        "{problem}"
    );
    assert_eq!(
        get(&gateway, "/alone").await.0,
        "gatehouse; fwd=miss; stored"
    );
}
