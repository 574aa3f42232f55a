//! OAuth 2.0 token introspection (RFC 7662) and OpenID Connect browser login, end to end:
//! the real gateway against an authorization server written in this file (introspection,
//! discovery, JWKS, authorize, token and end-session endpoints) and the echo upstream.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::{client, Gateway};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

type Form = HashMap<String, String>;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Decode an `application/x-www-form-urlencoded` body (or a query string).
fn parse_form(body: &str) -> Form {
    let url = reqwest::Url::parse(&format!("http://form.invalid/?{body}")).expect("form body");
    url.query_pairs().into_owned().collect()
}

/// The query parameters of an absolute URL.
fn query_of(url: &str) -> Form {
    reqwest::Url::parse(url)
        .unwrap_or_else(|e| panic!("`{url}` is not a URL: {e}"))
        .query_pairs()
        .into_owned()
        .collect()
}

/// `user:password` of an `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn credentials(user: &str, password: &str) -> Option<(String, String)> {
    Some((user.to_owned(), password.to_owned()))
}

/// SHA-256 through the aws-lc-rs provider of rustls (a dependency of the gateway crate).
fn sha256(data: &[u8]) -> Vec<u8> {
    let suite = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .expect("a TLS 1.3 suite");
    let hash = suite.common.hash_provider;
    assert_eq!(
        hash.algorithm(),
        rustls::crypto::hash::HashAlgorithm::SHA256
    );
    hash.hash(data).as_ref().to_vec()
}

#[test]
fn sha256_helper_is_sha256() {
    let hex: String = sha256(b"abc").iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

/// RFC 7636 S256: `BASE64URL-NOPAD(SHA256(ASCII(code_verifier)))`.
fn pkce_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha256(verifier.as_bytes()))
}

/// All `Set-Cookie` values of a response.
fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("ASCII Set-Cookie").to_owned())
        .collect()
}

/// The `Set-Cookie` value that sets cookie `name`, if any.
fn set_cookie_for(cookies: &[String], name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    cookies.iter().find(|c| c.starts_with(&prefix)).cloned()
}

/// The value of a `Set-Cookie` line (`name=value; attributes`).
fn cookie_value(set_cookie: &str) -> &str {
    let pair = set_cookie.split(';').next().unwrap_or_default();
    pair.split_once('=').map(|(_, v)| v).unwrap_or_default()
}

/// The attributes of a `Set-Cookie` line, trimmed.
fn cookie_attributes(set_cookie: &str) -> Vec<String> {
    set_cookie
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_owned())
        .collect()
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(header::LOCATION)
        .unwrap_or_else(|| panic!("no Location in a {} response", response.status()))
        .to_str()
        .expect("ASCII Location")
        .to_owned()
}

/// Status, problem `code` and content type of a rejection.
async fn problem(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let body: Value = response.json().await.expect("problem+json body");
    let code = body["code"].as_str().unwrap_or_default().to_owned();
    (status, code, content_type)
}

async fn assert_problem(response: reqwest::Response, status: StatusCode, code: &str) {
    let (got_status, got_code, content_type) = problem(response).await;
    assert_eq!(got_status, status, "status (code `{got_code}`)");
    assert_eq!(got_code, code);
    assert!(
        content_type.starts_with("application/problem+json"),
        "content type {content_type}"
    );
}

/// The headers the echo upstream received.
async fn upstream_headers(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), StatusCode::OK, "upstream not reached");
    let body: Value = response.json().await.expect("echo JSON");
    body["headers"].clone()
}

// ---------------------------------------------------------------------------------------
// Introspection
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ClientAuth {
    Basic,
    Post,
}

/// What the introspection endpoint received.
#[derive(Clone, Debug)]
struct IntrospectionCall {
    authorization: Option<String>,
    content_type: Option<String>,
    form: Form,
}

/// An RFC 7662 endpoint answering from a fixed table.
struct Introspector {
    client_auth: ClientAuth,
    tokens: HashMap<&'static str, Value>,
    calls: AtomicUsize,
    /// Answer 503 to everything.
    down: AtomicBool,
    /// Calls refused for bad client credentials.
    rejected: AtomicUsize,
    log: Mutex<Vec<IntrospectionCall>>,
    endpoint: OnceLock<String>,
}

impl Introspector {
    async fn start(client_auth: ClientAuth) -> Arc<Self> {
        let exp = unix_now() + 3600;
        let tokens = HashMap::from([
            (
                "tok-alice",
                json!({
                    "active": true, "sub": "alice", "username": "alice@example.com",
                    "client_id": "mobile-app", "scope": "read write", "exp": exp,
                    "groups": ["staff", "ops"], "token_type": "Bearer",
                }),
            ),
            (
                "tok-bob",
                json!({"active": true, "sub": "bob", "scope": "write", "exp": exp, "groups": []}),
            ),
            ("tok-revoked", json!({"active": false})),
        ]);
        let server = Arc::new(Self {
            client_auth,
            tokens,
            calls: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            rejected: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            endpoint: OnceLock::new(),
        });
        let router = Router::new()
            .route("/introspect", post(introspect))
            .with_state(server.clone());
        let addr = common::upstream(router).await;
        server
            .endpoint
            .set(format!("http://{addr}/introspect"))
            .expect("endpoint set once");
        server
    }

    fn endpoint(&self) -> &str {
        self.endpoint.get().expect("started")
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn log(&self) -> Vec<IntrospectionCall> {
        self.log.lock().unwrap().clone()
    }
}

async fn introspect(
    State(server): State<Arc<Introspector>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    server.calls.fetch_add(1, Ordering::SeqCst);
    let form = parse_form(&body);
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_owned())
    };
    server.log.lock().unwrap().push(IntrospectionCall {
        authorization: text(header::AUTHORIZATION),
        content_type: text(header::CONTENT_TYPE),
        form: form.clone(),
    });
    let form_client = (
        form.get("client_id").map(String::as_str),
        form.get("client_secret").map(String::as_str),
    );
    let client_ok = match server.client_auth {
        ClientAuth::Basic => {
            basic_credentials(&headers) == credentials("gateway", "s3cret")
                && form_client == (None, None)
        }
        ClientAuth::Post => {
            !headers.contains_key(header::AUTHORIZATION)
                && form_client == (Some("gateway"), Some("s3cret"))
        }
    };
    if !client_ok {
        server.rejected.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    if server.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "maintenance").into_response();
    }
    let answer = form
        .get("token")
        .and_then(|token| server.tokens.get(token.as_str()))
        .cloned()
        .unwrap_or_else(|| json!({"active": false}));
    Json(answer).into_response()
}

fn introspection_config(
    endpoint: &str,
    upstream: SocketAddr,
    client_auth: &str,
    secret: &str,
) -> String {
    format!(
        r#"
listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
authentication:
  methods:
    opaque:
      introspection:
        endpoint: {endpoint}
        client_id: gateway
        client_secret: {secret}
        client_auth: {client_auth}
        cache_ttl: 5m
        negative_cache_ttl: 10s
        timeout: 2s
        consumer_claim: sub
        groups_claim: groups
routes:
  - match: {{ path: {{ prefix: /api }} }}
    service: echo
    auth: {{ methods: [opaque], scopes: [read] }}
"#
    )
}

async fn introspection_gateway(client_auth: ClientAuth) -> (Arc<Introspector>, Gateway) {
    let server = Introspector::start(client_auth).await;
    let echo = common::echo("echo").await;
    let method = match client_auth {
        ClientAuth::Basic => "client_secret_basic",
        ClientAuth::Post => "client_secret_post",
    };
    let gateway = Gateway::start(&introspection_config(
        server.endpoint(),
        echo,
        method,
        "s3cret",
    ));
    (server, gateway)
}

#[tokio::test]
async fn introspection_active_token_reaches_upstream_with_identity_and_is_cached() {
    let (server, gateway) = introspection_gateway(ClientAuth::Basic).await;
    let client = client();

    let response = client
        .get(gateway.url("/api/orders?page=2"))
        .bearer_auth("tok-alice")
        .send()
        .await
        .expect("request");
    let headers = upstream_headers(response).await;
    assert_eq!(headers["x-consumer-id"], "alice");
    assert_eq!(headers["x-authenticated-scopes"], "read write");
    assert_eq!(headers["x-consumer-groups"], "staff,ops");
    assert_eq!(headers["x-credential"], "opaque:alice");

    // The RFC 7662 request: form body, token and hint, HTTP Basic client authentication.
    assert_eq!(server.calls(), 1);
    let call = &server.log()[0];
    assert_eq!(
        call.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        call.form.get("token").map(String::as_str),
        Some("tok-alice")
    );
    assert_eq!(
        call.form.get("token_type_hint").map(String::as_str),
        Some("access_token")
    );
    assert!(!call.form.contains_key("client_secret"), "{call:?}");
    assert_eq!(
        call.authorization.as_deref(),
        Some(format!("Basic {}", STANDARD.encode("gateway:s3cret")).as_str())
    );
    assert_eq!(server.rejected.load(Ordering::SeqCst), 0);

    // Same token again: served from the cache. Client-forged identity headers are replaced.
    let response = client
        .get(gateway.url("/api/orders"))
        .bearer_auth("tok-alice")
        .header("x-consumer-id", "mallory")
        .header("x-credential", "opaque:mallory")
        .send()
        .await
        .expect("request");
    let headers = upstream_headers(response).await;
    assert_eq!(headers["x-consumer-id"], "alice");
    assert_eq!(headers["x-credential"], "opaque:alice");
    assert_eq!(server.calls(), 1, "the cached result was not used");

    // No token at all: a bearer challenge, and no introspection call.
    let response = client
        .get(gateway.url("/api/orders"))
        .send()
        .await
        .expect("request");
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(challenge.starts_with("Bearer"), "challenge `{challenge}`");
    assert_problem(response, StatusCode::UNAUTHORIZED, "credentials_missing").await;
    assert_eq!(server.calls(), 1);
}

#[tokio::test]
async fn introspection_inactive_token_is_invalid_and_negatively_cached() {
    let (server, gateway) = introspection_gateway(ClientAuth::Basic).await;
    let client = client();

    for attempt in 0..2 {
        let response = client
            .get(gateway.url("/api/orders"))
            .bearer_auth("tok-revoked")
            .send()
            .await
            .expect("request");
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "attempt {attempt}: challenge `{challenge}`"
        );
        assert_problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }
    // The inactive answer is remembered for negative_cache_ttl (10 s).
    assert_eq!(server.calls(), 1, "inactive result not cached");

    // A token the server does not know is inactive too.
    let response = client
        .get(gateway.url("/api/orders"))
        .bearer_auth("tok-unknown")
        .send()
        .await
        .expect("request");
    assert_problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert_eq!(server.calls(), 2);
}

#[tokio::test]
async fn introspection_token_without_required_scope_is_403() {
    let (server, gateway) = introspection_gateway(ClientAuth::Basic).await;
    let response = client()
        .get(gateway.url("/api/orders"))
        .bearer_auth("tok-bob")
        .send()
        .await
        .expect("request");
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains("scope=\"read\""),
        "challenge `{challenge}`"
    );
    assert_problem(response, StatusCode::FORBIDDEN, "insufficient_scope").await;
    assert_eq!(server.calls(), 1);
}

#[tokio::test]
async fn introspection_client_secret_post_sends_credentials_in_the_form() {
    let (server, gateway) = introspection_gateway(ClientAuth::Post).await;
    let response = client()
        .get(gateway.url("/api/orders"))
        .bearer_auth("tok-alice")
        .send()
        .await
        .expect("request");
    let headers = upstream_headers(response).await;
    assert_eq!(headers["x-consumer-id"], "alice");

    assert_eq!(server.calls(), 1);
    assert_eq!(server.rejected.load(Ordering::SeqCst), 0);
    let call = &server.log()[0];
    assert_eq!(call.authorization, None, "{call:?}");
    assert_eq!(
        call.form.get("token").map(String::as_str),
        Some("tok-alice")
    );
    assert_eq!(
        call.form.get("client_id").map(String::as_str),
        Some("gateway")
    );
    assert_eq!(
        call.form.get("client_secret").map(String::as_str),
        Some("s3cret")
    );
}

#[tokio::test]
async fn introspection_endpoint_down_with_nothing_cached_is_503() {
    let (server, gateway) = introspection_gateway(ClientAuth::Basic).await;
    let client = client();

    server.set_down(true);
    let response = client
        .get(gateway.url("/api/orders"))
        .bearer_auth("tok-alice")
        .send()
        .await
        .expect("request");
    assert_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "auth_unavailable",
    )
    .await;
    assert_eq!(server.calls(), 1);

    // An outage is not cached: once the endpoint is back, the token works.
    server.set_down(false);
    let response = client
        .get(gateway.url("/api/orders"))
        .bearer_auth("tok-alice")
        .send()
        .await
        .expect("request");
    let headers = upstream_headers(response).await;
    assert_eq!(headers["x-consumer-id"], "alice");
    assert_eq!(server.calls(), 2);
}

#[tokio::test]
async fn introspection_unreachable_or_refusing_endpoint_is_503() {
    let echo = common::echo("echo").await;
    let client = client();

    // Nothing listens at the endpoint.
    let closed = format!("http://{}/introspect", common::closed_port());
    let gateway = Gateway::start(&introspection_config(
        &closed,
        echo,
        "client_secret_basic",
        "s3cret",
    ));
    let response = client
        .get(gateway.url("/api/orders"))
        .bearer_auth("tok-alice")
        .send()
        .await
        .expect("request");
    assert_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "auth_unavailable",
    )
    .await;
    drop(gateway);

    // The endpoint refuses the gateway's client credentials: not the caller's fault either.
    let server = Introspector::start(ClientAuth::Basic).await;
    let gateway = Gateway::start(&introspection_config(
        server.endpoint(),
        echo,
        "client_secret_basic",
        "wrong-secret",
    ));
    let response = client
        .get(gateway.url("/api/orders"))
        .bearer_auth("tok-alice")
        .send()
        .await
        .expect("request");
    assert_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "auth_unavailable",
    )
    .await;
    assert_eq!(server.rejected.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn introspection_cached_active_token_passes_while_endpoint_is_down() {
    let (server, gateway) = introspection_gateway(ClientAuth::Basic).await;
    let client = client();

    let response = client
        .get(gateway.url("/api/orders"))
        .bearer_auth("tok-alice")
        .send()
        .await
        .expect("request");
    assert_eq!(upstream_headers(response).await["x-consumer-id"], "alice");
    assert_eq!(server.calls(), 1);

    server.set_down(true);
    let response = client
        .get(gateway.url("/api/orders"))
        .bearer_auth("tok-alice")
        .send()
        .await
        .expect("request");
    let headers = upstream_headers(response).await;
    assert_eq!(headers["x-consumer-id"], "alice");
    assert_eq!(headers["x-authenticated-scopes"], "read write");
    assert_eq!(server.calls(), 1, "the cached result was not used");

    // The endpoint really is down: a token not cached yet is a 503.
    let response = client
        .get(gateway.url("/api/orders"))
        .bearer_auth("tok-bob")
        .send()
        .await
        .expect("request");
    assert_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "auth_unavailable",
    )
    .await;
    assert_eq!(server.calls(), 2);
}

// ---------------------------------------------------------------------------------------
// OpenID Connect
// ---------------------------------------------------------------------------------------

const KID: &str = "test-key-1";
const REFRESH_1: &str = "refresh-token-1";
const REFRESH_2: &str = "refresh-token-2";

/// Ways an ID token can be unacceptable.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum BadIdToken {
    Audience,
    Issuer,
    ForeignKey,
    Expired,
}

/// What the token endpoint received.
#[derive(Clone, Debug)]
struct TokenCall {
    basic: Option<(String, String)>,
    form: Form,
}

/// An OpenID Provider: discovery, JWKS, authorize, token (code and refresh grants).
struct Provider {
    issuer: OnceLock<String>,
    key: EncodingKey,
    jwk: Value,
    /// `expires_in` of the authorization-code grant's token response.
    expires_in: u64,
    /// Put a nonce in the ID token other than the one the gateway sent.
    wrong_nonce: AtomicBool,
    /// Spoil the code grant's ID token this way.
    bad_id_token: Mutex<Option<BadIdToken>>,
    codes: AtomicUsize,
    /// Pending authorizations by code: the authorize request's parameters.
    pending: Mutex<HashMap<String, Form>>,
    authorize_log: Mutex<Vec<Form>>,
    token_log: Mutex<Vec<TokenCall>>,
    /// Why token requests were refused (a correct gateway causes none).
    failures: Mutex<Vec<String>>,
    issued_refresh_tokens: Mutex<Vec<String>>,
}

impl Provider {
    async fn start(expires_in: u64) -> Arc<Self> {
        let pair = rcgen::KeyPair::generate().expect("P-256 key");
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("EC key");
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).expect("JWK");
        jwk.common.key_id = Some(KID.to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let provider = Arc::new(Self {
            issuer: OnceLock::new(),
            key,
            jwk: serde_json::to_value(&jwk).expect("JWK JSON"),
            expires_in,
            wrong_nonce: AtomicBool::new(false),
            bad_id_token: Mutex::new(None),
            codes: AtomicUsize::new(0),
            pending: Mutex::new(HashMap::new()),
            authorize_log: Mutex::new(Vec::new()),
            token_log: Mutex::new(Vec::new()),
            failures: Mutex::new(Vec::new()),
            issued_refresh_tokens: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(provider.clone());
        let addr = common::upstream(router).await;
        provider
            .issuer
            .set(format!("http://{addr}"))
            .expect("issuer set once");
        provider
    }

    fn issuer(&self) -> &str {
        self.issuer.get().expect("started")
    }

    fn authorization_endpoint(&self) -> String {
        format!("{}/authorize", self.issuer())
    }

    fn end_session_endpoint(&self) -> String {
        format!("{}/logout", self.issuer())
    }

    fn token_calls(&self) -> Vec<TokenCall> {
        self.token_log.lock().unwrap().clone()
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    fn id_token(&self, nonce: Option<&str>, groups: &[&str]) -> String {
        self.spoiled_id_token(nonce, groups, None)
    }

    fn spoiled_id_token(
        &self,
        nonce: Option<&str>,
        groups: &[&str],
        bad: Option<BadIdToken>,
    ) -> String {
        let now = unix_now();
        let mut claims = json!({
            "iss": if bad == Some(BadIdToken::Issuer) {
                "http://attacker.invalid".to_owned()
            } else {
                self.issuer().to_owned()
            },
            "aud": if bad == Some(BadIdToken::Audience) { "another-client" } else { "web" },
            "sub": "alice",
            "email": "alice@example.com",
            "iat": now,
            "exp": now + 3600,
            "groups": groups,
        });
        if let Some(nonce) = nonce {
            claims["nonce"] = json!(nonce);
        }
        if bad == Some(BadIdToken::Expired) {
            claims["iat"] = json!(now - 7200);
            claims["exp"] = json!(now - 3600);
        }
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some(KID.to_owned());
        if bad == Some(BadIdToken::ForeignKey) {
            // Same key id, another private key: the signature does not verify.
            let pair = rcgen::KeyPair::generate().expect("P-256 key");
            let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("EC key");
            return jsonwebtoken::encode(&header, &claims, &key).expect("sign ID token");
        }
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign ID token")
    }

    /// Check a token request as a strict provider would; the token response or why not.
    fn grant(&self, call: &TokenCall) -> Result<Value, String> {
        if call.basic != credentials("web", "websecret") {
            return Err(format!("client authentication failed: {:?}", call.basic));
        }
        let form = &call.form;
        let field = |name: &str| {
            form.get(name)
                .map(String::as_str)
                .ok_or_else(|| format!("`{name}` missing"))
        };
        match field("grant_type")? {
            "authorization_code" => {
                let code = field("code")?;
                let authorization = self
                    .pending
                    .lock()
                    .unwrap()
                    .remove(code)
                    .ok_or_else(|| format!("unknown or reused code `{code}`"))?;
                if Some(field("redirect_uri")?) != authorization.get("redirect_uri").map(|s| &**s) {
                    return Err("redirect_uri differs from the authorization request".into());
                }
                if authorization
                    .get("code_challenge_method")
                    .map(String::as_str)
                    != Some("S256")
                {
                    return Err("PKCE method is not S256".into());
                }
                let verifier = field("code_verifier")?;
                if !(43..=128).contains(&verifier.len()) {
                    return Err(format!("code_verifier length {}", verifier.len()));
                }
                if authorization.get("code_challenge") != Some(&pkce_s256(verifier)) {
                    return Err("PKCE: the verifier does not match the challenge".into());
                }
                let nonce = if self.wrong_nonce.load(Ordering::SeqCst) {
                    "a-nonce-the-gateway-never-sent".to_owned()
                } else {
                    authorization.get("nonce").cloned().unwrap_or_default()
                };
                self.issued_refresh_tokens
                    .lock()
                    .unwrap()
                    .push(REFRESH_1.to_owned());
                Ok(json!({
                    "access_token": "access-token-1",
                    "token_type": "Bearer",
                    "expires_in": self.expires_in,
                    "refresh_token": REFRESH_1,
                    "id_token": self.spoiled_id_token(
                        Some(&nonce),
                        &["staff", "admins"],
                        *self.bad_id_token.lock().unwrap(),
                    ),
                }))
            }
            "refresh_token" => {
                let refresh_token = field("refresh_token")?;
                if !self
                    .issued_refresh_tokens
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|t| t == refresh_token)
                {
                    return Err(format!("unknown refresh token `{refresh_token}`"));
                }
                self.issued_refresh_tokens
                    .lock()
                    .unwrap()
                    .push(REFRESH_2.to_owned());
                Ok(json!({
                    "access_token": "access-token-2",
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "refresh_token": REFRESH_2,
                    "id_token": self.id_token(None, &["staff", "refreshed"]),
                }))
            }
            other => Err(format!("unsupported grant_type `{other}`")),
        }
    }
}

async fn discovery(State(provider): State<Arc<Provider>>) -> Json<Value> {
    let issuer = provider.issuer();
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": provider.authorization_endpoint(),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "end_session_endpoint": provider.end_session_endpoint(),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "code_challenge_methods_supported": ["S256"],
    }))
}

async fn jwks(State(provider): State<Arc<Provider>>) -> Json<Value> {
    Json(json!({ "keys": [provider.jwk] }))
}

/// The user "logs in" at once: 302 back to `redirect_uri` with a code and the state.
async fn authorize(State(provider): State<Arc<Provider>>, Query(query): Query<Form>) -> Response {
    provider.authorize_log.lock().unwrap().push(query.clone());
    let Some(mut target) = query
        .get("redirect_uri")
        .and_then(|uri| reqwest::Url::parse(uri).ok())
    else {
        return (StatusCode::BAD_REQUEST, "redirect_uri missing").into_response();
    };
    let code = format!("code-{}", provider.codes.fetch_add(1, Ordering::SeqCst) + 1);
    target
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", query.get("state").map_or("", String::as_str));
    provider.pending.lock().unwrap().insert(code, query);
    (StatusCode::FOUND, [(header::LOCATION, target.to_string())]).into_response()
}

async fn token(
    State(provider): State<Arc<Provider>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let call = TokenCall {
        basic: basic_credentials(&headers),
        form: parse_form(&body),
    };
    provider.token_log.lock().unwrap().push(call.clone());
    match provider.grant(&call) {
        Ok(tokens) => Json(tokens).into_response(),
        Err(reason) => {
            provider.failures.lock().unwrap().push(reason.clone());
            (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "invalid_grant", "error_description": reason})),
            )
                .into_response()
        }
    }
}

fn oidc_config(issuer: &str, upstream: SocketAddr) -> String {
    format!(
        r#"
listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
authentication:
  methods:
    login:
      oidc:
        issuer: {issuer}
        client_id: web
        client_secret: websecret
        callback_path: /app/oauth2/callback
        logout_path: /app/oauth2/logout
        post_logout_redirect: /
        scopes: [openid, email]
        cookie_name: gh_session
        cookie_secure: false
        session_secret: "at-least-32-characters-long-secret!!"
        session_lifetime: 8h
        groups_claim: groups
routes:
  - match: {{ path: {{ prefix: /app }} }}
    service: echo
    auth: {{ methods: [login] }}
"#
    )
}

async fn oidc_gateway(expires_in: u64) -> (Arc<Provider>, Gateway) {
    let provider = Provider::start(expires_in).await;
    let echo = common::echo("echo").await;
    let gateway = Gateway::start(&oidc_config(provider.issuer(), echo));
    (provider, gateway)
}

/// A login started at the gateway and sent through the provider: the callback URL the
/// provider redirected to, and the pending-login cookie.
struct LoginAtProvider {
    callback: String,
    login_cookie: String,
    /// The parameters the gateway sent to the authorization endpoint.
    authorize: Form,
}

/// GET `path` without a session, check the redirect to the provider, follow it.
async fn start_login(
    client: &reqwest::Client,
    gateway: &Gateway,
    provider: &Provider,
    path: &str,
) -> LoginAtProvider {
    let response = client.get(gateway.url(path)).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::FOUND, "no login redirect");
    let to_provider = location(&response);
    let cookies = set_cookies(&response);
    let login = set_cookie_for(&cookies, "gh_session_login")
        .unwrap_or_else(|| panic!("no login cookie in {cookies:?}"));
    let attributes = cookie_attributes(&login);
    for expected in ["Path=/", "HttpOnly", "SameSite=Lax", "Max-Age=600"] {
        assert!(
            attributes.iter().any(|a| a == expected),
            "`{expected}` missing from `{login}`"
        );
    }
    assert!(
        !attributes.iter().any(|a| a.eq_ignore_ascii_case("Secure")),
        "cookie_secure: false but `{login}`"
    );
    assert!(
        set_cookie_for(&cookies, "gh_session").is_none(),
        "{cookies:?}"
    );

    let (endpoint, _) = to_provider.split_once('?').expect("query in Location");
    assert_eq!(endpoint, provider.authorization_endpoint());
    let authorize = query_of(&to_provider);
    let param = |name: &str| authorize.get(name).map(String::as_str).unwrap_or_default();
    assert_eq!(param("response_type"), "code");
    assert_eq!(param("client_id"), "web");
    assert_eq!(param("redirect_uri"), gateway.url("/app/oauth2/callback"));
    assert_eq!(param("scope"), "openid email");
    assert_eq!(param("code_challenge_method"), "S256");
    for name in ["state", "nonce"] {
        assert!(
            param(name).len() >= 16,
            "{name} `{}` too short",
            param(name)
        );
    }
    assert_ne!(param("state"), param("nonce"));
    // base64url of a SHA-256 digest
    assert_eq!(param("code_challenge").len(), 43, "{authorize:?}");
    assert!(URL_SAFE_NO_PAD.decode(param("code_challenge")).is_ok());

    let response = client.get(&to_provider).send().await.expect("authorize");
    assert_eq!(response.status(), StatusCode::FOUND);
    LoginAtProvider {
        callback: location(&response),
        login_cookie: cookie_value(&login).to_owned(),
        authorize,
    }
}

/// The whole login; the session cookie value.
async fn log_in(
    client: &reqwest::Client,
    gateway: &Gateway,
    provider: &Provider,
    path: &str,
) -> String {
    let login = start_login(client, gateway, provider, path).await;
    let response = client
        .get(&login.callback)
        .header(
            header::COOKIE,
            format!("gh_session_login={}", login.login_cookie),
        )
        .send()
        .await
        .expect("callback");
    assert_eq!(
        response.status(),
        StatusCode::FOUND,
        "callback failed; provider refusals: {:?}",
        provider.failures()
    );
    assert_eq!(
        location(&response),
        path,
        "not sent back where the login started"
    );
    let cookies = set_cookies(&response);
    let session = set_cookie_for(&cookies, "gh_session")
        .unwrap_or_else(|| panic!("no session cookie in {cookies:?}"));
    let value = cookie_value(&session).to_owned();
    assert!(!value.is_empty(), "{session}");
    let attributes = cookie_attributes(&session);
    for expected in ["Path=/", "HttpOnly", "SameSite=Lax"] {
        assert!(
            attributes.iter().any(|a| a == expected),
            "`{expected}` missing from `{session}`"
        );
    }
    // The session cookie lives as long as the session may (8 h), not a browser session.
    let max_age: u64 = attributes
        .iter()
        .find_map(|a| a.strip_prefix("Max-Age="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Max-Age in `{session}`"));
    assert!(
        (8 * 3600 - 60..=8 * 3600).contains(&max_age),
        "Max-Age {max_age}"
    );
    // The pending login is cleared.
    let cleared = set_cookie_for(&cookies, "gh_session_login")
        .unwrap_or_else(|| panic!("login cookie not cleared: {cookies:?}"));
    assert_eq!(cookie_value(&cleared), "");
    assert!(cookie_attributes(&cleared).iter().any(|a| a == "Max-Age=0"));
    // The sealed session holds no token or claim in clear.
    assert!(!value.contains("alice") && !value.contains(REFRESH_1));
    value
}

#[tokio::test]
async fn oidc_login_with_pkce_creates_a_session_that_reaches_the_upstream() {
    let (provider, gateway) = oidc_gateway(3600).await;
    let client = client();
    let session = log_in(&client, &gateway, &provider, "/app/page?tab=2").await;

    // The provider saw the gateway's authorization request and one code exchange, which
    // passed every check (client auth, single-use code, redirect_uri, PKCE S256).
    assert_eq!(provider.failures(), Vec::<String>::new());
    let authorize = provider.authorize_log.lock().unwrap().clone();
    assert_eq!(authorize.len(), 1);
    assert_eq!(
        authorize[0].get("client_id").map(String::as_str),
        Some("web")
    );
    let calls = provider.token_calls();
    assert_eq!(calls.len(), 1);
    let exchange = &calls[0];
    assert_eq!(exchange.basic, credentials("web", "websecret"));
    let form = |name: &str| exchange.form.get(name).map(String::as_str);
    assert_eq!(form("grant_type"), Some("authorization_code"));
    assert_eq!(form("code"), Some("code-1"));
    let redirect_uri = gateway.url("/app/oauth2/callback");
    assert_eq!(form("redirect_uri"), Some(redirect_uri.as_str()));
    let verifier = form("code_verifier").expect("code_verifier sent");
    assert_eq!(
        authorize[0].get("code_challenge"),
        Some(&pkce_s256(verifier))
    );
    assert_ne!(authorize[0].get("code_challenge").unwrap(), verifier);
    assert_eq!(form("client_secret"), None, "secret sent in the form too");

    // With the session, the request reaches the upstream with the identity; the session
    // cookie stays at the gateway, other cookies pass.
    let response = client
        .get(gateway.url("/app/page?tab=2"))
        .header(
            header::COOKIE,
            format!("theme=dark; gh_session={session}; lang=en"),
        )
        .send()
        .await
        .expect("request");
    assert!(set_cookies(&response).is_empty(), "no refresh was due");
    let body: Value = {
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("echo JSON")
    };
    assert_eq!(body["path"], "/app/page");
    assert_eq!(body["query"], "tab=2");
    let headers = &body["headers"];
    assert_eq!(headers["x-consumer-id"], "alice");
    assert_eq!(headers["x-credential"], "login:alice");
    assert_eq!(headers["x-consumer-groups"], "staff,admins");
    let cookie = headers["cookie"].as_str().unwrap_or_default();
    assert!(!cookie.contains("gh_session"), "upstream saw `{cookie}`");
    assert!(
        cookie.contains("theme=dark") && cookie.contains("lang=en"),
        "`{cookie}`"
    );
    assert_eq!(provider.token_calls().len(), 1);
}

#[tokio::test]
async fn oidc_callback_with_wrong_state_or_no_login_is_401() {
    let (provider, gateway) = oidc_gateway(3600).await;
    let client = client();
    let login = start_login(&client, &gateway, &provider, "/app/page").await;
    let back = query_of(&login.callback);
    assert_eq!(back.get("state"), login.authorize.get("state"));
    let code = back.get("code").expect("code").clone();

    // A state from another login (CSRF): refused before any code exchange.
    let forged = format!(
        "{}?code={code}&state=forged-state-value",
        gateway.url("/app/oauth2/callback")
    );
    let response = client
        .get(&forged)
        .header(
            header::COOKIE,
            format!("gh_session_login={}", login.login_cookie),
        )
        .send()
        .await
        .expect("callback");
    assert!(set_cookie_for(&set_cookies(&response), "gh_session").is_none());
    assert_problem(response, StatusCode::UNAUTHORIZED, "login_failed").await;

    // The right state but no pending-login cookie.
    let response = client.get(&login.callback).send().await.expect("callback");
    assert_problem(response, StatusCode::UNAUTHORIZED, "login_failed").await;

    // A login cookie that was tampered with.
    let mut tampered = login.login_cookie.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let response = client
        .get(&login.callback)
        .header(header::COOKIE, format!("gh_session_login={tampered}"))
        .send()
        .await
        .expect("callback");
    assert_problem(response, StatusCode::UNAUTHORIZED, "login_failed").await;

    assert!(
        provider.token_calls().is_empty(),
        "the gateway exchanged a code for a login it could not match"
    );
}

#[tokio::test]
async fn oidc_id_token_with_wrong_nonce_is_401() {
    let (provider, gateway) = oidc_gateway(3600).await;
    provider.wrong_nonce.store(true, Ordering::SeqCst);
    let client = client();
    let login = start_login(&client, &gateway, &provider, "/app/page").await;
    let response = client
        .get(&login.callback)
        .header(
            header::COOKIE,
            format!("gh_session_login={}", login.login_cookie),
        )
        .send()
        .await
        .expect("callback");
    assert!(
        set_cookie_for(&set_cookies(&response), "gh_session").is_none(),
        "a session was created"
    );
    assert_problem(response, StatusCode::UNAUTHORIZED, "login_failed").await;
    // The exchange itself succeeded: it is the nonce that was refused.
    assert_eq!(provider.token_calls().len(), 1);
    assert_eq!(provider.failures(), Vec::<String>::new());
}

#[tokio::test]
async fn oidc_id_token_that_does_not_verify_is_401() {
    let (provider, gateway) = oidc_gateway(3600).await;
    let client = client();
    let spoilt = [
        BadIdToken::Audience,
        BadIdToken::Issuer,
        BadIdToken::ForeignKey,
        BadIdToken::Expired,
    ];
    for bad in spoilt {
        *provider.bad_id_token.lock().unwrap() = Some(bad);
        let login = start_login(&client, &gateway, &provider, "/app/page").await;
        let response = client
            .get(&login.callback)
            .header(
                header::COOKIE,
                format!("gh_session_login={}", login.login_cookie),
            )
            .send()
            .await
            .expect("callback");
        let cookies = set_cookies(&response);
        assert!(
            set_cookie_for(&cookies, "gh_session").is_none(),
            "{bad:?}: a session was created"
        );
        let (status, code, _) = problem(response).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::UNAUTHORIZED, "login_failed"),
            "{bad:?}"
        );
    }
    assert_eq!(provider.token_calls().len(), spoilt.len());
    assert_eq!(provider.failures(), Vec::<String>::new());

    // The same provider with a good ID token: the login works.
    *provider.bad_id_token.lock().unwrap() = None;
    let session = log_in(&client, &gateway, &provider, "/app/page").await;
    let response = client
        .get(gateway.url("/app/page"))
        .header(header::COOKIE, format!("gh_session={session}"))
        .send()
        .await
        .expect("request");
    assert_eq!(upstream_headers(response).await["x-consumer-id"], "alice");
}

#[tokio::test]
async fn oidc_tampered_session_cookie_means_logging_in_again() {
    let (provider, gateway) = oidc_gateway(3600).await;
    let client = client();
    let session = log_in(&client, &gateway, &provider, "/app/page").await;

    let response = client
        .get(gateway.url("/app/page"))
        .header(header::COOKIE, format!("gh_session={session}"))
        .send()
        .await
        .expect("request");
    assert_eq!(upstream_headers(response).await["x-consumer-id"], "alice");

    let mut bytes = session.clone().into_bytes();
    let middle = bytes.len() / 2;
    bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    let truncated = &session[..session.len() - 4];
    for bad in [tampered.as_str(), truncated, "not-a-session", ""] {
        let response = client
            .get(gateway.url("/app/page"))
            .header(header::COOKIE, format!("gh_session={bad}"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::FOUND, "cookie `{bad}`");
        let to = location(&response);
        assert!(
            to.starts_with(&format!("{}?", provider.authorization_endpoint())),
            "cookie `{bad}`: redirected to {to}"
        );
    }

    // A pending-login cookie is sealed for another purpose: it is no session either.
    let login = start_login(&client, &gateway, &provider, "/app/page").await;
    let response = client
        .get(gateway.url("/app/page"))
        .header(header::COOKIE, format!("gh_session={}", login.login_cookie))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::FOUND);
}

#[tokio::test]
async fn oidc_logout_clears_the_session_and_ends_it_at_the_provider() {
    let (provider, gateway) = oidc_gateway(3600).await;
    let client = client();
    let session = log_in(&client, &gateway, &provider, "/app/page").await;

    let response = client
        .get(gateway.url("/app/oauth2/logout"))
        .header(header::COOKIE, format!("gh_session={session}"))
        .send()
        .await
        .expect("logout");
    assert_eq!(response.status(), StatusCode::FOUND);
    let to = location(&response);
    let (endpoint, _) = to.split_once('?').expect("query in Location");
    assert_eq!(endpoint, provider.end_session_endpoint());
    let query = query_of(&to);
    assert_eq!(
        query.get("post_logout_redirect_uri").map(String::as_str),
        Some("/")
    );
    assert_eq!(query.get("client_id").map(String::as_str), Some("web"));
    let cookies = set_cookies(&response);
    let cleared = set_cookie_for(&cookies, "gh_session")
        .unwrap_or_else(|| panic!("session not cleared: {cookies:?}"));
    assert_eq!(cookie_value(&cleared), "");
    let attributes = cookie_attributes(&cleared);
    assert!(attributes.iter().any(|a| a == "Max-Age=0"), "`{cleared}`");
    assert!(attributes.iter().any(|a| a == "Path=/"), "`{cleared}`");

    // Without a cookie the browser is sent to log in again.
    let response = client
        .get(gateway.url("/app/page"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::FOUND);
    assert!(location(&response).starts_with(&provider.authorization_endpoint()));
}

#[tokio::test]
async fn oidc_non_get_request_without_session_is_401_not_a_redirect() {
    let (provider, gateway) = oidc_gateway(3600).await;
    let client = client();
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let response = client
            .request(method.clone(), gateway.url("/app/page"))
            .body("form=data")
            .send()
            .await
            .expect("request");
        assert!(
            response.headers().get(header::LOCATION).is_none(),
            "{method} redirected"
        );
        assert!(
            set_cookies(&response).is_empty(),
            "{method} started a login"
        );
        assert_problem(response, StatusCode::UNAUTHORIZED, "credentials_missing").await;
    }
    assert!(provider.authorize_log.lock().unwrap().is_empty());

    // With a session, a POST goes through.
    let session = log_in(&client, &gateway, &provider, "/app/page").await;
    let response = client
        .post(gateway.url("/app/page"))
        .header(header::COOKIE, format!("gh_session={session}"))
        .body("form=data")
        .send()
        .await
        .expect("request");
    let body: Value = {
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("echo JSON")
    };
    assert_eq!(body["method"], "POST");
    assert_eq!(body["body"], "form=data");
    assert_eq!(body["headers"]["x-consumer-id"], "alice");
}

#[tokio::test]
async fn oidc_session_is_refreshed_with_the_refresh_token_after_expiry() {
    // The code grant's tokens expire after one second.
    let (provider, gateway) = oidc_gateway(1).await;
    let client = client();
    let session = log_in(&client, &gateway, &provider, "/app/page").await;
    assert_eq!(provider.token_calls().len(), 1);

    // `expires` is whole seconds: two seconds later the tokens are past due for sure.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let response = client
        .get(gateway.url("/app/page"))
        .header(header::COOKIE, format!("gh_session={session}"))
        .send()
        .await
        .expect("request");
    let cookies = set_cookies(&response);
    let headers = upstream_headers(response).await;
    assert_eq!(headers["x-consumer-id"], "alice");
    // The refreshed ID token's claims now make the identity.
    assert_eq!(headers["x-consumer-groups"], "staff,refreshed");
    assert!(
        !headers["cookie"]
            .as_str()
            .unwrap_or_default()
            .contains("gh_session"),
        "{headers}"
    );

    let calls = provider.token_calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let refresh = &calls[1];
    assert_eq!(refresh.basic, credentials("web", "websecret"));
    assert_eq!(
        refresh.form.get("grant_type").map(String::as_str),
        Some("refresh_token")
    );
    assert_eq!(
        refresh.form.get("refresh_token").map(String::as_str),
        Some(REFRESH_1)
    );
    assert_eq!(provider.failures(), Vec::<String>::new());

    let renewed = set_cookie_for(&cookies, "gh_session")
        .unwrap_or_else(|| panic!("no renewed session cookie: {cookies:?}"));
    let renewed = cookie_value(&renewed).to_owned();
    assert!(!renewed.is_empty());
    assert_ne!(renewed, session);

    // The renewed session is good for an hour: no further refresh.
    let response = client
        .get(gateway.url("/app/page"))
        .header(header::COOKIE, format!("gh_session={renewed}"))
        .send()
        .await
        .expect("request");
    assert!(set_cookies(&response).is_empty());
    let headers = upstream_headers(response).await;
    assert_eq!(headers["x-consumer-groups"], "staff,refreshed");
    assert_eq!(provider.token_calls().len(), 2);
}
