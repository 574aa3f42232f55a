//! Per-request cost of authentication (issue targets: API key check under 1 µs, JWT with a
//! warm verified-token cache under 2 µs). Measured through a route's whole access policy:
//! credential lookup, verification, identity, authorization.
//! Run: `cargo bench -p gatehouse-policy --bench auth`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, Criterion};
use gatehouse_policy::auth::api_key::{self, KeyHasher};
use gatehouse_policy::{AccessOutcome, AccessPolicy, RequestInfo, Security};
use http::{HeaderMap, HeaderValue, Method};

const KEY_SECRET: &str = "bench-api-key-secret-0123456789abcdef";
const HMAC_SECRET: &str = "bench-jwt-hmac-secret-0123456789abcdef";

/// These checks never wait (no key fetch, no introspection): one poll completes them.
fn run_ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the bench path must not wait"),
    }
}

fn granted(policy: &AccessPolicy, headers: &HeaderMap) -> bool {
    let request = RequestInfo {
        method: &Method::GET,
        path: "/orders/42",
        query: None,
        headers,
        captures: &[],
        client_ip: [203, 0, 113, 7].into(),
        client_certificate: None,
        scheme: "https",
        authority: "api.example.com",
    };
    matches!(
        run_ready(policy.check(&request)),
        Ok(AccessOutcome::Granted(_))
    )
}

fn bench(c: &mut Criterion) {
    let key = api_key::generate(&KeyHasher::new(KEY_SECRET.as_bytes()), "live").expect("key");
    let yaml = format!(
        r#"authentication:
  api_key_secret: "{KEY_SECRET}"
  methods:
    keys:
      api_key: {{ header: x-api-key }}
    tokens:
      jwt: {{ issuer: bench, hmac_secret: "{HMAC_SECRET}", algorithms: [HS256] }}
consumers:
  - id: acme
    groups: [partners]
    api_keys:
      - {{ id: "{id}", hash: "{hash}" }}
routes:
  - match: {{ path: {{ prefix: /keys }} }}
    respond: {{ body: ok }}
    auth: {{ methods: [keys], allow_groups: [partners] }}
  - match: {{ path: {{ prefix: /tokens }} }}
    respond: {{ body: ok }}
    auth: {{ methods: [tokens], scopes: [orders:read] }}
"#,
        id = key.public_id,
        hash = key.hash,
    );
    let config = gatehouse_config::parse_str(&yaml, "bench").expect("valid bench config");
    let security = Security::compile(&config, None).expect("security");
    let key_policy = security
        .access_policy(config.routes[0].auth.as_ref().expect("auth"))
        .expect("policy");
    let token_policy = security
        .access_policy(config.routes[1].auth.as_ref().expect("auth"))
        .expect("policy");

    let mut key_headers = HeaderMap::new();
    key_headers.insert(
        "x-api-key",
        HeaderValue::from_str(&key.key).expect("header"),
    );
    assert!(granted(&key_policy, &key_headers));
    c.bench_function("access/api_key", |b| {
        b.iter(|| granted(black_box(&key_policy), black_box(&key_headers)))
    });

    let claims = serde_json::json!({
        "iss": "bench", "sub": "acme", "scope": "orders:read orders:write",
        "exp": 4_000_000_000u64, "iat": 1_700_000_000u64,
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(HMAC_SECRET.as_bytes()).expect("key"),
    )
    .expect("token");
    let mut token_headers = HeaderMap::new();
    token_headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    // The first check verifies and caches; the bench measures the warm path.
    assert!(granted(&token_policy, &token_headers));
    c.bench_function("access/jwt_cached", |b| {
        b.iter(|| granted(black_box(&token_policy), black_box(&token_headers)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
