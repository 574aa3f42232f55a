//! Mutual TLS: the listener verified the client certificate against its CA during the
//! handshake; this method maps the certificate's subject CN or a SAN to a consumer.

use std::sync::Arc;

use gatehouse_config::{CertificateIdentity, ClientCertificateMethod};
use http::{header, HeaderValue, StatusCode};

use super::{Attempt, Authenticated, MethodContext};
use crate::consumer::ConsumerDirectory;
use crate::rejection::Rejection;
use crate::request::RequestInfo;

pub struct ClientCertificateAuth {
    identity_from: CertificateIdentity,
    directory: Arc<dyn ConsumerDirectory>,
}

impl ClientCertificateAuth {
    pub fn new(config: &ClientCertificateMethod, context: &MethodContext<'_>) -> Self {
        Self {
            identity_from: config.identity_from,
            directory: context.directory.clone(),
        }
    }

    pub fn authenticate(&self, request: &RequestInfo<'_>) -> Attempt {
        let Some(certificate) = request.client_certificate else {
            return Attempt::Absent;
        };
        let candidates: Vec<&str> = match self.identity_from {
            CertificateIdentity::SubjectCn => {
                certificate.subject_cn.as_deref().into_iter().collect()
            }
            CertificateIdentity::SanDns => {
                certificate.dns_names.iter().map(String::as_str).collect()
            }
            CertificateIdentity::SanUri => certificate.uris.iter().map(String::as_str).collect(),
            CertificateIdentity::SanEmail => {
                certificate.emails.iter().map(String::as_str).collect()
            }
        };
        match candidates
            .into_iter()
            .find_map(|name| self.directory.certificate_identity(name))
        {
            Some(identity) => Attempt::Authenticated(Authenticated {
                identity,
                set_cookie: None,
            }),
            None => Attempt::Invalid(
                Rejection::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_credentials",
                    "the client certificate belongs to no consumer",
                )
                .with_header(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("ClientCertificate realm=\"gatehouse\""),
                ),
            ),
        }
    }
}
