//! A throwaway PKI for mTLS tests: a CA, certificates it issues, and an HTTPS client for
//! `api.test` (resolved to loopback) that trusts the CA and presents a client certificate.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A client certificate and its key.
pub struct Party {
    pub der: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl Party {
    pub fn new(cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> Party {
        Party {
            der: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

/// A self-signed CA named `name`, and its issuer.
pub fn ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    (cert, rcgen::Issuer::new(params, key))
}

/// A certificate for `sans` with common name `cn`, for `usage`, signed by `issuer`.
pub fn issue(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    cn: &str,
    sans: Vec<rcgen::SanType>,
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert, key)
}

/// An HTTPS client for `api.test` that trusts `ca` and presents `identity`, if any.
pub fn client(ca: &CertificateDer<'static>, identity: Option<&Party>) -> reqwest::Client {
    super::install_crypto_provider();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let tls = match identity {
        Some(party) => builder
            .with_client_auth_cert(vec![party.der.clone()], party.key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .no_proxy()
        .use_preconfigured_tls(tls)
        .resolve("api.test", "127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap()
}
