//! Metrics and the access log: counts and histograms after known traffic, every access-log
//! field, redaction, SIGUSR1 reopen, and dropped lines (never a stall) when the writer is
//! blocked.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{admin_block, client, echo, Gateway, ADMIN_TOKEN};
use serde_json::Value;

fn config(upstream: SocketAddr, access_log: &str) -> String {
    format!(
        r#"{admin}listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
rate_limits:
  tight:
    limits: [{{ requests: 2, per: 1h, key: [route] }}]
authentication:
  api_key_secret: "test-api-key-secret-0123456789abcdef"
  methods:
    keys:
      api_key: {{ header: x-api-key, query: api_key }}
routes:
  - name: orders
    match: {{ path: {{ prefix: /orders }} }}
    service: echo
  - name: limited
    match: {{ path: {{ prefix: /limited }} }}
    service: echo
    rate_limits: [tight]
  - name: private
    match: {{ path: {{ prefix: /private }} }}
    service: echo
    auth: {{ methods: [keys] }}
{access_log}"#,
        admin = admin_block()
    )
}

async fn scrape(gateway: &Gateway) -> String {
    let response = client()
        .get(gateway.admin_url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    response.text().await.unwrap()
}

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Poll `check` until it holds (the log phase runs when the response body is done).
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_count_known_traffic() {
    let upstream = echo("metrics").await;
    let gateway = Gateway::start(&config(upstream, ""));
    let client = client();
    for _ in 0..5 {
        let response = client.get(gateway.url("/orders/1")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    client
        .post(gateway.url("/orders"))
        .body("0123456789")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            client
                .get(gateway.url("/nowhere"))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
    }
    let statuses: Vec<u16> = {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(
                client
                    .get(gateway.url("/limited"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16(),
            );
        }
        statuses
    };
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(
        client
            .get(gateway.url("/private"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // Without the admin token: refused.
    let anonymous = client
        .get(gateway.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // The log phase runs as each response body finishes: wait until all 12 are counted.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = scrape(&gateway).await;
        let counted: f64 = text
            .lines()
            .filter(|l| l.starts_with("gatehouse_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if counted >= 12.0 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let count =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no `{series}` in\n{text}"));
    assert_eq!(
        count(
            r#"gatehouse_requests_total{route="orders",service="echo",method="GET",status_class="2xx"}"#
        ),
        5.0
    );
    assert_eq!(
        count(
            r#"gatehouse_requests_total{route="orders",service="echo",method="POST",status_class="2xx"}"#
        ),
        1.0
    );
    assert_eq!(
        count(r#"gatehouse_requests_total{route="",service="",method="GET",status_class="4xx"}"#),
        2.0
    );
    assert_eq!(
        count(r#"gatehouse_gateway_responses_total{code="route_not_found"}"#),
        2.0
    );
    assert_eq!(
        count(r#"gatehouse_gateway_responses_total{code="rate_limited"}"#),
        1.0
    );
    assert_eq!(
        count(r#"gatehouse_gateway_responses_total{code="credentials_missing"}"#),
        1.0
    );
    assert_eq!(
        count(r#"gatehouse_request_duration_seconds_count{route="orders"}"#),
        6.0
    );
    // Every request took less than 10 s, so the largest finite bucket holds all six.
    assert_eq!(
        count(r#"gatehouse_request_duration_seconds_bucket{le="10.0",route="orders"}"#),
        6.0
    );
    assert_eq!(
        count(r#"gatehouse_upstream_duration_seconds_count{service="echo"}"#),
        8.0
    );
    assert_eq!(count("gatehouse_gateway_duration_seconds_count"), 8.0);
    assert_eq!(
        count(r#"gatehouse_request_body_bytes_total{route="orders"}"#),
        10.0
    );
    assert!(count(r#"gatehouse_response_body_bytes_total{route="orders"}"#) > 100.0);
    assert!(count(r#"gatehouse_open_connections{listener="public"}"#) >= 1.0);
    assert_eq!(
        count(&format!(
            r#"gatehouse_upstream_endpoint_healthy{{service="echo",endpoint="{upstream}"}}"#
        )),
        1.0
    );
    assert_eq!(
        count(
            r#"gatehouse_policy_decisions_total{route="limited",policy="rate_limit",result="allowed"}"#
        ),
        2.0
    );
    assert_eq!(
        count(
            r#"gatehouse_policy_decisions_total{route="limited",policy="rate_limit",result="refused"}"#
        ),
        1.0
    );
    assert_eq!(
        count(
            r#"gatehouse_policy_decisions_total{route="private",policy="auth",result="refused"}"#
        ),
        1.0
    );
    assert!(
        !text.contains(r#"gatehouse_policy_decisions_total{route="orders""#),
        "a route without policies has no decisions"
    );
    assert_eq!(count("gatehouse_config_version"), 1.0);
    assert!(text.contains("gatehouse_build_info{version=\""), "{text}");
    // Prometheus's own linter accepts the exposition (scripts/test.sh installs promtool).
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/test.sh installs Debian's prometheus package)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[tokio::test]
async fn access_log_has_every_field_redacts_and_reopens() {
    let upstream = echo("log").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gateway = Gateway::start(&config(
        upstream,
        &format!(
            "access_log:\n  path: \"{}\"\n  redact_query: [session]\n",
            log.display()
        ),
    ));
    let client = client();
    let response = client
        .get(gateway.url("/orders/7?page=2&api_key=gh_abc_secret&session=s3cret"))
        .header("user-agent", "observability-test/1.0")
        .header("x-request-id", "req-123")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    client.get(gateway.url("/private")).send().await.unwrap();

    let lines = eventually("two access-log lines", || {
        let lines = read_lines(&log);
        (lines.len() >= 2).then_some(lines)
    })
    .await;
    // Found by request, not position: a line is written once its response is sent, so two
    // requests on different connections (and threads) may log out of order.
    let logged = |path: &str| {
        lines
            .iter()
            .find(|line| line["path"].as_str().is_some_and(|p| p.starts_with(path)))
            .unwrap_or_else(|| panic!("no line for {path}: {lines:?}"))
    };
    let first = logged("/orders/7");
    let second = logged("/private");
    assert_eq!(
        first.as_object().unwrap().len(),
        gatehouse_config::ACCESS_LOG_FIELDS.len(),
        "{first}"
    );
    for field in gatehouse_config::ACCESS_LOG_FIELDS {
        assert!(
            first.get(field).is_some(),
            "field `{field}` missing: {first}"
        );
    }
    assert_eq!(first["request_id"], "req-123");
    // Without `tracing`, the trace id is the client's.
    assert_eq!(first["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(second["trace_id"], Value::Null);
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert_eq!(first["route"], "orders");
    assert_eq!(first["service"], "echo");
    assert_eq!(first["endpoint"], upstream.to_string());
    assert_eq!(first["method"], "GET");
    assert_eq!(
        first["path"],
        "/orders/7?page=2&api_key=REDACTED&session=REDACTED"
    );
    assert_eq!(first["status"], 200);
    assert_eq!(first["user_agent"], "observability-test/1.0");
    assert!(first["bytes_out"].as_u64().unwrap() > 0);
    let total = first["total_ms"].as_f64().unwrap();
    let upstream_ms = first["upstream_ms"].as_f64().unwrap();
    assert!(total >= upstream_ms && upstream_ms > 0.0, "{first}");
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(second["status"], 401);
    assert_eq!(second["reason"], "credentials_missing");
    assert_eq!(second["upstream_ms"], Value::Null);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("s3cret") && !text.contains("gh_abc_secret"),
        "{text}"
    );

    // Rotation: move the file away, SIGUSR1, and new lines go to a new file.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    gateway.signal("USR1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    client
        .get(gateway.url("/orders/after-rotation"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let fresh = eventually("a line in the reopened file", || {
        let lines = read_lines(&log);
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert_eq!(fresh[0]["path"], "/orders/after-rotation");
    assert_eq!(
        read_lines(&rotated).len(),
        2,
        "the rotated file keeps its lines"
    );

    // A chunked upload (no Content-Length) is counted as it streams.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
        Ok(bytes::Bytes::from_static(b"hello ")),
        Ok(bytes::Bytes::from_static(b"chunked")),
        Ok(bytes::Bytes::from_static(b"!")),
    ];
    let response = client
        .post(gateway.url("/orders/upload"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["headers"]["transfer-encoding"], "chunked");
    let lines = eventually("the upload's line", || {
        let lines = read_lines(&log);
        (lines.len() >= 2).then_some(lines)
    })
    .await;
    let upload = lines
        .iter()
        .find(|line| line["path"] == "/orders/upload")
        .unwrap_or_else(|| panic!("no line for the upload: {lines:?}"));
    assert_eq!(upload["bytes_in"], 14);
}

#[tokio::test]
async fn a_blocked_log_writer_drops_lines_and_never_stalls_traffic() {
    let upstream = echo("blocked").await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("blocked.fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    // Nobody reads the FIFO: the writer blocks opening it, and the queue of 4 fills up.
    let gateway = Gateway::start(&config(
        upstream,
        &format!(
            "access_log:\n  path: \"{}\"\n  buffer_lines: 4\n",
            fifo.display()
        ),
    ));
    let client = client();
    let started = Instant::now();
    for _ in 0..50 {
        let response = client.get(gateway.url("/orders")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "traffic stalled behind the log: {:?}",
        started.elapsed()
    );
    let dropped = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let text = scrape(&gateway).await;
            if let Some(n) =
                sample(&text, "gatehouse_access_log_dropped_lines_total").filter(|n| *n >= 40.0)
            {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("dropped lines are counted");
    assert!(dropped <= 50.0, "{dropped}");
}

#[tokio::test]
async fn disabled_metrics_are_neither_recorded_nor_served() {
    let upstream = echo("off").await;
    let gateway = Gateway::start(&config(upstream, "metrics: { enabled: false }\n"));
    let client = client();
    assert_eq!(
        client
            .get(gateway.url("/orders"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let response = client
        .get(gateway.admin_url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "not_found");
}

#[tokio::test]
async fn templates_and_sampling_shape_the_log() {
    let upstream = echo("template").await;
    let down = common::closed_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    // `sample: 0` logs nothing but server errors, which are always logged.
    let gateway = Gateway::start(&format!(
        r#"listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
  - name: gone
    endpoints: [{{ address: "{down}" }}]
routes:
  - name: fine
    match: {{ path: {{ prefix: /fine }} }}
    service: echo
  - name: broken
    match: {{ path: {{ prefix: /broken }} }}
    service: gone
access_log:
  path: "{log}"
  format: "{{client_ip}} {{method}} {{path}} {{status}} {{route}} {{consumer}} reason={{reason}}"
  sample: 0
"#,
        log = log.display()
    ));
    let client = client();
    for _ in 0..3 {
        let response = client.get(gateway.url("/fine")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    let failed = client.get(gateway.url("/broken?x=1")).send().await.unwrap();
    assert_eq!(failed.status(), 503);
    failed.bytes().await.unwrap();
    let text = eventually("the server error's line", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        (!text.is_empty()).then_some(text)
    })
    .await;
    assert_eq!(
        text, "127.0.0.1 GET /broken?x=1 503 broken - reason=upstream_unavailable\n",
        "only the 5xx is logged, in the template's shape"
    );

    // An unknown placeholder is refused when the configuration loads.
    let config = dir.path().join("bad.yaml");
    common::write(&config, "access_log:\n  format: \"{method} {stauts}\"\n");
    let output = std::process::Command::new(common::binary())
        .args(["check", "-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains(
            ":2:11: `access_log.format` uses unknown field `{stauts}`, did you mean `status`?"
        ),
        "{stdout}"
    );
}

#[tokio::test]
async fn retries_budget_refusals_and_ejections_are_counted() {
    let upstream = echo("retry").await;
    let closed = common::closed_port();
    let gateway = Gateway::start(&format!(
        r#"{admin}listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: flaky
    endpoints: [{{ address: "{closed}" }}, {{ address: "{upstream}" }}]
    retries: {{ attempts: 1, backoff: 1ms }}
    outlier_detection: {{ consecutive_failures: 1, base_ejection_time: 5m, max_ejection_percent: 50 }}
  - name: stingy
    endpoints: [{{ address: "{closed}" }}]
    retries: {{ attempts: 2, budget_ratio: 0, budget_min_per_second: 0 }}
routes:
  - name: flaky
    match: {{ path: {{ prefix: /flaky }} }}
    service: flaky
  - name: stingy
    match: {{ path: {{ prefix: /stingy }} }}
    service: stingy
"#,
        admin = admin_block()
    ));
    let client = client();
    // Round robin: one of the two requests meets the closed endpoint first, is retried on
    // the other, and the closed one is ejected.
    for _ in 0..2 {
        let response = client.get(gateway.url("/flaky")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let response = client.get(gateway.url("/stingy")).send().await.unwrap();
    assert_eq!(response.status(), 503);

    let text = scrape(&gateway).await;
    let value = |series: &str| {
        sample(&text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
    };
    assert_eq!(
        value(r#"gatehouse_upstream_retries_total{service="flaky",reason="connect"}"#),
        1.0
    );
    assert_eq!(
        value(r#"gatehouse_upstream_retries_total{service="flaky",reason="status"}"#),
        0.0
    );
    assert_eq!(
        value(r#"gatehouse_upstream_retry_budget_exhausted_total{service="stingy"}"#),
        1.0
    );
    assert_eq!(
        value(r#"gatehouse_upstream_retry_budget_exhausted_total{service="flaky"}"#),
        0.0
    );
    assert_eq!(
        value(&format!(
            r#"gatehouse_upstream_endpoint_ejections_total{{service="flaky",endpoint="{closed}"}}"#
        )),
        1.0
    );
    assert_eq!(
        value(&format!(
            r#"gatehouse_upstream_endpoint_healthy{{service="flaky",endpoint="{closed}"}}"#
        )),
        0.0
    );
    assert_eq!(
        value(&format!(
            r#"gatehouse_upstream_endpoint_healthy{{service="flaky",endpoint="{upstream}"}}"#
        )),
        1.0
    );
    // A service without outlier detection has no ejection series.
    assert!(!text.contains(r#"gatehouse_upstream_endpoint_ejections_total{service="stingy""#));
}

#[tokio::test]
async fn consumer_labels_only_on_the_routes_that_opt_in() {
    let upstream = echo("consumers").await;
    let secret = "test-api-key-secret-0123456789abcdef";
    let (alice_key, alice) = common::generate_api_key(secret, &[]);
    let (bob_key, bob) = common::generate_api_key(secret, &[]);
    let gateway = Gateway::start(&format!(
        r#"{admin}listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
metrics:
  per_consumer: [billed]
authentication:
  api_key_secret: "{secret}"
  methods:
    keys: {{ api_key: {{ header: x-api-key }} }}
consumers:
  - id: alice
    api_keys:
{alice}  - id: bob
    api_keys:
{bob}routes:
  - name: billed
    match: {{ path: {{ prefix: /billed }} }}
    service: echo
    auth: {{ methods: [keys] }}
  - name: unbilled
    match: {{ path: {{ prefix: /unbilled }} }}
    service: echo
    auth: {{ methods: [keys] }}
"#,
        admin = admin_block()
    ));
    let client = client();
    for (path, key, times) in [
        ("/billed", &alice_key, 3),
        ("/billed", &bob_key, 1),
        ("/unbilled", &alice_key, 2),
    ] {
        for _ in 0..times {
            let response = client
                .get(gateway.url(path))
                .header("x-api-key", key.as_str())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    }
    let refused = client.get(gateway.url("/billed")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let text = scrape(&gateway).await;
    assert_eq!(
        sample(
            &text,
            r#"gatehouse_consumer_requests_total{route="billed",consumer="alice",status_class="2xx"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"gatehouse_consumer_requests_total{route="billed",consumer="bob",status_class="2xx"}"#
        ),
        Some(1.0)
    );
    assert!(
        !text.contains(r#"gatehouse_consumer_requests_total{route="unbilled""#),
        "a route that did not opt in has no consumer series:\n{text}"
    );
    assert_eq!(
        text.matches("gatehouse_consumer_requests_total{").count(),
        2,
        "anonymous refusals carry no consumer:\n{text}"
    );

    // A route name that does not exist is refused with its location.
    let (code, output) = common::check_text(
        "metrics:\n  per_consumer: [biled]\nroutes:\n  - name: billed\n    match: { path: { prefix: / } }\n    respond: { status: 200 }\n",
    );
    assert_eq!(code, Some(1));
    assert!(
        output.contains("bad.yaml:2:18: `metrics.per_consumer` names undefined route `biled`, did you mean `billed`?"),
        "{output}"
    );
}
