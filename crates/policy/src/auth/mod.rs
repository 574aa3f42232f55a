//! Authentication and authorization: the named methods of `authentication.methods`, and
//! each route's [`AccessPolicy`] (any-of its methods, anonymous fallback, groups, scopes,
//! claim conditions).

pub mod api_key;
pub mod basic;
pub mod client_cert;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod oidc;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use gatehouse_config::{AuthMethodConfig, Config, Problem, RouteAuth, TokenSource};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use serde_json::Value;

use crate::consumer::{ConsumerDirectory, StaticDirectory};
use crate::identity::{Identity, IdentityHeaderNames};
use crate::rejection::Rejection;
use crate::request::{self, RequestInfo};

/// The compiled security section of a snapshot: consumers, methods, identity headers.
pub struct Security {
    pub directory: Arc<dyn ConsumerDirectory>,
    /// The store's consumers, carried from snapshot to snapshot.
    stored: crate::consumer::StoredDirectory,
    methods: HashMap<String, Arc<Authenticator>>,
    identity_headers: IdentityHeaderNames,
}

/// One authentication method, ready to run.
// Built once per snapshot and held in an `Arc`: variant size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Authenticator {
    ApiKey(api_key::ApiKeyAuth),
    Jwt(jwt::JwtAuth),
    Introspection(introspection::IntrospectionAuth),
    Oidc(oidc::OidcAuth),
    Basic(basic::BasicAuth),
    ClientCertificate(client_cert::ClientCertificateAuth),
}

/// What one method made of a request.
pub enum Attempt {
    /// The request carries no credential for this method.
    Absent,
    Authenticated(Authenticated),
    /// A credential was presented and is wrong: 401.
    Invalid(Rejection),
    /// The method could not decide (its identity provider is down): 503.
    Unavailable(Rejection),
    /// The method answers the request itself (login redirect, OIDC callback, logout).
    Respond(Response<Bytes>),
}

pub struct Authenticated {
    pub identity: Arc<Identity>,
    /// A header for the client's response (a refreshed session cookie).
    pub set_cookie: Option<HeaderValue>,
}

/// The result of the access phase for a granted request.
pub struct Granted<'a> {
    pub identity: Arc<Identity>,
    /// The method that authenticated, to hide its credential from the upstream.
    method: Option<&'a Authenticator>,
    set_cookie: Option<HeaderValue>,
}

pub enum AccessOutcome<'a> {
    Granted(Granted<'a>),
    Respond(Response<Bytes>),
}

impl Security {
    /// Compile the security section. Key set caches of methods whose key source did not
    /// change are taken over from `previous` (no refetch on reload).
    /// Where the gateway puts the store's consumers when it reads them; every later
    /// snapshot looks there too.
    pub fn stored_directory(&self) -> crate::consumer::StoredDirectory {
        self.stored.clone()
    }

    pub fn compile(config: &Config, previous: Option<&Security>) -> Result<Self, Vec<Problem>> {
        let stored = previous.map(|p| p.stored.clone()).unwrap_or_default();
        let directory: Arc<dyn ConsumerDirectory> = Arc::new(crate::consumer::LayeredDirectory {
            configured: StaticDirectory::from_config(&config.consumers),
            stored: stored.clone(),
        });
        let auth = &config.authentication;
        let key_hasher = auth
            .api_key_secret
            .as_ref()
            .map(|secret| Arc::new(api_key::KeyHasher::new(secret.value.0.as_bytes())));
        let mut problems = Vec::new();
        let mut methods = HashMap::new();
        let mut extra_headers = Vec::new();
        for (name, method) in &auth.methods {
            let context = MethodContext {
                name,
                config,
                directory: directory.clone(),
                key_hasher: key_hasher.clone(),
                previous: previous
                    .and_then(|p| p.methods.get(name.as_str()))
                    .map(|m| &**m),
                token_cache_entries: auth.token_cache_entries.max(1) as usize,
            };
            let built = match &method.value {
                AuthMethodConfig::ApiKey(c) => {
                    api_key::ApiKeyAuth::new(c, &context).map(Authenticator::ApiKey)
                }
                AuthMethodConfig::Jwt(c) => jwt::JwtAuth::new(c, &context).map(Authenticator::Jwt),
                AuthMethodConfig::Introspection(c) => {
                    introspection::IntrospectionAuth::new(c, &context)
                        .map(Authenticator::Introspection)
                }
                AuthMethodConfig::Oidc(c) => {
                    oidc::OidcAuth::new(c, &context).map(Authenticator::Oidc)
                }
                AuthMethodConfig::Basic(c) => {
                    Ok(Authenticator::Basic(basic::BasicAuth::new(c, &context)))
                }
                AuthMethodConfig::ClientCertificate(c) => Ok(Authenticator::ClientCertificate(
                    client_cert::ClientCertificateAuth::new(c, &context),
                )),
            };
            match built {
                Ok(authenticator) => {
                    if let Authenticator::Jwt(jwt) = &authenticator {
                        extra_headers.extend(jwt.claim_header_names());
                    }
                    methods.insert(name.clone(), Arc::new(authenticator));
                }
                Err(message) => problems.push(Problem::at(
                    &method.referenced,
                    format!("method `{name}`: {message}"),
                )),
            }
        }
        let identity_headers = match IdentityHeaderNames::new(&auth.identity_headers, extra_headers)
        {
            Ok(names) => names,
            Err(message) => {
                problems.push(Problem::new(0, 0, message));
                return Err(problems);
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            directory,
            stored,
            methods,
            identity_headers,
        })
    }

    /// Start background work (key set refreshes). Needs a Tokio runtime.
    pub fn start_background_tasks(&self) {
        for method in self.methods.values() {
            match &**method {
                Authenticator::Jwt(jwt) => jwt.start_background_tasks(),
                Authenticator::Oidc(oidc) => oidc.start_background_tasks(),
                _ => {}
            }
        }
    }

    /// The access policy of a route, or a message naming what is wrong.
    pub fn access_policy(&self, route: &RouteAuth) -> Result<AccessPolicy, String> {
        let methods = route
            .methods
            .iter()
            .map(|name| {
                self.methods
                    .get(&name.value)
                    .cloned()
                    .ok_or_else(|| format!("undefined authentication method `{}`", name.value))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let anonymous = match &route.anonymous {
            Some(id) => {
                let consumer = self
                    .directory
                    .consumer(&id.value)
                    .ok_or_else(|| format!("anonymous consumer `{}` is not defined", id.value))?;
                Some(Arc::new(Identity::of_consumer(
                    consumer,
                    Arc::from("anonymous"),
                )))
            }
            None => None,
        };
        let challenge = methods
            .iter()
            .filter_map(|m| m.challenge())
            .filter_map(|c| HeaderValue::from_str(&c).ok())
            .collect::<Vec<_>>();
        Ok(AccessPolicy {
            methods,
            anonymous,
            allow_groups: route.allow_groups.clone(),
            deny_groups: route.deny_groups.clone(),
            scopes: route.scopes.clone(),
            claims: route
                .claims
                .iter()
                .map(|rule| ClaimCheck {
                    claim: rule.claim.value.clone(),
                    source: if let Some(h) = &rule.equals_header {
                        ClaimSource::Header(h.clone())
                    } else if let Some(p) = &rule.equals_path_param {
                        ClaimSource::PathParam(p.clone())
                    } else if let Some(q) = &rule.equals_query {
                        ClaimSource::Query(q.clone())
                    } else {
                        ClaimSource::Values(rule.equals.clone())
                    },
                })
                .collect(),
            challenge,
        })
    }

    /// Upstream request phase: remove client-sent identity headers (on every route), hide
    /// the credential that authenticated, and add the identity. Returns the new query when
    /// a credential was removed from it.
    pub fn prepare_upstream(
        &self,
        granted: Option<&Granted<'_>>,
        headers: &mut HeaderMap,
        query: Option<&str>,
    ) -> Option<Option<String>> {
        self.identity_headers.strip(headers);
        let granted = granted?;
        self.identity_headers.apply(&granted.identity, headers);
        granted.method?.hide_credentials(headers, query)
    }
}

/// What building a method needs besides its own configuration.
pub struct MethodContext<'a> {
    pub name: &'a str,
    pub config: &'a Config,
    pub directory: Arc<dyn ConsumerDirectory>,
    pub key_hasher: Option<Arc<api_key::KeyHasher>>,
    /// The method of the same name in the previous snapshot.
    pub previous: Option<&'a Authenticator>,
    pub token_cache_entries: usize,
}

impl Authenticator {
    async fn authenticate(&self, request: &RequestInfo<'_>) -> Attempt {
        match self {
            Self::ApiKey(m) => m.authenticate(request),
            Self::Jwt(m) => m.authenticate(request).await,
            Self::Introspection(m) => m.authenticate(request).await,
            Self::Oidc(m) => m.authenticate(request).await,
            Self::Basic(m) => m.authenticate(request).await,
            Self::ClientCertificate(m) => m.authenticate(request),
        }
    }

    /// The `WWW-Authenticate` challenge of this method for a request without credentials
    /// (refusals of a presented credential carry their own, see `invalid_token`).
    fn challenge(&self) -> Option<String> {
        match self {
            Self::ApiKey(m) => Some(m.challenge()),
            Self::Jwt(_) | Self::Introspection(_) => Some("Bearer realm=\"gatehouse\"".to_owned()),
            Self::Basic(m) => Some(m.challenge()),
            Self::ClientCertificate(_) => Some("ClientCertificate realm=\"gatehouse\"".to_owned()),
            Self::Oidc(_) => None,
        }
    }

    fn hide_credentials(
        &self,
        headers: &mut HeaderMap,
        query: Option<&str>,
    ) -> Option<Option<String>> {
        match self {
            Self::ApiKey(m) => m.hide_credentials(headers, query),
            Self::Basic(m) => {
                if m.hide_credentials {
                    headers.remove(header::AUTHORIZATION);
                }
                None
            }
            Self::Oidc(m) => {
                request::remove_cookie(headers, m.cookie_name());
                None
            }
            Self::Jwt(_) | Self::Introspection(_) | Self::ClientCertificate(_) => None,
        }
    }

    fn is_browser_login(&self) -> bool {
        matches!(self, Self::Oidc(_))
    }
}

/// Who may use one route.
pub struct AccessPolicy {
    methods: Vec<Arc<Authenticator>>,
    anonymous: Option<Arc<Identity>>,
    allow_groups: Vec<String>,
    deny_groups: Vec<String>,
    scopes: Vec<String>,
    claims: Vec<ClaimCheck>,
    /// Challenges of all methods, for a request without credentials.
    challenge: Vec<HeaderValue>,
}

struct ClaimCheck {
    claim: String,
    source: ClaimSource,
}

enum ClaimSource {
    Values(Vec<String>),
    Header(String),
    PathParam(String),
    Query(String),
}

impl AccessPolicy {
    /// Authenticate with the first method that accepts the request, then authorize.
    pub async fn check(&self, request: &RequestInfo<'_>) -> Result<AccessOutcome<'_>, Rejection> {
        let mut invalid: Option<Rejection> = None;
        let mut unavailable: Option<Rejection> = None;
        for method in &self.methods {
            match method.authenticate(request).await {
                Attempt::Absent => {}
                Attempt::Authenticated(authenticated) => {
                    self.authorize(&authenticated.identity, request)?;
                    return Ok(AccessOutcome::Granted(Granted {
                        identity: authenticated.identity,
                        method: Some(method),
                        set_cookie: authenticated.set_cookie,
                    }));
                }
                Attempt::Invalid(rejection) => {
                    invalid.get_or_insert(rejection);
                }
                Attempt::Unavailable(rejection) => {
                    unavailable.get_or_insert(rejection);
                }
                Attempt::Respond(response) => return Ok(AccessOutcome::Respond(response)),
            }
        }
        // Another method might have accepted had it been able to answer: an outage is
        // never reported as the client's fault.
        if let Some(rejection) = unavailable.or(invalid) {
            return Err(rejection);
        }
        if let Some(identity) = &self.anonymous {
            self.authorize(identity, request)?;
            return Ok(AccessOutcome::Granted(Granted {
                identity: identity.clone(),
                method: None,
                set_cookie: None,
            }));
        }
        if let Some(Authenticator::Oidc(oidc)) = self
            .methods
            .iter()
            .map(|m| &**m)
            .find(|m| m.is_browser_login())
        {
            return oidc
                .login_redirect(request)
                .await
                .map(AccessOutcome::Respond);
        }
        let mut rejection = Rejection::new(
            StatusCode::UNAUTHORIZED,
            "credentials_missing",
            "this route requires authentication",
        );
        for challenge in &self.challenge {
            rejection = rejection.with_header(header::WWW_AUTHENTICATE, challenge.clone());
        }
        Err(rejection)
    }

    fn authorize(&self, identity: &Identity, request: &RequestInfo<'_>) -> Result<(), Rejection> {
        let in_group = |group: &String| identity.groups.contains(group);
        if self.deny_groups.iter().any(in_group) {
            return Err(Rejection::forbidden(
                "forbidden",
                "a group of the caller is denied on this route",
            ));
        }
        if !self.allow_groups.is_empty() && !self.allow_groups.iter().any(in_group) {
            return Err(Rejection::forbidden(
                "forbidden",
                "the caller is in none of the groups allowed on this route",
            ));
        }
        let missing: Vec<&str> = self
            .scopes
            .iter()
            .filter(|scope| !identity.scopes.contains(scope))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            let required = self.scopes.join(" ");
            let challenge = format!(
                "Bearer realm=\"gatehouse\", error=\"insufficient_scope\", scope=\"{required}\""
            );
            let mut rejection = Rejection::forbidden(
                "insufficient_scope",
                format!("missing scopes: {}", missing.join(" ")),
            );
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                rejection = rejection.with_header(header::WWW_AUTHENTICATE, value);
            }
            return Err(rejection);
        }
        for check in &self.claims {
            let Some(actual) = claim_values(identity, &check.claim) else {
                return Err(Rejection::forbidden(
                    "forbidden",
                    format!("claim `{}` is missing", check.claim),
                ));
            };
            let expected: Vec<std::borrow::Cow<'_, str>> = match &check.source {
                ClaimSource::Values(values) => values.iter().map(|v| v.as_str().into()).collect(),
                ClaimSource::Header(name) => request
                    .headers
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(|v| vec![v.into()])
                    .unwrap_or_default(),
                ClaimSource::PathParam(name) => request
                    .captures
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| vec![v.as_str().into()])
                    .unwrap_or_default(),
                ClaimSource::Query(name) => request::query_param(request.query, name)
                    .map(|v| vec![v])
                    .unwrap_or_default(),
            };
            if !actual.iter().any(|a| expected.iter().any(|e| e == a)) {
                return Err(Rejection::forbidden(
                    "forbidden",
                    format!("claim `{}` does not permit this request", check.claim),
                ));
            }
        }
        Ok(())
    }
}

impl Granted<'_> {
    /// Headers policies add to the client's response.
    pub fn response_headers(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        self.set_cookie
            .iter()
            .map(|cookie| (header::SET_COOKIE, cookie.clone()))
    }
}

/// The string values of a claim (a dotted path); consumers authenticated by key, password
/// or certificate expose `sub` (their id) and their metadata as claims.
fn claim_values(identity: &Identity, path: &str) -> Option<Vec<String>> {
    let scalar = |value: &Value| match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    if let Some(claims) = &identity.claims {
        let mut parts = path.split('.');
        let mut value = claims.get(parts.next()?)?;
        for part in parts {
            value = value.get(part)?;
        }
        return match value {
            Value::Array(items) => Some(items.iter().filter_map(scalar).collect()),
            other => scalar(other).map(|s| vec![s]),
        };
    }
    if path == "sub" {
        return Some(vec![identity.consumer.id.clone()]);
    }
    identity
        .consumer
        .metadata
        .get(path)
        .map(|v| vec![v.clone()])
}

/// Where a bearer-style method reads its token.
pub(crate) struct TokenReader {
    bearer: bool,
    cookie: Option<String>,
    query: Option<String>,
}

impl TokenReader {
    pub(crate) fn new(source: &TokenSource) -> Self {
        let bearer = source
            .bearer
            .unwrap_or(source.cookie.is_none() && source.query.is_none());
        Self {
            bearer,
            cookie: source.cookie.clone(),
            query: source.query.clone(),
        }
    }

    pub(crate) fn read<'r>(&self, request: &RequestInfo<'r>) -> Option<std::borrow::Cow<'r, str>> {
        if self.bearer {
            if let Some(token) = request::authorization(request.headers, "Bearer") {
                return Some(token.into());
            }
        }
        if let Some(name) = &self.cookie {
            if let Some(token) = request::cookie(request.headers, name) {
                return Some(token.into());
            }
        }
        if let Some(name) = &self.query {
            return request::query_param(request.query, name);
        }
        None
    }
}

/// A 401 for a presented but unacceptable bearer token (RFC 6750 `invalid_token`).
pub(crate) fn invalid_token(detail: &'static str) -> Rejection {
    let challenge = format!(
        "Bearer realm=\"gatehouse\", error=\"invalid_token\", error_description=\"{detail}\""
    );
    let rejection = Rejection::new(StatusCode::UNAUTHORIZED, "invalid_token", detail);
    match HeaderValue::from_str(&challenge) {
        Ok(value) => rejection.with_header(header::WWW_AUTHENTICATE, value),
        Err(_) => rejection,
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The groups or scopes in a claim: an array of strings or a space-separated string.
pub(crate) fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// An identity from token claims: the configured consumer named by `consumer_claim` lends
/// its name, groups and metadata; otherwise an ad-hoc consumer carries the claim value.
pub(crate) fn identity_from_claims(
    directory: &dyn ConsumerDirectory,
    claims: serde_json::Map<String, Value>,
    method: &str,
    consumer_claim: &str,
    groups_claim: Option<&str>,
    scopes: Vec<String>,
    extra_headers: Vec<(HeaderName, HeaderValue)>,
) -> Option<Identity> {
    let subject = match claims.get(consumer_claim)? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let consumer = directory
        .consumer(&subject)
        .unwrap_or_else(|| Arc::new(crate::consumer::Consumer::ad_hoc(&subject)));
    let mut groups = consumer.groups.clone();
    for group in string_list(groups_claim.and_then(|c| claims.get(c))) {
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    Some(Identity {
        consumer,
        groups: groups.into(),
        scopes: scopes.into(),
        credential: format!("{method}:{subject}").into(),
        claims: Some(Arc::new(claims)),
        extra_headers: extra_headers.into(),
        sandbox: false,
    })
}
