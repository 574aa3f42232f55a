//! OpenID Connect login for browser routes: authorization code flow with PKCE (S256), state
//! and nonce checked, the session kept in an encrypted cookie (AES-256-GCM; HttpOnly,
//! Secure, SameSite=Lax) so any gateway of a fleet can serve it, refresh with the refresh
//! token, and logout (at the provider too when it offers `end_session_endpoint`).

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use gatehouse_config::OidcMethod;
use http::{header, HeaderValue, Method, Response, StatusCode};
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::jwks::{JwksCache, KeyLookup, KeySource, ProviderMetadata};
use super::jwt::key_cache;
use super::{identity_from_claims, now_secs, Attempt, Authenticated, MethodContext};
use crate::consumer::ConsumerDirectory;
use crate::fetch::{parse_json, ClientCredentials, HttpFetcher};
use crate::rejection::Rejection;
use crate::request::{self, RequestInfo};

/// A login in progress lives this long (the user's time at the provider).
const LOGIN_TTL: u64 = 600;
/// Cookies above this size are refused by browsers; claims are trimmed to fit.
const MAX_COOKIE: usize = 3800;

pub struct OidcAuth {
    name: String,
    issuer: String,
    client_id: String,
    client: ClientCredentials,
    callback_path: String,
    logout_path: String,
    post_logout_redirect: String,
    scopes: String,
    cookie_name: String,
    login_cookie_name: String,
    cookie_secure: bool,
    session_lifetime: u64,
    consumer_claim: String,
    groups_claim: Option<String>,
    keys: Arc<JwksCache>,
    fetcher: HttpFetcher,
    sealer: Sealer,
    directory: Arc<dyn ConsumerDirectory>,
}

/// The encrypted session cookie's content.
#[derive(Serialize, Deserialize)]
struct Session {
    /// ID token claims (trimmed to fit a cookie).
    claims: Map<String, Value>,
    /// Unix seconds: when the tokens expire and a refresh is due.
    expires: u64,
    /// Unix seconds: when the session started (bounded by `session_lifetime`).
    created: u64,
    #[serde(default)]
    refresh_token: Option<String>,
}

/// The encrypted cookie of a login in progress.
#[derive(Serialize, Deserialize)]
struct PendingLogin {
    state: String,
    nonce: String,
    verifier: String,
    return_to: String,
    expires: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl OidcAuth {
    pub fn new(config: &OidcMethod, context: &MethodContext<'_>) -> Result<Self, String> {
        let issuer = config.issuer.value.clone();
        let keys = key_cache(
            KeySource::Discovery(issuer.clone()),
            config.ca.as_deref(),
            context,
            config.timeout.0,
            Duration::from_secs(300),
            Duration::from_secs(10),
        )?;
        let ca = config.ca.as_deref().map(|p| context.config.resolve_path(p));
        let fetcher =
            HttpFetcher::new(ca.as_deref(), config.timeout.0).map_err(|e| e.to_string())?;
        Ok(Self {
            name: context.name.to_owned(),
            issuer,
            client_id: config.client_id.clone(),
            client: ClientCredentials {
                id: config.client_id.clone(),
                secret: config.client_secret.0.clone(),
                method: config.client_auth,
            },
            callback_path: config.callback_path.clone(),
            logout_path: config.logout_path.clone(),
            post_logout_redirect: config.post_logout_redirect.clone(),
            scopes: config.scopes.join(" "),
            login_cookie_name: format!("{}_login", config.cookie_name),
            cookie_name: config.cookie_name.clone(),
            cookie_secure: config.cookie_secure,
            session_lifetime: config.session_lifetime.0.as_secs(),
            consumer_claim: config.consumer_claim.clone(),
            groups_claim: config.groups_claim.clone(),
            keys,
            fetcher,
            sealer: Sealer::new(config.session_secret.0.as_bytes()),
            directory: context.directory.clone(),
        })
    }

    pub(crate) fn key_cache(&self) -> &Arc<JwksCache> {
        &self.keys
    }

    pub(crate) fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    pub(crate) fn start_background_tasks(&self) {
        self.keys.start();
    }

    pub async fn authenticate(&self, request: &RequestInfo<'_>) -> Attempt {
        if request.path == self.callback_path {
            return match self.finish_login(request).await {
                Ok(response) => Attempt::Respond(response),
                Err(attempt) => attempt,
            };
        }
        if request.path == self.logout_path {
            return Attempt::Respond(self.logout().await);
        }
        let Some(sealed) = request::cookie(request.headers, &self.cookie_name) else {
            return Attempt::Absent;
        };
        let Some(mut session) = self.sealer.open::<Session>(&self.cookie_name, sealed) else {
            // Tampered, from another key, or truncated: the browser logs in again.
            return Attempt::Absent;
        };
        let now = now_secs();
        if now >= session.created.saturating_add(self.session_lifetime) {
            return Attempt::Absent;
        }
        let mut set_cookie = None;
        if now >= session.expires {
            let Some(refresh_token) = session.refresh_token.clone() else {
                return Attempt::Absent;
            };
            match self.refresh(&refresh_token, &mut session).await {
                Ok(()) => match self.session_cookie(&session) {
                    Ok(cookie) => set_cookie = Some(cookie),
                    Err(_) => return Attempt::Absent,
                },
                Err(message) => {
                    tracing::info!(method = %self.name, error = %message, "session refresh failed; logging in again");
                    return Attempt::Absent;
                }
            }
        }
        match identity_from_claims(
            &*self.directory,
            session.claims,
            &self.name,
            &self.consumer_claim,
            self.groups_claim.as_deref(),
            Vec::new(),
            Vec::new(),
        ) {
            Some(identity) => Attempt::Authenticated(Authenticated {
                identity: Arc::new(identity),
                set_cookie,
            }),
            None => Attempt::Absent,
        }
    }

    /// Send the browser to the provider. Requests that are not page loads get a 401: a
    /// redirect would break an API client or lose a form body.
    pub(crate) async fn login_redirect(
        &self,
        request: &RequestInfo<'_>,
    ) -> Result<Response<Bytes>, Rejection> {
        if !matches!(*request.method, Method::GET | Method::HEAD) {
            return Err(Rejection::new(
                StatusCode::UNAUTHORIZED,
                "credentials_missing",
                "log in first: this route uses browser login",
            ));
        }
        let metadata = self.metadata().await?;
        let authorization_endpoint =
            metadata.authorization_endpoint.as_deref().ok_or_else(|| {
                Rejection::unavailable(
                    "auth_unavailable",
                    "the provider has no authorization endpoint",
                )
            })?;
        let state = random_token(16)?;
        let nonce = random_token(16)?;
        let verifier = random_token(32)?;
        let challenge =
            URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()));
        let return_to = match request.query {
            Some(query) => format!("{}?{query}", request.path),
            None => request.path.to_owned(),
        };
        let pending = PendingLogin {
            state: state.clone(),
            nonce: nonce.clone(),
            verifier,
            return_to,
            expires: now_secs() + LOGIN_TTL,
        };
        let sealed = self
            .sealer
            .seal(&self.login_cookie_name, &pending)
            .map_err(|_| Rejection::unavailable("auth_unavailable", "cannot start a login"))?;
        let redirect_uri = self.redirect_uri(request);
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &self.scopes)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let separator = if authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let location = format!("{authorization_endpoint}{separator}{query}");
        let cookie = self.cookie(&self.login_cookie_name, &sealed, Some(LOGIN_TTL));
        redirect(&location, [cookie])
            .map_err(|_| Rejection::unavailable("auth_unavailable", "cannot start a login"))
    }

    async fn finish_login(&self, request: &RequestInfo<'_>) -> Result<Response<Bytes>, Attempt> {
        let failed = |detail: &'static str| {
            Attempt::Invalid(Rejection::new(
                StatusCode::UNAUTHORIZED,
                "login_failed",
                detail,
            ))
        };
        if let Some(error) = request::query_param(request.query, "error") {
            tracing::info!(method = %self.name, %error, "the provider refused the login");
            return Err(failed("the identity provider refused the login"));
        }
        let pending = request::cookie(request.headers, &self.login_cookie_name)
            .and_then(|sealed| {
                self.sealer
                    .open::<PendingLogin>(&self.login_cookie_name, sealed)
            })
            .filter(|pending| now_secs() < pending.expires)
            .ok_or_else(|| failed("no login in progress (or it expired)"))?;
        let state =
            request::query_param(request.query, "state").ok_or_else(|| failed("missing state"))?;
        if state != pending.state {
            return Err(failed("state does not match the login in progress"));
        }
        let code =
            request::query_param(request.query, "code").ok_or_else(|| failed("missing code"))?;
        let redirect_uri = self.redirect_uri(request);
        let tokens = self
            .token_request(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &redirect_uri),
                ("code_verifier", &pending.verifier),
            ])
            .await
            .map_err(|message| {
                tracing::warn!(method = %self.name, error = %message, "code exchange failed");
                Attempt::Unavailable(Rejection::unavailable(
                    "auth_unavailable",
                    "the identity provider did not complete the login",
                ))
            })?;
        let id_token = tokens
            .id_token
            .ok_or_else(|| failed("the provider sent no ID token"))?;
        let claims = self
            .verify_id_token(&id_token)
            .await
            .map_err(|reason| match reason {
                IdTokenError::Invalid(detail) => failed(detail),
                IdTokenError::Unavailable => Attempt::Unavailable(Rejection::unavailable(
                    "auth_unavailable",
                    "the identity provider's signing keys are unavailable",
                )),
            })?;
        if claims.get("nonce").and_then(Value::as_str) != Some(pending.nonce.as_str()) {
            return Err(failed("nonce does not match the login in progress"));
        }
        let now = now_secs();
        let expires = tokens
            .expires_in
            .map(|s| now + s)
            .or_else(|| claims.get("exp").and_then(Value::as_u64))
            .unwrap_or(now + 300);
        let session = Session {
            claims,
            expires,
            created: now,
            refresh_token: tokens.refresh_token,
        };
        let cookie = self
            .session_cookie(&session)
            .map_err(|_| failed("session too large"))?;
        let clear = self.cookie(&self.login_cookie_name, "", Some(0));
        // Only same-site paths: never an open redirect.
        let target = if pending.return_to.starts_with('/') && !pending.return_to.starts_with("//") {
            pending.return_to.as_str()
        } else {
            "/"
        };
        redirect(target, [cookie, clear]).map_err(|_| failed("invalid return path"))
    }

    async fn logout(&self) -> Response<Bytes> {
        let clear = self.cookie(&self.cookie_name, "", Some(0));
        let end_session = self
            .keys
            .metadata()
            .and_then(|m| m.end_session_endpoint.clone());
        let location = match end_session {
            Some(endpoint) => {
                let query = form_urlencoded::Serializer::new(String::new())
                    .append_pair("client_id", &self.client_id)
                    .append_pair("post_logout_redirect_uri", &self.post_logout_redirect)
                    .finish();
                let separator = if endpoint.contains('?') { '&' } else { '?' };
                format!("{endpoint}{separator}{query}")
            }
            None => self.post_logout_redirect.clone(),
        };
        redirect(&location, [clear]).unwrap_or_else(|_| {
            let mut response = Response::new(Bytes::new());
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        })
    }

    async fn refresh(&self, refresh_token: &str, session: &mut Session) -> Result<(), String> {
        let tokens = self
            .token_request(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ])
            .await?;
        let now = now_secs();
        if let Some(id_token) = tokens.id_token {
            match self.verify_id_token(&id_token).await {
                Ok(claims) => session.claims = claims,
                Err(_) => return Err("refreshed ID token did not verify".to_owned()),
            }
        }
        session.expires = now + tokens.expires_in.unwrap_or(300);
        if tokens.refresh_token.is_some() {
            session.refresh_token = tokens.refresh_token;
        }
        Ok(())
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Result<TokenResponse, String> {
        let metadata = self.metadata().await.map_err(|r| r.detail.into_owned())?;
        let endpoint = metadata
            .token_endpoint
            .clone()
            .ok_or("the provider has no token endpoint")?;
        let response = self
            .fetcher
            .post_form_as_client(&endpoint, form, &self.client)
            .await
            .map_err(|e| e.to_string())?;
        if response.status != StatusCode::OK {
            return Err(format!("token endpoint answered {}", response.status));
        }
        parse_json(&endpoint, &response.body).map_err(|e| e.to_string())
    }

    async fn verify_id_token(&self, token: &str) -> Result<Map<String, Value>, IdTokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| IdTokenError::Invalid("malformed ID token"))?;
        if header.alg.family() == jsonwebtoken::AlgorithmFamily::Hmac {
            return Err(IdTokenError::Invalid("ID token algorithm not accepted"));
        }
        let (set, index) = match self.keys.find(header.kid.as_deref(), header.alg).await {
            KeyLookup::Found(set, index) => (set, index),
            KeyLookup::Unknown => return Err(IdTokenError::Invalid("unknown ID token key")),
            KeyLookup::Unavailable(_) => return Err(IdTokenError::Unavailable),
        };
        let key = set
            .key(index)
            .ok_or(IdTokenError::Invalid("unknown ID token key"))?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[self.issuer.as_str()]);
        validation.set_audience(&[self.client_id.as_str()]);
        validation.leeway = 30;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map_err(|_| IdTokenError::Invalid("the ID token did not verify"))?;
        let _: Algorithm = header.alg;
        Ok(data.claims)
    }

    async fn metadata(&self) -> Result<Arc<ProviderMetadata>, Rejection> {
        if let Some(metadata) = self.keys.metadata() {
            return Ok(metadata);
        }
        self.keys.ensure_loaded().await.map_err(|_| {
            Rejection::unavailable("auth_unavailable", "the identity provider is unreachable")
        })?;
        self.keys.metadata().ok_or_else(|| {
            Rejection::unavailable("auth_unavailable", "the identity provider is unreachable")
        })
    }

    fn redirect_uri(&self, request: &RequestInfo<'_>) -> String {
        format!(
            "{}://{}{}",
            request.scheme, request.authority, self.callback_path
        )
    }

    fn session_cookie(&self, session: &Session) -> Result<HeaderValue, ()> {
        let mut sealed = self.sealer.seal(&self.cookie_name, session)?;
        if sealed.len() > MAX_COOKIE {
            // Keep what identity needs; drop the rest of the claims.
            let keep = [self.consumer_claim.as_str(), "name", "email"];
            let mut trimmed: Map<String, Value> = session
                .claims
                .iter()
                .filter(|(k, _)| {
                    keep.contains(&k.as_str()) || Some(k.as_str()) == self.groups_claim.as_deref()
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            trimmed.retain(|_, v| v.to_string().len() < 1024);
            let smaller = Session {
                claims: trimmed,
                expires: session.expires,
                created: session.created,
                refresh_token: session.refresh_token.clone(),
            };
            sealed = self.sealer.seal(&self.cookie_name, &smaller)?;
        }
        let remaining = session
            .created
            .saturating_add(self.session_lifetime)
            .saturating_sub(now_secs());
        Ok(self.cookie(&self.cookie_name, &sealed, Some(remaining)))
    }

    fn cookie(&self, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
        let mut cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
        if self.cookie_secure {
            cookie.push_str("; Secure");
        }
        if let Some(age) = max_age {
            cookie.push_str(&format!("; Max-Age={age}"));
        }
        HeaderValue::from_str(&cookie)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
    }
}

enum IdTokenError {
    Invalid(&'static str),
    Unavailable,
}

fn redirect<const N: usize>(
    location: &str,
    cookies: [HeaderValue; N],
) -> Result<Response<Bytes>, ()> {
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = StatusCode::FOUND;
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(location).map_err(|_| ())?,
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for cookie in cookies {
        headers.append(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

fn random_token(bytes: usize) -> Result<String, Rejection> {
    let mut buffer = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buffer)
        .map_err(|_| Rejection::unavailable("auth_unavailable", "random generator failed"))?;
    Ok(URL_SAFE_NO_PAD.encode(buffer))
}

/// Authenticated encryption of cookie values: AES-256-GCM under SHA-256(session secret),
/// a random nonce per value, the cookie name as associated data (a login cookie cannot be
/// replayed as a session cookie).
struct Sealer {
    key: LessSafeKey,
}

impl Sealer {
    fn new(secret: &[u8]) -> Self {
        let digest = digest::digest(&digest::SHA256, secret);
        // A SHA-256 digest is always a valid AES-256 key.
        let key = UnboundKey::new(&AES_256_GCM, digest.as_ref())
            .unwrap_or_else(|_| unreachable!("32-byte key"));
        Self {
            key: LessSafeKey::new(key),
        }
    }

    fn seal<T: Serialize>(&self, purpose: &str, value: &T) -> Result<String, ()> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| ())?;
        let mut data = serde_json::to_vec(value).map_err(|_| ())?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.as_bytes()),
                &mut data,
            )
            .map_err(|_| ())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    fn open<T: serde::de::DeserializeOwned>(&self, purpose: &str, sealed: &str) -> Option<T> {
        let raw = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut data)
            .ok()?;
        serde_json::from_slice(plain).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_purpose() {
        let sealer = Sealer::new(b"a session secret of at least 32 characters");
        let sealed = sealer.seal("session", &vec!["hello".to_owned()]).unwrap();
        assert_eq!(
            sealer.open::<Vec<String>>("session", &sealed).unwrap(),
            vec!["hello"]
        );
        assert!(sealer
            .open::<Vec<String>>("session_login", &sealed)
            .is_none());
        let other = Sealer::new(b"another session secret of 32+ characters");
        assert!(other.open::<Vec<String>>("session", &sealed).is_none());
        let mut tampered = sealed.into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(sealer
            .open::<Vec<String>>("session", std::str::from_utf8(&tampered).unwrap())
            .is_none());
    }
}
