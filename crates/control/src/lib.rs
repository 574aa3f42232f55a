//! The mesh control plane (`gatehouse control`): the certificate authority, the registry of
//! service instances, and the push of snapshots to data planes over gRPC.
//!
//! Start-up reads the top to bottom of [`ControlPlane::start`]: CA (from the store, or the
//! operator's intermediate), the control plane's own certificate, the registry follower, the
//! TLS listener, the gRPC service.

mod api;
mod registry;
mod status;

pub use status::{DataPlane, Rejection};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_config::ControlConfig;
use gatehouse_mesh::ca::Authority;
use gatehouse_mesh::tls::Credentials;
use gatehouse_mesh::SpiffeId;
use gatehouse_store::mesh::StoredAuthority;
use gatehouse_store::Store;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("store: {0}")]
    Store(#[from] gatehouse_store::StoreError),
    #[error("certificate authority: {0}")]
    Authority(#[from] gatehouse_mesh::ca::CaError),
    #[error("{0}")]
    Tls(#[from] gatehouse_mesh::tls::MeshTlsError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

/// State shared by the gRPC service and the background loops.
pub(crate) struct Shared {
    pub config: ControlConfig,
    pub store: Store,
    pub authority: Authority,
    /// The roots members trust: the CA's own, then `additional_trust_anchors` (a root on
    /// its way in or out during a CA rotation).
    pub trust_bundle: Vec<CertificateDer<'static>>,
    pub registry: watch::Sender<Arc<registry::Registry>>,
    pub data_planes: status::DataPlanes,
}

/// A running control plane.
pub struct ControlPlane {
    pub local_addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a control plane serves, for its admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ControlStatus {
    pub trust_domain: String,
    pub trust_anchors: Vec<gatehouse_mesh::ca::TrustAnchor>,
    /// Services declared in the configuration (with policy) or registered by instances.
    pub services: Vec<ServiceStatus>,
    /// Data planes watching this control plane (and those gone within the last hour).
    pub data_planes: Vec<DataPlane>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceStatus {
    pub namespace: String,
    pub name: String,
    pub spiffe_id: String,
    pub declared: bool,
    pub instances: Vec<InstanceStatus>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceStatus {
    pub id: String,
    pub address: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Declared in `static_instances` rather than registered with a lease.
    pub r#static: bool,
}

impl ControlPlane {
    pub async fn start(
        config: &ControlConfig,
        store: Store,
        base_dir: Option<&std::path::Path>,
    ) -> Result<Self, ControlError> {
        let resolve = |path: &str| match base_dir {
            Some(base) if std::path::Path::new(path).is_relative() => base.join(path),
            _ => std::path::PathBuf::from(path),
        };
        let read = |path: &str| {
            std::fs::read_to_string(resolve(path))
                .map_err(|err| ControlError::Setup(format!("cannot read `{path}`: {err}")))
        };
        // The CA: the operator's intermediate, or the root kept in the store (the first
        // control plane of a pair to start generates it; the other one reads it).
        let authority = match &config.ca {
            Some(files) => Authority::from_pem(
                &config.trust_domain,
                &read(&files.cert.value)?,
                &read(&files.key.value)?,
            )?,
            None => {
                let stored = match store.mesh_authority().await? {
                    Some(stored) => stored,
                    None => {
                        let (_, cert_pem, key_pem) = Authority::generate(&config.trust_domain)?;
                        store
                            .init_mesh_authority(&StoredAuthority {
                                trust_domain: config.trust_domain.clone(),
                                cert_pem,
                                key_pem,
                            })
                            .await?
                    }
                };
                if stored.trust_domain != config.trust_domain {
                    return Err(ControlError::Setup(format!(
                        "the store's CA is for trust domain `{}`, not `{}`",
                        stored.trust_domain, config.trust_domain
                    )));
                }
                Authority::from_pem(&stored.trust_domain, &stored.cert_pem, &stored.key_pem)?
            }
        };
        let mut trust_bundle = authority.trust_bundle().to_vec();
        if let Some(extra) = &config.additional_trust_anchors {
            let anchors = gatehouse_mesh::ca::certificates_from_pem(&read(extra)?)
                .map_err(|err| ControlError::Setup(format!("`{extra}`: {err}")))?;
            if anchors.is_empty() {
                return Err(ControlError::Setup(format!(
                    "`{extra}` holds no PEM certificate"
                )));
            }
            for anchor in anchors {
                if !trust_bundle.contains(&anchor) {
                    trust_bundle.push(anchor);
                }
            }
        }
        if let Some(out) = &config.trust_anchors_out {
            let path = resolve(out);
            std::fs::write(&path, gatehouse_mesh::ca::bundle_pem(&trust_bundle)).map_err(
                |err| ControlError::Setup(format!("cannot write `{}`: {err}", path.display())),
            )?;
        }

        let listen: SocketAddr = config.listen.value.parse().map_err(|_| {
            ControlError::Setup(format!("`{}` is not IP:PORT", config.listen.value))
        })?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ControlError::Bind {
                addr: listen.to_string(),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ControlError::Bind {
            addr: listen.to_string(),
            source,
        })?;

        let credentials = Arc::new(Credentials::with_bundle(trust_bundle.clone())?);
        let mut names = config.server_names.clone();
        names.push(local_addr.ip().to_string());
        let shared = Arc::new(Shared {
            registry: watch::Sender::new(Arc::new(registry::Registry::default())),
            data_planes: status::DataPlanes::default(),
            config: config.clone(),
            store,
            authority,
            trust_bundle,
        });
        let lifetime = shared.config.certificate_lifetime.0;
        install_server_certificate(&shared, &credentials, &names, lifetime)?;
        // Join calls come without a client certificate; every other call is checked in
        // the service for one.
        let tls = gatehouse_mesh::tls::server_config(&credentials, &[b"h2"], false)?;

        let ttl_ms = shared.config.lease.0.as_millis() as i64;
        let away_ms = shared
            .store
            .resume_leases(gatehouse_store::mesh::now_ms(), ttl_ms)
            .await?;
        if away_ms > 0 {
            tracing::info!(
                away_ms,
                "no control plane granted leases for a while; registered instances keep the lease they had left"
            );
        }
        registry::refresh(&shared).await?;
        let mut tasks = vec![
            tokio::spawn(registry::follow(shared.clone())),
            tokio::spawn(rotate_server_certificate(
                shared.clone(),
                credentials,
                names,
                lifetime,
            )),
        ];
        tasks.push(tokio::spawn(api::serve(shared.clone(), listener, tls)));
        tracing::info!(
            address = %local_addr,
            trust_domain = %shared.config.trust_domain,
            "control plane listening"
        );
        Ok(Self {
            local_addr,
            shared,
            tasks,
        })
    }

    /// The registry as served now (the last one read from the store), the trust anchors and
    /// the data planes with the versions they were sent and applied.
    pub fn status(&self) -> ControlStatus {
        ControlStatus {
            trust_domain: self.shared.config.trust_domain.clone(),
            trust_anchors: gatehouse_mesh::ca::describe_anchors(&self.shared.trust_bundle),
            services: self.services(),
            data_planes: self.data_planes(),
        }
    }

    /// Every service declared or registered, with its instances as served now.
    pub fn services(&self) -> Vec<ServiceStatus> {
        let shared = &self.shared;
        let registry = shared.registry.borrow().clone();
        let mut services: std::collections::BTreeMap<(String, String), ServiceStatus> =
            Default::default();
        let trust_domain = &shared.config.trust_domain;
        for declared in &shared.config.services {
            service_entry(
                &mut services,
                trust_domain,
                &declared.namespace,
                &declared.name.value,
            )
            .declared = true;
        }
        for instance in &registry.instances {
            service_entry(
                &mut services,
                trust_domain,
                &instance.namespace,
                &instance.service,
            )
            .instances
            .push(InstanceStatus {
                id: instance.id.clone(),
                address: instance.address.clone(),
                labels: instance.labels.clone(),
                r#static: instance.id.starts_with(registry::STATIC_PREFIX),
            });
        }
        services.into_values().collect()
    }

    /// The data planes watching this control plane, and those gone within the last hour.
    pub fn data_planes(&self) -> Vec<DataPlane> {
        self.shared.data_planes.list()
    }
}

fn service_entry<'a>(
    services: &'a mut std::collections::BTreeMap<(String, String), ServiceStatus>,
    trust_domain: &str,
    namespace: &str,
    name: &str,
) -> &'a mut ServiceStatus {
    services
        .entry((namespace.to_owned(), name.to_owned()))
        .or_insert_with(|| ServiceStatus {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            spiffe_id: SpiffeId::new(trust_domain, namespace, name).to_string(),
            declared: false,
            instances: Vec::new(),
        })
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn install_server_certificate(
    shared: &Shared,
    credentials: &Credentials,
    names: &[String],
    lifetime: Duration,
) -> Result<i64, ControlError> {
    let identity = SpiffeId::control(&shared.config.trust_domain);
    let (issued, key) = shared.authority.issue_server(&identity, names, lifetime)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let certified = CertifiedKey::from_der(issued.chain, key, &gatehouse_mesh::tls::provider())
        .map_err(|err| ControlError::Setup(err.to_string()))?;
    credentials.install(Arc::new(certified));
    Ok(issued.not_before + (issued.not_after - issued.not_before) * 2 / 3)
}

/// The control plane's own certificate follows the workloads' rule: a new one at two thirds
/// of the lifetime.
async fn rotate_server_certificate(
    shared: Arc<Shared>,
    credentials: Arc<Credentials>,
    names: Vec<String>,
    lifetime: Duration,
) {
    let mut wait = lifetime * 2 / 3;
    loop {
        tokio::time::sleep(wait).await;
        wait = match install_server_certificate(&shared, &credentials, &names, lifetime) {
            Ok(_) => lifetime * 2 / 3,
            Err(err) => {
                tracing::error!(error = %err, "control plane: cannot renew its certificate");
                Duration::from_secs(10)
            }
        };
    }
}

/// A new join token for a service: 256 random bits, printed once, kept hashed.
pub async fn create_join_token(
    store: &Store,
    namespace: &str,
    service: &str,
    ttl: Option<Duration>,
) -> Result<String, ControlError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| ControlError::Setup("the system random generator failed".to_owned()))?;
    let token = format!("ghjoin_{}", hex(&bytes));
    let expires_at = ttl.map(|ttl| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|now| (now + ttl).as_secs() as i64)
            .unwrap_or(0)
    });
    store
        .create_join_token(&token_hash(&token), namespace, service, expires_at)
        .await?;
    Ok(token)
}

pub(crate) fn token_hash(token: &str) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
