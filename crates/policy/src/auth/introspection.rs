//! Opaque tokens checked with the issuer (OAuth 2.0 Token Introspection, RFC 7662).
//! Active results are cached no longer than the token's `exp` and `cache_ttl`; inactive
//! ones for `negative_cache_ttl`. An unreachable endpoint with nothing cached is a 503.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_config::IntrospectionMethod;
use http::StatusCode;
use serde_json::{Map, Value};

use super::{
    identity_from_claims, invalid_token, now_secs, string_list, Attempt, Authenticated,
    MethodContext, TokenReader,
};
use crate::consumer::ConsumerDirectory;
use crate::fetch::{parse_json, ClientCredentials, HttpFetcher};
use crate::identity::Identity;
use crate::rejection::Rejection;
use crate::request::RequestInfo;

#[derive(Clone)]
struct CachedResult {
    /// `None`: the token is inactive.
    identity: Option<Arc<Identity>>,
    until: Instant,
}

pub struct IntrospectionAuth {
    name: String,
    endpoint: String,
    client: ClientCredentials,
    reader: TokenReader,
    cache_ttl: Duration,
    negative_ttl: Duration,
    consumer_claim: String,
    groups_claim: Option<String>,
    max_token_size: usize,
    fetcher: HttpFetcher,
    directory: Arc<dyn ConsumerDirectory>,
    cache: quick_cache::sync::Cache<String, CachedResult>,
}

impl IntrospectionAuth {
    pub fn new(config: &IntrospectionMethod, context: &MethodContext<'_>) -> Result<Self, String> {
        let ca = config.ca.as_deref().map(|p| context.config.resolve_path(p));
        let fetcher =
            HttpFetcher::new(ca.as_deref(), config.timeout.0).map_err(|e| e.to_string())?;
        Ok(Self {
            name: context.name.to_owned(),
            endpoint: config.endpoint.value.clone(),
            client: ClientCredentials {
                id: config.client_id.clone(),
                secret: config.client_secret.0.clone(),
                method: config.client_auth,
            },
            reader: TokenReader::new(&config.token),
            cache_ttl: config.cache_ttl.0,
            negative_ttl: config.negative_cache_ttl.0,
            consumer_claim: config.consumer_claim.clone(),
            groups_claim: config.groups_claim.clone(),
            max_token_size: config.max_token_size.0 as usize,
            fetcher,
            directory: context.directory.clone(),
            cache: quick_cache::sync::Cache::new(context.token_cache_entries),
        })
    }

    pub async fn authenticate(&self, request: &RequestInfo<'_>) -> Attempt {
        let Some(token) = self.reader.read(request) else {
            return Attempt::Absent;
        };
        if token.len() > self.max_token_size {
            return Attempt::Invalid(invalid_token("token too large"));
        }
        if let Some(hit) = self.cache.get(token.as_ref()) {
            if Instant::now() < hit.until {
                return verdict(hit.identity);
            }
        }
        match self.introspect(&token).await {
            Ok(result) => {
                self.cache.insert(token.into_owned(), result.clone());
                verdict(result.identity)
            }
            Err(message) => {
                tracing::warn!(method = %self.name, error = %message, "token introspection failed");
                Attempt::Unavailable(Rejection::unavailable(
                    "auth_unavailable",
                    "the token introspection endpoint is unavailable",
                ))
            }
        }
    }

    async fn introspect(&self, token: &str) -> Result<CachedResult, String> {
        let form = [("token", token), ("token_type_hint", "access_token")];
        let response = self
            .fetcher
            .post_form_as_client(&self.endpoint, &form, &self.client)
            .await
            .map_err(|e| e.to_string())?;
        if response.status != StatusCode::OK {
            return Err(format!(
                "introspection endpoint answered {}",
                response.status
            ));
        }
        let claims: Map<String, Value> =
            parse_json(&self.endpoint, &response.body).map_err(|e| e.to_string())?;
        let now = now_secs();
        let exp = claims.get("exp").and_then(Value::as_u64);
        let active = claims.get("active").and_then(Value::as_bool) == Some(true)
            && exp.is_none_or(|exp| exp > now);
        if !active {
            return Ok(CachedResult {
                identity: None,
                until: Instant::now() + self.negative_ttl,
            });
        }
        let mut ttl = self.cache_ttl;
        if let Some(exp) = exp {
            ttl = ttl.min(Duration::from_secs(exp - now));
        }
        let scopes = string_list(claims.get("scope"));
        let identity = identity_from_claims(
            &*self.directory,
            claims,
            &self.name,
            &self.consumer_claim,
            self.groups_claim.as_deref(),
            scopes,
            Vec::new(),
        )
        .ok_or_else(|| format!("active token without `{}`", self.consumer_claim))?;
        Ok(CachedResult {
            identity: Some(Arc::new(identity)),
            until: Instant::now() + ttl,
        })
    }
}

fn verdict(identity: Option<Arc<Identity>>) -> Attempt {
    match identity {
        Some(identity) => Attempt::Authenticated(Authenticated {
            identity,
            set_cookie: None,
        }),
        None => Attempt::Invalid(invalid_token("token is not active")),
    }
}
