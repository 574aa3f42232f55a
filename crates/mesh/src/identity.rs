//! SPIFFE identities: `spiffe://<trust domain>/ns/<namespace>/sa/<service>`, and reading them
//! from certificates.

use std::fmt;

use rustls_pki_types::CertificateDer;

/// A workload's identity in the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service: String,
}

/// The namespace and service account of the control plane's own certificate.
pub const CONTROL_NAMESPACE: &str = "gatehouse";
pub const CONTROL_SERVICE: &str = "control";

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service: service.to_owned(),
        }
    }

    pub fn control(trust_domain: &str) -> Self {
        Self::new(trust_domain, CONTROL_NAMESPACE, CONTROL_SERVICE)
    }

    /// Parses the mesh's form of SPIFFE ID; other SPIFFE paths are not mesh workloads.
    pub fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?;
        let mut parts = rest.split('/');
        let (trust_domain, ns, namespace, sa, service) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if parts.next().is_some()
            || ns != "ns"
            || sa != "sa"
            || [trust_domain, namespace, service]
                .iter()
                .any(|part| part.is_empty())
        {
            return None;
        }
        Some(Self::new(trust_domain, namespace, service))
    }

    /// The first mesh SPIFFE ID among a certificate's URI SANs.
    pub fn from_certificate(der: &CertificateDer<'_>) -> Option<Self> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|name| match name {
            GeneralName::URI(uri) => Self::parse(uri),
            _ => None,
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_shapes() {
        let id = SpiffeId::new("mesh.local", "shop", "orders");
        assert_eq!(id.to_string(), "spiffe://mesh.local/ns/shop/sa/orders");
        assert_eq!(SpiffeId::parse(&id.to_string()), Some(id));
        for bad in [
            "spiffe://mesh.local/ns/shop",
            "spiffe://mesh.local/ns/shop/sa/orders/extra",
            "spiffe://mesh.local/xx/shop/sa/orders",
            "spiffe:///ns/shop/sa/orders",
            "https://mesh.local/ns/shop/sa/orders",
        ] {
            assert_eq!(SpiffeId::parse(bad), None, "{bad}");
        }
    }
}
