//! `gatehouse explain` on a configuration with overlapping routes: the route taken, why
//! each route tried before it did not match, the policy decisions, the action; as text and
//! as JSON. Nothing is sent upstream (the service address is a closed port).

mod common;

use std::process::Command;

use serde_json::Value;

const SECRET: &str = "test-api-key-secret-0123456789abcdef";

fn config(dir: &std::path::Path, key_entry: &str) -> std::path::PathBuf {
    let upstream = common::closed_port();
    let path = dir.join("gatehouse.yaml");
    common::write(
        &path,
        &format!(
            r#"listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: orders
    endpoints: [{{ address: "{upstream}" }}]
authentication:
  api_key_secret: "{SECRET}"
  methods:
    keys:
      api_key: {{ header: x-api-key }}
consumers:
  - id: acme
    api_keys:
{key_entry}rate_limits:
  per-client:
    limits: [{{ requests: 10, per: 1s }}]
routes:
  - name: order-writes
    match: {{ hosts: [api.example.com], path: {{ template: "/orders/{{id}}" }}, methods: [PUT, DELETE] }}
    service: orders
  - name: beta-orders
    match: {{ hosts: [api.example.com], path: {{ template: "/orders/{{id}}" }}, headers: [{{ name: x-beta, exact: "1" }}] }}
    service: orders
  - name: order-by-id
    match: {{ hosts: [api.example.com], path: {{ template: "/orders/{{id}}" }} }}
    service: orders
    auth: {{ methods: [keys] }}
    rate_limits: [per-client]
    rewrite: {{ path: "/v2/orders/{{id}}" }}
  - name: catch-all
    respond: {{ status: 404, body: nope }}
"#
        ),
    );
    path
}

fn explain(config: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new(common::binary())
        .args(["explain", "-c", config.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn explains_the_route_the_misses_and_the_policies() {
    let dir = tempfile::tempdir().unwrap();
    let (key, entry) = common::generate_api_key(SECRET, &[]);
    let config = config(dir.path(), &entry);

    let text = explain(&config, &["https://api.example.com/orders/42"]);
    assert!(text.contains("order-writes"), "{text}");
    assert!(text.contains("method not accepted"), "{text}");
    assert!(
        text.contains("header condition on `x-beta` does not hold"),
        "{text}"
    );
    assert!(text.contains("Route: order-by-id"), "{text}");
    assert!(text.contains("captures: id=42"), "{text}");
    assert!(text.contains("refused: 401 credentials_missing"), "{text}");
    assert!(text.contains("as /v2/orders/42"), "{text}");
    assert!(text.contains("Outcome: 401 credentials_missing"), "{text}");

    let json: Value = serde_json::from_str(&explain(
        &config,
        &[
            "--json",
            "-X",
            "GET",
            "-H",
            &format!("x-api-key: {key}"),
            "https://api.example.com/orders/7?expand=items",
        ],
    ))
    .unwrap();
    let tried: Vec<(&str, &str)> = json["considered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["route"].as_str().unwrap(), c["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        tried,
        [
            ("order-writes", "method not accepted"),
            ("beta-orders", "header condition on `x-beta` does not hold"),
            ("order-by-id", "matched"),
        ]
    );
    assert_eq!(json["route"]["captures"]["id"], "7");
    let auth = &json["policies"][0];
    assert_eq!(auth["policy"], "auth");
    let public_id = key.split('_').nth(1).unwrap();
    assert_eq!(
        auth["decision"],
        format!("granted: consumer `acme` (api_key:{public_id})")
    );
    assert_eq!(json["policies"][1]["policy"], "rate_limit");
    assert_eq!(json["action"]["forward"]["service"], "orders");
    assert_eq!(json["action"]["forward"]["upstream_path"], "/v2/orders/7");
    assert_eq!(json["outcome"], "the action runs");

    // With the beta header, the earlier route takes it.
    let json: Value = serde_json::from_str(&explain(
        &config,
        &[
            "--json",
            "-H",
            "x-beta: 1",
            "http://api.example.com/orders/7",
        ],
    ))
    .unwrap();
    assert_eq!(json["route"]["name"], "beta-orders");

    // Another host: the host-specific routes are never tried; the catch-all answers.
    let text = explain(&config, &["http://other.example.com/orders/7"]);
    assert!(text.contains("catch-all"), "{text}");
    assert!(!text.contains("order-by-id"), "{text}");
    assert!(text.contains("Action: respond 404"), "{text}");
}

#[test]
fn bad_input_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let (_, entry) = common::generate_api_key(SECRET, &[]);
    let config = config(dir.path(), &entry);
    let output = Command::new(common::binary())
        .args(["explain", "-c", config.to_str().unwrap(), "/relative/path"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("absolute URL"));
}

#[tokio::test]
async fn the_admin_api_explains_against_the_running_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let (key, entry) = common::generate_api_key(SECRET, &[]);
    let path = config(dir.path(), &entry);
    let yaml = format!(
        "{}{}",
        common::admin_block(),
        std::fs::read_to_string(&path).unwrap()
    );
    let gateway = common::Gateway::start(&yaml);
    let client = common::client();
    let explain = |body: serde_json::Value| {
        client
            .post(gateway.admin_url("/admin/explain"))
            .bearer_auth(common::ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let response = explain(serde_json::json!({
        "method": "DELETE",
        "url": "https://api.example.com/orders/9",
        "headers": { "x-api-key": key },
    }))
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["route"]["name"], "order-writes");
    assert_eq!(report["version"], 1);
    assert_eq!(
        report["action"]["forward"]["endpoints"][0]["available"],
        true
    );
    // Without the token: refused like every admin endpoint.
    let anonymous = client
        .post(gateway.admin_url("/admin/explain"))
        .json(&serde_json::json!({ "url": "http://x/" }))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let bad = explain(serde_json::json!({ "url": "/relative" }))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn the_admin_api_reads_live_rate_limit_and_quota_counters_without_counting() {
    let upstream = common::echo("explain").await;
    let dir = tempfile::tempdir().unwrap();
    let (alice_key, alice) = common::generate_api_key(SECRET, &[]);
    let (bob_key, bob) = common::generate_api_key(SECRET, &[]);
    // A quota in Redis (cluster mode), named afresh so earlier runs' counts do not show.
    let fleet = format!(
        "fleet-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let gateway = common::Gateway::start(&format!(
        r#"{admin}listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
authentication:
  api_key_secret: "{SECRET}"
  methods:
    keys: {{ api_key: {{ header: x-api-key }} }}
consumers:
  - id: alice
    api_keys:
{alice}  - id: bob
    api_keys:
{bob}rate_limits:
  per-consumer:
    limits: [{{ name: hourly, requests: 2, per: 1h, key: [consumer] }}]
  {fleet}-limit:
    mode: cluster
    limits: [{{ name: fleet-hourly, requests: 3, per: 1h, key: [consumer] }}]
quota_store:
  path: "{store}"
redis:
  url: redis://127.0.0.1:6379
quotas:
  daily:
    requests: 5
    period: day
    key: [consumer]
  {fleet}:
    requests: 100
    period: month
    key: [consumer]
    mode: cluster
routes:
  - name: orders
    match: {{ path: {{ prefix: /orders }} }}
    service: echo
    auth: {{ methods: [keys] }}
    rate_limits: [per-consumer, {fleet}-limit]
    quotas: [daily, {fleet}]
"#,
        admin = common::admin_block(),
        fleet = fleet,
        store = dir.path().join("quotas.json").display(),
    ));
    let client = common::client();
    for _ in 0..2 {
        let response = client
            .get(gateway.url("/orders"))
            .header("x-api-key", alice_key.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let explain = |key: &str| {
        client
            .post(gateway.admin_url("/admin/explain"))
            .bearer_auth(common::ADMIN_TOKEN)
            .json(&serde_json::json!({
                "url": "http://gateway.test/orders",
                "headers": { "x-api-key": key },
            }))
            .send()
    };
    let policy = |report: &Value, name: &str| -> Value {
        report["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["policy"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} policy in {report}"))
    };
    // Alice used her two requests this hour and two of five today.
    for _ in 0..2 {
        // Asking twice shows explain itself counts nothing.
        let report: Value = explain(&alice_key).await.unwrap().json().await.unwrap();
        let limit = policy(&report, "rate_limit");
        assert_eq!(limit["limits"][0]["name"], "hourly");
        assert_eq!(limit["limits"][0]["allowed"], false, "{report}");
        assert!(limit["limits"][0]["retry_after_seconds"].as_u64().unwrap() > 0);
        assert!(
            limit["decision"]
                .as_str()
                .unwrap()
                .starts_with("would refuse"),
            "{limit}"
        );
        let quotas: Vec<&Value> = report["policies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["policy"] == "quota")
            .collect();
        assert_eq!(quotas[0]["name"], "daily");
        assert_eq!(quotas[0]["state"]["used"], 2, "{report}");
        assert_eq!(quotas[0]["state"]["remaining"], 3);
        assert_eq!(quotas[0]["state"]["allowance"], 5);
        // The cluster rate limit's state is computed in Redis without counting.
        let cluster = report["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["policy"] == "rate_limit" && p["mode"] == "cluster")
            .unwrap_or_else(|| panic!("no cluster limit in {report}"));
        assert_eq!(cluster["limits"][0]["name"], "fleet-hourly", "{report}");
        assert_eq!(cluster["limits"][0]["allowed"], true);
        assert_eq!(cluster["limits"][0]["remaining"], 0, "two of three used");
        // The cluster quota's count is read from Redis.
        assert_eq!(quotas[1]["name"], fleet.as_str());
        assert_eq!(quotas[1]["state"]["used"], 2, "{report}");
        assert_eq!(quotas[1]["state"]["remaining"], 98);
        assert!(
            report["outcome"]
                .as_str()
                .unwrap()
                .starts_with("429 rate_limited"),
            "{report}"
        );
    }
    // Bob has his whole allowance: one left after the next request.
    let report: Value = explain(&bob_key).await.unwrap().json().await.unwrap();
    let limit = policy(&report, "rate_limit");
    assert_eq!(limit["limits"][0]["allowed"], true);
    assert_eq!(limit["limits"][0]["remaining"], 1);
    assert_eq!(policy(&report, "quota")["state"]["used"], 0);
    assert_eq!(report["outcome"], "the action runs");
    // And the real request agrees: Alice is refused.
    let response = client
        .get(gateway.url("/orders"))
        .header("x-api-key", alice_key.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
}
