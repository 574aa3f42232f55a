//! JWT bearer authentication end to end: tokens signed with real keys, published by an
//! in-test issuer (JWKS and OIDC discovery) whose key set changes at runtime and which can
//! go down; a counting upstream shows what reached it and which identity headers it saw.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{client, Gateway};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const HMAC_SECRET: &str = "internal-shared-secret-of-at-least-32-characters";

// ---------------------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------------------

/// A private key the test signs with, and the public half the issuer publishes.
struct SigningKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    /// SPKI PEM of the public key (what an attacker can download).
    public_pem: String,
    /// The raw public key (for Ed25519: the 32 key bytes).
    public_raw: Vec<u8>,
}

impl SigningKey {
    fn generate(alg: Algorithm, kid: &str) -> SigningKey {
        type FromPem = fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>;
        let (generator, from_pem): (&'static rcgen::SignatureAlgorithm, FromPem) = match alg {
            Algorithm::RS256 | Algorithm::PS256 => {
                (&rcgen::PKCS_RSA_SHA256, EncodingKey::from_rsa_pem)
            }
            Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, EncodingKey::from_ec_pem),
            Algorithm::ES384 => (&rcgen::PKCS_ECDSA_P384_SHA384, EncodingKey::from_ec_pem),
            Algorithm::EdDSA => (&rcgen::PKCS_ED25519, EncodingKey::from_ed_pem),
            other => panic!("no key generator for {other:?}"),
        };
        let pair = rcgen::KeyPair::generate_for(generator).expect("generate key pair");
        let encoding = from_pem(pair.serialize_pem().as_bytes()).expect("encoding key");
        SigningKey {
            kid: kid.to_owned(),
            alg,
            encoding,
            public_pem: pair.public_key_pem(),
            public_raw: pair.public_key_raw().to_vec(),
        }
    }

    /// The public key as a JWK carrying this key's `kid` and `alg`.
    fn jwk(&self) -> Jwk {
        if self.alg == Algorithm::EdDSA {
            // `Jwk::from_encoding_key` only understands 48-byte PKCS#8 v1 Ed25519 keys;
            // aws-lc writes v2 (with the public key), so the OKP JWK is built by hand.
            return serde_json::from_value(json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": b64(&self.public_raw),
                "alg": "EdDSA",
                "kid": self.kid,
            }))
            .expect("Ed25519 JWK");
        }
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.alg).expect("public JWK");
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// Sign with this key but name another `kid` in the header.
    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        self.sign_with(self.alg, kid, claims)
    }

    /// Sign with this key under any algorithm of its family (RS256 with a PS256 key).
    fn sign_with(&self, alg: Algorithm, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign token")
    }
}

fn hmac_token(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    let key = EncodingKey::from_secret(secret).expect("HMAC key");
    jsonwebtoken::encode(&header, claims, &key).expect("HS256")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Every token gets its own `jti`, so no two tokens are the same string (and the gateway's
/// cache of verified tokens never answers for a token it has not verified).
fn unique_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("jti-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Claims of a valid token for `alice` with audience `orders`.
fn claims(issuer: &str) -> Value {
    let now = now();
    json!({
        "iss": issuer,
        "sub": "alice",
        "aud": "orders",
        "iat": now,
        "exp": now + 600,
        "jti": unique_id(),
        "email": "alice@example.com",
        "scope": "orders:read orders:write",
        "groups": ["partners"],
    })
}

/// `base` with `changes` applied; a `null` change removes the claim.
fn with(mut base: Value, changes: Value) -> Value {
    let object = base.as_object_mut().expect("claims object");
    for (name, value) in changes.as_object().expect("changes object") {
        if value.is_null() {
            object.remove(name);
        } else {
            object.insert(name.clone(), value.clone());
        }
    }
    base
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------------------------------
// The issuer: JWKS and OIDC discovery, changeable and stoppable at runtime
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
struct IssuerState {
    keys: Arc<RwLock<Vec<Jwk>>>,
    /// `false`: every endpoint answers 503.
    up: Arc<AtomicBool>,
    /// The `issuer` the discovery document claims (normally the server's base URL).
    advertised_issuer: Arc<RwLock<String>>,
    base: String,
    jwks_fetches: Arc<AtomicUsize>,
    discovery_fetches: Arc<AtomicUsize>,
}

struct Issuer {
    addr: SocketAddr,
    state: IssuerState,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Issuer {
    async fn start(keys: Vec<Jwk>) -> Issuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind issuer");
        let addr = listener.local_addr().expect("issuer address");
        let base = format!("http://{addr}");
        let state = IssuerState {
            keys: Arc::new(RwLock::new(keys)),
            up: Arc::new(AtomicBool::new(true)),
            advertised_issuer: Arc::new(RwLock::new(base.clone())),
            base,
            jwks_fetches: Arc::new(AtomicUsize::new(0)),
            discovery_fetches: Arc::new(AtomicUsize::new(0)),
        };
        let router = Router::new()
            .route("/jwks", get(serve_jwks))
            .route("/.well-known/openid-configuration", get(serve_discovery))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Issuer {
            addr,
            state,
            task: Some(task),
        }
    }

    fn base(&self) -> String {
        self.state.base.clone()
    }

    /// The issuer identifier used when the JWKS URL is configured directly.
    fn realm(&self) -> String {
        format!("{}/realms/test", self.base())
    }

    fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.base())
    }

    fn publish(&self, keys: Vec<Jwk>) {
        *self.state.keys.write().expect("keys lock") = keys;
    }

    fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
    }

    fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }

    /// Take the server down: its listener is closed, connections are refused.
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        assert!(
            tokio::net::TcpStream::connect(self.addr).await.is_err(),
            "the issuer still accepts connections after being stopped"
        );
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn serve_jwks(State(state): State<IssuerState>) -> Response {
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if !state.up.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let keys = state.keys.read().expect("keys lock").clone();
    Json(json!({ "keys": keys })).into_response()
}

async fn serve_discovery(State(state): State<IssuerState>) -> Response {
    state.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    if !state.up.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let issuer = state.advertised_issuer.read().expect("issuer lock").clone();
    Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{}/jwks", state.base),
        "authorization_endpoint": format!("{}/authorize", state.base),
        "token_endpoint": format!("{}/token", state.base),
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------
// The upstream: counts hits and reflects every header (all values) back as JSON
// ---------------------------------------------------------------------------------------

struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Upstream {
    async fn start() -> Upstream {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let router = Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut reflected = BTreeMap::<String, Vec<String>>::new();
                for (name, value) in &headers {
                    reflected
                        .entry(name.as_str().to_owned())
                        .or_default()
                        .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
                }
                Json(json!({ "path": uri.path(), "query": uri.query(), "headers": reflected }))
            }
        });
        let addr = common::upstream(router).await;
        Upstream { addr, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The values of one header the upstream saw (empty when absent).
fn seen(body: &Value, header: &str) -> Vec<String> {
    body["headers"][header]
        .as_array()
        .map(|values| {
            values
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Configuration and request helpers
// ---------------------------------------------------------------------------------------

/// A gateway configuration: one listener, the upstream as service `app`, the given method
/// definitions (indented under `authentication.methods`) and routes, and consumer `alice`.
fn config(upstream: SocketAddr, methods: &str, routes: &str) -> String {
    format!(
        r#"listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: app
    endpoints: [{{ address: "{upstream}" }}]
authentication:
  methods:
{methods}
routes:
{routes}
consumers:
  - id: alice
    name: Alice
    groups: [staff]
"#
    )
}

async fn get_bearer(client: &reqwest::Client, url: &str, token: &str) -> reqwest::Response {
    client
        .get(url)
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("request")
}

fn header_of(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_owned())
        .unwrap_or_default()
}

/// Assert a 200 that came from the upstream; its reflection of the request.
async fn expect_upstream(response: reqwest::Response, case: &str) -> Value {
    let status = response.status();
    let content_type = header_of(&response, "content-type");
    let text = response.text().await.expect("body");
    assert_eq!(status, 200, "{case}: {text}");
    assert_eq!(content_type, "application/json", "{case}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{case}: {e}: {text}"))
}

/// Assert a problem+json answer of the gateway; returns its `WWW-Authenticate` (or "") and
/// the problem document.
async fn expect_problem(
    response: reqwest::Response,
    status: u16,
    code: &str,
    case: &str,
) -> (String, Value) {
    let actual = response.status();
    let content_type = header_of(&response, "content-type");
    let challenge = header_of(&response, "www-authenticate");
    let text = response.text().await.expect("body");
    assert_eq!(actual, status, "{case}: {text}");
    assert_eq!(
        content_type, "application/problem+json",
        "{case}: the answer must come from the gateway: {text}"
    );
    let problem: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{case}: {e}: {text}"));
    assert_eq!(problem["code"], code, "{case}: {text}");
    assert_eq!(problem["status"], status, "{case}: {text}");
    (challenge, problem)
}

/// Check a 401 `invalid_token` problem+json answer with an RFC 6750 challenge whose
/// description is one of `reasons` (so the check that refused the token is the one the case
/// is about); what is wrong otherwise.
async fn invalid_token_verdict(
    response: reqwest::Response,
    reasons: &[&str],
) -> Result<(), String> {
    let status = response.status();
    let content_type = header_of(&response, "content-type");
    let challenge = header_of(&response, "www-authenticate");
    let text = response.text().await.map_err(|e| e.to_string())?;
    if status != 401 || content_type != "application/problem+json" {
        return Err(format!("answered {status} ({content_type}): {text}"));
    }
    let problem: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    if problem["code"] != "invalid_token" {
        return Err(format!("code is not invalid_token: {text}"));
    }
    let prefix = "Bearer realm=\"gatehouse\", error=\"invalid_token\", error_description=\"";
    let description = challenge
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix('"'))
        .ok_or_else(|| format!("unexpected WWW-Authenticate `{challenge}`"))?;
    if !reasons.contains(&description) {
        return Err(format!(
            "refused as `{description}`, expected one of {reasons:?}"
        ));
    }
    if problem["detail"] != description {
        return Err(format!("detail differs from the challenge: {text}"));
    }
    Ok(())
}

async fn expect_invalid_token(response: reqwest::Response, case: &str, reasons: &[&str]) {
    if let Err(message) = invalid_token_verdict(response, reasons).await {
        panic!("{case}: {message}");
    }
}

// ---------------------------------------------------------------------------------------
// 1. Every algorithm, identity headers, forged headers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_passes_and_the_identity_reaches_the_upstream() {
    let keys = [
        SigningKey::generate(Algorithm::RS256, "rsa-pkcs1"),
        SigningKey::generate(Algorithm::PS256, "rsa-pss"),
        SigningKey::generate(Algorithm::ES256, "ec-p256"),
        SigningKey::generate(Algorithm::ES384, "ec-p384"),
        SigningKey::generate(Algorithm::EdDSA, "ed25519"),
    ];
    let issuer = Issuer::start(keys.iter().map(SigningKey::jwk).collect()).await;
    let upstream = Upstream::start().await;
    let methods = format!(
        r#"    partners:
      jwt:
        issuer: "{realm}"
        jwks_uri: "{jwks}"
        algorithms: [RS256, PS256, ES256, ES384, EdDSA]
        audiences: [orders]
        required_claims: [email]
        groups_claim: groups
        claims_to_headers: {{ x-user-email: email }}
    internal:
      jwt:
        issuer: "{realm}"
        hmac_secret: "{HMAC_SECRET}"
        algorithms: [HS256]
        audiences: [orders]"#,
        realm = issuer.realm(),
        jwks = issuer.jwks_uri(),
    );
    let routes = r#"  - match: { path: { prefix: /orders } }
    service: app
    auth: { methods: [partners, internal] }
  - match: { path: { prefix: /open } }
    service: app"#;
    let gateway = Gateway::start(&config(upstream.addr, &methods, routes));
    let client = client();
    let forged = [
        ("x-consumer-id", "mallory"),
        ("x-consumer-id", "eve"),
        ("x-consumer-name", "Mallory"),
        ("x-consumer-groups", "admins"),
        ("x-authenticated-scopes", "admin:all"),
        ("x-credential", "partners:mallory"),
        ("x-user-email", "mallory@evil.example"),
    ];
    let send = |token: String| {
        let mut request = client
            .get(gateway.url("/orders/17"))
            .header("authorization", format!("Bearer {token}"));
        for (name, value) in forged {
            request = request.header(name, value);
        }
        request.send()
    };

    for key in &keys {
        let case = format!("{:?} (kid {})", key.alg, key.kid);
        let response = send(key.sign(&claims(&issuer.realm()))).await.unwrap();
        let body = expect_upstream(response, &case).await;
        assert_eq!(body["path"], "/orders/17", "{case}");
        for (header, expected) in [
            ("x-consumer-id", "alice"),
            ("x-consumer-name", "Alice"),
            ("x-consumer-groups", "staff,partners"),
            ("x-authenticated-scopes", "orders:read orders:write"),
            ("x-credential", "partners:alice"),
            ("x-user-email", "alice@example.com"),
        ] {
            assert_eq!(
                seen(&body, header),
                vec![expected.to_owned()],
                "{case}: upstream header {header}"
            );
        }
    }

    // HS256 through the second method of the route (the first refuses the algorithm).
    let token = hmac_token(
        HMAC_SECRET.as_bytes(),
        None,
        &with(claims(&issuer.realm()), json!({ "sub": "svc-billing" })),
    );
    let body = expect_upstream(send(token).await.unwrap(), "HS256").await;
    assert_eq!(seen(&body, "x-consumer-id"), ["svc-billing"], "HS256");
    assert_eq!(seen(&body, "x-consumer-name"), ["svc-billing"], "HS256");
    assert_eq!(
        seen(&body, "x-credential"),
        ["internal:svc-billing"],
        "HS256"
    );
    assert_eq!(
        seen(&body, "x-authenticated-scopes"),
        ["orders:read orders:write"],
        "HS256"
    );
    // No groups from the directory or a groups claim: the forged header is simply gone.
    assert!(seen(&body, "x-consumer-groups").is_empty(), "HS256: {body}");
    // `x-user-email` belongs to the other method's claims_to_headers; still stripped.
    assert!(seen(&body, "x-user-email").is_empty(), "HS256: {body}");

    // A JWK naming its `alg` accepts only that one: RS256 with the PS256-pinned key.
    let pss = &keys[1];
    let response = send(pss.sign_with(Algorithm::RS256, &pss.kid, &claims(&issuer.realm())))
        .await
        .unwrap();
    expect_invalid_token(
        response,
        "RS256 token under a JWK pinned to PS256",
        &["unknown signing key", "token algorithm not accepted"],
    )
    .await;

    // A route without authentication: every forged identity header is removed.
    let mut request = client.get(gateway.url("/open"));
    for (name, value) in forged {
        request = request.header(name, value);
    }
    let body = expect_upstream(request.send().await.unwrap(), "route without auth").await;
    for (name, _) in forged {
        assert!(
            seen(&body, name).is_empty(),
            "route without auth: forged {name} reached the upstream: {body}"
        );
    }
    assert_eq!(upstream.hits(), keys.len() + 2);
}

// ---------------------------------------------------------------------------------------
// 2. Rejections
// ---------------------------------------------------------------------------------------

struct Rejected {
    case: &'static str,
    path: &'static str,
    token: String,
    reasons: &'static [&'static str],
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_invalid_token_and_never_reach_the_upstream() {
    let key = SigningKey::generate(Algorithm::RS256, "rsa-1");
    let foreign = SigningKey::generate(Algorithm::RS256, "foreign");
    let issuer = Issuer::start(vec![key.jwk()]).await;
    let upstream = Upstream::start().await;
    let methods = format!(
        r#"    partners:
      jwt:
        issuer: "{realm}"
        jwks_uri: "{jwks}"
        algorithms: [RS256]
        audiences: [orders]
        leeway: 5s
        max_age: 1h
        required_claims: [email]
        max_token_size: 4KiB
    billing:
      jwt:
        issuer: "{realm}"
        jwks_uri: "{jwks}"
        algorithms: [RS256]
        audiences: [billing]"#,
        realm = issuer.realm(),
        jwks = issuer.jwks_uri(),
    );
    let routes = r#"  - match: { path: { prefix: /orders } }
    service: app
    auth: { methods: [partners] }
  - match: { path: { prefix: /billing } }
    service: app
    auth: { methods: [billing] }"#;
    let gateway = Gateway::start(&config(upstream.addr, &methods, routes));
    let client = client();
    let realm = issuer.realm();
    let now = now();

    // Controls: the same kind of token, unmodified, is accepted on each route.
    let valid = key.sign(&claims(&realm));
    expect_upstream(
        get_bearer(&client, &gateway.url("/orders"), &valid).await,
        "control /orders",
    )
    .await;
    let billing_token = key.sign(&with(claims(&realm), json!({ "aud": "billing" })));
    expect_upstream(
        get_bearer(&client, &gateway.url("/billing"), &billing_token).await,
        "control /billing",
    )
    .await;
    let both_audiences = key.sign(&with(
        claims(&realm),
        json!({ "aud": ["billing", "orders"] }),
    ));
    expect_upstream(
        get_bearer(&client, &gateway.url("/orders"), &both_audiences).await,
        "control: aud array",
    )
    .await;
    let mut hits = upstream.hits();
    assert_eq!(hits, 3);

    let payload = b64(claims(&realm).to_string().as_bytes());
    let alg_none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    let confusion = hmac_token(key.public_pem.as_bytes(), Some(&key.kid), &claims(&realm));
    let tampered_signature = {
        let token = key.sign(&claims(&realm));
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let mut signature = signature.to_owned().into_bytes();
        // A character well inside the signature, so all of its bits count.
        signature[10] = if signature[10] == b'A' { b'B' } else { b'A' };
        format!("{signed}.{}", String::from_utf8(signature).unwrap())
    };
    let tampered_payload = {
        let token = key.sign(&claims(&realm));
        let parts: Vec<&str> = token.split('.').collect();
        let mut forged: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        forged["sub"] = json!("admin");
        format!(
            "{}.{}.{}",
            parts[0],
            b64(forged.to_string().as_bytes()),
            parts[2]
        )
    };
    let malformed_payload = {
        let token = key.sign(&claims(&realm));
        let parts: Vec<&str> = token.split('.').collect();
        format!("{}.**not*base64**.{}", parts[0], parts[2])
    };
    let oversize = key.sign(&with(
        claims(&realm),
        json!({ "padding": "x".repeat(5000) }),
    ));
    assert!(oversize.len() > 4096);

    let table = vec![
        Rejected {
            case: "alg none",
            path: "/orders",
            token: alg_none,
            reasons: &["malformed token", "token algorithm not accepted"],
        },
        Rejected {
            case: "HS256 signed with the RSA public key (algorithm confusion)",
            path: "/orders",
            token: confusion,
            reasons: &["token algorithm not accepted"],
        },
        Rejected {
            case: "expired",
            path: "/orders",
            token: key.sign(&with(
                claims(&realm),
                json!({ "iat": now - 600, "exp": now - 60 }),
            )),
            reasons: &["token expired"],
        },
        Rejected {
            case: "not yet valid (nbf beyond leeway)",
            path: "/orders",
            token: key.sign(&with(claims(&realm), json!({ "nbf": now + 300 }))),
            reasons: &["token not yet valid"],
        },
        Rejected {
            case: "wrong issuer",
            path: "/orders",
            token: key.sign(&with(
                claims(&realm),
                json!({ "iss": "http://evil.example/realms/test" }),
            )),
            reasons: &["wrong issuer"],
        },
        Rejected {
            case: "wrong audience",
            path: "/orders",
            token: key.sign(&with(claims(&realm), json!({ "aud": "inventory" }))),
            reasons: &["wrong audience"],
        },
        Rejected {
            case: "token for another route's audience",
            path: "/orders",
            token: billing_token.clone(),
            reasons: &["wrong audience"],
        },
        Rejected {
            case: "unknown kid",
            path: "/orders",
            token: key.sign_as("no-such-key", &claims(&realm)),
            reasons: &["unknown signing key"],
        },
        Rejected {
            case: "signed by an unpublished key under a published kid",
            path: "/orders",
            token: foreign.sign_as(&key.kid, &claims(&realm)),
            reasons: &["invalid signature"],
        },
        Rejected {
            case: "tampered signature",
            path: "/orders",
            token: tampered_signature,
            reasons: &["invalid signature"],
        },
        Rejected {
            case: "tampered payload (sub changed, signature kept)",
            path: "/orders",
            token: tampered_payload,
            reasons: &["invalid signature"],
        },
        Rejected {
            case: "oversize token",
            path: "/orders",
            token: oversize,
            reasons: &["token too large"],
        },
        Rejected {
            case: "malformed base64 everywhere",
            path: "/orders",
            token: "@@@.@@@.@@@".to_owned(),
            reasons: &["malformed token"],
        },
        Rejected {
            case: "malformed base64 payload",
            path: "/orders",
            token: malformed_payload,
            // The signature is checked over the raw segments before the payload is decoded.
            reasons: &["malformed token", "invalid signature"],
        },
        Rejected {
            case: "missing required claim (email)",
            path: "/orders",
            token: key.sign(&with(claims(&realm), json!({ "email": null }))),
            reasons: &["a required claim is missing"],
        },
        Rejected {
            case: "missing exp",
            path: "/orders",
            token: key.sign(&with(claims(&realm), json!({ "exp": null }))),
            reasons: &["a required claim is missing"],
        },
        Rejected {
            case: "max_age exceeded (iat two hours ago)",
            path: "/orders",
            token: key.sign(&with(claims(&realm), json!({ "iat": now - 7200 }))),
            reasons: &["token too old"],
        },
    ];
    let mut failures = Vec::new();
    for Rejected {
        case,
        path,
        token,
        reasons,
    } in &table
    {
        let response = get_bearer(&client, &gateway.url(path), token).await;
        if let Err(message) = invalid_token_verdict(response, reasons).await {
            failures.push(format!("{case}: {message}"));
        }
        if upstream.hits() != hits {
            failures.push(format!("{case}: the upstream was reached"));
            hits = upstream.hits();
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 3. Token sources, missing credentials, scopes, groups and claim conditions
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_read_from_the_configured_cookie_and_query_parameter() {
    let key = SigningKey::generate(Algorithm::ES256, "ec-1");
    let issuer = Issuer::start(vec![key.jwk()]).await;
    let upstream = Upstream::start().await;
    let methods = format!(
        r#"    partners:
      jwt:
        issuer: "{realm}"
        jwks_uri: "{jwks}"
        token: {{ bearer: true, cookie: tok, query: access_token }}"#,
        realm = issuer.realm(),
        jwks = issuer.jwks_uri(),
    );
    let routes = r#"  - match: { path: { prefix: /orders } }
    service: app
    auth: { methods: [partners] }"#;
    let gateway = Gateway::start(&config(upstream.addr, &methods, routes));
    let client = client();
    let realm = issuer.realm();

    let response = client
        .get(gateway.url("/orders"))
        .header(
            "cookie",
            format!("theme=dark; tok={}", key.sign(&claims(&realm))),
        )
        .send()
        .await
        .unwrap();
    let body = expect_upstream(response, "cookie").await;
    assert_eq!(seen(&body, "x-consumer-id"), ["alice"], "cookie");

    let url = gateway.url(&format!(
        "/orders?page=2&access_token={}",
        key.sign(&claims(&realm))
    ));
    let body = expect_upstream(client.get(url).send().await.unwrap(), "query").await;
    assert_eq!(seen(&body, "x-consumer-id"), ["alice"], "query");

    let body = expect_upstream(
        get_bearer(&client, &gateway.url("/orders"), &key.sign(&claims(&realm))).await,
        "bearer",
    )
    .await;
    assert_eq!(seen(&body, "x-credential"), ["partners:alice"], "bearer");
    assert_eq!(upstream.hits(), 3);

    // A bad token is verified wherever it comes from.
    let expired = key.sign(&with(claims(&realm), json!({ "exp": now() - 600 })));
    let response = client
        .get(gateway.url("/orders"))
        .header("cookie", format!("tok={expired}"))
        .send()
        .await
        .unwrap();
    expect_invalid_token(response, "expired token in the cookie", &["token expired"]).await;
    let response = client
        .get(gateway.url(&format!("/orders?access_token={expired}")))
        .send()
        .await
        .unwrap();
    expect_invalid_token(response, "expired token in the query", &["token expired"]).await;

    // Nothing at all: credentials_missing with a plain challenge.
    let response = client
        .get(gateway.url("/orders"))
        .header("cookie", "other=1")
        .send()
        .await
        .unwrap();
    let (challenge, _) = expect_problem(response, 401, "credentials_missing", "no token").await;
    assert_eq!(challenge, "Bearer realm=\"gatehouse\"");
    assert_eq!(upstream.hits(), 3, "refused requests reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_groups_and_claim_conditions_are_enforced() {
    let key = SigningKey::generate(Algorithm::ES256, "ec-1");
    let issuer = Issuer::start(vec![key.jwk()]).await;
    let upstream = Upstream::start().await;
    let methods = format!(
        r#"    partners:
      jwt:
        issuer: "{realm}"
        jwks_uri: "{jwks}"
        groups_claim: groups"#,
        realm = issuer.realm(),
        jwks = issuer.jwks_uri(),
    );
    let routes = r#"  - match: { path: { prefix: /orders } }
    service: app
    auth: { methods: [partners], scopes: [orders:read] }
  - match: { path: { template: "/tenants/{tenant}/orders" } }
    service: app
    auth:
      methods: [partners]
      claims:
        - { claim: tenant, equals_path_param: tenant }
  - match: { path: { prefix: /staff } }
    service: app
    auth: { methods: [partners], allow_groups: [staff], deny_groups: [suspended] }"#;
    let gateway = Gateway::start(&config(upstream.addr, &methods, routes));
    let client = client();
    let realm = issuer.realm();
    let token = |changes: Value| key.sign(&with(claims(&realm), changes));
    let call = |path: &str, token: String| {
        let url = gateway.url(path);
        let client = client.clone();
        async move { get_bearer(&client, &url, &token).await }
    };

    // Scopes.
    expect_upstream(call("/orders", token(json!({}))).await, "scope string").await;
    let body = expect_upstream(
        call(
            "/orders",
            token(json!({ "scope": null, "scp": ["orders:read"] })),
        )
        .await,
        "scp array",
    )
    .await;
    assert_eq!(seen(&body, "x-authenticated-scopes"), ["orders:read"]);
    for (case, changes) in [
        ("other scope only", json!({ "scope": "orders:write" })),
        ("no scope at all", json!({ "scope": null })),
    ] {
        let (challenge, _) = expect_problem(
            call("/orders", token(changes)).await,
            403,
            "insufficient_scope",
            case,
        )
        .await;
        assert!(
            challenge.starts_with("Bearer realm=\"gatehouse\"")
                && challenge.contains("error=\"insufficient_scope\""),
            "{case}: {challenge}"
        );
    }

    // Claim condition: the `tenant` claim must equal the path's tenant.
    let acme = token(json!({ "tenant": "acme" }));
    let body = expect_upstream(
        call("/tenants/acme/orders", acme.clone()).await,
        "own tenant",
    )
    .await;
    assert_eq!(body["path"], "/tenants/acme/orders");
    expect_problem(
        call("/tenants/globex/orders", acme).await,
        403,
        "forbidden",
        "other tenant",
    )
    .await;
    expect_problem(
        call("/tenants/acme/orders", token(json!({}))).await,
        403,
        "forbidden",
        "no tenant claim",
    )
    .await;
    let both = token(json!({ "tenant": ["globex", "acme"] }));
    expect_upstream(call("/tenants/acme/orders", both).await, "tenant array").await;

    // Groups: alice is in `staff` (from the consumer directory); bob is not.
    expect_upstream(call("/staff", token(json!({}))).await, "staff member").await;
    expect_problem(
        call("/staff", token(json!({ "sub": "bob" }))).await,
        403,
        "forbidden",
        "not in an allowed group",
    )
    .await;
    expect_upstream(
        call(
            "/staff",
            token(json!({ "sub": "bob", "groups": ["staff"] })),
        )
        .await,
        "group from the token",
    )
    .await;
    expect_problem(
        call("/staff", token(json!({ "groups": ["suspended"] }))).await,
        403,
        "forbidden",
        "denied group",
    )
    .await;
    assert_eq!(upstream.hits(), 6, "refused requests reached the upstream");
}

/// Tokens naming unknown key ids make the gateway refetch the key set at most once per
/// `min_refetch_interval`: random `kid`s cannot make it hammer the issuer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_ids_refetch_at_most_once_per_interval() {
    let key = SigningKey::generate(Algorithm::ES256, "ec-known");
    let issuer = Issuer::start(vec![key.jwk()]).await;
    let upstream = Upstream::start().await;
    let methods = format!(
        "    partners:\n      jwt:\n        issuer: \"{realm}\"\n        jwks_uri: \"{jwks}\"\n        min_refetch_interval: 1h",
        realm = issuer.realm(),
        jwks = issuer.jwks_uri(),
    );
    let routes = "  - match: { path: { prefix: /orders } }\n    service: app\n    auth: { methods: [partners] }";
    let gateway = Gateway::start(&config(upstream.addr, &methods, routes));
    let client = client();
    let url = gateway.url("/orders");
    expect_upstream(
        get_bearer(&client, &url, &key.sign(&claims(&issuer.realm()))).await,
        "known key",
    )
    .await;
    let loaded = issuer.jwks_fetches();
    for attempt in 0..20 {
        let token = key.sign_as(&format!("random-{attempt}"), &claims(&issuer.realm()));
        let response = get_bearer(&client, &url, &token).await;
        expect_invalid_token(response, "random kid", &["unknown signing key"]).await;
    }
    assert_eq!(
        issuer.jwks_fetches(),
        loaded + 1,
        "20 unknown kids caused one refetch, not one each"
    );
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_still_expires() {
    let key = SigningKey::generate(Algorithm::ES256, "ec-1");
    let issuer = Issuer::start(vec![key.jwk()]).await;
    let upstream = Upstream::start().await;
    let methods = format!(
        r#"    partners:
      jwt:
        issuer: "{realm}"
        jwks_uri: "{jwks}"
        leeway: 1s"#,
        realm = issuer.realm(),
        jwks = issuer.jwks_uri(),
    );
    let routes = r#"  - match: { path: { prefix: /orders } }
    service: app
    auth: { methods: [partners] }"#;
    let gateway = Gateway::start(&config(upstream.addr, &methods, routes));
    let client = client();
    let url = gateway.url("/orders");
    let exp = now() + 2;
    let token = key.sign(&with(claims(&issuer.realm()), json!({ "exp": exp })));
    // Verified once, then answered from the cache of verified tokens.
    for round in 0..2 {
        let case = format!("before exp, round {round}");
        expect_upstream(get_bearer(&client, &url, &token).await, &case).await;
    }
    // Past `exp` + leeway (whole seconds, so wait until the clock is strictly beyond it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while now() <= exp + 1 {
        assert!(Instant::now() < deadline, "clock did not advance");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = get_bearer(&client, &url, &token).await;
    expect_invalid_token(response, "cached token past exp", &["token expired"]).await;
    assert_eq!(upstream.hits(), 2);
}

/// A token without `kid` is checked against each key of its family (a few at most), so
/// issuers that omit `kid` can still publish several keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_without_kid_try_each_key_of_their_family() {
    let first = SigningKey::generate(Algorithm::ES256, "ec-first");
    let second = SigningKey::generate(Algorithm::ES256, "ec-second");
    let stranger = SigningKey::generate(Algorithm::ES256, "ec-stranger");
    let issuer = Issuer::start(vec![first.jwk(), second.jwk()]).await;
    let upstream = Upstream::start().await;
    let methods = format!(
        "    partners:\n      jwt:\n        issuer: \"{realm}\"\n        jwks_uri: \"{jwks}\"",
        realm = issuer.realm(),
        jwks = issuer.jwks_uri(),
    );
    let routes = "  - match: { path: { prefix: /orders } }\n    service: app\n    auth: { methods: [partners] }";
    let gateway = Gateway::start(&config(upstream.addr, &methods, routes));
    let client = client();
    let url = gateway.url("/orders");
    let kidless = |key: &SigningKey| {
        let header = Header::new(Algorithm::ES256);
        jsonwebtoken::encode(&header, &claims(&issuer.realm()), &key.encoding).expect("sign")
    };
    expect_upstream(
        get_bearer(&client, &url, &kidless(&first)).await,
        "first key",
    )
    .await;
    expect_upstream(
        get_bearer(&client, &url, &kidless(&second)).await,
        "second key",
    )
    .await;
    let response = get_bearer(&client, &url, &kidless(&stranger)).await;
    expect_invalid_token(response, "unpublished key", &["invalid signature"]).await;
    assert_eq!(upstream.hits(), 2);
}

// ---------------------------------------------------------------------------------------
// 4. Key rotation under traffic
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    ok_by_kid: BTreeMap<String, usize>,
    failures: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_under_traffic_loses_no_request() {
    let old = Arc::new(SigningKey::generate(Algorithm::RS256, "2025-01"));
    let new = Arc::new(SigningKey::generate(Algorithm::RS256, "2025-02"));
    let issuer = Issuer::start(vec![old.jwk()]).await;
    let upstream = Upstream::start().await;
    let methods = format!(
        r#"    partners:
      jwt:
        issuer: "{realm}"
        jwks_uri: "{jwks}"
        algorithms: [RS256]
        min_refetch_interval: 10s"#,
        realm = issuer.realm(),
        jwks = issuer.jwks_uri(),
    );
    let routes = r#"  - match: { path: { prefix: /orders } }
    service: app
    auth: { methods: [partners] }"#;
    let gateway = Gateway::start(&config(upstream.addr, &methods, routes));
    let client = client();
    let realm = issuer.realm();
    let url = gateway.url("/orders");
    expect_upstream(
        get_bearer(&client, &url, &old.sign(&claims(&realm))).await,
        "before rotation",
    )
    .await;
    let fetches_before = issuer.jwks_fetches();

    let signer = Arc::new(RwLock::new(old.clone()));
    let stop_at = Instant::now() + Duration::from_secs(3);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (signer, client, url, realm) =
                (signer.clone(), client.clone(), url.clone(), realm.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                // Paced, so the count bound cannot run out before the rotation at ~1.2 s.
                for _ in 0..1000 {
                    if Instant::now() >= stop_at {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let key = signer.read().unwrap().clone();
                    let token = key.sign(&claims(&realm));
                    match client
                        .get(&url)
                        .bearer_auth(&token)
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await
                    {
                        Ok(response) if response.status() == 200 => {
                            *tally.ok_by_kid.entry(key.kid.clone()).or_default() += 1;
                        }
                        Ok(response) => {
                            let status = response.status();
                            let challenge = header_of(&response, "www-authenticate");
                            let body = response.text().await.unwrap_or_default();
                            tally
                                .failures
                                .push(format!("kid {}: {status} {challenge} {body}", key.kid));
                        }
                        Err(err) => tally.failures.push(format!("kid {}: {err}", key.kid)),
                    }
                }
                tally
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Publish first (old + new), then start signing with the new key.
    issuer.publish(vec![old.jwk(), new.jwk()]);
    *signer.write().unwrap() = new.clone();

    let mut total = Tally::default();
    for worker in workers {
        let tally = worker.await.expect("worker");
        for (kid, count) in tally.ok_by_kid {
            *total.ok_by_kid.entry(kid).or_default() += count;
        }
        total.failures.extend(tally.failures);
    }
    assert!(
        total.failures.is_empty(),
        "{} requests failed during the rotation, e.g. {:?}",
        total.failures.len(),
        &total.failures[..total.failures.len().min(5)]
    );
    let old_ok = total.ok_by_kid.get(&old.kid).copied().unwrap_or(0);
    let new_ok = total.ok_by_kid.get(&new.kid).copied().unwrap_or(0);
    assert!(
        old_ok >= 10 && new_ok >= 10,
        "too little traffic on each side of the rotation: {:?}",
        total.ok_by_kid
    );
    assert!(
        issuer.jwks_fetches() > fetches_before,
        "the new kid must have caused a refetch"
    );
    assert_eq!(upstream.hits(), 1 + old_ok + new_ok);
}

// ---------------------------------------------------------------------------------------
// 5. Issuer outages
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_keys_keep_verifying_new_tokens_while_the_issuer_is_down() {
    let key = SigningKey::generate(Algorithm::ES256, "ec-1");
    let mut issuer = Issuer::start(vec![key.jwk()]).await;
    let upstream = Upstream::start().await;
    let methods = format!(
        r#"    partners:
      jwt:
        issuer: "{realm}"
        jwks_uri: "{jwks}"
        refresh_interval: 1s
        fetch_timeout: 1s"#,
        realm = issuer.realm(),
        jwks = issuer.jwks_uri(),
    );
    let routes = r#"  - match: { path: { prefix: /orders } }
    service: app
    auth: { methods: [partners] }"#;
    let gateway = Gateway::start(&config(upstream.addr, &methods, routes));
    let client = client();
    let realm = issuer.realm();
    let url = gateway.url("/orders");

    let first = key.sign(&claims(&realm));
    expect_upstream(get_bearer(&client, &url, &first).await, "issuer up").await;
    // Periodic refreshes are running (so some will fail during the outage).
    let deadline = Instant::now() + Duration::from_secs(5);
    while issuer.jwks_fetches() < 2 {
        assert!(Instant::now() < deadline, "no periodic key set refresh");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    issuer.stop().await;
    // Let at least one refresh fail against the dead issuer.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    expect_upstream(
        get_bearer(&client, &url, &first).await,
        "same token, issuer down",
    )
    .await;
    for round in 0..5 {
        let case = format!("new token {round}, issuer down");
        let token = key.sign(&claims(&realm));
        assert_ne!(token, first);
        let body = expect_upstream(get_bearer(&client, &url, &token).await, &case).await;
        assert_eq!(seen(&body, "x-consumer-id"), ["alice"], "{case}");
    }
    assert_eq!(upstream.hits(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_key_set_is_503_auth_unavailable_never_401() {
    let key = SigningKey::generate(Algorithm::ES256, "ec-1");
    let upstream = Upstream::start().await;
    let dead = common::closed_port();
    let realm = format!("http://{dead}/realms/test");
    let methods = format!(
        r#"    partners:
      jwt:
        issuer: "{realm}"
        jwks_uri: "http://{dead}/jwks"
        fetch_timeout: 1s"#
    );
    let routes = r#"  - match: { path: { prefix: /orders } }
    service: app
    auth: { methods: [partners] }"#;
    let gateway = Gateway::start(&config(upstream.addr, &methods, routes));
    let client = client();
    // The first request tries to fetch; the following ones may fail fast.
    for attempt in 0..3 {
        let case = format!("attempt {attempt}");
        let response =
            get_bearer(&client, &gateway.url("/orders"), &key.sign(&claims(&realm))).await;
        expect_problem(response, 503, "auth_unavailable", &case).await;
    }
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_loaded_once_the_issuer_recovers() {
    let key = SigningKey::generate(Algorithm::EdDSA, "ed-1");
    let issuer = Issuer::start(vec![key.jwk()]).await;
    issuer.set_up(false);
    let upstream = Upstream::start().await;
    let methods = format!(
        r#"    partners:
      jwt:
        issuer: "{realm}"
        jwks_uri: "{jwks}""#,
        realm = issuer.realm(),
        jwks = issuer.jwks_uri(),
    );
    let routes = r#"  - match: { path: { prefix: /orders } }
    service: app
    auth: { methods: [partners] }"#;
    let gateway = Gateway::start(&config(upstream.addr, &methods, routes));
    let client = client();
    let realm = issuer.realm();
    let url = gateway.url("/orders");

    let response = get_bearer(&client, &url, &key.sign(&claims(&realm))).await;
    expect_problem(response, 503, "auth_unavailable", "issuer answering 503").await;

    issuer.set_up(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let response = get_bearer(&client, &url, &key.sign(&claims(&realm))).await;
        let status = response.status().as_u16();
        statuses.push(status);
        if status == 200 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        statuses.last(),
        Some(&200),
        "the gateway never recovered: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "an outage must never be blamed on the client: {statuses:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 6. OIDC discovery
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_the_key_set_through_the_issuer_metadata() {
    let key = SigningKey::generate(Algorithm::PS256, "pss-1");
    let issuer = Issuer::start(vec![key.jwk()]).await;
    let upstream = Upstream::start().await;
    let methods = format!(
        r#"    partners:
      jwt:
        issuer: "{base}"
        discovery: true
        algorithms: [PS256]"#,
        base = issuer.base(),
    );
    let routes = r#"  - match: { path: { prefix: /orders } }
    service: app
    auth: { methods: [partners] }"#;
    let gateway = Gateway::start(&config(upstream.addr, &methods, routes));
    let client = client();
    let url = gateway.url("/orders");

    let body = expect_upstream(
        get_bearer(&client, &url, &key.sign(&claims(&issuer.base()))).await,
        "discovered keys",
    )
    .await;
    assert_eq!(seen(&body, "x-credential"), ["partners:alice"]);
    assert!(issuer.discovery_fetches() >= 1, "discovery was not used");
    assert!(
        issuer.jwks_fetches() >= 1,
        "the advertised jwks_uri was not used"
    );
    // The issuer is checked as configured: a token from the realm path is not this issuer's.
    let response = get_bearer(&client, &url, &key.sign(&claims(&issuer.realm()))).await;
    expect_invalid_token(response, "other issuer", &["wrong issuer"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_refuses_metadata_naming_another_issuer() {
    let key = SigningKey::generate(Algorithm::ES256, "ec-1");
    let issuer = Issuer::start(vec![key.jwk()]).await;
    *issuer.state.advertised_issuer.write().unwrap() = "http://evil.example".to_owned();
    let upstream = Upstream::start().await;
    let methods = format!(
        r#"    partners:
      jwt:
        issuer: "{base}"
        discovery: true
        fetch_timeout: 1s"#,
        base = issuer.base(),
    );
    let routes = r#"  - match: { path: { prefix: /orders } }
    service: app
    auth: { methods: [partners] }"#;
    let gateway = Gateway::start(&config(upstream.addr, &methods, routes));
    let client = client();
    let response = get_bearer(
        &client,
        &gateway.url("/orders"),
        &key.sign(&claims(&issuer.base())),
    )
    .await;
    expect_problem(response, 503, "auth_unavailable", "mismatched discovery").await;
    assert!(issuer.discovery_fetches() >= 1, "discovery was not tried");
    assert_eq!(
        issuer.jwks_fetches(),
        0,
        "keys must not be taken from a document for another issuer"
    );
    assert_eq!(upstream.hits(), 0);
}
