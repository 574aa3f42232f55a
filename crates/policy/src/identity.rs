//! The authenticated identity of a request and how it travels upstream.

use std::sync::Arc;

use gatehouse_config::IdentityHeaders;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::consumer::Consumer;

/// Who made the request, as established by an authentication method.
#[derive(Debug, Clone)]
pub struct Identity {
    pub consumer: Arc<Consumer>,
    /// Groups: the consumer's own plus those granted by a token.
    pub groups: Arc<[String]>,
    /// Scopes granted by a token (empty for keys and passwords).
    pub scopes: Arc<[String]>,
    /// `<method>:<credential id>` (key id, token subject, username). Never a secret.
    pub credential: Arc<str>,
    /// Token claims, for claim conditions.
    pub claims: Option<Arc<Map<String, Value>>>,
    /// Method-specific upstream headers (`claims_to_headers`).
    pub extra_headers: Arc<[(HeaderName, HeaderValue)]>,
    /// A sandbox key: it calls API products' sandboxes and nothing else. Carried by the
    /// credential itself, so no other table (one swapped a moment later) can let it through
    /// to a live service.
    pub sandbox: bool,
}

impl Identity {
    pub fn of_consumer(consumer: Arc<Consumer>, credential: Arc<str>) -> Self {
        Self {
            groups: consumer.groups.clone().into(),
            consumer,
            scopes: Arc::from([]),
            credential,
            claims: None,
            extra_headers: Arc::from([]),
            sandbox: false,
        }
    }
}

/// The identity header names, parsed once per snapshot.
pub struct IdentityHeaderNames {
    consumer_id: HeaderName,
    consumer_name: HeaderName,
    groups: HeaderName,
    scopes: HeaderName,
    credential: HeaderName,
    /// Every header some method may fill (claims to headers): removed from client requests.
    extra: Vec<HeaderName>,
}

impl IdentityHeaderNames {
    pub fn new(config: &IdentityHeaders, extra: Vec<HeaderName>) -> Result<Self, String> {
        let parse = |name: &str| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a valid header name"))
        };
        Ok(Self {
            consumer_id: parse(&config.consumer_id)?,
            consumer_name: parse(&config.consumer_name)?,
            groups: parse(&config.groups)?,
            scopes: parse(&config.scopes)?,
            credential: parse(&config.credential)?,
            extra,
        })
    }

    /// Remove client-sent copies so a client cannot forge an identity.
    pub fn strip(&self, headers: &mut HeaderMap) {
        for name in [
            &self.consumer_id,
            &self.consumer_name,
            &self.groups,
            &self.scopes,
            &self.credential,
        ]
        .into_iter()
        .chain(&self.extra)
        {
            // Clients seldom send these: comparing names costs no hashing, where a removal
            // per listed name hashed each of them on every request.
            if headers.keys().any(|present| present == name) {
                headers.remove(name);
            }
        }
    }

    pub fn apply(&self, identity: &Identity, headers: &mut HeaderMap) {
        let mut set = |name: &HeaderName, value: &str| {
            if value.is_empty() {
                return;
            }
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name.clone(), value);
            }
        };
        set(&self.consumer_id, &identity.consumer.id);
        set(&self.consumer_name, &identity.consumer.name);
        set(&self.groups, &identity.groups.join(","));
        set(&self.scopes, &identity.scopes.join(" "));
        set(&self.credential, &identity.credential);
        for (name, value) in identity.extra_headers.iter() {
            headers.insert(name.clone(), value.clone());
        }
    }
}
