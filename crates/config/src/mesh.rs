//! The service mesh in the configuration: membership of a workload (sidecar or gateway), the
//! sidecar's listeners, and the control plane's services, traffic policy and authorization.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::model::{OutlierDetection, RetryPolicy, Secret, ValueMatch};
use crate::units::HumanDuration;

/// How this process joins the mesh: who it is and where its control plane is.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeshMembership {
    /// The control plane's gRPC address, `HOST:PORT`.
    #[schemars(with = "String")]
    pub control: Spanned<String>,
    /// PEM file with the mesh's trust anchors (the control plane writes its root there, see
    /// `control.trust_anchors_out`): the control plane's certificate is verified against it
    /// before the join token is sent.
    #[schemars(with = "String")]
    pub trust_anchors: Spanned<String>,
    /// The mesh's SPIFFE trust domain.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Namespace part of this workload's identity.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Service (service account) part of this workload's identity:
    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service>`.
    #[schemars(with = "String")]
    pub service: Spanned<String>,
    /// The service's join token (`gatehouse control token`): needed for the first
    /// certificate; renewals authenticate with the current one.
    pub join_token: Secret,
}

pub fn default_trust_domain() -> String {
    "mesh.local".to_owned()
}

pub fn default_namespace() -> String {
    "default".to_owned()
}

/// The sidecar role (`gatehouse sidecar`): listeners around one local application.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SidecarConfig {
    /// Traffic from other workloads to the local application.
    pub inbound: SidecarInbound,
    /// Explicit local ports, each leading to one mesh service.
    #[serde(default)]
    pub outbound: Vec<SidecarOutbound>,
    /// A local HTTP proxy port: the application sends plain HTTP with `Host: <service>` (or
    /// sets it as its HTTP proxy) and the sidecar picks the mesh service by that name.
    #[serde(default)]
    pub http_proxy: Option<SidecarHttpProxy>,
    /// Labels this instance registers with (for example `version: v2` for a canary).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SidecarInbound {
    /// Where the sidecar accepts mTLS from other workloads, `IP:PORT`.
    #[schemars(with = "String")]
    pub listen: Spanned<String>,
    /// The address other workloads reach this listener at, registered with the control
    /// plane (default: `listen`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// The local application, `IP:PORT`.
    #[schemars(with = "String")]
    pub application: Spanned<String>,
    /// What the application speaks: `http1`, `http2` (gRPC included) or `tcp` (opaque
    /// bytes; authorization by caller identity only).
    #[serde(default)]
    pub protocol: MeshProtocol,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SidecarOutbound {
    /// Local address the application calls, `IP:PORT`.
    #[schemars(with = "String")]
    pub listen: Spanned<String>,
    /// The mesh service behind it (in the sidecar's namespace, or `service.namespace`).
    #[schemars(with = "String")]
    pub service: Spanned<String>,
    /// `http` (routes, retries, canaries) or `tcp` (opaque bytes over mTLS).
    #[serde(default)]
    pub protocol: PortProtocol,
}

/// What an application speaks to a sidecar port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PortProtocol {
    #[default]
    Http,
    /// Opaque TCP: passed through the mTLS tunnel untouched.
    Tcp,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SidecarHttpProxy {
    #[schemars(with = "String")]
    pub listen: Spanned<String>,
}

/// What a mesh service speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MeshProtocol {
    #[default]
    Http1,
    /// HTTP/2, gRPC included.
    Http2,
    /// Opaque TCP: bytes pass through the mTLS tunnel untouched (no HTTP policy).
    Tcp,
}

impl MeshProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            MeshProtocol::Http1 => "http1",
            MeshProtocol::Http2 => "http2",
            MeshProtocol::Tcp => "tcp",
        }
    }
}

/// The control-plane role (`gatehouse control`). Its state (CA, join tokens, registry)
/// lives in `store` (SQLite by default; PostgreSQL for a highly available pair).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// gRPC (TLS) address data planes connect to.
    #[schemars(with = "String")]
    pub listen: Spanned<String>,
    /// Names other than the listen IP the control plane's certificate covers.
    #[serde(default)]
    pub server_names: Vec<String>,
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Use this intermediate CA (PEM certificate and key) instead of a root the control
    /// plane generates and keeps in the store.
    #[serde(default)]
    pub ca: Option<crate::model::CertificateFiles>,
    /// Write the trust anchors (PEM) here at start-up, for members' `trust_anchors`.
    #[serde(default)]
    pub trust_anchors_out: Option<String>,
    /// PEM file of roots members trust besides the CA's own: the next root before the CA
    /// switches to it, or the previous one after (a CA rotation, docs/mesh.md).
    #[serde(default)]
    pub additional_trust_anchors: Option<String>,
    /// Lifetime of workload certificates; members renew at about two thirds of it.
    #[serde(default = "default_certificate_lifetime")]
    pub certificate_lifetime: HumanDuration,
    /// An instance whose sidecar stops sending heartbeats leaves the registry after this.
    #[serde(default = "default_lease")]
    pub lease: HumanDuration,
    /// Mesh services: their traffic policy, canary routes and who may call them.
    #[serde(default)]
    pub services: Vec<MeshServiceConfig>,
    /// Instances declared here instead of registered by a sidecar (workloads outside the
    /// mesh's sidecars that still hold mesh certificates).
    #[serde(default)]
    pub static_instances: Vec<StaticInstance>,
}

fn default_certificate_lifetime() -> HumanDuration {
    HumanDuration::secs(24 * 3600)
}

fn default_lease() -> HumanDuration {
    HumanDuration::secs(10)
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticInstance {
    pub service: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// `IP:PORT` of the instance's mTLS listener.
    pub address: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One mesh service's policy, pushed to every data plane that calls it (traffic) and to its
/// own sidecars (authorization).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeshServiceConfig {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub protocol: MeshProtocol,
    /// Per-attempt timeout for calls to this service.
    #[serde(default = "default_mesh_timeout")]
    pub timeout: HumanDuration,
    /// Retries (default: one, on connection failures and 502/503/504, within a budget of
    /// 20% of requests).
    #[serde(default)]
    pub retries: RetryPolicy,
    /// Passive ejection of failing instances (default: after 5 consecutive failures, for
    /// 10 s doubling up to 60 s, at most half of the instances).
    #[serde(default = "mesh_outlier_detection")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Named groups of instances by label (for example `v2: {version: v2}`).
    #[serde(default)]
    pub subsets: BTreeMap<String, BTreeMap<String, String>>,
    /// Routes in order; the first that matches picks the backends. Without routes (or when
    /// none matches) every instance serves.
    #[serde(default)]
    pub routes: Vec<MeshRoute>,
    /// Who may call this service, enforced by its sidecars: the vocabulary of a route's
    /// `authorization` (docs/authentication.md). Without it, any mesh workload may.
    #[serde(default)]
    pub authorization: Option<crate::authorization::RouteAuthorization>,
}

fn default_mesh_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}

pub fn mesh_outlier_detection() -> Option<OutlierDetection> {
    Some(OutlierDetection {
        consecutive_failures: 5,
        base_ejection_time: HumanDuration::secs(10),
        max_ejection_time: HumanDuration::secs(60),
        max_ejection_percent: 50,
    })
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeshRoute {
    /// Request headers that must match (header-based routing).
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    /// Path prefix that must match.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Subsets and their weights (a weighted split: canary).
    pub backends: Vec<MeshBackend>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeshBackend {
    /// A subset named in `subsets`.
    #[schemars(with = "String")]
    pub subset: Spanned<String>,
    pub weight: u32,
}
