//! TLS material: PEM loading, server certificates chosen by SNI, and client configurations
//! for upstream TLS. rustls with the aws-lc-rs provider only.

use std::fmt;
use std::sync::Arc;

use gatehouse_config::{CertificateFiles, Config, ListenerTls, TlsVersion, UpstreamTls};
use rustls::crypto::aws_lc_rs;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate `{path}`: {reason}")]
    Certificate { path: String, reason: String },
    #[error("cannot read private key `{path}`: {reason}")]
    Key { path: String, reason: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid server name `{0}`")]
    ServerName(String),
    #[error("client certificate CA: {0}")]
    ClientAuth(String),
}

/// The identities in a verified client certificate (subject CN and SANs), read once per
/// connection for the `client_certificate` authentication method.
pub fn client_certificate_identity(
    der: &CertificateDer<'_>,
) -> Option<gatehouse_policy::ClientCertificate> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let mut identity = gatehouse_policy::ClientCertificate {
        subject_cn: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        ..Default::default()
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => identity.dns_names.push((*dns).to_owned()),
                GeneralName::URI(uri) => identity.uris.push((*uri).to_owned()),
                GeneralName::RFC822Name(email) => identity.emails.push((*email).to_owned()),
                _ => {}
            }
        }
    }
    Some(identity)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

pub fn load_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificate {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Certificate {
            path: path.display().to_string(),
            reason: "no PEM certificate found".to_owned(),
        });
    }
    Ok(certs)
}

pub fn load_key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Key {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn certified_key(files: &CertificateFiles, config: &Config) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs(&config.resolve_path(&files.cert.value))?;
    let key = load_key(&config.resolve_path(&files.key.value))?;
    let key = CertifiedKey::from_der(chain, key, &provider())?;
    Ok(Arc::new(key))
}

/// Chooses the certificate whose names cover the SNI (wildcards included); the first
/// certificate answers clients that send no SNI or an unknown name.
struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SniResolver({} certificates)", self.keys.len())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let default = self.keys.first().cloned();
        let Some(name) = hello.server_name() else {
            return default;
        };
        let Ok(name) = ServerName::try_from(name) else {
            return default;
        };
        self.keys
            .iter()
            .find(|key| {
                key.end_entity_cert()
                    .ok()
                    .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                    .is_some_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
            })
            .cloned()
            .or(default)
    }
}

/// Server configuration for a TLS listener; `http2` adds `h2` to ALPN.
pub fn server_config(
    tls: &ListenerTls,
    http2: bool,
    config: &Config,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let keys = tls
        .certificates
        .iter()
        .map(|files| certified_key(files, config))
        .collect::<Result<Vec<_>, _>>()?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder =
        rustls::ServerConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
    let builder = match &tls.client_auth {
        Some(client_auth) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs(&config.resolve_path(&client_auth.ca.value))? {
                roots.add(cert)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            );
            let verifier = if client_auth.required {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| TlsError::ClientAuth(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver { keys }));
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}

/// Client configuration for upstream TLS, trusting only the configured CA bundle. ALPN is
/// left to the connector, which offers what the service's protocol allows.
pub fn client_config(
    tls: Option<&UpstreamTls>,
    config: &Config,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(tls) = tls {
        for cert in load_certs(&config.resolve_path(&tls.ca.value))? {
            roots.add(cert)?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match tls.and_then(|t| t.client_certificate.as_ref()) {
        Some(files) => builder.with_client_auth_cert(
            load_certs(&config.resolve_path(&files.cert.value))?,
            load_key(&config.resolve_path(&files.key.value))?,
        )?,
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}
