//! Prometheus metrics (prometheus-client). Labels are bounded by the configuration (route,
//! service, listener, endpoint names, status classes, problem codes), never by request data.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub service: String,
    pub method: String,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub route: String,
    pub consumer: String,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub route: String,
    /// `auth`, `rate_limit` or `quota`.
    pub policy: &'static str,
    /// `allowed` or `refused`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthorizationLabels {
    pub route: String,
    /// `allow`, `deny` or `audit_deny` (refused by the rules, let through in audit mode).
    pub decision: &'static str,
}

/// A mesh call seen by a sidecar or a gateway in the mesh: `inbound` (the peer is the
/// caller) or `outbound` (the peer is the called service), by the peer's SPIFFE ID.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MeshLabels {
    pub direction: &'static str,
    pub peer: String,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MeshPeerLabels {
    pub direction: &'static str,
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub route: String,
    /// `hit`, `miss`, `revalidated`, `refresh` or `bypass`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub route: String,
    /// The gRPC status name (`OK`, `UNAVAILABLE`, ...).
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

type HistogramFamily<L> = Family<L, LatencyHistogram>;

/// Latency bucket bounds in nanoseconds: half a millisecond to ten seconds.
const LATENCY_BOUNDS_NANOS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A latency histogram (seconds) with fixed buckets, recorded with two relaxed atomic
/// additions. prometheus-client's `Histogram` takes a mutex for each observation, and a
/// request makes three.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram(Arc<LatencyCounts>);

#[derive(Debug, Default)]
struct LatencyCounts {
    /// Observations per bucket (not cumulative); the last bucket is `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS_NANOS.len() + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(LATENCY_BOUNDS_NANOS.len());
        self.0.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(f64::INFINITY, 0u64); LATENCY_BOUNDS_NANOS.len() + 1];
        let mut count = 0;
        for (index, (bound, observed)) in buckets.iter_mut().enumerate() {
            if let Some(nanos) = LATENCY_BOUNDS_NANOS.get(index) {
                *bound = *nanos as f64 / 1e9;
            }
            *observed = self.0.buckets[index].load(Ordering::Relaxed);
            count += *observed;
        }
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub consumer_requests: Family<ConsumerLabels, Counter>,
    pub policy_decisions: Family<DecisionLabels, Counter>,
    pub authorization_decisions: Family<AuthorizationLabels, Counter>,
    pub cache_lookups: Family<CacheLabels, Counter>,
    pub mesh_requests: Family<MeshLabels, Counter>,
    pub mesh_request_duration: HistogramFamily<MeshPeerLabels>,
    pub request_duration: HistogramFamily<RouteLabels>,
    pub upstream_duration: HistogramFamily<ServiceLabels>,
    pub gateway_duration: LatencyHistogram,
    pub bytes_received: Family<RouteLabels, Counter>,
    pub bytes_sent: Family<RouteLabels, Counter>,
    pub open_connections: Family<ListenerLabels, Gauge>,
    pub responses_by_code: Family<CodeLabels, Counter>,
    pub grpc_responses: Family<GrpcLabels, Counter>,
    pub access_log_dropped: Counter<u64, AtomicU64>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub config_version: Gauge,
    pub trace_spans: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gatehouse");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route, service, method and status class",
            requests.clone(),
        );
        let consumer_requests = Family::<ConsumerLabels, Counter>::default();
        registry.register(
            "consumer_requests",
            "Requests answered, by route, consumer and status class, on the routes listed in metrics.per_consumer",
            consumer_requests.clone(),
        );
        let policy_decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "policy_decisions",
            "Decisions of route policies, by route, policy (auth, rate_limit, quota) and result (allowed, refused)",
            policy_decisions.clone(),
        );
        let authorization_decisions = Family::<AuthorizationLabels, Counter>::default();
        registry.register(
            "authorization_decisions",
            "Decisions of route authorization policies (peer identity, method, path), by route and decision (allow, deny, audit_deny)",
            authorization_decisions.clone(),
        );
        let cache_lookups = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Requests on caching routes, by route and result (hit, miss, revalidated, refresh, bypass)",
            cache_lookups.clone(),
        );
        let mesh_requests = Family::<MeshLabels, Counter>::default();
        registry.register(
            "mesh_requests",
            "Mesh calls answered, by direction (inbound: peer is the caller; outbound: peer is the called service), peer SPIFFE ID and status class",
            mesh_requests.clone(),
        );
        let mesh_request_duration: HistogramFamily<MeshPeerLabels> = Family::default();
        registry.register_with_unit(
            "mesh_request_duration",
            "Time from the request head to the end of the response of mesh calls, by direction and peer SPIFFE ID",
            Unit::Seconds,
            mesh_request_duration.clone(),
        );
        let request_duration: HistogramFamily<RouteLabels> = Family::default();
        registry.register_with_unit(
            "request_duration",
            "Time from the request head to the end of the response, by route",
            Unit::Seconds,
            request_duration.clone(),
        );
        let upstream_duration: HistogramFamily<ServiceLabels> = Family::default();
        registry.register_with_unit(
            "upstream_duration",
            "Time from sending upstream to the upstream's response head, retries included, by service",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let gateway_duration = LatencyHistogram::default();
        registry.register_with_unit(
            "gateway_duration",
            "Time the gateway itself added to proxied requests (total minus upstream)",
            Unit::Seconds,
            gateway_duration.clone(),
        );
        let bytes_received = Family::<RouteLabels, Counter>::default();
        registry.register_with_unit(
            "request_body",
            "Request body bytes received (declared lengths), by route",
            Unit::Bytes,
            bytes_received.clone(),
        );
        let bytes_sent = Family::<RouteLabels, Counter>::default();
        registry.register_with_unit(
            "response_body",
            "Response body bytes sent, by route",
            Unit::Bytes,
            bytes_sent.clone(),
        );
        let open_connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "open_connections",
            "Client connections open, by listener",
            open_connections.clone(),
        );
        let responses_by_code = Family::<CodeLabels, Counter>::default();
        registry.register(
            "gateway_responses",
            "Answers the gateway generated itself, by problem code (authentication, rate limits, quotas, validation, upstream failures)",
            responses_by_code.clone(),
        );
        let grpc_responses = Family::<GrpcLabels, Counter>::default();
        registry.register(
            "grpc_responses",
            "gRPC calls answered, by route and the gRPC status they ended with",
            grpc_responses.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped_lines",
            "Access-log lines dropped because the writer fell behind",
            access_log_dropped.clone(),
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, by result",
            config_reloads.clone(),
        );
        let config_version = Gauge::default();
        registry.register(
            "config_version",
            "Version of the configuration in service",
            config_version.clone(),
        );
        let trace_spans = Family::<ResultLabels, Counter>::default();
        registry.register(
            "trace_spans",
            "Finished trace spans, by result: exported, failed (the collector refused or was unreachable), dropped (export queue full)",
            trace_spans.clone(),
        );
        // A gauge at 1, the classic `_info` convention: the OpenMetrics `info` type is
        // refused by Prometheus text-format parsers (promtool).
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "Gatehouse build, value 1", build_info);
        Self {
            registry,
            requests,
            consumer_requests,
            policy_decisions,
            authorization_decisions,
            cache_lookups,
            mesh_requests,
            mesh_request_duration,
            request_duration,
            upstream_duration,
            gateway_duration,
            bytes_received,
            bytes_sent,
            open_connections,
            responses_by_code,
            grpc_responses,
            access_log_dropped,
            config_reloads,
            config_version,
            trace_spans,
        }
    }

    /// Add metrics read at scrape time (the upstream state of the running snapshot).
    pub fn register_collector(
        &mut self,
        collector: Box<dyn prometheus_client::collector::Collector>,
    ) {
        self.registry.register_collector(collector);
    }

    /// The Prometheus text exposition (format 0.0.4), for `/metrics`.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut open_metrics = String::with_capacity(16 << 10);
        prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry)?;
        Ok(to_prometheus_text(&open_metrics))
    }
}

/// `2xx`, `4xx`, ... for a status code.
pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_class_index(status)]
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// Methods whose `requests` series a [`RouteSeries`] keeps a handle to.
const CACHED_METHODS: [http::Method; 7] = [
    http::Method::GET,
    http::Method::HEAD,
    http::Method::POST,
    http::Method::PUT,
    http::Method::DELETE,
    http::Method::PATCH,
    http::Method::OPTIONS,
];

/// One route's series of the per-route families, each looked up once. A family lookup
/// allocates the labels, hashes them and takes a lock; a request would do several. Series
/// are never removed from a family, so a kept handle is the series `/metrics` reads. One
/// per compiled route, used with one [`Metrics`] (the process's).
#[derive(Default)]
pub struct RouteSeries {
    duration: OnceLock<LatencyHistogram>,
    bytes_received: OnceLock<Counter>,
    bytes_sent: OnceLock<Counter>,
    /// `upstream_duration` of the route's own single service.
    upstream_duration: OnceLock<LatencyHistogram>,
    /// `requests` by [answered by the route's own service] × method × status class; boxed
    /// on first use, so a route nobody calls costs a pointer.
    requests: OnceLock<Box<[OnceLock<Counter>; 2 * CACHED_METHODS.len() * STATUS_CLASSES.len()]>>,
}

impl RouteSeries {
    pub fn duration(&self, metrics: &Metrics, route: &str) -> &LatencyHistogram {
        self.duration.get_or_init(|| {
            metrics.request_duration.get_or_create_owned(&RouteLabels {
                route: route.to_owned(),
            })
        })
    }

    pub fn bytes_received(&self, metrics: &Metrics, route: &str) -> &Counter {
        self.bytes_received.get_or_init(|| {
            metrics.bytes_received.get_or_create_owned(&RouteLabels {
                route: route.to_owned(),
            })
        })
    }

    pub fn bytes_sent(&self, metrics: &Metrics, route: &str) -> &Counter {
        self.bytes_sent.get_or_init(|| {
            metrics.bytes_sent.get_or_create_owned(&RouteLabels {
                route: route.to_owned(),
            })
        })
    }

    /// The upstream time of `service`: a kept handle when it is the route's own single
    /// service (`own_service`), the family otherwise (a split's draw, a version's service).
    pub fn observe_upstream(
        &self,
        metrics: &Metrics,
        service: &str,
        own_service: bool,
        latency: Duration,
    ) {
        let labels = || ServiceLabels {
            service: service.to_owned(),
        };
        if own_service {
            self.upstream_duration
                .get_or_init(|| metrics.upstream_duration.get_or_create_owned(&labels()))
                .observe(latency);
        } else {
            metrics
                .upstream_duration
                .get_or_create(&labels())
                .observe(latency);
        }
    }

    /// Counts one request of `route`. `service`: the label, which is either the route's
    /// own single service (`own_service`) or empty for a kept handle; any other (a split's
    /// draw, a version's service) and uncommon methods go through the family.
    pub fn count_request(
        &self,
        metrics: &Metrics,
        route: &str,
        service: &str,
        own_service: bool,
        method: &http::Method,
        status: u16,
    ) {
        let labels = || RequestLabels {
            route: route.to_owned(),
            service: service.to_owned(),
            method: method.as_str().to_owned(),
            status_class: status_class(status),
        };
        let method_index = CACHED_METHODS.iter().position(|m| m == method);
        match method_index {
            Some(method_index) if own_service || service.is_empty() => {
                let slots = self
                    .requests
                    .get_or_init(|| Box::new(std::array::from_fn(|_| OnceLock::new())));
                let index = ((own_service as usize * CACHED_METHODS.len()) + method_index)
                    * STATUS_CLASSES.len()
                    + status_class_index(status);
                slots[index]
                    .get_or_init(|| metrics.requests.get_or_create_owned(&labels()))
                    .inc();
            }
            _ => {
                metrics.requests.get_or_create(&labels()).inc();
            }
        }
    }
}

/// The classic Prometheus text format from OpenMetrics text: counter families are named
/// with their `_total` suffix in `HELP` and `TYPE` (as their samples are), and `UNIT` and
/// `EOF` lines are left out. Every Prometheus version and `promtool` read this format.
pub fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routes_kept_handles_count_in_the_families_series() {
        let metrics = Metrics::new();
        let series = RouteSeries::default();
        let get = http::Method::GET;
        let purge = http::Method::from_bytes(b"PURGE").unwrap();
        for _ in 0..3 {
            series.count_request(&metrics, "books", "catalog", true, &get, 200);
        }
        series.count_request(&metrics, "books", "", false, &get, 404);
        series.count_request(&metrics, "books", "catalog-v2", false, &get, 200);
        series.count_request(&metrics, "books", "catalog", true, &purge, 503);
        series
            .duration(&metrics, "books")
            .observe(Duration::from_millis(2));
        series.bytes_sent(&metrics, "books").inc_by(100);
        series.bytes_sent(&metrics, "books").inc_by(20);
        let count = |service: &str, method: &str, status_class: &'static str| {
            metrics
                .requests
                .get_or_create(&RequestLabels {
                    route: "books".into(),
                    service: service.into(),
                    method: method.into(),
                    status_class,
                })
                .get()
        };
        assert_eq!(count("catalog", "GET", "2xx"), 3);
        assert_eq!(count("", "GET", "4xx"), 1);
        assert_eq!(count("catalog-v2", "GET", "2xx"), 1);
        assert_eq!(count("catalog", "PURGE", "5xx"), 1);
        let books = RouteLabels {
            route: "books".into(),
        };
        assert_eq!(metrics.bytes_sent.get_or_create(&books).get(), 120);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("route=\"books\"") && text.contains("status_class=\"2xx\""),
            "{text}"
        );
    }

    #[test]
    fn latency_lands_in_the_first_bucket_at_or_above_it() {
        let metrics = Metrics::new();
        for latency in [
            Duration::from_micros(500),
            Duration::from_micros(501),
            Duration::from_millis(3),
            Duration::from_secs(11),
        ] {
            metrics.gateway_duration.observe(latency);
        }
        let text = metrics.encode().unwrap();
        let sample = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{name} is missing from\n{text}"))
                .to_owned()
        };
        let bucket = |le: &str| {
            sample(&format!(
                "gatehouse_gateway_duration_seconds_bucket{{le=\"{le}\"}}"
            ))
        };
        assert_eq!(bucket("0.0005"), "1", "a bound is inclusive");
        assert_eq!(bucket("0.001"), "2");
        assert_eq!(bucket("0.0025"), "2");
        assert_eq!(bucket("0.005"), "3");
        assert_eq!(bucket("10.0"), "3");
        assert_eq!(bucket("+Inf"), "4");
        assert_eq!(sample("gatehouse_gateway_duration_seconds_count"), "4");
        assert_eq!(
            sample("gatehouse_gateway_duration_seconds_sum"),
            "11.004001"
        );
    }

    #[test]
    fn counters_carry_their_total_suffix_in_help_and_type() {
        let text = to_prometheus_text(
            "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total 3\n# HELP x_seconds Time.\n# TYPE x_seconds histogram\n# UNIT x_seconds seconds\nx_seconds_count 1\n# EOF\n",
        );
        assert_eq!(
            text,
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total 3\n# HELP x_seconds Time.\n# TYPE x_seconds histogram\nx_seconds_count 1\n"
        );
    }
}
