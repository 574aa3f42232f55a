//! Quotas per calendar period: counted per consumer with per-consumer allowances, saved
//! across a restart (local mode), shared by a fleet through Redis (cluster mode).

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{binary, client, echo, Gateway};
use serde_json::Value;

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn seconds_to_midnight_utc() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    86_400 - now % 86_400
}

fn local_config(upstream: SocketAddr, store: &str) -> String {
    format!(
        r#"listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
quota_store:
  path: "{store}"
  flush_interval: 200ms
quotas:
  daily:
    requests: 5
    period: day
routes:
  - service: echo
    quotas: [daily]
"#
    )
}

#[tokio::test]
async fn local_quota_survives_a_restart_and_refuses_until_the_next_day() {
    let upstream = echo("quota").await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("quotas.json").display().to_string();
    let client = client();

    let mut first = Gateway::start(&local_config(upstream, &store));
    for remaining in [4, 3, 2] {
        let response = client.get(first.url("/a")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["ratelimit-policy"],
            "\"daily\";q=5;w=86400"
        );
        let ratelimit = response.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(
            ratelimit.starts_with(&format!("\"daily\";r={remaining};t=")),
            "{ratelimit}"
        );
    }
    // A graceful stop saves the counters.
    first.signal("TERM");
    assert!(first.wait_exit(Duration::from_secs(10)).is_some());
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&store).unwrap()).unwrap();
    assert_eq!(saved["entries"][0]["count"], 3, "{saved}");

    let second = Gateway::start(&local_config(upstream, &store));
    for _ in 0..2 {
        assert_eq!(
            client.get(second.url("/a")).send().await.unwrap().status(),
            200
        );
    }
    let refused = client.get(second.url("/a")).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let midnight = seconds_to_midnight_utc();
    assert!(
        retry.abs_diff(midnight) <= 5,
        "Retry-After {retry} s should point at midnight UTC ({midnight} s away)"
    );
    let ratelimit = refused.headers()["ratelimit"].to_str().unwrap().to_owned();
    assert!(ratelimit.starts_with("\"daily\";r=0;"), "{ratelimit}");
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "quota_exceeded");

    // The periodic save (every 200 ms) keeps the file current without a shutdown.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&store).unwrap()).unwrap();
    assert_eq!(saved["entries"][0]["count"], 5, "{saved}");
}

const SECRET: &str = "test-api-key-secret-0123456789abcdef";

fn key(extra: &[&str]) -> (String, String) {
    common::generate_api_key(SECRET, extra)
}

#[tokio::test]
async fn consumers_have_their_own_allowances_and_cluster_quotas_are_shared() {
    let upstream = echo("quota").await;
    let (gold_key, gold_entry) = key(&[]);
    let (basic_key, basic_entry) = key(&[]);
    let policy = unique("monthly");
    let yaml = format!(
        r#"listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
redis:
  url: redis://127.0.0.1:6379
authentication:
  api_key_secret: "{SECRET}"
  methods:
    keys:
      api_key: {{ header: x-api-key }}
quotas:
  {policy}:
    requests: 2
    period: month
    mode: cluster
consumers:
  - id: gold
    quotas: {{ {policy}: 4 }}
    api_keys:
{gold_entry}  - id: basic
    api_keys:
{basic_entry}routes:
  - service: echo
    auth: {{ methods: [keys] }}
    quotas: [{policy}]
"#
    );
    // Two gateways count in the same Redis counters.
    let one = Gateway::start(&yaml);
    let two = Gateway::start(&yaml);
    let client = client();
    let mut admitted = std::collections::BTreeMap::new();
    for round in 0..6 {
        for (name, api_key) in [("gold", &gold_key), ("basic", &basic_key)] {
            let gateway = if round % 2 == 0 { &one } else { &two };
            let response = client
                .get(gateway.url("/x"))
                .header("x-api-key", api_key)
                .send()
                .await
                .unwrap();
            match response.status().as_u16() {
                200 => *admitted.entry(name).or_insert(0) += 1,
                429 => {
                    let problem: Value = response.json().await.unwrap();
                    assert_eq!(problem["code"], "quota_exceeded");
                }
                other => panic!("unexpected status {other}"),
            }
        }
    }
    assert_eq!(admitted.get("gold"), Some(&4), "{admitted:?}");
    assert_eq!(admitted.get("basic"), Some(&2), "{admitted:?}");
}

#[test]
fn local_quotas_need_a_store_and_references_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    common::write(
        &path,
        r#"quotas:
  daily:
    requests: 5
    period: day
consumers:
  - id: acme
    quotas: { dialy: 10 }
routes:
  - respond: { body: ok }
    quotas: [dayly]
"#,
    );
    let output = Command::new(binary())
        .args(["check", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    for expected in [
        ":3:5: quota `daily` is local: set `quota_store.path`",
        "consumer `acme` overrides undefined quota `dialy`, did you mean `daily`?",
        "uses undefined quota `dayly`, did you mean `daily`?",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
}
