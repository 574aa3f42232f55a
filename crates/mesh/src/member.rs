//! A workload's membership of the mesh: its certificate (joined for with a token, renewed at
//! two thirds of its life), its registration with a lease, and the snapshot the control plane
//! pushes. When the control plane is away, everything here keeps its last good state and the
//! loops retry until it returns.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;

use crate::client::ControlClient;
use crate::identity::SpiffeId;
use crate::proto;
use crate::tls::{self, Credentials, MeshTlsError};

#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("control plane: {0}")]
    Control(#[from] tonic::Status),
    #[error("control plane unreachable: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error(transparent)]
    Tls(#[from] MeshTlsError),
}

/// What this member registers in the registry (sidecars do; a gateway only calls).
#[derive(Debug, Clone)]
pub struct Registration {
    pub instance_id: String,
    pub address: SocketAddr,
    pub labels: BTreeMap<String, String>,
}

/// Applies a pushed snapshot; an error rejects it (the reason goes back to the control
/// plane) and the previous one stays in force.
pub type Apply = Arc<dyn Fn(&Arc<proto::Snapshot>) -> Result<(), String> + Send + Sync>;

pub struct Member {
    identity: SpiffeId,
    credentials: Arc<Credentials>,
    /// When the current certificate arrived (unix seconds).
    not_before: AtomicI64,
    not_after: AtomicI64,
    snapshot: ArcSwapOption<proto::Snapshot>,
    /// The version of the snapshot in force, for whoever waits on changes.
    applied: watch::Sender<String>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Member {
    /// `trust_anchors`: the mesh's roots, to verify the control plane before anything is
    /// sent to it (then the control plane's trust bundle replaces them).
    pub fn new(
        identity: SpiffeId,
        trust_anchors: Vec<CertificateDer<'static>>,
    ) -> Result<Arc<Self>, MeshTlsError> {
        Ok(Arc::new(Self {
            identity,
            credentials: Arc::new(Credentials::with_bundle(trust_anchors)?),
            not_before: AtomicI64::new(0),
            not_after: AtomicI64::new(0),
            snapshot: ArcSwapOption::empty(),
            applied: watch::Sender::new(String::new()),
        }))
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// Unix seconds when the current certificate expires (0: none yet).
    pub fn certificate_expiry(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Option<Arc<proto::Snapshot>> {
        self.snapshot.load_full()
    }

    pub fn applied_versions(&self) -> watch::Receiver<String> {
        self.applied.subscribe()
    }

    /// Server side of mesh mTLS with this member's identity.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, MeshTlsError> {
        tls::server_config(&self.credentials, alpn, true)
    }

    /// Client side of mesh mTLS towards `peer`.
    pub fn client_config(
        &self,
        peer: SpiffeId,
        alpn: &[&[u8]],
    ) -> Result<rustls::ClientConfig, MeshTlsError> {
        tls::client_config(&self.credentials, peer, alpn)
    }

    /// The live endpoints of a mesh service that carry all `labels`, from the last snapshot.
    pub fn endpoints(
        &self,
        namespace: &str,
        service: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<SocketAddr> {
        let Some(snapshot) = self.snapshot.load_full() else {
            return Vec::new();
        };
        snapshot
            .destinations
            .iter()
            .filter(|d| d.namespace == namespace && d.name == service)
            .flat_map(|d| d.endpoints.iter())
            .filter(|e| labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            .filter_map(|e| e.address.parse().ok())
            .collect()
    }

    fn install(
        &self,
        issued: proto::IssuedCertificate,
        key: rcgen::KeyPair,
    ) -> Result<(), MemberError> {
        let chain: Vec<CertificateDer<'static>> = issued
            .chain_der
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        match chain.first().and_then(SpiffeId::from_certificate) {
            Some(id) if id == self.identity => {}
            other => {
                return Err(MemberError::Certificate(format!(
                    "the control plane issued {} for {}",
                    other.map_or("no SPIFFE ID".to_owned(), |id| id.to_string()),
                    self.identity
                )))
            }
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let certified = CertifiedKey::from_der(chain, key, &tls::provider())
            .map_err(|err| MemberError::Certificate(err.to_string()))?;
        if !issued.trust_bundle_der.is_empty() {
            self.adopt_bundle(issued.trust_bundle_der)?;
        }
        self.credentials.install(Arc::new(certified));
        self.not_after
            .store(issued.not_after_unix, Ordering::Relaxed); // Rotation is timed from receipt, not from `not_before`, which the CA backdates a
                                                              // little for clock skew.
        self.not_before.store(unix_now(), Ordering::Relaxed);
        Ok(())
    }

    /// Trusts the control plane's bundle from the next handshake on (a CA rotation adds
    /// the next root before anything is signed with it, and retires the old one after).
    fn adopt_bundle(&self, bundle_der: Vec<Vec<u8>>) -> Result<(), MeshTlsError> {
        let bundle = bundle_der.into_iter().map(CertificateDer::from).collect();
        if self.credentials.set_bundle(bundle)? {
            tracing::info!(
                identity = %self.identity,
                roots = self.credentials.bundle().len(),
                "mesh: trust bundle changed"
            );
        }
        Ok(())
    }

    /// Obtains the first certificate with the join token, retrying until the control plane
    /// answers. A refused token is final.
    pub async fn join(&self, client: &ControlClient, token: &str) -> Result<(), MemberError> {
        let mut backoff = Backoff::new();
        loop {
            let (key, csr) = crate::ca::key_and_request()
                .map_err(|err| MemberError::Certificate(err.to_string()))?;
            match client.join(token, csr).await {
                Ok(issued) => return self.install(issued, key),
                Err(status) if is_refusal(&status) => return Err(status.into()),
                Err(status) => {
                    tracing::warn!(error = %status.message(), "mesh: join failed; retrying");
                    backoff.wait().await;
                }
            }
        }
    }

    /// When the current certificate should be replaced: two thirds into its life.
    fn renew_at(&self) -> i64 {
        let (start, end) = (
            self.not_before.load(Ordering::Relaxed),
            self.not_after.load(Ordering::Relaxed),
        );
        start + (end - start) * 2 / 3
    }

    /// Renews at two thirds of the certificate's life, retrying (every few seconds) until
    /// it expires if the control plane is away.
    pub async fn rotate(self: Arc<Self>, client: ControlClient) {
        loop {
            let wait = (self.renew_at() - unix_now()).max(0) as u64;
            tokio::time::sleep(Duration::from_secs(wait)).await;
            let mut backoff = Backoff::new();
            loop {
                let renewed = async {
                    let (key, csr) = crate::ca::key_and_request()
                        .map_err(|err| MemberError::Certificate(err.to_string()))?;
                    let issued = client.renew(csr).await?;
                    self.install(issued, key)
                }
                .await;
                match renewed {
                    Ok(()) => {
                        tracing::info!(
                            identity = %self.identity,
                            expires = self.certificate_expiry(),
                            "mesh: certificate renewed"
                        );
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "mesh: certificate renewal failed; retrying");
                        backoff.wait().await;
                    }
                }
            }
        }
    }

    /// Keeps the instance registered: register, then heartbeats at a third of the lease;
    /// registers again when the control plane lost the lease (a restart on an empty store,
    /// an expiry while it was away).
    pub async fn keep_registered(
        self: Arc<Self>,
        client: ControlClient,
        registration: Registration,
    ) {
        let mut backoff = Backoff::new();
        let mut registered = false;
        loop {
            let lease = if registered {
                client.heartbeat(&registration.instance_id).await
            } else {
                client.register(&registration).await
            };
            match lease {
                Ok(lease) => {
                    registered = true;
                    let every = Duration::from_millis((lease.ttl_ms / 3).max(200));
                    // Failed renewals are retried at least as often as renewals are due:
                    // a control plane back from a restart sees the heartbeat before the
                    // lease ends.
                    backoff = Backoff::at_most(every);
                    tokio::time::sleep(every).await;
                }
                Err(status) if status.code() == tonic::Code::NotFound => registered = false,
                Err(status) => {
                    tracing::warn!(error = %status.message(), "mesh: heartbeat failed; retrying");
                    backoff.wait().await;
                }
            }
        }
    }

    /// Follows the control plane's snapshots, applying each and acknowledging it; reconnects
    /// with backoff, keeping the last good snapshot meanwhile.
    pub async fn follow(self: Arc<Self>, client: ControlClient, node: String, apply: Apply) {
        let mut backoff = Backoff::new();
        loop {
            match client.watch(&node).await {
                Ok(mut stream) => {
                    while let Some(item) = stream.next().await {
                        let snapshot = match item {
                            Ok(snapshot) => Arc::new(snapshot),
                            Err(status) => {
                                tracing::warn!(error = %status.message(), "mesh: snapshot stream broke");
                                break;
                            }
                        };
                        backoff = Backoff::new();
                        let version = snapshot.version.clone();
                        let outcome = if self.applied.borrow().as_str() == version {
                            Ok(())
                        } else {
                            let previous = self.snapshot.swap(Some(snapshot.clone()));
                            let previous_bundle = self.credentials.bundle();
                            let outcome = if snapshot.trust_bundle_der.is_empty() {
                                Ok(())
                            } else {
                                self.adopt_bundle(snapshot.trust_bundle_der.clone())
                                    .map_err(|err| err.to_string())
                            }
                            .and_then(|()| apply(&snapshot));
                            match &outcome {
                                Ok(()) => {
                                    self.applied.send_replace(version.clone());
                                }
                                Err(_) => {
                                    // A rejected snapshot leaves everything as it was,
                                    // the roots included (the old bundle was valid).
                                    self.snapshot.store(previous);
                                    if let Err(err) = self.credentials.set_bundle(previous_bundle) {
                                        tracing::error!(error = %err, "mesh: previous trust bundle not restored");
                                    }
                                }
                            }
                            outcome
                        };
                        if let Err(reason) = &outcome {
                            tracing::warn!(version, reason, "mesh: snapshot rejected");
                        }
                        let error = outcome.err().unwrap_or_default();
                        if let Err(status) = client.ack(&node, &version, &error).await {
                            tracing::debug!(error = %status.message(), "mesh: ack not delivered");
                        }
                    }
                }
                Err(status) => {
                    tracing::warn!(error = %status.message(), "mesh: control plane unreachable; keeping the last snapshot");
                }
            }
            backoff.wait().await;
        }
    }
}

/// Whether the control plane refused (rather than failed to answer).
fn is_refusal(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated | tonic::Code::InvalidArgument
    )
}

/// 100 ms doubling to 2 s, with up to half again of jitter: a restarted control plane is
/// not stormed.
struct Backoff {
    next: Duration,
    /// The longest wait, jitter included.
    cap: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self::at_most(Duration::from_secs(3))
    }

    /// Never waits longer than `cap`: the base stops doubling at two thirds of it.
    fn at_most(cap: Duration) -> Self {
        Self {
            next: Duration::from_millis(100).min(cap * 2 / 3),
            cap,
        }
    }

    async fn wait(&mut self) {
        let jitter = Duration::from_millis(fastrand::u64(..=self.next.as_millis() as u64 / 2));
        tokio::time::sleep(self.next + jitter).await;
        self.next = (self.next * 2).min(self.cap * 2 / 3);
    }
}
