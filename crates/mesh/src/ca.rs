//! The mesh certificate authority: a root it generates (kept in the store) or an intermediate
//! the operator provides; it signs workload certificates from CSRs with SPIFFE identities.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};

use crate::identity::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate request: {0}")]
    Request(String),
    #[error("CA material: {0}")]
    Material(String),
    #[error("signing failed: {0}")]
    Signing(#[from] rcgen::Error),
}

/// A signed certificate with its validity, as handed to a workload.
pub struct Issued {
    /// Leaf first, then the intermediates up to (not including) the trust anchor.
    pub chain: Vec<CertificateDer<'static>>,
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// A trust anchor as an operator identifies it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrustAnchor {
    pub subject: String,
    pub not_after_unix: i64,
    pub sha256: String,
}

pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate and any intermediates above it, as sent after the leaf.
    chain: Vec<CertificateDer<'static>>,
    /// The root(s) workloads trust.
    bundle: Vec<CertificateDer<'static>>,
    trust_domain: String,
}

fn unix(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn offset(time: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix(time))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn random_serial() -> Result<(SerialNumber, String), CaError> {
    // Positive 127-bit serial from the system RNG (RFC 5280: at most 20 octets, positive).
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| CaError::Material("the system random generator failed".to_owned()))?;
    bytes[0] &= 0x7f;
    let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok((SerialNumber::from_slice(&bytes), hex))
}

impl Authority {
    /// A new self-signed root for the trust domain (ECDSA P-256, ten years), returned with
    /// its PEM certificate and key for keeping.
    pub fn generate(trust_domain: &str) -> Result<(Self, String, String), CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Gatehouse mesh");
        name.push(DnType::CommonName, format!("{trust_domain} root CA"));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = offset(now - Duration::from_secs(3600));
        params.not_after = offset(now + Duration::from_secs(10 * 365 * 24 * 3600));
        params.serial_number = Some(random_serial()?.0);
        let cert = params.self_signed(&key)?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        let authority = Self::from_pem(trust_domain, &cert_pem, &key_pem)?;
        Ok((authority, cert_pem, key_pem))
    }

    /// A CA from PEM: the certificate file holds the CA certificate first, then its chain up
    /// to the root; the last one is the trust anchor workloads get.
    pub fn from_pem(trust_domain: &str, cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let certs = certificates_from_pem(cert_pem)?;
        let Some(first) = certs.first() else {
            return Err(CaError::Material("no PEM certificate".to_owned()));
        };
        let key =
            KeyPair::from_pem(key_pem).map_err(|err| CaError::Material(format!("key: {err}")))?;
        let issuer = Issuer::from_ca_cert_der(first, key)
            .map_err(|err| CaError::Material(format!("certificate: {err}")))?;
        let bundle = certs.last().cloned().into_iter().collect();
        // Everything but a self-signed root travels with the leaf.
        let chain = if certs.len() == 1 {
            Vec::new()
        } else {
            certs[..certs.len() - 1].to_vec()
        };
        Ok(Self {
            issuer,
            chain,
            bundle,
            trust_domain: trust_domain.to_owned(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn trust_bundle(&self) -> &[CertificateDer<'static>] {
        &self.bundle
    }

    /// Signs the CSR's public key for `identity`. Nothing else of the CSR is used: the
    /// identity was established by the caller's token or current certificate.
    pub fn issue(
        &self,
        csr_der: &[u8],
        identity: &SpiffeId,
        lifetime: Duration,
    ) -> Result<Issued, CaError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|err| CaError::Request(err.to_string()))?;
        let mut params = self.leaf_params(identity, &[], lifetime)?;
        let (not_before, not_after) = (params.not_before, params.not_after);
        let (serial, serial_hex) = random_serial()?;
        params.serial_number = Some(serial);
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(Issued {
            chain,
            serial: serial_hex,
            not_before: not_before.unix_timestamp(),
            not_after: not_after.unix_timestamp(),
        })
    }

    /// The control plane's own serving certificate and key (PEM), for its SPIFFE identity
    /// and the names data planes dial it by.
    pub fn issue_server(
        &self,
        identity: &SpiffeId,
        names: &[String],
        lifetime: Duration,
    ) -> Result<(Issued, KeyPair), CaError> {
        let key = KeyPair::generate()?;
        let (serial, serial_hex) = random_serial()?;
        let mut params = self.leaf_params(identity, names, lifetime)?;
        params.serial_number = Some(serial);
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok((
            Issued {
                chain,
                serial: serial_hex,
                not_before: params.not_before.unix_timestamp(),
                not_after: params.not_after.unix_timestamp(),
            },
            key,
        ))
    }

    fn leaf_params(
        &self,
        identity: &SpiffeId,
        names: &[String],
        lifetime: Duration,
    ) -> Result<CertificateParams, CaError> {
        let mut params = CertificateParams::default();
        // SPIFFE X.509-SVIDs carry the identity in the URI SAN; the subject stays empty.
        params.distinguished_name = DistinguishedName::new();
        let uri = identity
            .to_string()
            .try_into()
            .map_err(|err| CaError::Request(format!("identity: {err}")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        for name in names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|err| CaError::Request(format!("name `{name}`: {err}")))?,
                ),
            });
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        // A minute of slack for clocks that are a little behind.
        params.not_before = offset(now - Duration::from_secs(60));
        params.not_after = offset(now + lifetime);
        Ok(params)
    }
}

/// The certificates of a PEM file, in order (none is an empty list, not an error).
pub fn certificates_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| CaError::Material(format!("certificate: {err}")))
}

/// Subject, expiry and SHA-256 fingerprint of each trust anchor, for operators checking
/// which roots a control plane serves.
pub fn describe_anchors(bundle: &[CertificateDer<'_>]) -> Vec<TrustAnchor> {
    bundle
        .iter()
        .map(|der| {
            let parsed = x509_parser::parse_x509_certificate(der.as_ref()).ok();
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
            TrustAnchor {
                subject: parsed
                    .as_ref()
                    .map(|(_, cert)| cert.subject().to_string())
                    .unwrap_or_default(),
                not_after_unix: parsed
                    .as_ref()
                    .map_or(0, |(_, cert)| cert.validity().not_after.timestamp()),
                sha256: digest
                    .as_ref()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            }
        })
        .collect()
}

/// A bundle as PEM, the form members' `trust_anchors` files take.
pub fn bundle_pem(bundle: &[CertificateDer<'_>]) -> String {
    bundle
        .iter()
        .map(|der| pem_certificate(der.as_ref()))
        .collect()
}

pub fn pem_certificate(der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// A fresh key pair and a CSR for it (the CA takes only the public key).
pub fn key_and_request() -> Result<(KeyPair, Vec<u8>), CaError> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}
