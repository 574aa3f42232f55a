//! The durable store: consumers and API keys issued at run time through the admin API,
//! kept in SQLite or PostgreSQL, seen by every gateway within a second, and served from
//! memory while the database is away.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{admin_block, client, upstream, Gateway, PgRelay, TestDatabase, ADMIN_TOKEN};
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
  - name: private
    match: {{ path: {{ prefix: /private }} }}
    service: backend
    auth: {{ methods: [keys] }}
"#,
        admin = admin_block()
    )
}

/// An upstream that answers with the consumer the gateway identified.
async fn whoami() -> SocketAddr {
    upstream(
        axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
            headers
                .get("x-consumer-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("nobody")
                .to_owned()
        }),
    )
    .await
}

async fn admin(gateway: &Gateway, path: &str, body: Value) -> (u16, Value) {
    let response = client()
        .post(gateway.admin_url(path))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn call(gateway: &Gateway, key: &str) -> (u16, String) {
    let response = client()
        .get(gateway.url("/private"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
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

async fn issue_key(gateway: &Gateway, consumer: &str) -> (String, String) {
    let (status, issued) = admin(
        gateway,
        &format!("/admin/consumers/{consumer}/keys"),
        json!({}),
    )
    .await;
    assert_eq!(status, 201, "{issued}");
    (
        issued["key"].as_str().unwrap().to_owned(),
        issued["public_id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn sqlite_keys_work_within_a_second_revocation_stops_them_and_they_survive_restarts() {
    let backend = whoami().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("store.db").display());
    let gateway = Gateway::start(&config(&url, backend));

    let (status, created) = admin(
        &gateway,
        "/admin/consumers",
        json!({"id": "acme", "name": "ACME", "groups": ["partners"]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["groups"], json!(["partners"]));
    let (status, _) = admin(&gateway, "/admin/consumers", json!({"id": "acme"})).await;
    assert_eq!(status, 409);
    let (status, _) = admin(&gateway, "/admin/consumers/nobody/keys", json!({})).await;
    assert_eq!(status, 404);

    let (key, public_id) = issue_key(&gateway, "acme").await;
    let waited = until_status(&gateway, &key, 200).await;
    assert!(waited < Duration::from_secs(1), "took {waited:?}");
    assert_eq!(call(&gateway, &key).await.1, "acme");
    assert_eq!(call(&gateway, "live_000000000000_wrong").await.0, 401);

    // The store keeps only the keyed hash: the listing has no key and no hash.
    let listing: Value = client()
        .get(gateway.admin_url("/admin/consumers"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listing["api_keys"][0]["public_id"], public_id.as_str());
    assert!(!listing.to_string().contains(&key));
    assert!(listing["api_keys"][0].get("hash").is_none());
    let database = std::fs::read(dir.path().join("store.db")).unwrap();
    assert!(!String::from_utf8_lossy(&database).contains(&key));

    let (second, _) = issue_key(&gateway, "acme").await;
    let (status, revoked) = admin(
        &gateway,
        &format!("/admin/keys/{public_id}/revoke"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at"].as_i64().is_some());
    let waited = until_status(&gateway, &key, 401).await;
    assert!(waited < Duration::from_secs(1), "took {waited:?}");

    // A new gateway on the same file serves the surviving key from its first request.
    drop(gateway);
    let restarted = Gateway::start(&config(&url, backend));
    assert_eq!(call(&restarted, &second).await, (200, "acme".to_owned()));
    assert_eq!(call(&restarted, &key).await.0, 401);
}

#[tokio::test]
async fn a_fleet_on_postgresql_sees_each_change_within_a_second() {
    let database = TestDatabase::create("fleet");
    let url = database.url_via("127.0.0.1:5432");
    let backend = whoami().await;
    let first = Gateway::start(&config(&url, backend));
    let second = Gateway::start(&config(&url, backend));

    let (status, _) = admin(&first, "/admin/consumers", json!({"id": "globex"})).await;
    assert_eq!(status, 201);
    let (key, public_id) = issue_key(&first, "globex").await;
    let waited = until_status(&second, &key, 200).await;
    assert!(waited < Duration::from_secs(1), "took {waited:?}");
    assert_eq!(call(&second, &key).await.1, "globex");

    // Revoked through the other gateway: refused by both within a second.
    let (status, _) = admin(
        &second,
        &format!("/admin/keys/{public_id}/revoke"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    for gateway in [&first, &second] {
        let waited = until_status(gateway, &key, 401).await;
        assert!(waited < Duration::from_secs(1), "took {waited:?}");
    }
}

/// A TCP relay to PostgreSQL that the test can cut and restore.
// Several threads: the relay must run while the harness blocks waiting for the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_away_gateways_serve_their_last_copy() {
    let database = TestDatabase::create("outage");
    let relay = PgRelay::start("127.0.0.1:0".parse().unwrap()).await;
    let url = database.url_via(&relay.addr.to_string());
    let backend = whoami().await;
    let gateway = Gateway::start(&config(&url, backend));
    let (status, _) = admin(&gateway, "/admin/consumers", json!({"id": "initech"})).await;
    assert_eq!(status, 201);
    let (key, _) = issue_key(&gateway, "initech").await;
    until_status(&gateway, &key, 200).await;

    let addr = relay.cut().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        assert_eq!(call(&gateway, &key).await, (200, "initech".to_owned()));
    }
    // Writes report the outage; nothing is swallowed.
    let (status, problem) = admin(&gateway, "/admin/consumers", json!({"id": "umbrella"})).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["code"], "store_unavailable");

    // Back: changes flow again.
    let _relay = PgRelay::start(addr).await;
    let started = Instant::now();
    let (key2, _) = loop {
        let (status, _) = admin(&gateway, "/admin/consumers", json!({"id": "umbrella"})).await;
        if status == 201 || status == 409 {
            break issue_key(&gateway, "umbrella").await;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the store did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    until_status(&gateway, &key2, 200).await;
    assert_eq!(call(&gateway, &key).await.0, 200);
}

#[tokio::test]
async fn a_rotated_key_keeps_working_for_the_overlap_and_the_new_one_at_once() {
    let backend = whoami().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("store.db").display());
    let gateway = Gateway::start(&config(&url, backend));
    let (status, _) = admin(&gateway, "/admin/consumers", json!({"id": "hooli"})).await;
    assert_eq!(status, 201);
    let (old_key, old_id) = issue_key(&gateway, "hooli").await;
    until_status(&gateway, &old_key, 200).await;

    // Taken before the store's clock reads the rotation time: the old key's end (whole
    // seconds, 2 s on) is at least a second after it.
    let rotated_at = Instant::now();
    let (status, rotated) = admin(
        &gateway,
        &format!("/admin/keys/{old_id}/rotate"),
        json!({"overlap": "2s", "prefix": "next"}),
    )
    .await;
    assert_eq!(status, 201, "{rotated}");
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    assert!(new_key.starts_with("next_"));
    assert_eq!(rotated["consumer_id"], "hooli");
    assert_eq!(rotated["previous"]["public_id"], old_id.as_str());
    let waited = until_status(&gateway, &new_key, 200).await;
    assert!(waited < Duration::from_secs(1), "took {waited:?}");
    assert_eq!(call(&gateway, &new_key).await.1, "hooli");
    // Both work during the overlap, then only the new one.
    assert_eq!(call(&gateway, &old_key).await.0, 200);
    until_status(&gateway, &old_key, 401).await;
    assert!(
        rotated_at.elapsed() >= Duration::from_secs(1),
        "the overlap was cut short"
    );
    assert_eq!(call(&gateway, &new_key).await.0, 200);

    // A revoked key cannot be rotated.
    let (status, _) = admin(&gateway, &format!("/admin/keys/{old_id}/revoke"), json!({})).await;
    assert_eq!(status, 200);
    let (status, problem) =
        admin(&gateway, &format!("/admin/keys/{old_id}/rotate"), json!({})).await;
    assert_eq!(status, 409, "{problem}");
    let (status, _) = admin(
        &gateway,
        "/admin/keys/nothing/rotate",
        json!({"overlap": "soon"}),
    )
    .await;
    assert_eq!(status, 400);
}

/// `sslmode=require` in the URL: the gateway's connections to PostgreSQL are TLS (rustls),
/// as PostgreSQL itself reports them.
#[tokio::test]
async fn postgresql_connections_use_tls_when_the_url_asks() {
    let database = TestDatabase::create("tls");
    let url = format!("{}?sslmode=require", database.url_via("127.0.0.1:5432"));
    let backend = whoami().await;
    let gateway = Gateway::start(&config(&url, backend));
    let (status, _) = admin(&gateway, "/admin/consumers", json!({"id": "secure"})).await;
    assert_eq!(status, 201);
    let (key, _) = issue_key(&gateway, "secure").await;
    until_status(&gateway, &key, 200).await;
    let admin_url = std::env::var("GATEHOUSE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let output = std::process::Command::new("psql")
        .args([
            admin_url.as_str(),
            "-tAc",
            &format!(
                "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s \
                 JOIN pg_stat_activity a USING (pid) WHERE a.datname = '{}'",
                database.name()
            ),
        ])
        .output()
        .expect("psql");
    let counts = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let (encrypted, all) = counts.split_once('|').expect("two counts");
    assert!(
        all.parse::<u32>().unwrap() > 0,
        "no connections seen: {counts}"
    );
    assert_eq!(
        encrypted, all,
        "every connection of the gateway is TLS: {counts}"
    );
}
