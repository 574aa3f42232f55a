//! The request path of the gateway role, top to bottom:
//! reject malformed framing → listener redirect → route → action (respond, redirect or
//! forward: rewrite, forwarding headers, body limits, upstream call, upgrade) → response headers.

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::TokioIo;

use crate::body::{self, BoxError, ProxyBody, RequestBody};
use crate::cache;
use crate::error::GatewayError;
use crate::forward::{self, X_PEER_IDENTITY, X_REQUEST_ID};
use crate::grpc;
use crate::router::{CompiledRoute, RequestView};
use crate::snapshot::{
    fill_template, Backends, ListenerRuntime, RouteAction, RouteRuntime, Snapshot,
};
use crate::transform;
use crate::upstream::{hash_of, OutgoingBody, Service, UpstreamRequest};
use crate::versioning::{self, ApiRuntime};
use gatehouse_policy::{
    cors, AccessOutcome, ClientCertificate, Granted, InFlightLimit, LimitRequest, RequestInfo,
    Security,
};
use gatehouse_telemetry::trace::{incoming_trace_id, AttributeValue, SpanKind, SpanRecord};
use gatehouse_telemetry::{AccessRecord, Telemetry, TraceContext};

use crate::mirror::Mirror;
use gatehouse_config::ResponseValidation;
use gatehouse_policy::openapi::{Operation, RouteValidation};
use gatehouse_policy::products::{Access, SandboxTarget};
use gatehouse_policy::Rejection;

/// What the pipeline knows about the client connection.
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's IP as a header value, made once per connection for `X-Forwarded-For`.
    pub peer_ip: HeaderValue,
    pub tls: bool,
    /// The verified client certificate on a mutual-TLS listener.
    pub client_certificate: Option<Arc<ClientCertificate>>,
    pub listener: Arc<ListenerRuntime>,
}

/// A failure of the client's request body while it streams upstream. The upstream call
/// reports it as its own error; this marker lets the answer blame the client (4xx), not
/// the upstream (502).
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("request body exceeds {0} bytes")]
    TooLarge(u64),
    #[error("malformed request body: {0}")]
    Malformed(BoxError),
}

/// What the request path learned about a request, for the response and the log phase.
#[derive(Default)]
pub struct RequestTrace {
    /// Headers for the answer whether it succeeds or fails (CORS: a browser must be able
    /// to read a 401 or 429 too).
    response_headers: Vec<(http::HeaderName, HeaderValue)>,
    /// Index of the matched route; its name and service are looked up at log time.
    route: Option<usize>,
    /// Whether the request was sent to the route's service.
    forwarded: bool,
    identity: Option<Arc<gatehouse_policy::Identity>>,
    endpoint: Option<std::net::SocketAddr>,
    upstream: Option<std::time::Duration>,
    /// The trace this request continues, when tracing is configured.
    context: Option<TraceContext>,
    /// Spans of the upstream attempts of a sampled trace.
    attempt_spans: Vec<SpanRecord>,
    /// Decisions of the route's policies: `Some(true)` passed, `Some(false)` refused,
    /// `None` did not run.
    auth_passed: Option<bool>,
    rate_limits_passed: Option<bool>,
    quotas_passed: Option<bool>,
    /// Whether an API product's subscription and plan admitted the request.
    plan_passed: Option<bool>,
    /// The route authorization's decision (`allow`, `deny`, `audit_deny`), when it has one.
    authorization: Option<&'static str>,
    /// The subscription a request on an API product's route was admitted under (what
    /// usage is metered by).
    entitlement: Option<Arc<gatehouse_policy::products::Entitlement>>,
    /// How the response cache took part.
    cache: Option<cache::Outcome>,
    /// The service that took the request instead of the route's: its API version's, its
    /// product sandbox's, or the backend its traffic split drew.
    version_service: Option<Arc<Service>>,
    /// Bytes of a request body sent without `Content-Length` (chunked), counted as it is
    /// read.
    chunked_bytes_in: Option<Arc<AtomicU64>>,
    /// Set when the request is a gRPC call.
    grpc: Option<GrpcCall>,
    /// The caller's verified certificate, on a mesh listener (its SPIFFE ID labels the
    /// mesh metrics).
    mesh_caller: Option<Arc<ClientCertificate>>,
}

#[derive(Clone)]
struct GrpcCall {
    /// From `grpc-timeout`, counted from the request's arrival.
    deadline: Option<std::time::Instant>,
    /// Set for a gRPC-Web call: its encoding and the content type of its answers.
    web: Option<(grpc::web::Encoding, HeaderValue)>,
    /// The status a gRPC-Web call's trailers carried (the log phase sees them only as a
    /// body frame); [`NO_STATUS`] until then.
    web_status: Option<Arc<std::sync::atomic::AtomicU8>>,
}

const NO_STATUS: u8 = u8::MAX;

/// Counts the bytes of a chunked request body as it streams upstream.
struct RequestBytes(Arc<AtomicU64>);

impl body::BodyObserver for RequestBytes {
    fn on_data(&mut self, bytes: usize) {
        self.0.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Handle one request against `snapshot`. Never fails: errors become problem responses.
/// The log phase (metrics, access log) runs when the response body has been sent.
///
/// A function returning an `async` block (see `Service::call`).
pub fn handle(
    snapshot: Arc<Snapshot>,
    conn: Arc<ConnInfo>,
    telemetry: Arc<Telemetry>,
    request: Request<RequestBody>,
) -> impl Future<Output = Response<ProxyBody>> + 'static {
    // What the log phase needs from the head is read here, before the future: the
    // locals this takes stay on the stack, out of the request's state.
    let started = std::time::Instant::now();
    let request_id = forward::request_id(request.headers());
    let method = request.method().clone();
    let bytes_in = content_length(request.headers()).unwrap_or(0);
    let context = telemetry
        .tracer
        .as_ref()
        .map(|tracer| tracer.begin(request.headers()));
    let user_agent = || {
        request
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    // Boxed, as is the span below: both ride in every request's state, mostly absent.
    let logged = telemetry.access_log.as_ref().map(|_| {
        Box::new(Logged {
            uri: request.uri().clone(),
            user_agent: request.headers().get(header::USER_AGENT).cloned(),
            protocol: version_name(request.version()),
            trace_id: match &context {
                Some(context) => Some(context.trace_id_hex()),
                None => incoming_trace_id(request.headers()),
            },
        })
    });
    let server_span = context.as_ref().filter(|c| c.sampled).map(|_| {
        Box::new(ServerSpan {
            start: std::time::SystemTime::now(),
            path: request.uri().path().to_owned(),
            user_agent: user_agent(),
            scheme: if conn.tls { "https" } else { "http" },
            protocol: version_name(request.version()),
        })
    });
    let client_ip =
        forward::client_ip(conn.peer, request.headers(), &conn.listener.trusted_proxies);
    let web = grpc::web::encoding(request.headers());
    let grpc = (web.is_some() || grpc::is_grpc(request.headers())).then(|| GrpcCall {
        deadline: grpc::deadline(request.headers(), started),
        web: web.map(|encoding| {
            (
                encoding,
                grpc::web::response_content_type(request.headers(), encoding),
            )
        }),
        web_status: web.map(|_| Arc::new(std::sync::atomic::AtomicU8::new(NO_STATUS))),
    });
    let mut trace = RequestTrace {
        context,
        grpc,
        mesh_caller: conn
            .listener
            .mesh
            .then(|| conn.client_certificate.clone())
            .flatten(),
        ..RequestTrace::default()
    };
    // Boxed once: each stage's future keeps its request argument for as long as it runs,
    // and three stages take it.
    let request = Box::new(request);
    async move {
        let conn = &*conn;
        let result =
            route_and_respond(&snapshot, conn, request, &request_id, client_ip, &mut trace).await;
        let mut reason = None;
        let mut response = match result {
            Ok(response) => response,
            Err(err) => {
                if matches!(err.status().as_u16(), 500..=599) {
                    tracing::warn!(request_id = ?request_id, error = %err, "request failed");
                }
                reason = Some(err.code());
                match &trace.grpc {
                    Some(call) => {
                        let mut response = grpc::error_response(err, Some(&request_id));
                        if let Some((_, content_type)) = &call.web {
                            response
                                .headers_mut()
                                .insert(header::CONTENT_TYPE, content_type.clone());
                        }
                        response
                    }
                    None => err.into_response(Some(&request_id)),
                }
            }
        };
        for (name, value) in std::mem::take(&mut trace.response_headers) {
            response.headers_mut().append(name, value);
        }
        let metrics = snapshot.config.metrics.enabled;
        if !metrics && logged.is_none() && server_span.is_none() {
            // Telemetry off: no log phase at all.
            response.headers_mut().insert(X_REQUEST_ID, request_id);
            return response;
        }
        let status = response.status().as_u16();
        // A trailers-only answer carries the call's status in its head; otherwise the
        // trailers will.
        let grpc_status = trace.grpc.as_ref().and_then(|_| {
            response
                .headers()
                .get(grpc::GRPC_STATUS)
                .map(grpc::Code::from_header)
        });
        let finish = Finish {
            grpc_status,
            snapshot,
            telemetry,
            metrics,
            started,
            trace,
            method,
            status,
            reason,
            bytes_in,
            bytes_out: 0,
            client_ip,
            // A counted reference, not a copy (see `forward::request_id`).
            request_id: request_id.clone(),
            logged,
            server_span,
        };
        response.headers_mut().insert(X_REQUEST_ID, request_id);
        response.map(|body| body::counted(body, finish))
    }
}

fn version_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// What the access log needs from the request head, read only when it is configured.
/// Counted references to the head's bytes, not copies.
struct Logged {
    uri: http::Uri,
    user_agent: Option<HeaderValue>,
    protocol: &'static str,
    trace_id: Option<String>,
}

/// What the gateway's span of a sampled request needs from the request head.
struct ServerSpan {
    start: std::time::SystemTime,
    path: String,
    user_agent: Option<String>,
    scheme: &'static str,
    protocol: &'static str,
}

/// The log phase of one request: runs once, when its response body is done or dropped.
pub struct Finish {
    /// The snapshot that served the request (route and service names).
    snapshot: Arc<Snapshot>,
    telemetry: Arc<Telemetry>,
    /// `metrics.enabled` of the snapshot that served the request.
    metrics: bool,
    started: std::time::Instant,
    trace: RequestTrace,
    method: Method,
    status: u16,
    reason: Option<&'static str>,
    bytes_in: u64,
    bytes_out: u64,
    client_ip: std::net::IpAddr,
    request_id: HeaderValue,
    logged: Option<Box<Logged>>,
    server_span: Option<Box<ServerSpan>>,
    /// The status a gRPC call ended with, from the response head or trailers.
    grpc_status: Option<grpc::Code>,
}

impl body::BodyObserver for Finish {
    fn on_data(&mut self, bytes: usize) {
        self.bytes_out += bytes as u64;
    }

    fn on_trailers(&mut self, trailers: &http::HeaderMap) {
        if self.trace.grpc.is_some() {
            if let Some(status) = trailers.get(grpc::GRPC_STATUS) {
                self.grpc_status = Some(grpc::Code::from_header(status));
            }
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        let total = self.started.elapsed();
        if let Some(counted) = &self.trace.chunked_bytes_in {
            self.bytes_in = counted.load(Ordering::Relaxed);
        }
        if let (None, Some(status)) = (
            self.grpc_status,
            self.trace.grpc.as_ref().and_then(|c| c.web_status.as_ref()),
        ) {
            let code = status.load(Ordering::Relaxed);
            if code != NO_STATUS {
                self.grpc_status = grpc::Code::from_number(u32::from(code));
            }
        }
        let gateway_time = match self.trace.upstream {
            Some(upstream) => total.saturating_sub(upstream),
            None => total,
        };
        if self.metrics {
            self.record_metrics(total, gateway_time);
        }
        if let Some(entitlement) = &self.trace.entitlement {
            let (route, _) = self.names();
            self.telemetry
                .usage
                .record(gatehouse_telemetry::usage::Metered {
                    consumer: &entitlement.consumer_id,
                    product: &entitlement.product_id,
                    plan: &entitlement.plan_id,
                    route,
                    sandbox: entitlement.sandbox,
                    status: self.status,
                    latency: total,
                });
        }
        if let Some(span) = self.server_span.take() {
            self.record_spans(*span);
        }
        let (Some(log), Some(logged)) = (&self.telemetry.access_log, self.logged.take()) else {
            return;
        };
        if !log.wants(self.status, fastrand::f64()) {
            return;
        }
        let (route, service) = self.names();
        let millis = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let target = log.redact_target(&logged.uri);
        log.log(&AccessRecord {
            time: std::time::SystemTime::now() - total,
            request_id: self.request_id.to_str().unwrap_or_default(),
            trace_id: logged.trace_id.as_deref(),
            client_ip: self.client_ip,
            consumer: self.trace.identity.as_ref().map(|i| i.consumer.id.as_str()),
            route: self.trace.route.map(|_| route),
            service: self.trace.forwarded.then_some(service),
            endpoint: self.trace.endpoint,
            method: &self.method,
            path: &target,
            protocol: logged.protocol,
            status: self.status,
            grpc_status: self.grpc_status.map(grpc::Code::name),
            total_ms: millis(total),
            upstream_ms: self.trace.upstream.map(millis),
            gateway_ms: millis(gateway_time),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            user_agent: logged.user_agent.as_ref().and_then(|v| v.to_str().ok()),
            reason: self.reason,
        });
    }
}

impl Finish {
    /// The matched route's name and, when the request was forwarded, its service's name
    /// (empty when there is none).
    fn names(&self) -> (&str, &str) {
        let Some(route) = self
            .trace
            .route
            .and_then(|index| self.snapshot.router.routes().get(index))
        else {
            return ("", "");
        };
        let service = match (&route.payload.action, &self.trace.version_service) {
            (_, Some(service)) => service.name.as_str(),
            (
                RouteAction::Forward {
                    backends: Backends::One(service),
                    ..
                },
                None,
            ) if self.trace.forwarded => service.name.as_str(),
            _ => "",
        };
        (&route.name, service)
    }

    /// The gateway's span for the request (parented to the caller's span) and its upstream
    /// attempts' spans, to the exporter.
    fn record_spans(&mut self, span: ServerSpan) {
        let (Some(tracer), Some(context)) = (&self.telemetry.tracer, self.trace.context.take())
        else {
            return;
        };
        let (route, service) = self.names();
        let mut attributes: Vec<(&'static str, AttributeValue)> = vec![
            ("http.request.method", self.method.as_str().into()),
            ("url.path", span.path.into()),
            ("url.scheme", span.scheme.into()),
            ("network.protocol.name", "http".into()),
            (
                "network.protocol.version",
                span.protocol.trim_start_matches("HTTP/").into(),
            ),
            ("client.address", self.client_ip.to_string().into()),
            ("http.response.status_code", i64::from(self.status).into()),
            (
                "gatehouse.request_id",
                self.request_id.to_str().unwrap_or_default().into(),
            ),
        ];
        if self.trace.route.is_some() {
            attributes.push(("http.route", route.into()));
        }
        if !service.is_empty() {
            attributes.push(("gatehouse.service", service.into()));
        }
        if let Some(user_agent) = span.user_agent {
            attributes.push(("user_agent.original", user_agent.into()));
        }
        if let Some(identity) = &self.trace.identity {
            attributes.push(("gatehouse.consumer", identity.consumer.id.as_str().into()));
        }
        if let Some(reason) = self.reason {
            attributes.push(("error.type", reason.into()));
        }
        let name = match self.trace.route {
            Some(_) => format!("{} {route}", self.method),
            None => self.method.to_string(),
        };
        // Server spans are errors for 5xx only: a 4xx is the client's failure.
        let error = (self.status >= 500).then(|| self.reason.unwrap_or("server error").to_owned());
        tracer.record(SpanRecord {
            trace_id: context.trace_id,
            span_id: context.span_id,
            parent: context.parent,
            remote_parent: context.parent.is_some(),
            tracestate: context
                .tracestate
                .as_ref()
                .and_then(|s| s.to_str().ok())
                .map(str::to_owned),
            name,
            kind: SpanKind::Server,
            start: span.start,
            end: std::time::SystemTime::now(),
            attributes,
            error,
        });
        for attempt in std::mem::take(&mut self.trace.attempt_spans) {
            tracer.record(attempt);
        }
    }

    /// Golden metrics of mesh calls: by direction and peer identity.
    fn record_mesh_metrics(&self, service: &str, total: std::time::Duration) {
        use gatehouse_telemetry::metrics::{status_class, MeshLabels, MeshPeerLabels};
        if self.trace.mesh_caller.is_none() && !self.snapshot.has_mesh_services {
            return;
        }
        let callee = || {
            self.snapshot
                .services
                .get(service)
                .and_then(|s| s.mesh_peer.clone())
        };
        let peers = [
            (
                "inbound",
                self.trace
                    .mesh_caller
                    .as_ref()
                    .and_then(|c| c.spiffe_id())
                    .map(str::to_owned),
            ),
            (
                "outbound",
                (self.snapshot.has_mesh_services && self.trace.forwarded)
                    .then(callee)
                    .flatten(),
            ),
        ];
        let metrics = &self.telemetry.metrics;
        for (direction, peer) in peers {
            let Some(peer) = peer else {
                continue;
            };
            metrics
                .mesh_requests
                .get_or_create(&MeshLabels {
                    direction,
                    peer: peer.clone(),
                    status_class: status_class(self.status),
                })
                .inc();
            metrics
                .mesh_request_duration
                .get_or_create(&MeshPeerLabels { direction, peer })
                .observe(total);
        }
    }

    fn record_metrics(&self, total: std::time::Duration, gateway_time: std::time::Duration) {
        use gatehouse_telemetry::metrics::{
            status_class, AuthorizationLabels, CacheLabels, CodeLabels, ConsumerLabels,
            DecisionLabels, GrpcLabels,
        };
        let metrics = &self.telemetry.metrics;
        let compiled = self
            .trace
            .route
            .and_then(|index| self.snapshot.router.routes().get(index));
        let (route_name, service_name) = self.names();
        let series = compiled.map_or(&self.snapshot.unrouted_series, |compiled| {
            &compiled.payload.series
        });
        // The label is the route's own service unless a version picked another.
        let own_service = !service_name.is_empty() && self.trace.version_service.is_none();
        series.count_request(
            metrics,
            route_name,
            service_name,
            own_service,
            &self.method,
            self.status,
        );
        let per_consumer = compiled.is_some_and(|route| route.payload.per_consumer_metrics);
        let route = || route_name.to_owned();
        if let (true, Some(identity)) = (per_consumer, &self.trace.identity) {
            metrics
                .consumer_requests
                .get_or_create(&ConsumerLabels {
                    route: route(),
                    consumer: identity.consumer.id.clone(),
                    status_class: status_class(self.status),
                })
                .inc();
        }
        for (policy, passed) in [
            ("auth", self.trace.auth_passed),
            ("rate_limit", self.trace.rate_limits_passed),
            ("quota", self.trace.quotas_passed),
            ("plan", self.trace.plan_passed),
        ] {
            if let Some(passed) = passed {
                metrics
                    .policy_decisions
                    .get_or_create(&DecisionLabels {
                        route: route(),
                        policy,
                        result: if passed { "allowed" } else { "refused" },
                    })
                    .inc();
            }
        }
        if let Some(decision) = self.trace.authorization {
            metrics
                .authorization_decisions
                .get_or_create(&AuthorizationLabels {
                    route: route(),
                    decision,
                })
                .inc();
        }
        if let Some(outcome) = self.trace.cache {
            metrics
                .cache_lookups
                .get_or_create(&CacheLabels {
                    route: route(),
                    result: outcome.label(),
                })
                .inc();
        }
        self.record_mesh_metrics(service_name, total);
        series.duration(metrics, route_name).observe(total);
        if self.bytes_in > 0 {
            series
                .bytes_received(metrics, route_name)
                .inc_by(self.bytes_in);
        }
        series
            .bytes_sent(metrics, route_name)
            .inc_by(self.bytes_out);
        if let Some(upstream) = self.trace.upstream {
            series.observe_upstream(metrics, service_name, own_service, upstream);
            metrics.gateway_duration.observe(gateway_time);
        }
        if let Some(status) = self.grpc_status {
            metrics
                .grpc_responses
                .get_or_create(&GrpcLabels {
                    route: route(),
                    code: status.name(),
                })
                .inc();
        }
        if let Some(code) = self.reason {
            metrics
                .responses_by_code
                .get_or_create(&CodeLabels { code })
                .inc();
        }
    }
}

/// Route the request and run its route's policies and action.
///
/// A function returning an `async` block (see `Service::call`); locals used only before
/// the upstream call live in blocks of their own, so the state that waits for the answer
/// holds only what is used after it.
// An `async fn` would store its arguments twice (see `Service::call`).
#[allow(clippy::manual_async_fn)]
fn route_and_respond<'a>(
    snapshot: &'a Arc<Snapshot>,
    conn: &'a ConnInfo,
    mut request: Box<Request<RequestBody>>,
    request_id: &'a HeaderValue,
    client_ip: std::net::IpAddr,
    trace: &'a mut RequestTrace,
) -> impl Future<Output = Result<Response<ProxyBody>, GatewayError>> + use<'a> {
    async move {
        reject_ambiguous_framing(&request)?;
        // Only the gateway asserts a peer identity (set in `proxy` from the verified
        // certificate); a client's copy never reaches routing or the upstream.
        request.headers_mut().remove(X_PEER_IDENTITY);
        let host = request_host(&request)?;
        if let Some(redirect) = &conn.listener.redirect_to_https {
            let port = if redirect.port == 443 {
                String::new()
            } else {
                format!(":{}", redirect.port)
            };
            let location = format!("https://{host}{port}{}", path_and_query(request.uri()));
            return Ok(redirect_response(redirect.status, &location));
        }
        let path = normalize_path(request.uri().path())
            .ok_or(GatewayError::BadRequest("path escapes the root"))?;
        let matched = {
            let view = RequestView {
                host: &host,
                method: request.method(),
                path: &path,
                query: request.uri().query(),
                headers: request.headers(),
                listener: Some(&conn.listener.name),
            };
            // A CORS preflight is routed as the request it announces and answered here.
            if cors::is_preflight(request.method(), request.headers()) {
                if let Some(method) = cors::requested_method(request.headers()) {
                    let announced = RequestView {
                        method: &method,
                        ..view
                    };
                    if let Some(matched) = snapshot.router.find(&announced) {
                        if let Some(policy) = &matched.route.payload.cors {
                            if let Some(authorization) = &matched.route.payload.authorization {
                                authorization
                                    .check(conn.client_certificate.as_deref(), &method, &path)
                                    .map_err(GatewayError::Rejected)?;
                            }
                            if let Some(filter) = &matched.route.payload.ip_filter {
                                filter.check(client_ip).map_err(GatewayError::Rejected)?;
                            }
                            let answer = policy
                                .preflight(request.headers())
                                .map_err(GatewayError::Rejected)?;
                            return Ok(answer.map(body::full));
                        }
                    }
                }
            }
            snapshot.router.find(&view)
        };
        let Some(matched) = matched else {
            return Err(GatewayError::NoRoute {
                method: request.method().to_string(),
                host: host.into_owned(),
                path: path.into_owned(),
            });
        };
        let route = &matched.route.payload;
        trace.route = Some(matched.route.index);
        if let Some(policy) = &route.cors {
            trace
                .response_headers
                .extend(policy.response_headers(request.headers()));
        }
        if let Some(authorization) = &route.authorization {
            let decided =
                authorization.check(conn.client_certificate.as_deref(), request.method(), &path);
            trace.authorization = Some(match &decided {
                Ok(decision) => decision.label(),
                Err(_) => "deny",
            });
            decided.map_err(GatewayError::Rejected)?;
        }
        if let Some(filter) = &route.ip_filter {
            filter.check(client_ip).map_err(GatewayError::Rejected)?;
        }
        if let Some(shaping) = &route.shaping {
            shaping
                .check(
                    request.method(),
                    path_and_query(request.uri()),
                    request.headers(),
                )
                .map_err(GatewayError::Rejected)?;
        }
        let granted = match &route.access {
            Some(access) => {
                let info = RequestInfo {
                    method: request.method(),
                    path: &path,
                    query: request.uri().query(),
                    headers: request.headers(),
                    captures: &matched.captures,
                    client_ip,
                    client_certificate: conn.client_certificate.as_deref(),
                    scheme: if conn.tls { "https" } else { "http" },
                    authority: request_authority(&request),
                };
                trace.auth_passed = Some(false);
                match Box::pin(access.check(&info))
                    .await
                    .map_err(GatewayError::Rejected)?
                {
                    AccessOutcome::Granted(granted) => {
                        trace.auth_passed = Some(true);
                        trace.identity = Some(granted.identity.clone());
                        Some(granted)
                    }
                    AccessOutcome::Respond(response) => {
                        // A login redirect or callback: neither a grant nor a refusal.
                        trace.auth_passed = None;
                        return Ok(response.map(body::full));
                    }
                }
            }
            None => None,
        };
        let mut policy_headers = Vec::new();
        // API products: most gateways sell nothing, and pay one atomic load and a check of an
        // empty map; the admission itself is boxed off this (large) future.
        let mut sandbox_service = None;
        // Scoped, as are the routing locals above: dead by the upstream call.
        {
            let identity = granted.as_ref().map(|g| &*g.identity);
            let sandbox_key = identity.is_some_and(|identity| identity.sandbox);
            let access = {
                // The guard is dropped before any await: the store follower swaps the catalog.
                let catalog = snapshot.products.load();
                (sandbox_key || catalog.governs(&matched.route.name)).then(|| {
                    catalog.access(
                        &matched.route.name,
                        identity.map(|identity| identity.consumer.id.as_str()),
                        sandbox_key,
                    )
                })
            };
            if let Some(access) = access {
                let limit_request = LimitRequest {
                    identity,
                    client_ip,
                    route: &matched.route.name,
                    headers: request.headers(),
                };
                let admitted = Box::pin(admit_product(access, &limit_request, trace)).await?;
                policy_headers.extend(admitted.headers);
                match admitted.sandbox.as_deref().map(|rules| &rules.target) {
                    Some(SandboxTarget::Mock(Ok(document))) => {
                        // The mock answers here: nothing goes upstream.
                        let answer = document
                            .mock(
                                request.method(),
                                &path,
                                request.uri().query(),
                                request.headers(),
                            )
                            .map_err(GatewayError::Rejected)?;
                        let mut response = mock_response(answer);
                        if let Some(granted) = &granted {
                            for (name, value) in granted.response_headers() {
                                response.headers_mut().append(name, value);
                            }
                        }
                        for (name, value) in policy_headers {
                            response.headers_mut().append(name, value);
                        }
                        return Ok(response);
                    }
                    Some(SandboxTarget::Mock(Err(reason))) => {
                        return Err(GatewayError::Rejected(Rejection::unavailable(
                            "sandbox_unavailable",
                            format!("the sandbox cannot answer: {reason}"),
                        )))
                    }
                    Some(SandboxTarget::Service(name)) => match snapshot.services.get(name) {
                        Some(service) => sandbox_service = Some(service.clone()),
                        None => {
                            return Err(GatewayError::Rejected(Rejection::unavailable(
                                "sandbox_unavailable",
                                format!(
                                    "the sandbox's service `{name}` is not in the configuration"
                                ),
                            )))
                        }
                    },
                    None => {}
                }
            }
        }
        if !route.rate_limits.is_empty() || !route.quotas.is_empty() {
            let limit_request = LimitRequest {
                identity: granted.as_ref().map(|g| &*g.identity),
                client_ip,
                route: &matched.route.name,
                headers: request.headers(),
            };
            if !route.rate_limits.is_empty() {
                trace.rate_limits_passed = Some(false);
                for limiter in &route.rate_limits {
                    // Boxed: a limiter's check (which may ask Redis) is larger than the
                    // rest of this future's state.
                    let headers = Box::pin(limiter.check(&limit_request))
                        .await
                        .map_err(GatewayError::Rejected)?;
                    policy_headers.extend(headers);
                }
                trace.rate_limits_passed = Some(true);
            }
            if !route.quotas.is_empty() {
                trace.quotas_passed = Some(false);
                for quota in &route.quotas {
                    let headers = Box::pin(quota.check(&limit_request))
                        .await
                        .map_err(GatewayError::Rejected)?;
                    policy_headers.extend(headers);
                }
                trace.quotas_passed = Some(true);
            }
        }
        let operation = match &route.openapi {
            Some(rules) => Some(
                rules
                    .check_request(
                        request.method(),
                        &path,
                        request.uri().query(),
                        request.headers(),
                    )
                    .map_err(GatewayError::Rejected)?,
            ),
            None => None,
        };
        let route_slot = route
            .in_flight
            .as_ref()
            .map(InFlightLimit::try_acquire)
            .transpose()
            .map_err(GatewayError::Rejected)?;
        let mut response = match &route.action {
            RouteAction::Respond {
                status,
                body,
                headers,
            } => {
                let mut response = Response::new(body::full(body.clone()));
                *response.status_mut() = *status;
                *response.headers_mut() = headers.clone();
                Ok(response)
            }
            RouteAction::Redirect(redirect) => {
                let scheme =
                    redirect
                        .scheme
                        .as_deref()
                        .unwrap_or(if conn.tls { "https" } else { "http" });
                let target_host = redirect
                    .host
                    .as_deref()
                    .unwrap_or_else(|| request_authority(&request));
                let target_path = match &redirect.path {
                    Some(template) => fill_template(template, &matched.captures),
                    None => path.clone().into_owned(),
                };
                let query = request
                    .uri()
                    .query()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default();
                Ok(redirect_response(
                    redirect.status,
                    &format!("{scheme}://{target_host}{target_path}{query}"),
                ))
            }
            RouteAction::Forward {
                backends,
                host_rewrite,
                ..
            } if route.grpc_transcode.is_some() => {
                let Some(transcoder) = route.grpc_transcode.as_deref() else {
                    unreachable!("guarded by the match arm")
                };
                let service = pick_backend(backends, trace);
                let Some(call) = transcoder.find(request.method(), &path) else {
                    return Err(GatewayError::NoRoute {
                        method: request.method().to_string(),
                        host: host.into_owned(),
                        path: path.into_owned(),
                    });
                };
                trace.forwarded = true;
                // One box for the translation's three awaits: what it holds across them
                // would otherwise take room in every request's state.
                Box::pin(async {
                    let (parts, body) = request.into_parts();
                    let bytes = transform::read_request(body, transcoder.max_body()).await?;
                    let message = transcoder.request_message(&call, parts.uri.query(), &bytes)?;
                    let request = Box::new(transcoder.upstream_request(&call, parts, message));
                    let upstream = Upstream {
                        path: None,
                        host: host_rewrite.as_ref(),
                        client_ip,
                        security: &snapshot.security,
                        granted: granted.as_ref(),
                        identity_applied: false,
                        body_limit: 0,
                        mirror: None,
                        validation: None,
                    };
                    let response =
                        proxy(service, conn, request, trace, upstream, request_id).await?;
                    transcoder.response(&call, response).await
                })
                .await
            }
            RouteAction::Forward {
                backends,
                rewrite,
                host_rewrite,
            } if trace.grpc.as_ref().is_some_and(|call| call.web.is_some())
                && backends.all_http2() =>
            {
                let service = pick_backend(backends, trace);
                // gRPC-Web to a gRPC service: translated both ways.
                let Some(GrpcCall {
                    web: Some((encoding, content_type)),
                    web_status: Some(status),
                    ..
                }) = trace.grpc.clone()
                else {
                    unreachable!("guarded by the match arm")
                };
                let upstream_path = forwarded_path(rewrite.as_ref(), &path, &matched.captures);
                trace.forwarded = true;
                // Scoped: the parts are borrowed, and would otherwise be kept across the
                // upstream call.
                let request = {
                    let (mut parts, body) = request.into_parts();
                    let body = grpc::web::request_to_grpc(&mut parts.headers, body, encoding);
                    Box::new(Request::from_parts(parts, body))
                };
                let upstream = Upstream {
                    path: upstream_path,
                    host: host_rewrite.as_ref(),
                    client_ip,
                    security: &snapshot.security,
                    granted: granted.as_ref(),
                    identity_applied: false,
                    body_limit: route_body_limit(
                        conn.listener.limits.max_request_body.0,
                        route.shaping.as_ref().and_then(|s| s.max_body),
                    ),
                    mirror: None,
                    validation: None,
                };
                let response =
                    Box::pin(proxy(service, conn, request, trace, upstream, request_id)).await?;
                Ok(grpc::web::response_to_web(
                    response,
                    content_type,
                    encoding,
                    status,
                ))
            }
            RouteAction::Forward {
                backends,
                rewrite,
                host_rewrite,
            } => {
                let mut upstream_path = forwarded_path(rewrite.as_ref(), &path, &matched.captures);
                let version = match &route.api {
                    Some(api) => {
                        let forwarded = upstream_path.as_deref().unwrap_or(&path);
                        let selected = api.select(
                            forwarded,
                            request.uri().query(),
                            request.headers(),
                            trace.identity.as_ref().map(|i| &*i.consumer),
                        )?;
                        if selected.from_path {
                            upstream_path = Some(versioning::strip_first_segment(forwarded));
                        }
                        Some((&**api, selected))
                    }
                    None => None,
                };
                let service = match (
                    &sandbox_service,
                    version.and_then(|(api, selected)| api.service(selected)),
                ) {
                    (Some(own), _) | (None, Some(own)) => {
                        trace.version_service = Some(own.clone());
                        own
                    }
                    (None, None) => pick_backend(backends, trace),
                };
                let lookup = route.cache.as_ref().and_then(|cache| {
                    let lookup = cache.lookup(&cache::CacheRequest {
                        method: request.method(),
                        host: &host,
                        path: &path,
                        query: request.uri().query(),
                        headers: request.headers(),
                        consumer: trace.identity.as_ref().map(|i| i.consumer.id.as_str()),
                        // The backend's version: its answer is stored, and downgraded per request.
                        version: version.map(|(api, selected)| api.version_name(selected.target)),
                        backend: match backends {
                            Backends::One(_) => None,
                            _ => Some(service.name.as_str()),
                        },
                    });
                    lookup.map(|lookup| (cache, lookup))
                });
                trace.forwarded = true;
                let upstream = Upstream {
                    path: upstream_path,
                    host: host_rewrite.as_ref(),
                    client_ip,
                    security: &snapshot.security,
                    granted: granted.as_ref(),
                    identity_applied: false,
                    body_limit: route_body_limit(
                        conn.listener.limits.max_request_body.0,
                        route.shaping.as_ref().and_then(|s| s.max_body),
                    ),
                    mirror: route.mirror.as_ref().filter(|m| m.sample()),
                    validation: route.openapi.as_ref().zip(operation.as_ref()).map(
                        |(rules, matched)| Validation {
                            rules,
                            operation: matched.operation,
                        },
                    ),
                };
                let head = request.method() == Method::HEAD;
                let transform = route.transform.as_ref();
                if transform.is_some() || version.is_some() {
                    let (mut parts, body) = request.into_parts();
                    if let Some((api, selected)) = version {
                        api.edit_forwarded_request(selected, &mut parts);
                    }
                    if let Some(transform) = transform {
                        transform.edit_request_head(&mut parts);
                    }
                    *request = Request::from_parts(parts, body);
                }
                let has_json_body = (transform.is_some() || version.is_some())
                    && !http_body::Body::is_end_stream(request.body())
                    && transform::is_json(request.headers());
                let upgrades = version
                    .filter(|(api, selected)| has_json_body && api.upgrades_requests(*selected));
                let rewrites = transform.filter(|t| has_json_body && t.rewrites_request_body());
                let response = if upgrades.is_some() || rewrites.is_some() {
                    // Boxed, as the translations above are.
                    Box::pin(async {
                        let max = [
                            upgrades.map(|(api, _)| api.max_body),
                            rewrites.map(|t| t.max_body()),
                        ]
                        .into_iter()
                        .flatten()
                        .min()
                        .unwrap_or(usize::MAX);
                        let (mut parts, body) = request.into_parts();
                        let mut bytes = transform::read_request(body, max).await?;
                        if let Some((api, selected)) = upgrades {
                            bytes = api.upgrade_request(selected, &bytes)?;
                        }
                        if let Some(transform) = rewrites {
                            bytes = transform.rewrite_request(bytes)?;
                        }
                        transform::set_length(&mut parts.headers, bytes.len());
                        let request =
                            Box::new(Request::from_parts(parts, http_body_util::Full::new(bytes)));
                        let response =
                            proxy(service, conn, request, trace, upstream, request_id).await;
                        bypass_cache(route, trace, response)
                    })
                    .await
                } else if let Some((cache, lookup)) = lookup {
                    let context = CacheContext {
                        cache,
                        snapshot,
                        route: matched.route,
                        service,
                        request_id,
                    };
                    Box::pin(cached(context, lookup, conn, request, trace, upstream)).await
                } else {
                    let response = proxy(service, conn, request, trace, upstream, request_id).await;
                    bypass_cache(route, trace, response)
                };
                let mut response = match transform {
                    Some(transform) => Box::pin(transform.response(response?, head)).await?,
                    None => response?,
                };
                if let Some((api, selected)) = version {
                    response = Box::pin(downgrade(api, selected, response, head)).await?;
                }
                Ok(response)
            }
        }?;
        if let Some(granted) = &granted {
            for (name, value) in granted.response_headers() {
                response.headers_mut().append(name, value);
            }
        }
        for (name, value) in policy_headers {
            response.headers_mut().append(name, value);
        }
        if let Some(slot) = route_slot {
            response = response.map(|body| body::with_guard(body, slot));
        }
        Ok(response)
    }
}

/// The service that takes this request: a plain route's own, or the one its traffic split
/// draws (recorded for the log phase, which otherwise names the route's single service).
fn pick_backend<'a>(backends: &'a Backends, trace: &mut RequestTrace) -> &'a Arc<Service> {
    match backends {
        Backends::One(service) => service,
        split => {
            let picked = split.pick();
            trace.version_service = Some(picked.clone());
            picked
        }
    }
}

/// What admitting a request on an API product's route decided.
struct Admitted {
    /// `RateLimit` fields of the plan's (or sandbox's) limits.
    headers: Vec<(http::HeaderName, HeaderValue)>,
    /// Set for a sandbox key: where its sandbox answers from.
    sandbox: Option<Arc<gatehouse_policy::products::SandboxRules>>,
}

/// Admits a request under its subscription's plan, or its sandbox's limits; records what
/// admitted it (what usage is metered by).
async fn admit_product(
    access: Result<Option<Access>, Rejection>,
    limit_request: &LimitRequest<'_>,
    trace: &mut RequestTrace,
) -> Result<Admitted, GatewayError> {
    let mut admitted = Admitted {
        headers: Vec::new(),
        sandbox: None,
    };
    trace.plan_passed = Some(false);
    match access.map_err(GatewayError::Rejected)? {
        None => {
            trace.plan_passed = None;
            return Ok(admitted);
        }
        Some(Access::Live(entitlement)) => {
            admitted.headers = entitlement
                .plan
                .admit(limit_request)
                .await
                .map_err(GatewayError::Rejected)?;
            trace.entitlement = Some(entitlement);
        }
        Some(Access::Sandbox(rules)) => {
            admitted.headers = rules
                .rules
                .admit(limit_request)
                .await
                .map_err(GatewayError::Rejected)?;
            let consumer = limit_request
                .identity
                .map_or("", |identity| identity.consumer.id.as_str());
            trace.entitlement = Some(Arc::new(rules.entitlement(consumer)));
            admitted.sandbox = Some(rules);
        }
    }
    trace.plan_passed = Some(true);
    Ok(admitted)
}

/// A sandbox's mock answer as a response.
fn mock_response(answer: &gatehouse_policy::openapi::MockAnswer) -> Response<ProxyBody> {
    let mut response = match &answer.body {
        Some((_, bytes)) => Response::new(body::full(bytes.clone())),
        None => Response::new(body::empty()),
    };
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    if let Some((content_type, _)) = &answer.body {
        headers.insert(http::header::CONTENT_TYPE, content_type.clone());
    }
    for (name, value) in &answer.headers {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(
        http::HeaderName::from_static("x-gatehouse-sandbox"),
        HeaderValue::from_static("mock"),
    );
    response
}

/// The path sent upstream: rewritten, or normalized; `None` when it goes exactly as the
/// client sent it.
// The `Cow` itself is the information: owned means normalization changed the path.
#[allow(clippy::ptr_arg)]
fn forwarded_path(
    rewrite: Option<&crate::snapshot::PathRewrite>,
    path: &Cow<'_, str>,
    captures: &[(String, String)],
) -> Option<String> {
    match (rewrite, path) {
        (Some(rewrite), path) => Some(rewrite.apply(path, captures)),
        (None, Cow::Owned(normalized)) => Some(normalized.clone()),
        (None, Cow::Borrowed(_)) => None,
    }
}

/// The backend's successful JSON answer downgraded to the client's version, and the
/// version's headers.
async fn downgrade(
    api: &ApiRuntime,
    selected: versioning::Selected,
    response: Response<ProxyBody>,
    head: bool,
) -> Result<Response<ProxyBody>, GatewayError> {
    let (mut parts, body) = response.into_parts();
    let mut body = body;
    if parts.status.is_success()
        && api.downgrades_responses(selected)
        && transform::is_json(&parts.headers)
    {
        if head {
            // The downgraded GET body's length is unknown without running the programs.
            parts.headers.remove(header::CONTENT_LENGTH);
        } else {
            let bytes = transform::read_response(body, &parts.headers, api.max_body).await?;
            let bytes = api.downgrade_response(selected, &bytes)?;
            transform::rewrote_body(&mut parts.headers, bytes.len());
            body = body::full(bytes);
        }
    }
    api.response_headers(selected, &mut parts.headers);
    Ok(Response::from_parts(parts, body))
}

/// Mark a response of a caching route that did not use the cache.
fn bypass_cache(
    route: &RouteRuntime,
    trace: &mut RequestTrace,
    response: Result<Response<ProxyBody>, GatewayError>,
) -> Result<Response<ProxyBody>, GatewayError> {
    match &route.cache {
        Some(cache) => {
            trace.cache = Some(cache::Outcome::Bypass);
            response.map(|response| cache.bypassed(response))
        }
        None => response,
    }
}

/// What answering from the cache needs besides the request.
struct CacheContext<'a> {
    cache: &'a cache::RouteCache,
    /// Owned by a background revalidation while it runs.
    snapshot: &'a Arc<Snapshot>,
    route: &'a Arc<CompiledRoute<RouteRuntime>>,
    service: &'a Arc<Service>,
    request_id: &'a HeaderValue,
}

/// Answer a request the cache may serve: a fresh entry directly; a stale one at once while
/// a background request revalidates it (`stale-while-revalidate`), or through the upstream
/// (conditionally when it has a validator), falling back to it when the upstream fails
/// (`stale-if-error`); a miss through the upstream, storing what may be stored.
/// Concurrent misses for one key wait for the first one's answer.
async fn cached(
    context: CacheContext<'_>,
    mut lookup: cache::Lookup,
    conn: &ConnInfo,
    mut request: Box<Request<RequestBody>>,
    trace: &mut RequestTrace,
    upstream: Upstream<'_>,
) -> Result<Response<ProxyBody>, GatewayError> {
    use cache::{Found, Outcome, RouteCache};
    let CacheContext {
        cache,
        service,
        request_id,
        ..
    } = context;
    let found = cache.find(&mut lookup, request.headers()).await;
    let (guard, stale) = match found {
        Found::Fresh(entry) => {
            trace.cache = Some(Outcome::Hit);
            return Ok(cache.serve(&entry, &lookup, Outcome::Hit));
        }
        // Responses checked against an OpenAPI document are revalidated in line, where
        // the check runs.
        Found::Stale(entry)
            if entry.may_serve_while_revalidating() && upstream.validation.is_none() =>
        {
            trace.cache = Some(Outcome::StaleWhileRevalidate);
            let response = cache.serve(&entry, &lookup, Outcome::StaleWhileRevalidate);
            if entry.begin_revalidation() {
                let job = Revalidation::new(&context, lookup, entry, conn, &request, &upstream);
                tokio::spawn(job.run());
            }
            return Ok(response);
        }
        Found::Stale(entry) => (None, Some(entry)),
        Found::Miss(guard) => (guard, None),
        Found::Pass => {
            trace.cache = Some(Outcome::Miss { stored: false });
            let response = proxy(service, conn, request, trace, upstream, request_id).await?;
            return Ok(cache.passed(response));
        }
    };
    // Kept for storing the answer (Vary, Authorization); a hit above does without.
    let request_headers = request.headers().clone();
    // The client's own conditions are answered from the full response; the upstream is
    // asked for it whole (a HEAD as a GET), or conditionally on the stored validator.
    let headers = request.headers_mut();
    headers.remove(header::IF_NONE_MATCH);
    headers.remove(header::IF_MODIFIED_SINCE);
    if let Some(entry) = &stale {
        RouteCache::conditional_headers(entry, headers);
    }
    if request.method() == Method::HEAD {
        *request.method_mut() = Method::GET;
    }
    let result = proxy(service, conn, request, trace, upstream, request_id).await;
    if let Some(entry) = stale.as_ref().filter(|entry| entry.may_serve_on_error()) {
        let failed = match &result {
            Err(err) if err.is_upstream_failure() => Some(None),
            Ok(response) if is_server_failure(response.status()) => Some(Some(response.status())),
            _ => None,
        };
        if let Some(upstream_status) = failed {
            trace.cache = Some(Outcome::StaleIfError);
            // Nothing is stored: the entry stays for the next request to retry.
            return Ok(cache.serve_on_error(entry, &lookup, upstream_status));
        }
    }
    let (response, outcome) = cache
        .complete(lookup, guard, stale, &request_headers, result?)
        .await;
    trace.cache = Some(outcome);
    Ok(response)
}

/// Statuses that count as the upstream failing for `stale-if-error` (RFC 5861 section 4).
fn is_server_failure(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// A stale entry's revalidation, run after the client has been answered from it. It owns
/// the snapshot and route it came from, so a reload meanwhile does not cut it short.
struct Revalidation {
    snapshot: Arc<Snapshot>,
    route: Arc<CompiledRoute<RouteRuntime>>,
    service: Arc<Service>,
    conn: ConnInfo,
    request_id: HeaderValue,
    lookup: cache::Lookup,
    entry: Arc<cache::Stored>,
    /// The client's headers, for `Vary` and the `Authorization` rule when storing.
    client_headers: http::HeaderMap,
    /// The upstream request's head, prepared here as the client's request would have been
    /// (credentials hidden, identity headers applied) and made conditional.
    head: http::request::Parts,
    upstream_path: Option<String>,
    client_ip: std::net::IpAddr,
}

impl Revalidation {
    fn new(
        context: &CacheContext<'_>,
        lookup: cache::Lookup,
        entry: Arc<cache::Stored>,
        conn: &ConnInfo,
        request: &Request<RequestBody>,
        upstream: &Upstream<'_>,
    ) -> Self {
        let mut headers = request.headers().clone();
        headers.remove(header::IF_NONE_MATCH);
        headers.remove(header::IF_MODIFIED_SINCE);
        cache::RouteCache::conditional_headers(&entry, &mut headers);
        let query_override = upstream.security.prepare_upstream(
            upstream.granted,
            &mut headers,
            request.uri().query(),
        );
        let mut uri = request.uri().clone();
        if let Some(query) = query_override {
            transform::set_query(&mut uri, query.as_deref());
        }
        let (mut head, ()) = Request::new(()).into_parts();
        head.method = Method::GET;
        head.uri = uri;
        head.version = request.version();
        head.headers = headers;
        Self {
            snapshot: context.snapshot.clone(),
            route: context.route.clone(),
            service: context.service.clone(),
            conn: conn.clone(),
            request_id: context.request_id.clone(),
            lookup,
            entry,
            client_headers: request.headers().clone(),
            head,
            upstream_path: upstream.path.clone(),
            client_ip: upstream.client_ip,
        }
    }

    async fn run(self) {
        let route = &self.route.payload;
        let (Some(cache), RouteAction::Forward { host_rewrite, .. }) =
            (&route.cache, &route.action)
        else {
            return;
        };
        let upstream = Upstream {
            path: self.upstream_path,
            host: host_rewrite.as_ref(),
            client_ip: self.client_ip,
            security: &self.snapshot.security,
            granted: None,
            identity_applied: true,
            body_limit: 0,
            mirror: None,
            validation: None,
        };
        let request = Box::new(Request::from_parts(
            self.head,
            http_body_util::Empty::<Bytes>::new(),
        ));
        let mut trace = RequestTrace::default();
        let result = proxy(
            &self.service,
            &self.conn,
            request,
            &mut trace,
            upstream,
            &self.request_id,
        )
        .await;
        match result {
            Ok(response) if !is_server_failure(response.status()) => {
                let (response, _) = cache
                    .complete(
                        self.lookup,
                        None,
                        Some(self.entry),
                        &self.client_headers,
                        response,
                    )
                    .await;
                // Whatever was not stored is read to the end so the connection is reused.
                let _ = response.into_body().collect().await;
            }
            Ok(response) => {
                tracing::debug!(status = %response.status(), "background revalidation failed");
                self.entry.end_revalidation();
            }
            Err(err) => {
                tracing::debug!(error = %err, "background revalidation failed");
                self.entry.end_revalidation();
            }
        }
    }
}

/// The OpenAPI operation a request was checked against, to check its body and response.
struct Validation<'a> {
    rules: &'a RouteValidation,
    operation: &'a Operation,
}

/// Read a JSON response whole and check it against the operation: violations are logged,
/// and with `enforce` the response becomes a 502.
async fn validate_response(
    validation: &Validation<'_>,
    status: StatusCode,
    headers: &http::HeaderMap,
    body: ProxyBody,
) -> Result<ProxyBody, GatewayError> {
    let max = validation.rules.max_body;
    let declared = content_length(headers);
    if declared.is_some_and(|len| len > max) {
        tracing::warn!(%status, limit = max, "response too large to validate; passed unchecked");
        return Ok(body);
    }
    let bytes = match body::read_limited(body, max as usize).await {
        Ok(bytes) => bytes,
        Err(err) => {
            return Err(GatewayError::BadGateway(format!(
                "reading the response: {err}"
            )))
        }
    };
    let violations = validation
        .rules
        .check_response(validation.operation, status, &bytes);
    if violations.is_empty() {
        return Ok(body::full(bytes));
    }
    let operation = validation.operation.id.as_deref().unwrap_or("-");
    tracing::warn!(operation, %status, violations = ?violations, "response does not match the API description");
    if validation.rules.validate_responses == ResponseValidation::Enforce {
        let mut rejection = Rejection::new(
            StatusCode::BAD_GATEWAY,
            "response_invalid",
            "the upstream response does not match the API description",
        );
        rejection.extensions = Some(serde_json::json!({ "violations": violations }));
        return Err(GatewayError::Rejected(rejection));
    }
    Ok(body::full(bytes))
}

/// What the route and its policies decided about the upstream request.
struct Upstream<'a> {
    /// `None`: the path goes upstream exactly as the client sent it.
    path: Option<String>,
    host: Option<&'a HeaderValue>,
    client_ip: std::net::IpAddr,
    security: &'a Security,
    granted: Option<&'a Granted<'a>>,
    /// The headers and query already carry what the access policy forwards (a background
    /// revalidation prepared them from the client's request).
    identity_applied: bool,
    /// Largest request body; 0 means unlimited.
    body_limit: u64,
    /// Set when this request is among the mirrored share.
    mirror: Option<&'a Mirror>,
    /// The OpenAPI operation, when the route validates.
    validation: Option<Validation<'a>>,
}

/// The tighter of the listener's and the route's body limits (0 on the listener: none).
fn route_body_limit(listener: u64, route: Option<u64>) -> u64 {
    match (listener, route) {
        (0, Some(route)) => route,
        (listener, Some(route)) => listener.min(route),
        (listener, None) => listener,
    }
}

/// Forward the request to `service` and prepare its answer.
///
/// Written as a function returning an `async` block (see `Service::call`), and the request
/// is taken apart in a block of its own: what the block leaves behind is dead by the
/// upstream call, so it takes no room in the state that waits for the answer.
// An `async fn` would store its arguments twice (see `Service::call`).
#[allow(clippy::manual_async_fn)]
fn proxy<'a, B>(
    service: &'a Service,
    conn: &'a ConnInfo,
    mut request: Box<Request<B>>,
    trace: &'a mut RequestTrace,
    upstream: Upstream<'a>,
    request_id: &'a HeaderValue,
) -> impl Future<Output = Result<Response<ProxyBody>, GatewayError>> + use<'a, B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    async move {
        let (outgoing, client_upgrade, service_slot) = {
            let upstream_path = upstream.path;
            let client_ip = upstream.client_ip;
            let service_slot = service
                .in_flight
                .as_ref()
                .map(InFlightLimit::try_acquire)
                .transpose()
                .map_err(GatewayError::Rejected)?;
            let limit = upstream.body_limit;
            let declared_length = content_length(request.headers());
            if limit > 0 && declared_length.is_some_and(|len| len > limit) {
                return Err(GatewayError::PayloadTooLarge { limit });
            }
            let upgrade = request.version() == Version::HTTP_11
                && forward::is_upgrade_request(request.headers());
            let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut *request));
            let (parts, incoming) = request.into_parts();
            let mut headers = parts.headers;
            let original_host = headers.get(header::HOST).cloned().or_else(|| {
                parts
                    .uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            });
            let peer_trusted = forward::is_trusted(conn.peer.ip(), &conn.listener.trusted_proxies);
            forward::strip_hop_by_hop(&mut headers, upgrade);
            headers.remove(header::EXPECT); // 100-continue is answered here, when the body is read

            // The verified peer identity, set after the hop-by-hop removal so that a client cannot
            // drop it by naming it in `Connection`.
            if let Some(id) = conn
                .client_certificate
                .as_deref()
                .and_then(ClientCertificate::spiffe_id)
                .and_then(|id| HeaderValue::from_str(id).ok())
            {
                headers.insert(X_PEER_IDENTITY, id);
            }
            forward::set_forwarded(
                &mut headers,
                &conn.peer_ip,
                peer_trusted,
                if conn.tls { "https" } else { "http" },
                original_host.as_ref(),
            );
            forward::add_via(&mut headers, parts.version);
            headers.insert(X_REQUEST_ID, request_id.clone());
            let query_override = if upstream.identity_applied {
                None
            } else {
                upstream.security.prepare_upstream(
                    upstream.granted,
                    &mut headers,
                    parts.uri.query(),
                )
            };
            match upstream.host.or(original_host.as_ref()) {
                Some(host) => {
                    headers.insert(header::HOST, host.clone());
                }
                None => {
                    headers.remove(header::HOST);
                }
            }

            let hash_key = service.hash_on().and_then(|on| match on {
                gatehouse_config::HashOn::Header(name) => {
                    headers.get(name.as_str()).map(|v| hash_of(&v.as_bytes()))
                }
                gatehouse_config::HashOn::Cookie(name) => {
                    forward::cookie(&headers, name).map(|v| hash_of(&v))
                }
                gatehouse_config::HashOn::ClientIp => Some(hash_of(&client_ip)),
                gatehouse_config::HashOn::Path => Some(hash_of(
                    &upstream_path.as_deref().unwrap_or(parts.uri.path()),
                )),
            });

            let retry_policy = &service.config.retries;
            let retryable =
                !upgrade && (is_idempotent(&parts.method) || retry_policy.non_idempotent);
            let validated_body = upstream
                .validation
                .as_ref()
                .filter(|v| v.rules.validate_requests && v.operation.has_body());
            let end_stream = http_body::Body::is_end_stream(&incoming);
            // A body checked against the operation's schema, or kept to replay, is read
            // whole, at one await for both: a local held across two awaits takes room in
            // every state of this future.
            let read_whole = if end_stream {
                None
            } else if let Some(validation) = validated_body {
                let max = validation.rules.max_body;
                if declared_length.is_some_and(|len| len > max) {
                    return Err(GatewayError::PayloadTooLarge { limit: max });
                }
                Some(max)
            } else {
                declared_length.filter(|len| {
                    !upgrade
                        && ((retry_policy.attempts > 0 && *len <= retry_policy.replay_buffer.0)
                            || upstream.mirror.is_some_and(|m| *len <= m.max_body))
                })
            };
            let body = match read_whole {
                Some(max) => {
                    let collected = match transform::read_request(incoming, max as usize).await {
                        Ok(collected) => collected,
                        Err(err) if validated_body.is_some() => return Err(err),
                        // Longer than its own Content-Length: malformed, not too large.
                        Err(_) => return Err(GatewayError::BadRequest("malformed request body")),
                    };
                    if let Some(validation) = validated_body {
                        validation
                            .rules
                            .check_body(validation.operation, &headers, &collected)
                            .map_err(GatewayError::Rejected)?;
                        if declared_length.is_none() {
                            trace.chunked_bytes_in =
                                Some(Arc::new(AtomicU64::new(collected.len() as u64)));
                        }
                    }
                    OutgoingBody::Buffered(collected)
                }
                None if end_stream => {
                    if let Some(validation) = validated_body {
                        validation
                            .rules
                            .check_body(validation.operation, &headers, &Bytes::new())
                            .map_err(GatewayError::Rejected)?;
                    }
                    OutgoingBody::Buffered(Bytes::new())
                }
                None if limit > 0 => {
                    let limited = Limited::new(incoming, limit as usize).map_err(move |err| {
                        if err.is::<LengthLimitError>() {
                            ClientBodyError::TooLarge(limit)
                        } else {
                            ClientBodyError::Malformed(err)
                        }
                    });
                    OutgoingBody::Streaming(count_chunked(
                        body::boxed(limited),
                        declared_length,
                        trace,
                    ))
                }
                None => {
                    let marked = incoming.map_err(|err| ClientBodyError::Malformed(err.into()));
                    OutgoingBody::Streaming(count_chunked(
                        body::boxed(marked),
                        declared_length,
                        trace,
                    ))
                }
            };

            let path_and_query = match (upstream_path, parts.uri.path_and_query(), query_override) {
                (None, Some(original), None) => original.clone(),
                (upstream_path, _, query_override) => {
                    let path = upstream_path.as_deref().unwrap_or(parts.uri.path());
                    let query = match query_override {
                        Some(replaced) => replaced,
                        None => parts.uri.query().map(str::to_owned),
                    };
                    match query {
                        Some(query) => format!("{path}?{query}").parse(),
                        None => path.parse(),
                    }
                    .map_err(|_| GatewayError::BadRequest("invalid request target"))?
                }
            };
            if let (Some(mirror), OutgoingBody::Buffered(bytes)) = (upstream.mirror, &body) {
                mirror.send(
                    parts.method.clone(),
                    path_and_query.clone(),
                    headers.clone(),
                    bytes.clone(),
                );
            }
            let outgoing = UpstreamRequest {
                method: parts.method,
                path_and_query,
                headers,
                body,
                hash_key,
                retryable,
                upgrade,
                deadline: trace.grpc.as_ref().and_then(|call| call.deadline),
            };
            (outgoing, client_upgrade, service_slot)
        };
        let tracing = trace
            .context
            .as_ref()
            .map(|context| (context, &mut trace.attempt_spans));
        let (mut response, info) = service.call(outgoing, tracing).await?;

        trace.endpoint = Some(info.endpoint);
        trace.upstream = Some(info.elapsed);
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        if let Err(err) =
                            tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                        {
                            tracing::debug!(%err, "upgraded connection ended with an error");
                        }
                    }
                    Err(err) => tracing::debug!(%err, "protocol upgrade failed"),
                }
            });
        }
        let (mut parts, body) = response.into_parts();
        forward::strip_hop_by_hop(&mut parts.headers, switching);
        forward::add_via(&mut parts.headers, parts.version);
        let mut body = body::boxed(body);
        if let Some(validation) = upstream.validation.as_ref().filter(|v| {
            v.rules
                .wants_response(v.operation, parts.status, &parts.headers)
        }) {
            body = Box::pin(validate_response(
                validation,
                parts.status,
                &parts.headers,
                body,
            ))
            .await?;
        }
        if let Some(deadline) = trace.grpc.as_ref().and_then(|call| call.deadline) {
            // A trailers-only answer carries its status in the head.
            grpc::status_after_deadline(&mut parts.headers, deadline, std::time::Instant::now());
            body = grpc::with_deadline(body, deadline);
        }
        let body = match service_slot {
            Some(slot) => body::with_guard(body, slot),
            None => body,
        };
        Ok(Response::from_parts(parts, body))
    }
}

/// A body without a declared length is counted as it streams, for the log phase.
fn count_chunked(body: ProxyBody, declared: Option<u64>, trace: &mut RequestTrace) -> ProxyBody {
    if declared.is_some() {
        return body;
    }
    let counter = Arc::new(AtomicU64::new(0));
    trace.chunked_bytes_in = Some(counter.clone());
    body::counted(body, RequestBytes(counter))
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Request smuggling defence for HTTP/1: framing that two parsers could read differently is
/// refused before anything is forwarded (RFC 9112 section 6.3).
fn reject_ambiguous_framing<B>(request: &Request<B>) -> Result<(), GatewayError> {
    let headers = request.headers();
    // Content-Length together with Transfer-Encoding never reaches this point: the framing
    // check in front of hyper (`framing.rs`) refuses such heads.
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\0").split(','));
    if let Some(first) = codings.next() {
        if request.version() != Version::HTTP_11 {
            return Err(GatewayError::BadRequest(
                "Transfer-Encoding is only valid in HTTP/1.1",
            ));
        }
        if !first.trim().eq_ignore_ascii_case("chunked") || codings.next().is_some() {
            return Err(GatewayError::BadRequest(
                "Transfer-Encoding must be exactly `chunked`",
            ));
        }
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if let Some(length) = lengths.next() {
        let digits = length.as_bytes();
        if lengths.next().is_some() || digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(GatewayError::BadRequest(
                "invalid or repeated Content-Length",
            ));
        }
    }
    Ok(())
}

/// The request's host, lowercase and without port, for routing: from the target URI's
/// authority (HTTP/2 `:authority`, absolute form) or `Host`. Borrowed when the client
/// sent it in lowercase already, as nearly all do: no allocation a request.
fn request_host<B>(request: &Request<B>) -> Result<Cow<'_, str>, GatewayError> {
    // One lookup of `Host` serves the repetition check and the value.
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest("repeated Host header"));
    }
    if let Some(authority) = request.uri().authority() {
        return Ok(lowercase(authority.host()));
    }
    match host_header {
        Some(value) => host_of(value.as_bytes())
            .map(lowercase)
            .ok_or(GatewayError::BadRequest("invalid Host header")),
        None if request.version() == Version::HTTP_11 => {
            Err(GatewayError::BadRequest("HTTP/1.1 request without Host"))
        }
        None => Ok(Cow::Borrowed("")),
    }
}

fn lowercase(host: &str) -> Cow<'_, str> {
    if host.bytes().any(|byte| byte.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// The authority the client addressed, as sent: the target URI's (absolute form, HTTP/2
/// `:authority`) or `Host`, which [`request_host`] has already judged.
fn request_authority<B>(request: &Request<B>) -> &str {
    match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request
            .headers()
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default(),
    }
}

/// Bytes a registered name may hold (RFC 3986 section 3.2.2: unreserved, sub-delims and
/// percent-encoding).
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let allowed = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=%";
    let mut i = 0;
    while i < allowed.len() {
        table[allowed[i] as usize] = true;
        i += 1;
    }
    table
};

/// The host of a `Host` field value, `uri-host [ ":" port ]` (RFC 9110 section 7.2), or
/// `None` when the value is not one. Judged in place: parsing it into a URI authority cost
/// an allocation and two scans on every request.
fn host_of(value: &[u8]) -> Option<&str> {
    let (host, port) = if value.first() == Some(&b'[') {
        // IP-literal: `[` IPv6 address `]`.
        let end = memchr::memchr(b']', value)?;
        let (host, rest) = value.split_at(end + 1);
        let inside = &host[1..end];
        if inside.is_empty()
            || !inside
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return None;
        }
        let port = match rest {
            [] => &[][..],
            [b':', port @ ..] => port,
            _ => return None,
        };
        (host, port)
    } else {
        let (host, port) = match memchr::memrchr(b':', value) {
            Some(colon) => (&value[..colon], &value[colon + 1..]),
            None => (value, &[][..]),
        };
        if host.is_empty() || !host.iter().all(|&b| REG_NAME[usize::from(b)]) {
            return None;
        }
        (host, port)
    };
    if !port.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(host).ok()
}

/// Resolve `.` and `..` segments (RFC 3986 section 5.2.4) so routing and the upstream see the
/// same path; `None` when `..` would climb above the root.
pub fn normalize_path(path: &str) -> Option<Cow<'_, str>> {
    if path.is_empty() {
        return Some(Cow::Borrowed("/"));
    }
    if !path.contains("/.") {
        return Some(Cow::Borrowed(path));
    }
    let mut segments: Vec<&str> = Vec::new();
    let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    for segment in path.split('/').skip(1) {
        match segment {
            "." => {}
            ".." => {
                segments.pop()?;
            }
            other => segments.push(other),
        }
    }
    let mut normalized = String::with_capacity(path.len());
    for segment in &segments {
        normalized.push('/');
        normalized.push_str(segment);
    }
    if trailing && !normalized.ends_with('/') || normalized.is_empty() {
        normalized.push('/');
    }
    Some(Cow::Owned(normalized))
}

fn path_and_query(uri: &http::Uri) -> &str {
    uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
}

fn redirect_response(status: u16, location: &str) -> Response<ProxyBody> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::PERMANENT_REDIRECT);
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(normalize_path("/a/./b/../c").as_deref(), Some("/a/c"));
        assert_eq!(normalize_path("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(
            normalize_path("/plain/path").as_deref(),
            Some("/plain/path")
        );
        assert_eq!(normalize_path("/../etc/passwd"), None);
    }

    #[test]
    fn host_values_are_judged_in_place() {
        assert_eq!(host_of(b"api.example.com"), Some("api.example.com"));
        assert_eq!(host_of(b"API.Example.com:8080"), Some("API.Example.com"));
        assert_eq!(host_of(b"127.0.0.1:80"), Some("127.0.0.1"));
        assert_eq!(host_of(b"[::1]:8443"), Some("[::1]"));
        assert_eq!(host_of(b"[fe80::1]"), Some("[fe80::1]"));
        assert_eq!(host_of(b"host:"), Some("host"));
        for bad in [
            &b""[..],
            b":80",
            b"user@host",
            b"host:80x",
            b"a b",
            b"host/path",
            b"[::1",
            b"[]",
            b"[::1]x",
            b"[g::1]",
            b"h\xc3\xa9",
        ] {
            assert_eq!(host_of(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_routing_host_is_lowercase_and_borrowed_when_sent_so() {
        let host = |uri: &str, host: Option<&'static str>| {
            let mut request = Request::builder().uri(uri);
            if let Some(host) = host {
                request = request.header(header::HOST, host);
            }
            let request = request.body(()).unwrap();
            request_host(&request).map(|host| (host.to_string(), matches!(host, Cow::Borrowed(_))))
        };
        assert_eq!(
            host("/", Some("api.example.com:8080")).unwrap(),
            ("api.example.com".to_string(), true)
        );
        assert_eq!(
            host("/", Some("API.Example.com")).unwrap(),
            ("api.example.com".to_string(), false)
        );
        assert_eq!(
            host("https://Other.Example/x", Some("api.example.com")).unwrap(),
            ("other.example".to_string(), false)
        );
        assert!(host("/", None).is_err(), "HTTP/1.1 without Host");
    }
}
