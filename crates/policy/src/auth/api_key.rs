//! API keys: `<prefix>_<public id>_<secret>`. The gateway stores only the public id and
//! HMAC-SHA-256(server secret, key). Keys carry 160 random bits, so a fast keyed hash is
//! safe (no dictionary to attack) and keeps the check well under a microsecond; a leaked
//! configuration or database without the server secret verifies nothing.

use std::sync::Arc;

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use gatehouse_config::ApiKeyMethod;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::{now_secs, Attempt, Authenticated, MethodContext};
use crate::consumer::ConsumerDirectory;
use crate::identity::Identity;
use crate::rejection::Rejection;
use crate::request::{self, RequestInfo};

/// The keyed hash of API keys.
pub struct KeyHasher {
    key: hmac::Key,
}

impl KeyHasher {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The hasher of `authentication.api_key_secret`, when it is set.
    pub fn from_config(authentication: &gatehouse_config::AuthenticationConfig) -> Option<Self> {
        authentication
            .api_key_secret
            .as_ref()
            .map(|secret| Self::new(secret.value.0.as_bytes()))
    }

    pub fn hash(&self, api_key: &str) -> Vec<u8> {
        hmac::sign(&self.key, api_key.as_bytes()).as_ref().to_vec()
    }

    /// Constant-time comparison of `api_key`'s hash with `expected`.
    pub fn verify(&self, api_key: &str, expected: &[u8]) -> bool {
        hmac::verify(&self.key, api_key.as_bytes(), expected).is_ok()
    }
}

/// A freshly generated key: shown once, then only its hash is kept.
pub struct GeneratedKey {
    pub key: String,
    pub public_id: String,
    /// `hmac-sha256:<base64>`, the value for `consumers[].api_keys[].hash`.
    pub hash: String,
}

/// Generate a key with 48 random bits of public id and 160 of secret.
pub fn generate(hasher: &KeyHasher, prefix: &str) -> Result<GeneratedKey, String> {
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!("prefix `{prefix}` must be letters and digits"));
    }
    let rng = SystemRandom::new();
    let mut id = [0u8; 6];
    let mut secret = [0u8; 20];
    rng.fill(&mut id)
        .and_then(|()| rng.fill(&mut secret))
        .map_err(|_| "the system random generator failed".to_owned())?;
    let public_id = hex(&id);
    let key = format!("{prefix}_{public_id}_{}", hex(&secret));
    let hash = format!(
        "hmac-sha256:{}",
        base64::engine::general_purpose::STANDARD.encode(hasher.hash(&key))
    );
    Ok(GeneratedKey {
        key,
        public_id,
        hash,
    })
}

/// `bytes` random bytes as hex (a demo password, say).
pub fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buffer = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buffer)
        .map_err(|_| "the system random generator failed".to_owned())?;
    Ok(hex(&buffer))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub struct ApiKeyAuth {
    header: Option<HeaderName>,
    query: Option<String>,
    hide_credentials: bool,
    hasher: Arc<KeyHasher>,
    directory: Arc<dyn ConsumerDirectory>,
    challenge: String,
}

impl ApiKeyAuth {
    pub fn new(config: &ApiKeyMethod, context: &MethodContext<'_>) -> Result<Self, String> {
        let hasher = context
            .key_hasher
            .clone()
            .ok_or("API keys need `authentication.api_key_secret`")?;
        let header = config
            .header
            .as_deref()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("invalid header `{h}`"))
            })
            .transpose()?;
        let challenge = match (&header, &config.query) {
            (Some(h), _) => format!("ApiKey realm=\"gatehouse\", header=\"{h}\""),
            (None, Some(q)) => format!("ApiKey realm=\"gatehouse\", query=\"{q}\""),
            (None, None) => "ApiKey realm=\"gatehouse\"".to_owned(),
        };
        Ok(Self {
            header,
            query: config.query.clone(),
            hide_credentials: config.hide_credentials,
            hasher,
            directory: context.directory.clone(),
            challenge,
        })
    }

    pub(crate) fn challenge(&self) -> String {
        self.challenge.clone()
    }

    pub fn authenticate(&self, request: &RequestInfo<'_>) -> Attempt {
        let presented = self
            .header
            .as_ref()
            .and_then(|h| request.headers.get(h))
            .map(|v| v.to_str().map(std::borrow::Cow::Borrowed))
            .or_else(|| {
                self.query
                    .as_ref()
                    .and_then(|q| request::query_param(request.query, q))
                    .map(Ok)
            });
        let key = match presented {
            None => return Attempt::Absent,
            Some(Ok(key)) => key,
            Some(Err(_)) => return Attempt::Invalid(self.invalid("malformed API key")),
        };
        match self.check(&key) {
            Ok(identity) => Attempt::Authenticated(Authenticated {
                identity,
                set_cookie: None,
            }),
            Err(reason) => Attempt::Invalid(self.invalid(reason)),
        }
    }

    /// The hot-path check: parse, look up by public id, compare the keyed hash.
    pub fn check(&self, key: &str) -> Result<Arc<Identity>, &'static str> {
        let mut parts = key.splitn(3, '_');
        let (Some(_prefix), Some(public_id), Some(secret)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err("malformed API key");
        };
        if secret.is_empty() {
            return Err("malformed API key");
        }
        let Some(record) = self.directory.api_key(public_id) else {
            // Same work as for a known id, so timing does not reveal which ids exist.
            let _ = self.hasher.verify(key, &[0u8; 32]);
            return Err("invalid API key");
        };
        if !self.hasher.verify(key, &record.hash) {
            return Err("invalid API key");
        }
        if record.revoked {
            return Err("API key revoked");
        }
        if record.expires_at.is_some_and(|at| now_secs() as i64 >= at) {
            return Err("API key expired");
        }
        Ok(record.identity.clone())
    }

    fn invalid(&self, reason: &'static str) -> Rejection {
        let rejection = Rejection::new(StatusCode::UNAUTHORIZED, "invalid_credentials", reason);
        match HeaderValue::from_str(&self.challenge) {
            Ok(value) => rejection.with_header(header::WWW_AUTHENTICATE, value),
            Err(_) => rejection,
        }
    }

    pub(crate) fn hide_credentials(
        &self,
        headers: &mut HeaderMap,
        query: Option<&str>,
    ) -> Option<Option<String>> {
        if !self.hide_credentials {
            return None;
        }
        if let Some(header) = &self.header {
            headers.remove(header);
        }
        let name = self.query.as_ref()?;
        let query = query?;
        request::query_param(Some(query), name)?;
        Some(request::remove_query_param(query, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_verify_and_guesses_do_not() {
        let hasher = KeyHasher::new(b"0123456789abcdef0123456789abcdef");
        let generated = generate(&hasher, "gh").unwrap();
        assert!(generated
            .key
            .starts_with(&format!("gh_{}_", generated.public_id)));
        assert_eq!(generated.key.len(), 2 + 1 + 12 + 1 + 40);
        let stored = base64::engine::general_purpose::STANDARD
            .decode(generated.hash.trim_start_matches("hmac-sha256:"))
            .unwrap();
        assert!(hasher.verify(&generated.key, &stored));
        let mut guessed = generated.key.clone();
        guessed.pop();
        guessed.push('0');
        assert!(guessed == generated.key || !hasher.verify(&guessed, &stored));
        assert!(generate(&hasher, "bad_prefix").is_err());
    }
}
