//! mTLS for the mesh: server and client configurations that present the workload's current
//! certificate and verify peers against the current trust bundle (both swapped in place, on
//! certificate renewal and on a CA rotation), by SPIFFE identity rather than by DNS name.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::identity::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum MeshTlsError {
    #[error("no mesh certificate yet")]
    NoCertificate,
    #[error("trust bundle: {0}")]
    Bundle(String),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// The workload's certificate and the trust bundle, both replaced in place: connections
/// made after a renewal present the new certificate, and handshakes after a bundle change
/// (a CA rotation adding or retiring a root) verify against the new roots, without
/// rebuilding any configuration.
#[derive(Default)]
pub struct Credentials {
    key: ArcSwapOption<CertifiedKey>,
    trust: ArcSwapOption<Trust>,
}

/// One trust bundle with what verification needs, built once per bundle change rather
/// than per handshake.
struct Trust {
    bundle: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    clients: Arc<dyn ClientCertVerifier>,
}

impl Trust {
    fn new(bundle: Vec<CertificateDer<'static>>) -> Result<Self, MeshTlsError> {
        let mut roots = RootCertStore::empty();
        for cert in &bundle {
            roots
                .add(cert.clone())
                .map_err(|err| MeshTlsError::Bundle(err.to_string()))?;
        }
        if roots.is_empty() {
            return Err(MeshTlsError::Bundle("empty".to_owned()));
        }
        let roots = Arc::new(roots);
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|err| MeshTlsError::Bundle(err.to_string()))?;
        Ok(Self {
            bundle,
            roots,
            clients,
        })
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("certificate", &self.key.load().is_some())
            .field("bundle", &self.bundle().len())
            .finish()
    }
}

impl Credentials {
    /// Credentials that trust `bundle` (the mesh's roots) and have no certificate yet.
    pub fn with_bundle(bundle: Vec<CertificateDer<'static>>) -> Result<Self, MeshTlsError> {
        let credentials = Self::default();
        credentials.set_bundle(bundle)?;
        Ok(credentials)
    }

    pub fn install(&self, key: Arc<CertifiedKey>) {
        self.key.store(Some(key));
    }

    /// Trusts `bundle` from the next handshake on; returns whether it differs from the
    /// bundle in force. An empty or unparsable bundle is refused and the old one stays.
    pub fn set_bundle(&self, bundle: Vec<CertificateDer<'static>>) -> Result<bool, MeshTlsError> {
        if self
            .trust
            .load()
            .as_ref()
            .is_some_and(|t| t.bundle == bundle)
        {
            return Ok(false);
        }
        self.trust.store(Some(Arc::new(Trust::new(bundle)?)));
        Ok(true)
    }

    /// The roots trusted now.
    pub fn bundle(&self) -> Vec<CertificateDer<'static>> {
        self.trust
            .load()
            .as_ref()
            .map(|t| t.bundle.clone())
            .unwrap_or_default()
    }

    pub fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.key.load_full()
    }

    fn trust(&self) -> Result<Arc<Trust>, rustls::Error> {
        self.trust
            .load_full()
            .ok_or_else(|| rustls::Error::General("no mesh trust bundle".to_owned()))
    }
}

/// Presents the current certificate (servers and clients alike).
#[derive(Debug)]
struct CurrentCertificate(Arc<Credentials>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }
}

impl ResolvesClientCert for CurrentCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }

    fn has_certs(&self) -> bool {
        self.0.key.load().is_some()
    }
}

/// Server side of mesh mTLS: a client certificate from the mesh's CA is required (or, for the
/// control plane, whose join call comes before any certificate, optional).
pub fn server_config(
    credentials: &Arc<Credentials>,
    alpn: &[&[u8]],
    client_certificate_required: bool,
) -> Result<Arc<rustls::ServerConfig>, MeshTlsError> {
    credentials
        .trust()
        .map_err(|err| MeshTlsError::Bundle(err.to_string()))?;
    let verifier = BundleClientVerifier {
        credentials: credentials.clone(),
        required: client_certificate_required,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(CurrentCertificate(credentials.clone())));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Client side of mesh mTLS: presents the workload's certificate (none before the first
/// one is issued: the join call) and accepts only a server whose certificate chains to the
/// bundle and names `peer`.
pub fn client_config(
    credentials: &Arc<Credentials>,
    peer: SpiffeId,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, MeshTlsError> {
    credentials
        .trust()
        .map_err(|err| MeshTlsError::Bundle(err.to_string()))?;
    let verifier = SpiffeVerifier {
        credentials: credentials.clone(),
        peer,
        provider: provider(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(CurrentCertificate(credentials.clone())));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// webpki's client verification against whichever bundle is current at the handshake.
#[derive(Debug)]
struct BundleClientVerifier {
    credentials: Arc<Credentials>,
    required: bool,
}

impl ClientCertVerifier for BundleClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional (RFC 8446 4.2.4) and mesh members hold one certificate each;
        // sending none also keeps the borrowed slice independent of bundle swaps.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.credentials
            .trust()?
            .clients
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.credentials
            .trust()?
            .clients
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.credentials
            .trust()?
            .clients
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        // Every bundle's verifier comes from the same provider.
        self.credentials
            .trust()
            .map(|trust| trust.clients.supported_verify_schemes())
            .unwrap_or_default()
    }
}

/// Chain to the mesh's roots (webpki, as for any server), then the SPIFFE ID in the URI SAN
/// instead of the DNS name check: mesh certificates name workloads, not hosts.
#[derive(Debug)]
struct SpiffeVerifier {
    credentials: Arc<Credentials>,
    peer: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.credentials.trust()?.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match SpiffeId::from_certificate(end_entity) {
            Some(id) if id == self.peer => Ok(ServerCertVerified::assertion()),
            Some(id) => Err(rustls::Error::General(format!(
                "peer is {id}, expected {}",
                self.peer
            ))),
            None => Err(rustls::Error::General(format!(
                "peer certificate has no SPIFFE ID, expected {}",
                self.peer
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The verified peer of an accepted mesh connection.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    certs?.first().and_then(SpiffeId::from_certificate)
}
