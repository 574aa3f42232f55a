//! HTTP Basic authentication against argon2 password hashes. Argon2 is slow by design, so
//! it runs on the blocking pool, and a verified username and password are remembered for
//! `cache_ttl` as an HMAC under a per-process random key (never the password itself).

use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use gatehouse_config::BasicMethod;
use http::{header, HeaderValue, StatusCode};

use super::{Attempt, Authenticated, MethodContext};
use crate::consumer::ConsumerDirectory;
use crate::identity::Identity;
use crate::rejection::Rejection;
use crate::request::{self, RequestInfo};

pub struct BasicAuth {
    realm: String,
    pub(crate) hide_credentials: bool,
    cache_ttl: Duration,
    directory: Arc<dyn ConsumerDirectory>,
    cache_key: hmac::Key,
    verified: quick_cache::sync::Cache<Vec<u8>, (Arc<Identity>, Instant)>,
}

impl BasicAuth {
    pub fn new(config: &BasicMethod, context: &MethodContext<'_>) -> Self {
        let mut secret = [0u8; 32];
        // A failed random source leaves the key all-zero: the cache stays correct (it maps
        // exact credentials), only less opaque in memory.
        let _ = SystemRandom::new().fill(&mut secret);
        Self {
            realm: config.realm.clone(),
            hide_credentials: config.hide_credentials,
            cache_ttl: config.cache_ttl.0,
            directory: context.directory.clone(),
            cache_key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            verified: quick_cache::sync::Cache::new(context.token_cache_entries),
        }
    }

    pub(crate) fn challenge(&self) -> String {
        format!("Basic realm=\"{}\", charset=\"UTF-8\"", self.realm)
    }

    pub async fn authenticate(&self, request: &RequestInfo<'_>) -> Attempt {
        let Some(encoded) = request::authorization(request.headers, "Basic") else {
            return Attempt::Absent;
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        let Some((username, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return Attempt::Invalid(self.invalid("malformed Basic credentials"));
        };
        let digest = hmac::sign(
            &self.cache_key,
            format!("{username}\0{password}").as_bytes(),
        )
        .as_ref()
        .to_vec();
        if let Some((identity, until)) = self.verified.get(&digest) {
            if Instant::now() < until {
                return granted(identity);
            }
        }
        let Some(record) = self.directory.basic_user(username) else {
            return Attempt::Invalid(self.invalid("invalid username or password"));
        };
        let password = password.to_owned();
        let check_record = record.clone();
        let verified = tokio::task::spawn_blocking(move || {
            verify_password(&password, &check_record.password_hash)
        })
        .await
        .unwrap_or(false);
        if !verified {
            return Attempt::Invalid(self.invalid("invalid username or password"));
        }
        self.verified.insert(
            digest,
            (record.identity.clone(), Instant::now() + self.cache_ttl),
        );
        granted(record.identity.clone())
    }

    fn invalid(&self, reason: &'static str) -> Rejection {
        let rejection = Rejection::new(StatusCode::UNAUTHORIZED, "invalid_credentials", reason);
        match HeaderValue::from_str(&self.challenge()) {
            Ok(value) => rejection.with_header(header::WWW_AUTHENTICATE, value),
            Err(_) => rejection,
        }
    }
}

fn granted(identity: Arc<Identity>) -> Attempt {
    Attempt::Authenticated(Authenticated {
        identity,
        set_cookie: None,
    })
}

/// Whether `password` matches the argon2 PHC `hash` (slow by design: call it off the
/// async threads).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

/// An argon2id PHC hash of `password` with a random salt (`basic_auth.password_hash`,
/// portal accounts).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "the system random generator failed".to_owned())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_their_password() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let parsed = PasswordHash::new(&hash).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"wrong horse", &parsed)
            .is_err());
    }
}
