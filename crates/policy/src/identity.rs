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
    /// Bit `n` set when some listed name is `n` bytes long (bit 63: 63 or more), so the
    /// common request, which carries none of them, is judged without comparing names.
    name_lengths: u64,
}

fn length_bit(name: &HeaderName) -> u64 {
    1 << name.as_str().len().min(63)
}

impl IdentityHeaderNames {
    pub fn new(config: &IdentityHeaders, extra: Vec<HeaderName>) -> Result<Self, String> {
        let parse = |name: &str| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a valid header name"))
        };
        let mut names = Self {
            consumer_id: parse(&config.consumer_id)?,
            consumer_name: parse(&config.consumer_name)?,
            groups: parse(&config.groups)?,
            scopes: parse(&config.scopes)?,
            credential: parse(&config.credential)?,
            extra,
            name_lengths: 0,
        };
        names.name_lengths = names.names().fold(0, |bits, name| bits | length_bit(name));
        Ok(names)
    }

    fn names(&self) -> impl Iterator<Item = &HeaderName> {
        [
            &self.consumer_id,
            &self.consumer_name,
            &self.groups,
            &self.scopes,
            &self.credential,
        ]
        .into_iter()
        .chain(&self.extra)
    }

    /// Remove client-sent copies so a client cannot forge an identity.
    pub fn strip(&self, headers: &mut HeaderMap) {
        // Clients seldom send these: one pass over the names present, comparing only those
        // of a listed length, where a removal per listed name hashed each of them on every
        // request.
        let forged = headers.keys().any(|present| {
            self.name_lengths & length_bit(present) != 0 && self.names().any(|name| name == present)
        });
        if forged {
            for name in self.names() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_identity_headers_are_stripped_and_others_kept() {
        let names = IdentityHeaderNames::new(
            &IdentityHeaders::default(),
            vec![HeaderName::from_static("x-tenant")],
        )
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("accept", HeaderValue::from_static("*/*"));
        headers.insert("x-tenant", HeaderValue::from_static("forged"));
        // Same length as `x-tenant`, not listed.
        headers.insert("x-trace1", HeaderValue::from_static("kept"));
        headers.insert(
            HeaderName::from_bytes(IdentityHeaders::default().consumer_id.as_bytes()).unwrap(),
            HeaderValue::from_static("forged"),
        );
        names.strip(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["accept", "x-trace1"]);

        // Nothing listed present: nothing removed.
        let mut clean = HeaderMap::new();
        clean.insert("x-trace1", HeaderValue::from_static("kept"));
        names.strip(&mut clean);
        assert_eq!(clean.len(), 1);
    }
}
