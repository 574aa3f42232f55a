//! Upstream services: endpoints, load balancing, pooled clients, health checks, outlier
//! detection, timeouts and retries within a budget.

mod balancer;
mod budget;
pub mod endpoint;
mod h1;
pub mod metrics;
mod pool;

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use gatehouse_config::{HashOn, LoadBalancing, ServiceConfig, UpstreamProtocol};
use http::{HeaderMap, Method, Request, Response, Uri, Version};

use balancer::Balancer;
pub use balancer::{hash_of, EndpointSet};
use budget::RetryBudget;
pub use endpoint::Endpoint;
use pool::{Connector, SendError};
pub use pool::{Pool, PooledBody};

use crate::body::{self, ProxyBody};
use crate::error::GatewayError;
use crate::{grpc, tls};
use gatehouse_telemetry::trace::{
    new_span_id, AttributeValue, SpanId, SpanKind, SpanRecord, TraceContext,
};

pub struct Service {
    pub name: String,
    /// The SPIFFE ID a mesh service's endpoints must present (the mesh metrics' peer).
    pub mesh_peer: Option<String>,
    /// The service's configuration as JSON; equal fingerprints let a reload keep the service
    /// (its pools, health and outlier state).
    fingerprint: String,
    pub config: ServiceConfig,
    endpoints: ArcSwap<EndpointSet>,
    balancer: Balancer,
    connector: Connector,
    scheme: http::uri::Scheme,
    budget: RetryBudget,
    /// Retries made and refused, for the metrics.
    pub retry_stats: RetryStats,
    /// `max_in_flight`: load shedding over all routes to this service.
    pub in_flight: Option<gatehouse_policy::InFlightLimit>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            tasks.iter().for_each(|t| t.abort());
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("mesh service, but this process has not joined a mesh (add `mesh:`)")]
    NotInMesh,
    #[error("mesh mTLS: {0}")]
    MeshTls(#[from] gatehouse_mesh::tls::MeshTlsError),
}

/// Which endpoint answered and how long the upstream took (retries included), returned with
/// the upstream response for the log phase.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamInfo {
    pub endpoint: std::net::SocketAddr,
    pub elapsed: std::time::Duration,
}

/// Why a request was retried: the values of the `reason` label.
pub const RETRY_REASONS: [&str; 4] = ["status", "connect", "timeout", "reset"];

/// Retry counters of one service, read by the metrics collector at scrape time.
#[derive(Default)]
pub struct RetryStats {
    /// Retries made, by `RETRY_REASONS` index.
    pub by_reason: [AtomicU64; 4],
    /// Retries the policy wanted but the retry budget refused.
    pub budget_exhausted: AtomicU64,
}

impl RetryStats {
    fn count(&self, reason: &str) {
        if let Some(index) = RETRY_REASONS.iter().position(|r| *r == reason) {
            self.by_reason[index].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The body sent upstream: buffered bodies can be replayed on retry, streamed ones cannot.
pub enum OutgoingBody {
    Buffered(Bytes),
    Streaming(ProxyBody),
}

impl OutgoingBody {
    fn into_proxy_body(self) -> ProxyBody {
        match self {
            Self::Buffered(bytes) if bytes.is_empty() => body::empty(),
            Self::Buffered(bytes) => body::full(bytes),
            Self::Streaming(body) => body,
        }
    }
}

/// A request ready to be sent to whichever endpoint the balancer picks.
pub struct UpstreamRequest {
    pub method: Method,
    pub path_and_query: http::uri::PathAndQuery,
    pub headers: HeaderMap,
    pub body: OutgoingBody,
    pub hash_key: Option<u64>,
    /// Idempotent (or explicitly allowed) and not an upgrade: may be retried.
    pub retryable: bool,
    /// Keep the connection-upgrade machinery (WebSocket): never retried.
    pub upgrade: bool,
    /// The gRPC call's deadline (from `grpc-timeout`): bounds each attempt, and each
    /// attempt tells the upstream the time that remains.
    pub deadline: Option<Instant>,
}

impl Drop for UpstreamRequest {
    fn drop(&mut self) {
        crate::header_maps::give_back(std::mem::take(&mut self.headers));
    }
}

pub fn fingerprint(config: &ServiceConfig) -> String {
    serde_json::to_string(config).unwrap_or_default()
}

impl Service {
    /// `root` is the whole configuration, for resolving file paths.
    pub fn new(
        config: &ServiceConfig,
        root: &gatehouse_config::Config,
        member: Option<&Arc<gatehouse_mesh::Member>>,
    ) -> Result<Arc<Self>, ServiceError> {
        let http2 = config.protocol == UpstreamProtocol::Http2;
        let alpn: &[&[u8]] = if http2 { &[b"h2"] } else { &[b"http/1.1"] };
        // The identity a mesh service's endpoints must present.
        let mesh_peer = match (&config.mesh, member) {
            (Some(mesh), Some(member)) => Some(gatehouse_mesh::SpiffeId::new(
                &member.identity().trust_domain,
                &mesh.namespace,
                &mesh.service,
            )),
            _ => None,
        };
        let tls = match (&config.mesh, &config.tls) {
            (Some(mesh), _) => {
                let (Some(member), Some(peer)) = (member, &mesh_peer) else {
                    return Err(ServiceError::NotInMesh);
                };
                let client_config = member.client_config(peer.clone(), alpn)?;
                // SNI only; the peer is verified by its SPIFFE ID.
                let server_name = rustls_pki_types::ServerName::try_from(format!(
                    "{}.{}.mesh",
                    mesh.service, mesh.namespace
                ))
                .ok();
                Some((
                    tokio_rustls::TlsConnector::from(Arc::new(client_config)),
                    server_name,
                ))
            }
            (None, Some(upstream_tls)) => {
                let mut client_config = tls::client_config(Some(upstream_tls), root)?;
                client_config.alpn_protocols = if http2 {
                    vec![b"h2".to_vec()]
                } else {
                    vec![b"http/1.1".to_vec()]
                };
                let server_name = upstream_tls
                    .server_name
                    .clone()
                    .map(|name| {
                        rustls_pki_types::ServerName::try_from(name.clone())
                            .map_err(|_| tls::TlsError::ServerName(name))
                    })
                    .transpose()?;
                Some((
                    tokio_rustls::TlsConnector::from(Arc::new(client_config)),
                    server_name,
                ))
            }
            (None, None) => None,
        };
        let connector = Connector {
            tls,
            http2,
            connect_timeout: config.timeouts.connect.0,
            idle_timeout: config.timeouts.idle.0,
        };
        let endpoints = match (&config.mesh, member) {
            (Some(mesh), Some(member)) => member
                .endpoints(&mesh.namespace, &mesh.service, &mesh.labels)
                .into_iter()
                .map(|addr| Arc::new(Endpoint::new(addr, 1)))
                .collect(),
            _ => resolve_blocking(config),
        };
        let service = Arc::new(Self {
            mesh_peer: mesh_peer.map(|peer| peer.to_string()),
            name: config.name.value.clone(),
            fingerprint: fingerprint(config),
            config: config.clone(),
            endpoints: ArcSwap::from_pointee(EndpointSet::new(endpoints, &config.load_balancing)),
            balancer: Balancer::new(config.load_balancing.clone()),
            connector,
            scheme: if config.tls.is_some() || config.mesh.is_some() {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            },
            retry_stats: RetryStats::default(),
            budget: RetryBudget::new(
                config.retries.budget_ratio,
                config.retries.budget_min_per_second,
            ),
            in_flight: config.max_in_flight.map(|max| {
                gatehouse_policy::InFlightLimit::new(
                    max,
                    format!("service `{}`", config.name.value),
                )
            }),
            tasks: Mutex::new(Vec::new()),
        });
        Ok(service)
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A mesh service's endpoints from the member's latest snapshot; endpoints that stay keep
    /// their state (latency estimate, ejections, pooled connections are per address).
    pub fn refresh_mesh_endpoints(&self, member: &gatehouse_mesh::Member) {
        let Some(mesh) = &self.config.mesh else {
            return;
        };
        let addrs = member.endpoints(&mesh.namespace, &mesh.service, &mesh.labels);
        let current = self.endpoints.load_full();
        let unchanged = addrs.len() == current.endpoints.len()
            && addrs
                .iter()
                .zip(current.endpoints.iter())
                .all(|(a, b)| *a == b.addr);
        if unchanged {
            return;
        }
        let next = addrs
            .into_iter()
            .map(|addr| {
                current
                    .endpoints
                    .iter()
                    .find(|e| e.addr == addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Endpoint::new(addr, 1)))
            })
            .collect();
        tracing::info!(service = %self.name, "mesh endpoints changed");
        self.endpoints
            .store(Arc::new(EndpointSet::new(next, self.balancer.policy())));
    }

    /// Start health checking and DNS refresh. Needs a Tokio runtime; the tasks end with the
    /// service.
    pub fn start_background_tasks(self: &Arc<Self>) {
        let mut handles = Vec::new();
        let weak = Arc::downgrade(self);
        handles.push(tokio::spawn(prune_idle_connections(weak)).abort_handle());
        if let Some(check) = self.config.health_check.clone() {
            let weak = Arc::downgrade(self);
            handles.push(tokio::spawn(health_check_loop(weak, check)).abort_handle());
        }
        let has_names = self
            .config
            .endpoints
            .value
            .iter()
            .any(|e| e.address.value.parse::<SocketAddr>().is_err());
        if has_names {
            let weak = Arc::downgrade(self);
            let every = self.config.dns_refresh.0;
            handles.push(tokio::spawn(dns_refresh_loop(weak, every)).abort_handle());
        }
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.extend(handles);
        }
    }

    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.endpoints.load_full()
    }

    pub fn hash_on(&self) -> Option<&HashOn> {
        self.balancer.hash_on()
    }

    /// Send the request, retrying within policy and budget; returns the response and the
    /// endpoint that produced it.
    ///
    /// With `tracing`, each attempt carries its own span id in `traceparent`, and when the
    /// trace is sampled each attempt's span is added to the list.
    ///
    /// A function returning an `async` block, not an `async fn`: an `async fn` keeps a
    /// second copy of its arguments in its state (rust-lang/rust#62958), and this state is
    /// part of every in-flight request's.
    // An `async fn` would store its arguments twice (see `Service::call`).
    #[allow(clippy::manual_async_fn)]
    pub fn call<'a>(
        &'a self,
        mut request: UpstreamRequest,
        mut tracing: Option<(&'a TraceContext, &'a mut Vec<SpanRecord>)>,
    ) -> impl Future<Output = Result<(Response<PooledBody>, UpstreamInfo), GatewayError>> + use<'a>
    {
        async move {
            let policy = &self.config.retries;
            let started = Instant::now();
            self.budget.deposit();
            let replayable = matches!(request.body, OutgoingBody::Buffered(_));
            let mut retries_left = if request.upgrade { 0 } else { policy.attempts };
            let mut previous: Option<Arc<Endpoint>> = None;
            let mut attempt: u32 = 0;
            loop {
                let set = self.endpoints.load();
                let endpoint = self
                    .balancer
                    .pick(&set, request.hash_key, previous.as_deref())
                    .ok_or_else(|| GatewayError::NoHealthyEndpoint {
                        service: self.name.clone(),
                    })?;
                drop(set);
                let may_retry_after = retries_left > 0 && replayable;
                let body = match &mut request.body {
                    OutgoingBody::Buffered(bytes) => OutgoingBody::Buffered(bytes.clone()),
                    OutgoingBody::Streaming(stream) => {
                        OutgoingBody::Streaming(std::mem::replace(stream, body::empty()))
                    }
                };
                // Each attempt sets its own trace context in place: the fields it writes
                // replace those of the attempt before.
                let attempt_span = tracing.as_ref().map(|(context, _)| {
                    let span_id = new_span_id();
                    context.inject(span_id, &mut request.headers);
                    (span_id, SystemTime::now())
                });
                // The first attempt starts when the call does: one clock read less.
                let attempt_started = if attempt == 0 {
                    started
                } else {
                    Instant::now()
                };
                let outcome = self
                    .attempt(
                        &endpoint,
                        &mut request,
                        may_retry_after,
                        body,
                        attempt_started,
                    )
                    .await;
                if let (Some((span_id, start)), Some((context, spans))) =
                    (attempt_span, tracing.as_mut())
                {
                    if context.sampled {
                        spans.push(self.attempt_span(
                            context,
                            (span_id, start),
                            &request.method,
                            &endpoint,
                            attempt,
                            &outcome,
                        ));
                    }
                }
                let (retry_reason, error) = match outcome {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        self.record(&endpoint, status < 500);
                        let retry_status = policy.on_status.contains(&status) && request.retryable;
                        if !self.may_retry(retry_status && may_retry_after) {
                            let info = UpstreamInfo {
                                endpoint: endpoint.addr,
                                elapsed: started.elapsed(),
                            };
                            return Ok((response, info));
                        }
                        ("status", None)
                    }
                    Err(AttemptError::Connect(message)) => {
                        self.record(&endpoint, false);
                        // Nothing reached the upstream: safe to retry any method whose body we
                        // still have. A streamed body went with the failed attempt.
                        let retry = self.may_retry(retries_left > 0 && replayable);
                        if !retry {
                            return Err(GatewayError::UpstreamConnect(message));
                        }
                        ("connect", Some(message))
                    }
                    Err(AttemptError::Timeout(timeout)) => {
                        self.record(&endpoint, false);
                        if !self.may_retry(request.retryable && may_retry_after) {
                            return Err(GatewayError::UpstreamTimeout {
                                timeout_ms: timeout.as_millis(),
                            });
                        }
                        ("timeout", None)
                    }
                    Err(AttemptError::DeadlineExceeded) => {
                        // The client's budget ran out, not the endpoint's: no outlier
                        // record, no retry.
                        return Err(GatewayError::DeadlineExceeded);
                    }
                    Err(AttemptError::BodyTooLarge(limit)) => {
                        return Err(GatewayError::PayloadTooLarge { limit })
                    }
                    Err(AttemptError::MalformedBody) => {
                        return Err(GatewayError::BadRequest("malformed request body"))
                    }
                    Err(AttemptError::Other(message)) => {
                        self.record(&endpoint, false);
                        if !self.may_retry(request.retryable && may_retry_after) {
                            return Err(GatewayError::BadGateway(message));
                        }
                        ("reset", Some(message))
                    }
                };
                attempt += 1;
                retries_left -= 1;
                self.retry_stats.count(retry_reason);
                tracing::debug!(service = %self.name, endpoint = %endpoint.addr, attempt, reason = retry_reason, error = ?error, "retrying upstream request");
                previous = Some(endpoint);
                let base = policy.backoff.0.saturating_mul(1 << (attempt - 1).min(10));
                // Jitter (50-100 % of the backoff) keeps many clients' retries from lining up.
                let delay = base.mul_f64(0.5 + fastrand::f64() * 0.5);
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// Whether a retry the policy wants may go ahead: the budget has the last word, and
    /// its refusals are counted.
    fn may_retry(&self, wanted: bool) -> bool {
        if !wanted {
            return false;
        }
        let allowed = self.budget.try_withdraw();
        if !allowed {
            self.retry_stats
                .budget_exhausted
                .fetch_add(1, Ordering::Relaxed);
        }
        allowed
    }

    /// The client span of one upstream attempt, from sending to the response head.
    fn attempt_span(
        &self,
        context: &TraceContext,
        (span_id, start): (SpanId, SystemTime),
        method: &Method,
        endpoint: &Endpoint,
        attempt: u32,
        outcome: &Result<Response<PooledBody>, AttemptError>,
    ) -> SpanRecord {
        let mut attributes: Vec<(&'static str, AttributeValue)> = vec![
            ("http.request.method", method.as_str().into()),
            ("server.address", endpoint.addr.ip().to_string().into()),
            ("server.port", i64::from(endpoint.addr.port()).into()),
            ("gatehouse.service", self.name.as_str().into()),
        ];
        if attempt > 0 {
            attributes.push(("http.request.resend_count", i64::from(attempt).into()));
        }
        let error = match outcome {
            Ok(response) => {
                let status = response.status().as_u16();
                attributes.push(("http.response.status_code", i64::from(status).into()));
                (status >= 500).then(|| status.to_string())
            }
            Err(err) => {
                let kind = err.kind();
                attributes.push(("error.type", kind.into()));
                Some(kind.to_owned())
            }
        };
        SpanRecord {
            trace_id: context.trace_id,
            span_id,
            parent: Some(context.span_id),
            remote_parent: false,
            tracestate: None,
            name: format!("{} {}", method, self.name),
            kind: SpanKind::Client,
            start,
            end: SystemTime::now(),
            attributes,
            error,
        }
    }

    /// One attempt at `endpoint`, which `started` then. The request's head is borrowed:
    /// the lean HTTP/1.1 client writes it from there, so a retry needs no copy; other
    /// clients take the header map, or a copy of it when `keep_headers` (a retry may
    /// follow).
    async fn attempt(
        &self,
        endpoint: &Arc<Endpoint>,
        request: &mut UpstreamRequest,
        keep_headers: bool,
        body: OutgoingBody,
        started: Instant,
    ) -> Result<Response<PooledBody>, AttemptError> {
        let configured = self.config.timeouts.request.0;
        let mut client_bound = false;
        let timeout = match request.deadline {
            Some(deadline) => {
                let remaining = deadline.saturating_duration_since(started);
                if remaining.is_zero() {
                    return Err(AttemptError::DeadlineExceeded);
                }
                request
                    .headers
                    .insert(grpc::GRPC_TIMEOUT, grpc::timeout_value(remaining));
                client_bound = remaining < configured;
                remaining.min(configured)
            }
            None => configured,
        };
        // From the attempt's start: `timeout` would read the clock again. On a timer kept
        // from an earlier request (`crate::timer`).
        let expires = tokio::time::Instant::from_std(started + timeout);
        let _in_flight = endpoint.start_request();
        let result = match body {
            OutgoingBody::Buffered(bytes)
                if self.connector.is_direct(&request.method, &request.headers) =>
            {
                let sent = self.connector.send_direct(
                    endpoint,
                    &request.method,
                    request.path_and_query.as_str(),
                    &request.headers,
                    &bytes,
                );
                crate::timer::timeout_at(expires, sent).await
            }
            body => {
                let uri = self
                    .request_uri(endpoint, request.path_and_query.clone())
                    .map_err(|e| AttemptError::Other(e.to_string()))?;
                let headers = if keep_headers {
                    request.headers.clone()
                } else {
                    std::mem::take(&mut request.headers)
                };
                let mut outgoing = Request::new(body);
                *outgoing.method_mut() = request.method.clone();
                *outgoing.uri_mut() = uri;
                *outgoing.headers_mut() = headers;
                *outgoing.version_mut() = match self.config.protocol {
                    UpstreamProtocol::Http1 => Version::HTTP_11,
                    UpstreamProtocol::Http2 => Version::HTTP_2,
                };
                let sent = self.connector.send_other(endpoint, outgoing);
                crate::timer::timeout_at(expires, sent).await
            }
        };
        // Latency feeds only least-request balancing's estimate (a clock read and an
        // exponential the other policies would pay for nothing).
        if matches!(self.balancer.policy(), LoadBalancing::LeastRequest) {
            endpoint.observe_latency(started.elapsed());
        }
        match result {
            Err(_) if client_bound => Err(AttemptError::DeadlineExceeded),
            Err(_) => Err(AttemptError::Timeout(timeout)),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => Err(classify(&err)),
        }
    }

    fn record(&self, endpoint: &Endpoint, success: bool) {
        let Some(policy) = &self.config.outlier_detection else {
            return;
        };
        let may_eject = !success && {
            let set = self.endpoints.load();
            let now = endpoint::now_ms();
            let ejected = set.endpoints.iter().filter(|e| e.is_ejected(now)).count();
            ejected == 0
                || (ejected + 1) * 100 <= policy.max_ejection_percent as usize * set.endpoints.len()
        };
        if endpoint.record_outcome(success, policy, may_eject) {
            tracing::warn!(service = %self.name, endpoint = %endpoint.addr, ejections = endpoint.ejection_count(), "outlier detection ejected endpoint");
        }
    }
}

enum AttemptError {
    Connect(String),
    Timeout(Duration),
    /// The gRPC call's deadline passed first.
    DeadlineExceeded,
    BodyTooLarge(u64),
    /// The client's body broke framing mid-stream (bad chunk): the client's fault.
    MalformedBody,
    Other(String),
}

impl AttemptError {
    /// The `error.type` of the attempt's span.
    fn kind(&self) -> &'static str {
        match self {
            AttemptError::Connect(_) => "connect_error",
            AttemptError::Timeout(_) => "timeout",
            AttemptError::DeadlineExceeded => "deadline_exceeded",
            AttemptError::BodyTooLarge(_) => "request_body_too_large",
            AttemptError::MalformedBody => "malformed_request_body",
            AttemptError::Other(_) => "upstream_reset",
        }
    }
}

fn classify(err: &SendError) -> AttemptError {
    let err = match err {
        SendError::Connect(message) => return AttemptError::Connect(message.clone()),
        SendError::Exchange(err) => err,
        SendError::Direct(err) => return AttemptError::Other(err.to_string()),
    };
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        match current.downcast_ref::<crate::pipeline::ClientBodyError>() {
            Some(crate::pipeline::ClientBodyError::TooLarge(limit)) => {
                return AttemptError::BodyTooLarge(*limit)
            }
            Some(crate::pipeline::ClientBodyError::Malformed(_)) => {
                return AttemptError::MalformedBody
            }
            None => {}
        }
        source = current.source();
    }
    let mut message = err.to_string();
    if let Some(cause) = std::error::Error::source(err) {
        message = format!("{message}: {cause}");
    }
    AttemptError::Other(message)
}

/// Resolve the configured endpoints now (startup and reload); names that do not resolve are
/// left out and retried by the DNS refresh task.
fn resolve_blocking(config: &ServiceConfig) -> Vec<Arc<Endpoint>> {
    let mut endpoints = Vec::new();
    for entry in &config.endpoints.value {
        let address = &entry.address.value;
        match address.parse::<SocketAddr>() {
            Ok(addr) => endpoints.push(Arc::new(Endpoint::new(addr, entry.weight))),
            Err(_) => match address.to_socket_addrs() {
                Ok(addrs) => {
                    endpoints.extend(addrs.map(|addr| Arc::new(Endpoint::new(addr, entry.weight))))
                }
                Err(err) => {
                    tracing::warn!(service = %config.name.value, %address, %err, "cannot resolve endpoint yet")
                }
            },
        }
    }
    endpoints
}

async fn dns_refresh_loop(service: Weak<Service>, every: Duration) {
    let mut ticker = tokio::time::interval(every.max(Duration::from_millis(100)));
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(service) = service.upgrade() else {
            return;
        };
        let current = service.endpoints.load_full();
        let mut next: Vec<Arc<Endpoint>> = Vec::new();
        let mut failed = false;
        for entry in &service.config.endpoints.value {
            let address = &entry.address.value;
            let resolved: Vec<SocketAddr> = match address.parse::<SocketAddr>() {
                Ok(addr) => vec![addr],
                Err(_) => match tokio::net::lookup_host(address.as_str()).await {
                    Ok(addrs) => addrs.collect(),
                    Err(err) => {
                        tracing::warn!(service = %service.name, %address, %err, "DNS refresh failed; keeping previous endpoints");
                        failed = true;
                        break;
                    }
                },
            };
            for addr in resolved {
                if !next.iter().any(|e| e.addr == addr) {
                    let existing = current.endpoints.iter().find(|e| e.addr == addr).cloned();
                    next.push(
                        existing.unwrap_or_else(|| Arc::new(Endpoint::new(addr, entry.weight))),
                    );
                }
            }
        }
        if failed {
            continue;
        }
        let changed = next.len() != current.endpoints.len()
            || next
                .iter()
                .zip(current.endpoints.iter())
                .any(|(a, b)| a.addr != b.addr);
        if changed {
            tracing::info!(service = %service.name, endpoints = next.len(), "DNS refresh changed endpoints");
            service
                .endpoints
                .store(Arc::new(EndpointSet::new(next, service.balancer.policy())));
        }
    }
}

/// Close pooled connections that stayed idle past `timeouts.idle`.
async fn prune_idle_connections(service: Weak<Service>) {
    let Some(idle) = service.upgrade().map(|s| s.config.timeouts.idle.0) else {
        return;
    };
    let mut ticker = tokio::time::interval((idle / 2).max(Duration::from_millis(100)));
    loop {
        ticker.tick().await;
        let Some(service) = service.upgrade() else {
            return;
        };
        let idle_ms = idle.as_millis() as u64;
        for endpoint in &service.endpoints.load().endpoints {
            endpoint.pool.prune(idle_ms);
        }
    }
}

async fn health_check_loop(service: Weak<Service>, check: gatehouse_config::HealthCheck) {
    let mut ticker = tokio::time::interval(check.interval.0.max(Duration::from_millis(10)));
    loop {
        ticker.tick().await;
        let Some(service) = service.upgrade() else {
            return;
        };
        let set = service.endpoints.load_full();
        let probes = set.endpoints.iter().map(|endpoint| {
            let service = &service;
            let check = &check;
            async move {
                let passed = service.probe(endpoint, check).await;
                endpoint.record_check(passed, check.healthy_threshold, check.unhealthy_threshold);
            }
        });
        futures_util::future::join_all(probes).await;
    }
}

impl Service {
    /// The request target: origin form for HTTP/1.1; HTTP/2 carries scheme and authority.
    fn request_uri(
        &self,
        endpoint: &Endpoint,
        path_and_query: http::uri::PathAndQuery,
    ) -> Result<Uri, http::Error> {
        match self.config.protocol {
            UpstreamProtocol::Http1 => Uri::builder().path_and_query(path_and_query).build(),
            UpstreamProtocol::Http2 => Uri::builder()
                .scheme(self.scheme.clone())
                .authority(endpoint.authority.clone())
                .path_and_query(path_and_query)
                .build(),
        }
    }

    async fn probe(&self, endpoint: &Arc<Endpoint>, check: &gatehouse_config::HealthCheck) -> bool {
        if let Some(grpc) = &check.grpc {
            return self.probe_grpc(endpoint, check, grpc).await;
        }
        let Ok(path) = http::uri::PathAndQuery::try_from(check.path.as_str()) else {
            return false;
        };
        let Ok(uri) = self.request_uri(endpoint, path) else {
            return false;
        };
        let mut request = Request::new(OutgoingBody::Buffered(Bytes::new()));
        *request.uri_mut() = uri;
        if self.config.protocol == UpstreamProtocol::Http2 {
            *request.version_mut() = Version::HTTP_2;
        }
        let headers = request.headers_mut();
        headers.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("gatehouse-health-check"),
        );
        headers.insert(
            http::header::HOST,
            http::HeaderValue::from_str(endpoint.authority.as_str())
                .unwrap_or_else(|_| http::HeaderValue::from_static("localhost")),
        );
        let exchange = async {
            let response = self.connector.send(endpoint, request).await.ok()?;
            let healthy = response.status().is_success();
            // Read the (small) body so the connection can be reused.
            http_body_util::BodyExt::collect(http_body_util::Limited::new(
                response.into_body(),
                64 << 10,
            ))
            .await
            .ok()?;
            Some(healthy)
        };
        matches!(
            tokio::time::timeout(check.timeout.0, exchange).await,
            Ok(Some(true))
        )
    }

    /// A `grpc.health.v1.Health/Check` call: healthy when the answer is `SERVING`.
    async fn probe_grpc(
        &self,
        endpoint: &Arc<Endpoint>,
        check: &gatehouse_config::HealthCheck,
        grpc: &gatehouse_config::GrpcHealthCheck,
    ) -> bool {
        let authority = match &grpc.authority {
            Some(authority) => match http::uri::Authority::try_from(authority.as_str()) {
                Ok(authority) => authority,
                Err(_) => return false,
            },
            None => endpoint.authority.clone(),
        };
        let Ok(uri) = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(authority)
            .path_and_query(grpc::health::CHECK_PATH)
            .build()
        else {
            return false;
        };
        let mut request = Request::new(OutgoingBody::Buffered(grpc::health::check_request(
            &grpc.service,
        )));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_2;
        let headers = request.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        headers.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("gatehouse-health-check"),
        );
        let exchange = async {
            let response = self.connector.send(endpoint, request).await.ok()?;
            if response.status() != http::StatusCode::OK {
                return Some(false);
            }
            let head_status = response
                .headers()
                .get(grpc::GRPC_STATUS)
                .map(grpc::Code::from_header);
            let collected = http_body_util::BodyExt::collect(http_body_util::Limited::new(
                response.into_body(),
                64 << 10,
            ))
            .await
            .ok()?;
            let status = collected
                .trailers()
                .and_then(|t| t.get(grpc::GRPC_STATUS))
                .map(grpc::Code::from_header)
                .or(head_status);
            Some(grpc::health::is_serving(status, &collected.to_bytes()))
        };
        matches!(
            tokio::time::timeout(check.timeout.0, exchange).await,
            Ok(Some(true))
        )
    }
}
