//! Distributed tracing end to end: W3C and B3 context from the client, the gateway's spans
//! received by an OTLP collector implemented here (gRPC with tonic, HTTP with axum), parented
//! to the client's span, one child span per upstream attempt, and the upstream seeing the
//! attempt's span as its parent. Sampling follows the parent or the configured ratio.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{admin_block, client, closed_port, echo, Gateway, ADMIN_TOKEN};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use prost::Message;
use serde_json::Value;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

struct Collector(Received);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if request
            .metadata()
            .get("x-collector-token")
            .map(|v| v.as_bytes())
            != Some(b"s3cret")
        {
            return Err(tonic::Status::unauthenticated("missing token"));
        }
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC collector on a free port.
async fn grpc_collector() -> (SocketAddr, Received) {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(Collector(received.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, received)
}

/// An OTLP/HTTP collector: protobuf POSTed to `/v1/traces`.
async fn http_collector() -> (SocketAddr, Received) {
    let received = Received::default();
    let store = received.clone();
    let router = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(
            move |headers: http::HeaderMap, body: bytes::Bytes| async move {
                assert_eq!(headers["content-type"], "application/x-protobuf");
                let request = ExportTraceServiceRequest::decode(body).expect("protobuf");
                store.lock().unwrap().push(request);
                ""
            },
        ),
    );
    (common::upstream(router).await, received)
}

fn spans(received: &Received) -> Vec<Span> {
    received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| s.spans.clone())
        .collect()
}

/// Wait until `count` spans of trace `trace_id` have arrived.
async fn wait_for_spans(received: &Received, trace_id: &str, count: usize) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<Span> = spans(received)
            .into_iter()
            .filter(|s| hex(&s.trace_id) == trace_id)
            .collect();
        if found.len() >= count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "expected {count} spans of {trace_id}, got {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
        .and_then(|v| v.value)
}

fn text(span: &Span, key: &str) -> String {
    match attribute(span, key) {
        Some(AnyValue::StringValue(text)) => text,
        other => panic!("attribute {key} of {}: {other:?}", span.name),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attribute(span, key) {
        Some(AnyValue::IntValue(value)) => value,
        other => panic!("attribute {key} of {}: {other:?}", span.name),
    }
}

fn config(endpoints: &[SocketAddr], tracing: &str) -> String {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{{ address: \"{e}\" }}"))
        .collect();
    format!(
        r#"{admin}listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: echo
    endpoints: [{endpoints}]
    load_balancing: round_robin
    retries: {{ attempts: 1, backoff: 1ms }}
routes:
  - name: orders
    match: {{ path: {{ prefix: /orders }} }}
    service: echo
tracing:
{tracing}"#,
        admin = admin_block(),
        endpoints = endpoints.join(", "),
    )
}

/// The `traceparent` the upstream received, split into (trace id, parent id, flags).
fn upstream_traceparent(echoed: &Value) -> (String, String, String) {
    let value = echoed["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent upstream: {echoed}"));
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00");
    (
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

#[tokio::test]
async fn grpc_export_parents_the_gateway_span_to_the_client_and_the_upstream_span_to_it() {
    let (collector, received) = grpc_collector().await;
    let upstream = echo("a").await;
    let gateway = Gateway::start(&config(
        &[upstream],
        &format!(
            r#"  service_name: edge-gateway
  resource: {{ deployment.environment: test }}
  otlp:
    protocol: grpc
    endpoint: http://{collector}
    headers: {{ x-collector-token: s3cret }}
    batch_delay: 50ms
"#
        ),
    ));
    let response = client()
        .get(gateway.url("/orders/7?secret=1"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .header("tracestate", "vendor=opaque")
        .header("user-agent", "trace-test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    let (trace_id, upstream_parent, flags) = upstream_traceparent(&echoed);
    assert_eq!(
        trace_id, CLIENT_TRACE,
        "the upstream continues the client's trace"
    );
    assert_ne!(
        upstream_parent, CLIENT_SPAN,
        "the gateway's span sits in between"
    );
    assert_eq!(flags, "01");
    assert_eq!(echoed["headers"]["tracestate"], "vendor=opaque");

    let spans = wait_for_spans(&received, CLIENT_TRACE, 2).await;
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("server span");
    let upstream_span = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .expect("upstream span");
    assert_eq!(hex(&server.parent_span_id), CLIENT_SPAN);
    assert_eq!(server.trace_state, "vendor=opaque");
    assert_eq!(server.name, "GET orders");
    assert_eq!(text(server, "http.request.method"), "GET");
    assert_eq!(
        text(server, "url.path"),
        "/orders/7",
        "no query string in spans"
    );
    assert_eq!(text(server, "http.route"), "orders");
    assert_eq!(text(server, "gatehouse.service"), "echo");
    assert_eq!(text(server, "user_agent.original"), "trace-test");
    assert_eq!(text(server, "client.address"), "127.0.0.1");
    assert_eq!(int(server, "http.response.status_code"), 200);
    assert!(server.status.is_none());
    assert!(server.end_time_unix_nano >= server.start_time_unix_nano);

    assert_eq!(upstream_span.parent_span_id, server.span_id);
    assert_eq!(
        hex(&upstream_span.span_id),
        upstream_parent,
        "the upstream saw the attempt's span as its parent"
    );
    assert_eq!(upstream_span.name, "GET echo");
    assert_eq!(text(upstream_span, "server.address"), "127.0.0.1");
    assert_eq!(
        int(upstream_span, "server.port"),
        i64::from(upstream.port())
    );
    assert_eq!(int(upstream_span, "http.response.status_code"), 200);
    assert!(upstream_span.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(upstream_span.end_time_unix_nano <= server.end_time_unix_nano);

    let batches = received.lock().unwrap();
    let resource = batches[0].resource_spans[0].resource.clone().unwrap();
    let service_name = resource
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| kv.value.clone()?.value);
    assert_eq!(
        service_name,
        Some(AnyValue::StringValue("edge-gateway".to_owned()))
    );
    assert!(resource
        .attributes
        .iter()
        .any(|kv| kv.key == "deployment.environment"));
}

#[tokio::test]
async fn each_upstream_attempt_is_a_span_and_a_failed_one_is_marked() {
    let (collector, received) = grpc_collector().await;
    let upstream = echo("a").await;
    let gateway = Gateway::start(&config(
        &[closed_port(), upstream],
        &format!(
            "  otlp: {{ endpoint: \"http://{collector}\", headers: {{ x-collector-token: s3cret }}, batch_delay: 50ms }}\n"
        ),
    ));
    // Round robin: one of two requests tries the closed port first, then retries.
    let mut traces = Vec::new();
    for n in 0..2 {
        let trace_id = format!("{:032x}", 0xabc0 + n);
        let response = client()
            .get(gateway.url("/orders"))
            .header("traceparent", format!("00-{trace_id}-{CLIENT_SPAN}-01"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let echoed: Value = response.json().await.unwrap();
        traces.push((trace_id, upstream_traceparent(&echoed).1));
    }
    let mut retried = 0;
    for (trace_id, upstream_parent) in traces {
        wait_for_spans(&received, &trace_id, 2).await;
        // Give a retried request's third span time to arrive, should it be in a later batch.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let spans = wait_for_spans(&received, &trace_id, 2).await;
        let server = spans
            .iter()
            .find(|s| s.kind == SpanKind::Server as i32)
            .unwrap();
        let attempts: Vec<&Span> = spans
            .iter()
            .filter(|s| s.kind == SpanKind::Client as i32)
            .collect();
        for attempt in &attempts {
            assert_eq!(attempt.parent_span_id, server.span_id);
        }
        let last = attempts
            .iter()
            .find(|s| attribute(s, "http.response.status_code").is_some())
            .expect("a successful attempt");
        assert_eq!(hex(&last.span_id), upstream_parent);
        if attempts.len() == 2 {
            retried += 1;
            let failed = attempts.iter().find(|s| s.span_id != last.span_id).unwrap();
            assert_eq!(text(failed, "error.type"), "connect_error");
            assert_eq!(
                failed.status.as_ref().map(|s| s.code),
                Some(StatusCode::Error as i32)
            );
            assert_eq!(int(last, "http.request.resend_count"), 1);
        }
    }
    assert_eq!(
        retried, 1,
        "exactly one request met the closed endpoint first"
    );
}

#[tokio::test]
async fn http_export_follows_the_parent_sampling_decision_and_the_ratio() {
    let (collector, received) = http_collector().await;
    let upstream = echo("a").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gateway = Gateway::start(&config(
        &[upstream],
        &format!(
            "  sample: 0\n  otlp: {{ protocol: http, endpoint: \"http://{collector}/v1/traces\", batch_delay: 50ms }}\naccess_log: {{ path: \"{}\" }}\n",
            log.display()
        ),
    ));
    let call = |traceparent: Option<String>| {
        let mut request = client().get(gateway.url("/orders"));
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let request_id = response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned();
            let (trace_id, _, flags) =
                upstream_traceparent(&response.json::<Value>().await.unwrap());
            (trace_id, flags, request_id)
        }
    };
    // A sampled parent is followed even though the ratio is 0.
    let sampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let (trace_id, flags, sampled_request) =
        call(Some(format!("00-{sampled_trace}-b7ad6b7169203331-01"))).await;
    assert_eq!((trace_id.as_str(), flags.as_str()), (sampled_trace, "01"));
    // An unsampled parent: propagated as unsampled, not exported.
    let unsampled_trace = "1af7651916cd43dd8448eb211c80319c";
    let (trace_id, flags, unsampled_request) =
        call(Some(format!("00-{unsampled_trace}-b7ad6b7169203331-00"))).await;
    assert_eq!((trace_id.as_str(), flags.as_str()), (unsampled_trace, "00"));
    // No context: a new trace, not sampled at ratio 0, still propagated.
    let (fresh_trace, flags, fresh_request) = call(None).await;
    assert_eq!(fresh_trace.len(), 32);
    assert_eq!(flags, "00");
    // A malformed traceparent starts a new trace too.
    let (restarted, _, restarted_request) =
        call(Some("00-xyz-b7ad6b7169203331-01".to_owned())).await;
    assert_ne!(restarted, fresh_trace);

    // The access log names the trace each request belongs to, the new ones included. Lines
    // are matched to requests by request id: a line is written once its response has been
    // sent, so requests that ran on different connections (and threads) may log out of order.
    let deadline = Instant::now() + Duration::from_secs(5);
    let logged: Vec<Value> = loop {
        let lines: Vec<Value> = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        if lines.len() == 4 {
            break lines;
        }
        assert!(Instant::now() < deadline, "access log: {lines:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let logged: std::collections::BTreeMap<&str, &str> = logged
        .iter()
        .map(|l| {
            (
                l["request_id"].as_str().unwrap(),
                l["trace_id"].as_str().unwrap(),
            )
        })
        .collect();
    let expected: std::collections::BTreeMap<&str, &str> = [
        (sampled_request.as_str(), sampled_trace),
        (unsampled_request.as_str(), unsampled_trace),
        (fresh_request.as_str(), fresh_trace.as_str()),
        (restarted_request.as_str(), restarted.as_str()),
    ]
    .into_iter()
    .collect();
    assert_eq!(logged, expected);

    let exported = wait_for_spans(&received, sampled_trace, 2).await;
    assert_eq!(exported.len(), 2);
    // The sampled trace's batch has been delivered; nothing of the others came with it or
    // after it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = spans(&received);
    assert!(
        all.iter().all(|s| hex(&s.trace_id) == sampled_trace),
        "{all:?}"
    );
}

#[tokio::test]
async fn b3_context_is_read_and_written_and_an_unreachable_collector_costs_only_spans() {
    let upstream = echo("a").await;
    let collector = closed_port();
    let gateway = Gateway::start(&config(
        &[upstream],
        &format!(
            "  propagation: [w3c, b3]\n  otlp: {{ endpoint: \"http://{collector}\", timeout: 500ms, batch_delay: 20ms }}\n"
        ),
    ));
    let response = client()
        .get(gateway.url("/orders"))
        .header("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7")
        .header("x-b3-spanid", "e457b5a2e4d86bd1")
        .header("x-b3-sampled", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    let (trace_id, parent, flags) = upstream_traceparent(&echoed);
    assert_eq!(trace_id, "80f198ee56343ba864fe8b2a57d3eff7");
    assert_eq!(flags, "01");
    assert_eq!(
        echoed["headers"]["b3"],
        format!("{trace_id}-{parent}-1"),
        "B3 single header written with the attempt's span"
    );
    assert!(echoed["headers"].get("x-b3-spanid").is_none());

    // The collector is down: requests are served, the spans are counted as failed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = gateway.metrics().await;
        if metrics.contains("gatehouse_trace_spans_total{result=\"failed\"} 2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed export counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_bad_otlp_endpoint_is_refused_with_its_location() {
    let (code, text) =
        common::check_text("tracing:\n  sample: 2\n  otlp:\n    endpoint: collector:4317\n");
    assert_eq!(code, Some(1));
    assert!(text.contains("bad.yaml:4:15: `tracing.otlp.endpoint` `collector:4317` must be an http:// or https:// URL"), "{text}");
    assert!(
        text.contains("`tracing.sample` 2 is outside 0..=1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_reload_that_changes_tracing_is_refused() {
    let upstream = echo("a").await;
    let yaml = config(
        &[upstream],
        "  otlp: { endpoint: \"http://127.0.0.1:4317\" }\n",
    );
    let gateway = Gateway::start(&yaml);
    let changed = yaml.replace("otlp:", "sample: 0.5\n  otlp:");
    let response = client()
        .post(gateway.admin_url("/admin/config"))
        .bearer_auth(ADMIN_TOKEN)
        .body(changed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem["errors"][0]
            .as_str()
            .unwrap()
            .contains("`tracing` changed; the tracer and its exporter are set up at start-up"),
        "{problem}"
    );
}

/// The exporter is stuck on a collector that accepts connections and never answers: the
/// bounded queue fills, further spans are dropped and counted, and requests do not wait.
#[tokio::test]
async fn a_stuck_collector_drops_spans_without_stalling_requests() {
    let upstream = echo("a").await;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let collector = silent.local_addr().unwrap();
    // Accept and hold every connection, answering nothing.
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = held.clone();
    std::thread::spawn(move || {
        for stream in silent.incoming().flatten() {
            holder.lock().unwrap().push(stream);
        }
    });
    let gateway = Gateway::start(&config(
        &[upstream],
        &format!(
            "  otlp: {{ endpoint: \"http://{collector}\", timeout: 30s, max_queue: 4, max_batch: 2, batch_delay: 10ms }}\n"
        ),
    ));
    let started = Instant::now();
    for _ in 0..20 {
        let response = client().get(gateway.url("/orders")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "requests waited on the exporter"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = gateway.metrics().await;
        let dropped = metrics
            .lines()
            .find(|l| l.starts_with("gatehouse_trace_spans_total{result=\"dropped\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0);
        // 40 spans: at most one batch in flight plus a full queue are kept.
        if dropped >= 30 {
            assert!(dropped <= 40 - 4, "{dropped} dropped");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dropped spans not counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Spans still queued when SIGTERM arrives are exported before the process exits.
#[tokio::test]
async fn sigterm_flushes_queued_spans() {
    let (collector, received) = grpc_collector().await;
    let upstream = echo("a").await;
    let mut gateway = Gateway::start(&config(
        &[upstream],
        &format!(
            "  otlp: {{ endpoint: \"http://{collector}\", headers: {{ x-collector-token: s3cret }}, batch_delay: 1h }}\n"
        ),
    ));
    let response = client()
        .get(gateway.url("/orders"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        spans(&received).is_empty(),
        "an hour's batch delay: nothing sent yet"
    );
    gateway.signal("TERM");
    let status = tokio::task::spawn_blocking(move || {
        let status = gateway.wait_exit(Duration::from_secs(10));
        (status, gateway)
    })
    .await
    .unwrap()
    .0;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let flushed = wait_for_spans(&received, CLIENT_TRACE, 2).await;
    assert_eq!(flushed.len(), 2);
}
