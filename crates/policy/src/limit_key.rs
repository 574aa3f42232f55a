//! What rate limits and quotas count separately: the key parts of a request (consumer,
//! credential, client IP, route, header, claim), hashed for local counters and written as
//! escaped text for the shared store.

use std::net::IpAddr;

use gatehouse_config::Spanned;
use http::header::HeaderName;

use crate::rate_limit::LimitRequest;

/// What a limit counts separately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyPart {
    /// The authenticated consumer, else the client IP.
    Consumer,
    Credential,
    ClientIp,
    Route,
    Header(HeaderName),
    Claim(String),
}

/// The value of one key part for this request.
pub(crate) fn key_value<'a>(part: &'a KeyPart, request: &'a LimitRequest<'_>) -> KeyValue<'a> {
    match part {
        KeyPart::Consumer => match request.identity {
            Some(identity) => KeyValue::Str(&identity.consumer.id),
            None => KeyValue::Ip(request.client_ip),
        },
        KeyPart::Credential => match request.identity {
            Some(identity) => KeyValue::Str(&identity.credential),
            None => KeyValue::Ip(request.client_ip),
        },
        KeyPart::ClientIp => KeyValue::Ip(request.client_ip),
        KeyPart::Route => KeyValue::Str(request.route),
        KeyPart::Header(name) => KeyValue::Str(
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        ),
        KeyPart::Claim(claim) => match request
            .identity
            .and_then(|i| i.claims.as_ref())
            .and_then(|c| c.get(claim))
        {
            Some(serde_json::Value::String(s)) => KeyValue::Str(s),
            Some(other) => KeyValue::Owned(other.to_string()),
            None => KeyValue::Str(""),
        },
    }
}

pub(crate) enum KeyValue<'a> {
    Str(&'a str),
    Ip(IpAddr),
    Owned(String),
}

impl KeyValue<'_> {
    pub(crate) fn write(&self, out: &mut String) {
        use std::fmt::Write;
        match self {
            Self::Str(s) => out.push_str(s),
            Self::Ip(ip) => {
                let _ = write!(out, "{ip}");
            }
            Self::Owned(s) => out.push_str(s),
        }
    }
}

pub(crate) fn escape_part(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains([':', '%']) {
        value.replace('%', "%25").replace(':', "%3A").into()
    } else {
        value.into()
    }
}

pub(crate) fn parse(key: &[Spanned<String>]) -> Result<Vec<KeyPart>, String> {
    if key.is_empty() {
        return Ok(vec![KeyPart::Consumer]);
    }
    key.iter()
        .map(|part| {
            let value = part.value.as_str();
            Ok(match value {
                "consumer" => KeyPart::Consumer,
                "credential" => KeyPart::Credential,
                "client_ip" => KeyPart::ClientIp,
                "route" => KeyPart::Route,
                _ => {
                    if let Some(name) = value.strip_prefix("header:") {
                        KeyPart::Header(
                            HeaderName::from_bytes(name.as_bytes())
                                .map_err(|_| format!("invalid header name `{name}`"))?,
                        )
                    } else if let Some(claim) = value.strip_prefix("claim:") {
                        KeyPart::Claim(claim.to_owned())
                    } else {
                        return Err(format!("unknown limit key `{value}`"));
                    }
                }
            })
        })
        .collect()
}
