//! The YAML configuration model. Every type here is documented in `docs/configuration.md`;
//! the JSON Schema (`gatehouse schema`) is derived from these definitions.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize, Serializer};
use serde_saphyr::{Location, Spanned};

use crate::auth::{
    AuthenticationConfig, ClientCertificateAuth, ConsumerConfig, IpFilterConfig, RouteAuth,
};
use crate::authorization::RouteAuthorization;
use crate::caching::{CacheConfig, RouteCacheConfig};
use crate::grpc::{GrpcTranscodeConfig, ProtoSource};
use crate::shaping::{CorsConfig, MirrorConfig, OpenApiSpec, RequestShaping, RouteOpenApi};
use crate::telemetry::{AccessLogConfig, MetricsConfig, TracingConfig};
use crate::traffic::{QuotaConfig, QuotaStoreConfig, RateLimitPolicy, RedisConfig};
use crate::transform::TransformConfig;
use crate::units::{ByteSize, HumanDuration};
use crate::versioning::ApiConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The admin listener (health, readiness, config versions and reload).
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Where the gateway accepts client traffic.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// Upstream groups the routes send traffic to.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Routes, matched by host, path, method, headers and query.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Behaviour on SIGTERM and SIGINT.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Callers of the APIs and their credentials.
    #[serde(default)]
    pub consumers: Vec<ConsumerConfig>,
    /// Authentication methods and identity forwarding.
    #[serde(default)]
    pub authentication: AuthenticationConfig,
    /// Rate-limit policies by name; routes apply them with `rate_limits: [NAME]`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RateLimitPolicy>")]
    pub rate_limits: BTreeMap<String, Spanned<RateLimitPolicy>>,
    /// The Redis server for cluster-mode rate limits and quotas.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// Quota policies by name; routes apply them with `quotas: [NAME]`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, QuotaConfig>")]
    pub quotas: BTreeMap<String, Spanned<QuotaConfig>>,
    /// Where local quota counters are saved across restarts.
    #[serde(default)]
    pub quota_store: Option<QuotaStoreConfig>,
    /// OpenAPI documents by name, for request and response validation.
    #[serde(default)]
    pub openapi: BTreeMap<String, OpenApiSpec>,
    /// The access log (one line per finished request); absent: no access log.
    #[serde(default)]
    pub access_log: Option<AccessLogConfig>,
    /// Prometheus metrics on the admin listener.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The response cache's memory; routes opt in with `cache`.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Versioned APIs, by name; routes join one with `api`.
    #[serde(default)]
    pub apis: BTreeMap<String, ApiConfig>,
    /// Protobuf descriptors by name, for routes that transcode HTTP/JSON to gRPC.
    #[serde(default)]
    pub protos: BTreeMap<String, ProtoSource>,
    /// The durable store of consumers and API keys issued at run time (SQLite or
    /// PostgreSQL); without it, consumers come from this file only.
    #[serde(default)]
    pub store: Option<StoreConfig>,
    /// The developer portal (needs `store`): catalog, API reference, sign-up, applications,
    /// keys, subscriptions, usage and invoices.
    #[serde(default)]
    pub portal: Option<PortalConfig>,
    /// Distributed tracing with OTLP export; absent: trace context passes through untouched.
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
    /// Join the service mesh: this workload's identity and its control plane
    /// (docs/mesh.md). Needed by `gatehouse sidecar`; a gateway with it can call mesh
    /// services over mTLS with its own identity.
    #[serde(default)]
    pub mesh: Option<crate::mesh::MeshMembership>,
    /// The sidecar role's listeners (`gatehouse sidecar`).
    #[serde(default)]
    pub sidecar: Option<crate::mesh::SidecarConfig>,
    /// The control-plane role (`gatehouse control`).
    #[serde(default)]
    pub control: Option<crate::mesh::ControlConfig>,
    /// Where relative file paths (certificates, keys) are resolved: the configuration
    /// file's directory. Not part of the file.
    #[serde(skip)]
    #[schemars(skip)]
    pub base_dir: Option<std::path::PathBuf>,
}

impl Config {
    /// A path from the configuration, relative ones taken from the configuration's directory.
    pub fn resolve_path(&self, path: &str) -> std::path::PathBuf {
        match &self.base_dir {
            Some(base) if std::path::Path::new(path).is_relative() => base.join(path),
            _ => std::path::PathBuf::from(path),
        }
    }
}

/// A secret value (token, password). Serialized as `<redacted>` in config dumps.
#[derive(Clone, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Socket address of the admin listener.
    #[serde(default = "default_admin_listen")]
    #[schemars(with = "String")]
    pub listen: Spanned<String>,
    /// Bearer token required for everything but `/health` and `/ready`. Use `${ENV_VAR}`.
    /// When absent, `GATEHOUSE_ADMIN_TOKEN` from the environment is used; with neither,
    /// protected admin endpoints answer 403.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Allow binding the admin listener to a non-loopback address.
    #[serde(default)]
    pub allow_remote: bool,
}

fn default_admin_listen() -> Spanned<String> {
    Spanned::new(
        "127.0.0.1:9901".to_owned(),
        Location::UNKNOWN,
        Location::UNKNOWN,
    )
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique name, used in logs and metrics.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Socket address to bind, e.g. `0.0.0.0:8080`.
    #[schemars(with = "String")]
    pub listen: Spanned<String>,
    /// Terminate TLS on this listener.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Terminate mesh mTLS with this workload's identity (needs `mesh`): callers must present
    /// a certificate from the mesh's CA, and its SPIFFE ID is the peer identity that route
    /// `authorization` checks. Not with `tls`.
    #[serde(default)]
    pub mesh: bool,
    /// Answer every request with a redirect to HTTPS instead of routing it.
    #[serde(default)]
    pub redirect_to_https: Option<HttpsRedirect>,
    /// Accept HTTP/2 (h2c prior knowledge on plain listeners, ALPN `h2` with TLS).
    #[serde(default = "yes")]
    pub http2: bool,
    /// Connection and request limits.
    #[serde(default)]
    pub limits: ListenerLimits,
    /// Peers (CIDRs) whose `X-Forwarded-*` headers are trusted and extended.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub trusted_proxies: Vec<Spanned<String>>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificates with their keys (PEM). Chosen by SNI; the first one is the default.
    pub certificates: Vec<CertificateFiles>,
    /// Lowest TLS version accepted: `"1.2"` or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Ask clients for certificates (mutual TLS).
    #[serde(default)]
    pub client_auth: Option<ClientCertificateAuth>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// Path to the PEM certificate chain (leaf first).
    #[schemars(with = "String")]
    pub cert: Spanned<String>,
    /// Path to the PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[schemars(with = "String")]
    pub key: Spanned<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpsRedirect {
    /// Port of the HTTPS listener (omitted from the URL when 443).
    #[serde(default = "default_https_port")]
    pub port: u16,
    /// Redirect status: 301, 302, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
}

fn default_https_port() -> u16 {
    443
}
fn default_redirect_status() -> u16 {
    308
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerLimits {
    /// Time a client has to send a complete request head (slowloris defence).
    #[serde(default = "d10s")]
    pub header_read_timeout: HumanDuration,
    /// An idle keep-alive connection is closed after this long.
    #[serde(default = "d60s")]
    pub idle_timeout: HumanDuration,
    /// Largest request head (request line and headers) accepted.
    #[serde(default = "default_max_header")]
    pub max_header_bytes: ByteSize,
    /// Largest request body accepted; `0` means unlimited.
    #[serde(default = "default_max_body")]
    pub max_request_body: ByteSize,
    /// Connections open at once; further clients wait in the accept queue (read when the
    /// listener is bound: a change needs a restart).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: d10s(),
            idle_timeout: d60s(),
            max_header_bytes: default_max_header(),
            max_request_body: default_max_body(),
            max_connections: default_max_connections(),
        }
    }
}

fn d10s() -> HumanDuration {
    HumanDuration::secs(10)
}
fn d60s() -> HumanDuration {
    HumanDuration::secs(60)
}
fn default_max_header() -> ByteSize {
    ByteSize(64 << 10)
}
fn default_max_body() -> ByteSize {
    ByteSize(10 << 20)
}
fn default_max_connections() -> u32 {
    10_000
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After SIGTERM or SIGINT, in-flight requests get this long to finish (read at start-up).
    #[serde(default = "default_drain")]
    pub drain_timeout: HumanDuration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout: default_drain(),
        }
    }
}

fn default_drain() -> HumanDuration {
    HumanDuration::secs(30)
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Unique name, referenced by routes.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Upstream endpoints: `IP:PORT` or `HOSTNAME:PORT` (re-resolved every `dns_refresh`).
    /// Not with `mesh`, whose endpoints come from the registry.
    #[serde(default = "no_endpoints")]
    #[schemars(with = "Vec<EndpointConfig>")]
    pub endpoints: Spanned<Vec<EndpointConfig>>,
    /// A mesh service: endpoints from the control plane's registry, reached over mTLS with
    /// this workload's identity, the peer's certificate checked for the service's identity.
    #[serde(default)]
    pub mesh: Option<ServiceMesh>,
    /// How an endpoint is chosen for each request.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Protocol spoken to the endpoints.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Originate TLS to the endpoints.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    #[serde(default)]
    pub timeouts: UpstreamTimeouts,
    /// Active health checking.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Passive outlier detection: eject endpoints that fail repeatedly.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub retries: RetryPolicy,
    /// How often DNS names among the endpoints are resolved again.
    #[serde(default = "default_dns_refresh")]
    pub dns_refresh: HumanDuration,
    /// Requests to this service in flight at once, over all routes; beyond it, 503 with
    /// `Retry-After` (load shedding).
    #[serde(default)]
    pub max_in_flight: Option<u32>,
}

fn no_endpoints() -> Spanned<Vec<EndpointConfig>> {
    Spanned::new(Vec::new(), Location::UNKNOWN, Location::UNKNOWN)
}

/// Which mesh service (and which of its instances) a service stands for.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceMesh {
    /// The mesh service's name.
    pub service: String,
    #[serde(default = "crate::mesh::default_namespace")]
    pub namespace: String,
    /// Only instances with all these labels (a subset, e.g. `version: v2`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_dns_refresh() -> HumanDuration {
    HumanDuration::secs(30)
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `IP:PORT` or `HOSTNAME:PORT`.
    #[schemars(with = "String")]
    pub address: Spanned<String>,
    /// Relative share of traffic for weighted policies (1 to 1000).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two random choices, weighing in-flight requests and peak-EWMA latency.
    LeastRequest,
    /// Consistent hashing (a ring) on a request property: sticky endpoint per key.
    ConsistentHash(HashOn),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    /// Value of this request header.
    Header(String),
    /// Value of this cookie.
    Cookie(String),
    /// The client's IP address (after trusted-proxy handling).
    ClientIp,
    /// The request path as sent upstream (after rewrites).
    Path,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2 (h2c prior knowledge without TLS, ALPN `h2` with TLS). Needed for gRPC.
    Http2,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM bundle of CAs trusted for the endpoints' certificates (default: none, so set it).
    #[schemars(with = "String")]
    pub ca: Spanned<String>,
    /// Name sent as SNI and verified in the certificate. Without it the endpoint's IP
    /// address is verified, which few certificates cover: set it.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Client certificate for mutual TLS.
    #[serde(default)]
    pub client_certificate: Option<CertificateFiles>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTimeouts {
    /// TCP connection establishment (a TLS handshake counts against `request`).
    #[serde(default = "d2s")]
    pub connect: HumanDuration,
    /// From asking for a connection until the response headers arrive, per attempt.
    #[serde(default = "d30s")]
    pub request: HumanDuration,
    /// A pooled keep-alive connection unused this long is closed.
    #[serde(default = "d60s")]
    pub idle: HumanDuration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self {
            connect: d2s(),
            request: d30s(),
            idle: d60s(),
        }
    }
}

fn d2s() -> HumanDuration {
    HumanDuration::secs(2)
}
fn d30s() -> HumanDuration {
    HumanDuration::secs(30)
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path requested with GET; a 2xx answer is healthy. Not used with `grpc`.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Check with the gRPC health checking protocol (`grpc.health.v1.Health/Check`)
    /// instead of a GET: only `SERVING` is healthy. Needs `protocol: http2`.
    #[serde(default)]
    pub grpc: Option<GrpcHealthCheck>,
    #[serde(default = "d5s")]
    pub interval: HumanDuration,
    #[serde(default = "d1s")]
    pub timeout: HumanDuration,
    /// Consecutive successes that bring an unhealthy endpoint back.
    #[serde(default = "two")]
    pub healthy_threshold: u32,
    /// Consecutive failures that mark an endpoint unhealthy.
    #[serde(default = "three")]
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcHealthCheck {
    /// The service name asked about; empty (the default) asks about the whole server.
    #[serde(default)]
    pub service: String,
    /// `:authority` of the check, when the server routes on it (default: the endpoint's
    /// address).
    #[serde(default)]
    pub authority: Option<String>,
}

/// Where the store lives and how often gateways look for changes.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite:PATH` (a file, created if missing; relative to the working directory) or
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE`. Usually from the environment, since it
    /// may hold a password: `${GATEHOUSE_STORE_URL}`.
    #[schemars(with = "String")]
    pub url: Spanned<Secret>,
    /// How often the store's version is checked. PostgreSQL also announces changes at
    /// once (LISTEN/NOTIFY); this is SQLite's only way and PostgreSQL's fallback.
    #[serde(default = "default_store_poll")]
    pub poll_interval: HumanDuration,
    /// Where the rate limits and quotas of API plans count: `local` (in this process;
    /// quotas saved to `quota_store` when it is set) or `cluster` (shared by the fleet
    /// through the top-level `redis`, falling back to local counts while it is down).
    #[serde(default)]
    pub plan_limits: crate::traffic::LimitMode,
    /// How often each gateway writes the usage it metered (requests under API product
    /// subscriptions) to the store. What is not written yet is lost if the process dies.
    #[serde(default = "default_usage_flush")]
    pub usage_flush_interval: HumanDuration,
    /// Send metered usage to a billing system: every flush becomes a signed POST.
    #[serde(default)]
    pub usage_webhook: Option<UsageWebhookConfig>,
}

/// The developer portal's listener and behaviour (docs/portal.md).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortalConfig {
    /// Socket address of the portal listener.
    #[schemars(with = "String")]
    pub listen: Spanned<String>,
    /// The portal's address as developers reach it (links in emails). `https://` makes
    /// the session cookies `Secure`. Default `http://` and the listen address.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Where the APIs are called, shown in the reference and used by the try-it console
    /// (default: the first listener).
    #[serde(default)]
    pub gateway_url: Option<String>,
    /// Shown in every page's header and title.
    #[serde(default = "default_portal_title")]
    pub title: String,
    /// How long a sign-in lasts.
    #[serde(default = "default_session_ttl")]
    pub session_ttl: HumanDuration,
    /// The overlaps a developer may choose when rotating a key (the old key works that
    /// long).
    #[serde(default = "default_rotation_overlaps")]
    pub rotation_overlaps: Vec<HumanDuration>,
    /// How the portal sends verification and password-reset emails.
    #[serde(default)]
    pub mailer: MailerConfig,
}

fn default_portal_title() -> String {
    "API portal".to_owned()
}

fn default_session_ttl() -> HumanDuration {
    HumanDuration::secs(12 * 3600)
}

fn default_rotation_overlaps() -> Vec<HumanDuration> {
    vec![
        HumanDuration::secs(3600),
        HumanDuration::secs(24 * 3600),
        HumanDuration::secs(7 * 24 * 3600),
    ]
}

/// Where portal emails go: an outbox directory (the default), the log, or SMTP.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MailerConfig {
    /// `outbox` (each message an `.eml` file in `outbox_dir`), `smtp` (sent through
    /// `smtp`) or `log` (each message in the log, links included: for development only).
    #[serde(default)]
    pub kind: MailerKind,
    /// The SMTP server, for `kind: smtp`.
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
    /// Directory of the outbox, created if missing.
    #[serde(default = "default_outbox_dir")]
    pub outbox_dir: String,
    /// The `From` of every message.
    #[serde(default = "default_mail_from")]
    pub from: String,
}

impl Default for MailerConfig {
    fn default() -> Self {
        Self {
            kind: MailerKind::default(),
            smtp: None,
            outbox_dir: default_outbox_dir(),
            from: default_mail_from(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MailerKind {
    #[default]
    Outbox,
    Smtp,
    Log,
}

/// An SMTP server (a relay, or a provider's submission endpoint).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// Default: 587 for `starttls`, 465 for `tls`, 25 for `none`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `starttls` (upgrade after connecting; refused without it), `tls` (TLS from the
    /// start) or `none` (plain: a relay on the same host only).
    #[serde(default)]
    pub security: SmtpSecurity,
    /// Sign in with these (usually `${ENV_VAR}`); absent: no authentication.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// For the whole exchange of one message.
    #[serde(default = "d5s")]
    pub timeout: HumanDuration,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    #[default]
    Starttls,
    Tls,
    None,
}

fn default_outbox_dir() -> String {
    "gatehouse-outbox".to_owned()
}

fn default_mail_from() -> String {
    "API portal <no-reply@localhost>".to_owned()
}

/// A webhook that receives metered usage (docs/billing.md).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageWebhookConfig {
    /// `http://` or `https://` URL that receives `POST` deliveries.
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    /// Key of the HMAC-SHA-256 `Gatehouse-Signature`; at least 16 characters. Usually
    /// `${ENV_VAR}`.
    #[schemars(with = "String")]
    pub secret: Spanned<Secret>,
    /// For the whole exchange of one delivery.
    #[serde(default = "d5s")]
    pub timeout: HumanDuration,
    /// PEM bundle to trust for an `https` URL instead of the Mozilla roots.
    #[serde(default)]
    pub ca: Option<String>,
}

fn default_usage_flush() -> HumanDuration {
    HumanDuration::secs(5)
}

fn default_store_poll() -> HumanDuration {
    HumanDuration(std::time::Duration::from_millis(500))
}

fn default_health_path() -> String {
    "/health".to_owned()
}
fn d5s() -> HumanDuration {
    HumanDuration::secs(5)
}
fn d1s() -> HumanDuration {
    HumanDuration::secs(1)
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive failures (connect errors, timeouts, 5xx) that eject an endpoint.
    #[serde(default = "five")]
    pub consecutive_failures: u32,
    /// First ejection time; doubled on each further ejection of the same endpoint.
    #[serde(default = "d30s")]
    pub base_ejection_time: HumanDuration,
    /// Upper bound for the growing ejection time.
    #[serde(default = "d300s")]
    pub max_ejection_time: HumanDuration,
    /// At most this share of a service's endpoints is ejected at once (percent).
    #[serde(default = "fifty")]
    pub max_ejection_percent: u32,
}

fn five() -> u32 {
    5
}
fn fifty() -> u32 {
    50
}
fn d300s() -> HumanDuration {
    HumanDuration::secs(300)
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 disables retries).
    #[serde(default = "one")]
    pub attempts: u32,
    /// Upstream statuses that are retried. Connect failures are retried for any method
    /// whose body can be replayed; all retries count against `attempts` and the budget.
    #[serde(default = "default_retry_statuses")]
    pub on_status: Vec<u16>,
    /// Also retry non-idempotent methods (POST, PATCH).
    #[serde(default)]
    pub non_idempotent: bool,
    /// Delay before the first retry; doubles with each retry, with jitter.
    #[serde(default = "d25ms")]
    pub backoff: HumanDuration,
    /// Request bodies up to this size are buffered so they can be replayed.
    #[serde(default = "default_replay")]
    pub replay_buffer: ByteSize,
    /// Retries may add at most this share of live traffic (0.2 = 20%) ...
    #[serde(default = "default_budget_ratio")]
    pub budget_ratio: f64,
    /// ... plus this many retries per second regardless of traffic.
    #[serde(default = "ten")]
    pub budget_min_per_second: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 1,
            on_status: default_retry_statuses(),
            non_idempotent: false,
            backoff: d25ms(),
            replay_buffer: default_replay(),
            budget_ratio: default_budget_ratio(),
            budget_min_per_second: ten(),
        }
    }
}

fn default_retry_statuses() -> Vec<u16> {
    vec![502, 503, 504]
}
fn d25ms() -> HumanDuration {
    HumanDuration::millis(25)
}
fn default_replay() -> ByteSize {
    ByteSize(64 << 10)
}
fn default_budget_ratio() -> f64 {
    0.2
}
fn ten() -> u32 {
    10
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name shown by the admin API (`/admin/routes`).
    #[serde(default)]
    pub name: Option<String>,
    /// What the request must look like; an empty match takes everything.
    #[serde(default = "match_everything", rename = "match")]
    #[schemars(with = "RouteMatch")]
    pub matches: Spanned<RouteMatch>,
    /// Breaks ties: among matching routes of the same kind, higher priority wins first.
    #[serde(default)]
    pub priority: i32,
    /// Forward to this service.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub service: Option<Spanned<String>>,
    /// Forward to one of several services, drawn per request by weight (traffic splits,
    /// canaries), instead of `service`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<WeightedBackend>>")]
    pub backends: Option<Spanned<Vec<WeightedBackend>>>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default)]
    pub redirect: Option<RedirectAction>,
    /// Answer with a fixed response instead of forwarding.
    #[serde(default)]
    pub respond: Option<DirectResponse>,
    /// Rewrite the path before forwarding.
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    /// Send this `Host` upstream instead of the client's.
    #[serde(default)]
    pub host_rewrite: Option<String>,
    /// Who may use this route: authentication methods and access rules.
    #[serde(default)]
    pub auth: Option<RouteAuth>,
    /// Client IP allow and deny lists.
    #[serde(default)]
    pub ip_filter: Option<IpFilterConfig>,
    /// Which peers (by the SPIFFE ID of their verified client certificate), methods and
    /// paths may use this route; checked right after routing.
    #[serde(default)]
    pub authorization: Option<RouteAuthorization>,
    /// Rate-limit policies (names under the top-level `rate_limits`), all applied.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub rate_limits: Vec<Spanned<String>>,
    /// Requests of this route in flight at once; beyond it, 503 with `Retry-After`.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Quota policies (names under the top-level `quotas`), all applied.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub quotas: Vec<Spanned<String>>,
    /// What the route accepts: body and head size, methods, content types.
    #[serde(default)]
    pub request: Option<RequestShaping>,
    /// CORS answered at the edge.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    /// Copy a share of the requests to another service.
    #[serde(default)]
    pub mirror: Option<MirrorConfig>,
    /// Validate requests (and optionally responses) against an OpenAPI document.
    #[serde(default)]
    pub openapi: Option<RouteOpenApi>,
    /// Serve repeated requests from the response cache.
    #[serde(default)]
    pub cache: Option<RouteCacheConfig>,
    /// Change headers, query, status and JSON bodies on the way through.
    #[serde(default)]
    pub transform: Option<TransformConfig>,
    /// Serve HTTP/JSON requests by calling the service's gRPC methods, as their
    /// `google.api.http` annotations map them.
    #[serde(default)]
    pub grpc_transcode: Option<GrpcTranscodeConfig>,
    /// The versioned API this route serves: the request's version is chosen, upgraded to
    /// the version the backend speaks, and the answer downgraded back.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub api: Option<Spanned<String>>,
}

impl RouteConfig {
    /// Whether the route forwards upstream (`service` or `backends`) rather than answering
    /// by itself.
    pub fn forwards(&self) -> bool {
        self.service.is_some() || self.backends.is_some()
    }

    /// The route's name, or `route-N` (N: its position in the file, from 0) when unnamed:
    /// how logs, metrics and the admin API refer to it.
    pub fn name_or_default(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("route-{index}"))
    }
}

/// One service of a route's traffic split.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedBackend {
    /// The service (a name under `services`).
    #[schemars(with = "String")]
    pub service: Spanned<String>,
    /// Relative share of the route's requests, 0 to 1000 (0: none, to drain a backend
    /// without removing it). At least one backend of a route needs a weight above 0.
    #[serde(default = "one")]
    pub weight: u32,
}

fn match_everything() -> Spanned<RouteMatch> {
    Spanned::new(RouteMatch::default(), Location::UNKNOWN, Location::UNKNOWN)
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Hosts: exact (`api.example.com`) or wildcard (`*.example.com`). Empty: any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The path matcher. Absent: any path.
    #[serde(default)]
    pub path: Option<PathMatch>,
    /// Methods (uppercase). Empty: any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Headers that must be present or match.
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    /// Query parameters that must be present or match.
    #[serde(default)]
    pub query: Vec<ValueMatch>,
    /// Listeners (by name) the request must have arrived on. Empty: any listener.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub listeners: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    /// The path is exactly this.
    Exact(String),
    /// The path starts with this, on a segment boundary (`/api` matches `/api` and `/api/x`, not `/apix`).
    Prefix(String),
    /// A template with captures: `/users/{id}`, `/files/{*rest}`.
    Template(String),
    /// A regular expression over the whole path (anchored); named groups are captures.
    Regex(String),
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    /// Header or query parameter name.
    pub name: String,
    /// Value must equal this.
    #[serde(default)]
    pub exact: Option<String>,
    /// Value must match this regular expression (anchored).
    #[serde(default)]
    pub regex: Option<String>,
    /// `false`: the header or parameter must be absent.
    #[serde(default = "yes")]
    pub present: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Remove the matched prefix (prefix routes); `/api/users` with prefix `/api` goes up as `/users`.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the matched prefix with this one.
    #[serde(default)]
    pub replace_prefix: Option<String>,
    /// New path from a template using the route's captures: `/v2/users/{id}`.
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedirectAction {
    /// Replace the scheme (`http`, `https`).
    #[serde(default)]
    pub scheme: Option<String>,
    /// Replace the host (may include a port).
    #[serde(default)]
    pub host: Option<String>,
    /// Replace the path (a template using the route's captures).
    #[serde(default)]
    pub path: Option<String>,
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    #[serde(default = "default_ok")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// Extra response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_ok() -> u16 {
    200
}
fn default_content_type() -> String {
    "text/plain; charset=utf-8".to_owned()
}
