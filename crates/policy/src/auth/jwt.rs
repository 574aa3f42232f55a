//! JWT bearer tokens: signature by the issuer's keys with pinned algorithms, registered
//! claims (`iss`, `aud`, `exp`, `nbf`, `iat` with leeway, maximum age), required claims,
//! and a cache of verified tokens so a repeated token costs a hash lookup.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_config::JwtMethod;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::jwks::{JwksCache, KeyLookup, KeySource};
use super::{
    identity_from_claims, invalid_token, now_secs, string_list, Attempt, Authenticated,
    Authenticator, MethodContext, TokenReader,
};
use crate::consumer::ConsumerDirectory;
use crate::fetch::HttpFetcher;
use crate::identity::Identity;
use crate::rejection::Rejection;
use crate::request::RequestInfo;

const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Keys tried for a token without `kid`, beyond the first (bounds the work a forged
/// kid-less token can cause).
const MAX_KIDLESS_CANDIDATES: usize = 3;

#[derive(Clone)]
struct CachedToken {
    identity: Arc<Identity>,
    /// Unix seconds until which the token stays acceptable (`exp`, `max_age`, leeway).
    valid_until: u64,
}

pub struct JwtAuth {
    name: String,
    reader: TokenReader,
    max_token_size: usize,
    allowed: Vec<Algorithm>,
    hmac_key: Option<DecodingKey>,
    keys: Option<Arc<JwksCache>>,
    /// One validation per key family, holding only that family's allowed algorithms.
    validations: Vec<(jsonwebtoken::AlgorithmFamily, Validation)>,
    leeway: u64,
    max_age: Option<u64>,
    required_claims: Vec<String>,
    consumer_claim: String,
    groups_claim: Option<String>,
    scopes_claim: String,
    claims_to_headers: Vec<(HeaderName, String)>,
    directory: Arc<dyn ConsumerDirectory>,
    cache: quick_cache::sync::Cache<String, CachedToken>,
}

/// Why a token was refused, or that no verdict was possible.
pub enum TokenError {
    Invalid(&'static str),
    Unavailable(String),
}

impl JwtAuth {
    pub fn new(config: &JwtMethod, context: &MethodContext<'_>) -> Result<Self, String> {
        let allowed: Vec<Algorithm> = if config.algorithms.is_empty() {
            ASYMMETRIC.to_vec()
        } else {
            config
                .algorithms
                .iter()
                .map(|a| {
                    a.value
                        .parse::<Algorithm>()
                        .map_err(|_| format!("unknown algorithm `{}`", a.value))
                })
                .collect::<Result<_, _>>()?
        };
        let hmac_key = config
            .hmac_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.0.as_bytes()).map_err(|e| e.to_string()))
            .transpose()?;
        let issuer = config.issuer.value.clone();
        let source = match (&config.jwks_uri, config.discovery) {
            (Some(uri), _) => Some(KeySource::JwksUri(uri.value.clone())),
            (None, true) => Some(KeySource::Discovery(issuer.clone())),
            (None, false) => None,
        };
        let keys = source
            .map(|source| {
                key_cache(
                    source,
                    config.ca.as_deref(),
                    context,
                    config.fetch_timeout.0,
                    config.refresh_interval.0,
                    config.min_refetch_interval.0,
                )
            })
            .transpose()?;

        let mut validations = Vec::new();
        for family in [
            jsonwebtoken::AlgorithmFamily::Hmac,
            jsonwebtoken::AlgorithmFamily::Rsa,
            jsonwebtoken::AlgorithmFamily::Ec,
            jsonwebtoken::AlgorithmFamily::Ed,
        ] {
            let algorithms: Vec<Algorithm> = allowed
                .iter()
                .copied()
                .filter(|a| a.family() == family)
                .collect();
            if algorithms.is_empty() {
                continue;
            }
            let mut validation = Validation::new(algorithms[0]);
            validation.algorithms = algorithms;
            validation.leeway = config.leeway.0.as_secs();
            validation.set_issuer(&[issuer.as_str()]);
            if config.audiences.is_empty() {
                validation.validate_aud = false;
            } else {
                validation.set_audience(&config.audiences);
            }
            validation.validate_nbf = true;
            let mut spec = vec!["exp".to_owned(), "iss".to_owned()];
            if !config.audiences.is_empty() {
                spec.push("aud".to_owned());
            }
            validation.set_required_spec_claims(&spec);
            validations.push((family, validation));
        }
        let claims_to_headers = config
            .claims_to_headers
            .iter()
            .map(|(header, claim)| {
                HeaderName::from_bytes(header.as_bytes())
                    .map(|h| (h, claim.clone()))
                    .map_err(|_| format!("invalid header name `{header}`"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: context.name.to_owned(),
            reader: TokenReader::new(&config.token),
            max_token_size: config.max_token_size.0 as usize,
            allowed,
            hmac_key,
            keys,
            validations,
            leeway: config.leeway.0.as_secs(),
            max_age: config.max_age.map(|d| d.0.as_secs()),
            required_claims: config.required_claims.clone(),
            consumer_claim: config.consumer_claim.clone(),
            groups_claim: config.groups_claim.clone(),
            scopes_claim: config.scopes_claim.clone(),
            claims_to_headers,
            directory: context.directory.clone(),
            cache: quick_cache::sync::Cache::new(context.token_cache_entries),
        })
    }

    pub(crate) fn claim_header_names(&self) -> Vec<HeaderName> {
        self.claims_to_headers
            .iter()
            .map(|(h, _)| h.clone())
            .collect()
    }

    pub(crate) fn start_background_tasks(&self) {
        if let Some(keys) = &self.keys {
            keys.start();
        }
    }

    pub(crate) fn key_cache(&self) -> Option<&Arc<JwksCache>> {
        self.keys.as_ref()
    }

    pub async fn authenticate(&self, request: &RequestInfo<'_>) -> Attempt {
        let Some(token) = self.reader.read(request) else {
            return Attempt::Absent;
        };
        match self.verify(&token).await {
            Ok(identity) => Attempt::Authenticated(Authenticated {
                identity,
                set_cookie: None,
            }),
            Err(TokenError::Invalid(reason)) => Attempt::Invalid(invalid_token(reason)),
            Err(TokenError::Unavailable(message)) => {
                tracing::warn!(method = %self.name, error = %message, "cannot verify a token: no signing keys");
                Attempt::Unavailable(Rejection::unavailable(
                    "auth_unavailable",
                    "the token issuer's signing keys are unavailable",
                ))
            }
        }
    }

    /// Verify a token, answering from the cache when it was verified before.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, TokenError> {
        if token.len() > self.max_token_size {
            return Err(TokenError::Invalid("token too large"));
        }
        let now = now_secs();
        if let Some(hit) = self.cache.get(token) {
            if now < hit.valid_until {
                return Ok(hit.identity);
            }
            self.cache.remove(token);
        }
        let verified = self.verify_uncached(token, now).await?;
        let identity = verified.identity.clone();
        self.cache.insert(token.to_owned(), verified);
        Ok(identity)
    }

    async fn verify_uncached(&self, token: &str, now: u64) -> Result<CachedToken, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| TokenError::Invalid("malformed token"))?;
        if !self.allowed.contains(&header.alg) {
            return Err(TokenError::Invalid("token algorithm not accepted"));
        }
        let family = header.alg.family();
        let (_, validation) = self
            .validations
            .iter()
            .find(|(f, _)| *f == family)
            .ok_or(TokenError::Invalid("token algorithm not accepted"))?;
        let key_set = if family == jsonwebtoken::AlgorithmFamily::Hmac {
            None
        } else {
            let keys = self
                .keys
                .as_ref()
                .ok_or(TokenError::Invalid("token algorithm not accepted"))?;
            match keys.find(header.kid.as_deref(), header.alg).await {
                KeyLookup::Found(set, index) => Some((set, index)),
                KeyLookup::Unknown => return Err(TokenError::Invalid("unknown signing key")),
                KeyLookup::Unavailable(message) => return Err(TokenError::Unavailable(message)),
            }
        };
        let key = match &key_set {
            Some((set, index)) => set.key(*index),
            None => self.hmac_key.as_ref(),
        }
        .ok_or(TokenError::Invalid("token algorithm not accepted"))?;
        let decode = |key| jsonwebtoken::decode::<Map<String, Value>>(token, key, validation);
        let mut result = decode(key);
        if let (None, Some((set, _))) = (&header.kid, &key_set) {
            // Without a `kid`, any key of the family may have signed; try a few.
            for other in set
                .candidates(header.alg)
                .skip(1)
                .take(MAX_KIDLESS_CANDIDATES)
            {
                if !matches!(&result, Err(e) if *e.kind() == ErrorKind::InvalidSignature) {
                    break;
                }
                result = decode(other);
            }
        }
        let data = result.map_err(|err| TokenError::Invalid(describe(err.kind())))?;
        let claims = data.claims;
        for claim in &self.required_claims {
            if !claims.contains_key(claim) {
                return Err(TokenError::Invalid("a required claim is missing"));
            }
        }
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let mut valid_until = exp.saturating_add(self.leeway);
        if let Some(iat) = claims.get("iat") {
            let iat = iat
                .as_u64()
                .ok_or(TokenError::Invalid("malformed iat claim"))?;
            if iat > now + self.leeway {
                return Err(TokenError::Invalid("token issued in the future"));
            }
        }
        if let Some(max_age) = self.max_age {
            let iat = claims
                .get("iat")
                .and_then(Value::as_u64)
                .ok_or(TokenError::Invalid("token has no iat claim"))?;
            let oldest = iat.saturating_add(max_age).saturating_add(self.leeway);
            if now >= oldest {
                return Err(TokenError::Invalid("token too old"));
            }
            valid_until = valid_until.min(oldest);
        }
        let scopes = string_list(claims.get(&self.scopes_claim).or_else(|| claims.get("scp")));
        let extra_headers = self
            .claims_to_headers
            .iter()
            .filter_map(|(header, claim)| {
                let value = match claims.get(claim)? {
                    Value::String(s) => HeaderValue::from_str(s).ok()?,
                    other => HeaderValue::from_str(&other.to_string()).ok()?,
                };
                Some((header.clone(), value))
            })
            .collect();
        let identity = identity_from_claims(
            &*self.directory,
            claims,
            &self.name,
            &self.consumer_claim,
            self.groups_claim.as_deref(),
            scopes,
            extra_headers,
        )
        .ok_or(TokenError::Invalid("token has no subject"))?;
        Ok(CachedToken {
            identity: Arc::new(identity),
            valid_until,
        })
    }
}

/// A key cache for `source`, reused from the previous snapshot when its settings match.
pub(crate) fn key_cache(
    source: KeySource,
    ca: Option<&str>,
    context: &MethodContext<'_>,
    timeout: Duration,
    refresh: Duration,
    min_refetch: Duration,
) -> Result<Arc<JwksCache>, String> {
    let fingerprint = format!("{source:?}|{ca:?}|{timeout:?}|{refresh:?}|{min_refetch:?}");
    let previous = match context.previous {
        Some(Authenticator::Jwt(jwt)) => jwt.key_cache(),
        Some(Authenticator::Oidc(oidc)) => Some(oidc.key_cache()),
        _ => None,
    };
    if let Some(previous) = previous.filter(|p| p.fingerprint == fingerprint) {
        return Ok(previous.clone());
    }
    let ca_path = ca.map(|path| context.config.resolve_path(path));
    let fetcher = HttpFetcher::new(ca_path.as_deref(), timeout).map_err(|e| e.to_string())?;
    Ok(Arc::new(JwksCache::new(
        source,
        fetcher,
        refresh,
        min_refetch,
        fingerprint,
    )))
}

/// A reason safe to show the client; never the token.
fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not yet valid",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidSignature => "invalid signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => "token algorithm not accepted",
        ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
        ErrorKind::InvalidSubject => "wrong subject",
        _ => "malformed token",
    }
}
