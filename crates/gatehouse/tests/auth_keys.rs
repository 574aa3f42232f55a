//! Edge authentication with stored credentials: API keys (hashed, expiring, revocable),
//! HTTP Basic with argon2 hashes, client certificates; route access rules (groups, claim
//! conditions on consumer metadata, anonymous fallback), IP filters, and identity headers
//! that clients cannot forge.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::{binary, client, echo, Gateway};
use serde_json::Value;

const SECRET: &str = "test-api-key-secret-0123456789abcdef";

/// A key made by `gatehouse keys generate`: the key, and its YAML entry.
struct Key {
    key: String,
    entry: String,
}

fn generate_key(extra: &[&str]) -> Key {
    let (key, entry) = common::generate_api_key(SECRET, extra);
    Key { key, entry }
}

fn hash_password(password: &str) -> String {
    let mut child = Command::new(binary())
        .args(["keys", "hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run keys hash-password");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

async fn body(response: reqwest::Response) -> Value {
    response.json().await.expect("JSON body")
}

/// Assert a gateway-generated problem with `status` and `code`; returns the response headers.
async fn assert_problem(
    response: reqwest::Response,
    status: u16,
    code: &str,
) -> reqwest::header::HeaderMap {
    assert_eq!(response.status(), status, "expected {status} {code}");
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/problem+json");
    let problem = body(response).await;
    assert_eq!(problem["code"], code, "{problem}");
    headers
}

struct Keys {
    alice: Key,
    bob: Key,
    revoked: Key,
    expired: Key,
}

async fn key_gateway(upstream: SocketAddr) -> (Gateway, Keys) {
    let keys = Keys {
        alice: generate_key(&["--prefix", "live"]),
        bob: generate_key(&["--expires", "2999-01-01T00:00:00Z"]),
        revoked: generate_key(&[]),
        expired: generate_key(&["--expires", "2020-01-01T00:00:00Z"]),
    };
    let yaml = format!(
        r#"listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
authentication:
  api_key_secret: "{SECRET}"
  methods:
    keys:
      api_key: {{ header: x-api-key, query: api_key }}
    visible-keys:
      api_key: {{ header: x-api-key, hide_credentials: false }}
consumers:
  - id: alice
    name: Alice Corp
    groups: [partners, gold]
    metadata: {{ tenant: acme }}
    api_keys:
{alice}{revoked}        revoked: true
{expired}  - id: bob
    groups: [partners, suspended]
    metadata: {{ tenant: globex }}
    api_keys:
{bob}  - id: guest
    groups: [public]
routes:
  - match: {{ path: {{ prefix: /open }} }}
    service: echo
  - match: {{ path: {{ prefix: /keys }} }}
    service: echo
    auth: {{ methods: [keys] }}
  - match: {{ path: {{ prefix: /visible }} }}
    service: echo
    auth: {{ methods: [visible-keys] }}
  - match: {{ path: {{ prefix: /gold }} }}
    service: echo
    auth: {{ methods: [keys], allow_groups: [gold], deny_groups: [suspended] }}
  - match: {{ path: {{ prefix: /partners }} }}
    service: echo
    auth: {{ methods: [keys], allow_groups: [partners], deny_groups: [suspended] }}
  - match: {{ path: {{ template: "/tenants/{{tenant}}/orders" }} }}
    service: echo
    auth:
      methods: [keys]
      claims: [{{ claim: tenant, equals_path_param: tenant }}]
  - match: {{ path: {{ prefix: /header-tenant }} }}
    service: echo
    auth:
      methods: [keys]
      claims: [{{ claim: tenant, equals_header: x-tenant }}]
  - match: {{ path: {{ prefix: /maybe }} }}
    service: echo
    auth: {{ methods: [keys], anonymous: guest }}
  - match: {{ path: {{ prefix: /scoped }} }}
    service: echo
    auth: {{ methods: [keys], scopes: [orders:write] }}
  - match: {{ path: {{ prefix: /respond }} }}
    respond: {{ body: secret }}
    auth: {{ methods: [keys] }}
"#,
        alice = keys.alice.entry,
        revoked = keys.revoked.entry,
        expired = keys.expired.entry,
        bob = keys.bob.entry,
    );
    (Gateway::start(&yaml), keys)
}

#[tokio::test]
async fn api_keys_authenticate_and_identity_reaches_the_upstream() {
    let upstream = echo("keys").await;
    let (gateway, keys) = key_gateway(upstream).await;
    let client = client();

    // Header, with forged identity headers that must be replaced.
    let response = client
        .get(gateway.url("/keys/orders"))
        .header("x-api-key", &keys.alice.key)
        .header("x-consumer-id", "admin")
        .header("x-consumer-groups", "root")
        .header("x-credential", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = body(response).await;
    let headers = &seen["headers"];
    assert_eq!(headers["x-consumer-id"], "alice");
    assert_eq!(headers["x-consumer-name"], "Alice Corp");
    assert_eq!(headers["x-consumer-groups"], "partners,gold");
    let public_id = keys.alice.key.split('_').nth(1).unwrap();
    assert_eq!(headers["x-credential"], format!("api_key:{public_id}"));
    assert!(
        headers.get("x-api-key").is_none(),
        "the key is hidden from the upstream: {headers}"
    );

    // Query parameter: removed from the upstream query, other parameters kept.
    let response = client
        .get(gateway.url(&format!(
            "/keys/orders?page=2&api_key={}&sort=asc",
            keys.bob.key
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = body(response).await;
    assert_eq!(seen["headers"]["x-consumer-id"], "bob");
    assert_eq!(seen["query"], "page=2&sort=asc");

    // hide_credentials: false forwards the key.
    let seen = body(
        client
            .get(gateway.url("/visible"))
            .header("x-api-key", &keys.alice.key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seen["headers"]["x-api-key"], keys.alice.key.as_str());

    // Routes without auth still strip client-sent identity headers.
    let seen = body(
        client
            .get(gateway.url("/open"))
            .header("x-consumer-id", "admin")
            .header("x-authenticated-scopes", "everything")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(seen["headers"].get("x-consumer-id").is_none(), "{seen}");
    assert!(
        seen["headers"].get("x-authenticated-scopes").is_none(),
        "{seen}"
    );

    // A direct-response route is protected too.
    let response = client.get(gateway.url("/respond")).send().await.unwrap();
    assert_problem(response, 401, "credentials_missing").await;
    let response = client
        .get(gateway.url("/respond"))
        .header("x-api-key", &keys.alice.key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "secret");
}

#[tokio::test]
async fn bad_api_keys_are_refused_one_by_one() {
    let upstream = echo("keys").await;
    let (gateway, keys) = key_gateway(upstream).await;
    let client = client();

    let response = client.get(gateway.url("/keys")).send().await.unwrap();
    let headers = assert_problem(response, 401, "credentials_missing").await;
    assert_eq!(
        headers["www-authenticate"],
        "ApiKey realm=\"gatehouse\", header=\"x-api-key\""
    );

    // Right prefix and public id, guessed secret.
    let mut guessed = keys.alice.key.clone();
    let last = guessed.pop().unwrap();
    guessed.push(if last == '0' { '1' } else { '0' });
    let public_id = keys.alice.key.split('_').nth(1).unwrap();
    let cases = [
        ("revoked", keys.revoked.key.clone(), "API key revoked"),
        ("expired", keys.expired.key.clone(), "API key expired"),
        ("guessed secret", guessed, "invalid API key"),
        (
            "unknown public id",
            "live_000000000000_0123456789abcdef0123456789abcdef01234567".to_owned(),
            "invalid API key",
        ),
        ("malformed", "not-a-key".to_owned(), "malformed API key"),
        (
            "no secret part",
            format!("live_{public_id}_"),
            "malformed API key",
        ),
        (
            "another key's secret",
            format!(
                "live_{public_id}_{}",
                keys.bob.key.rsplit('_').next().unwrap()
            ),
            "invalid API key",
        ),
    ];
    for (case, key, detail) in cases {
        let response = client
            .get(gateway.url("/keys"))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{case}");
        assert!(
            response.headers().contains_key("www-authenticate"),
            "{case}"
        );
        let problem = body(response).await;
        assert_eq!(problem["code"], "invalid_credentials", "{case}");
        assert_eq!(problem["detail"], detail, "{case}");
        assert!(
            !problem.to_string().contains(&key) || key.is_empty(),
            "{case}: the key must not be echoed"
        );
    }
    // A wrong key is refused even where anonymous access is allowed.
    let response = client
        .get(gateway.url("/maybe"))
        .header("x-api-key", &keys.revoked.key)
        .send()
        .await
        .unwrap();
    assert_problem(response, 401, "invalid_credentials").await;
    // Keys never appear in the gateway's log.
    let log = gateway.stderr();
    for key in [&keys.alice.key, &keys.revoked.key, &keys.expired.key] {
        assert!(!log.contains(key.as_str()), "key leaked into the log");
    }
}

#[tokio::test]
async fn access_rules_groups_claims_anonymous_and_scopes() {
    let upstream = echo("keys").await;
    let (gateway, keys) = key_gateway(upstream).await;
    let client = client();
    let get = |path: &str, key: &str| {
        client
            .get(gateway.url(path))
            .header("x-api-key", key)
            .send()
    };

    assert_eq!(get("/gold", &keys.alice.key).await.unwrap().status(), 200);
    // Bob is a partner but suspended: deny wins.
    assert_problem(
        get("/partners", &keys.bob.key).await.unwrap(),
        403,
        "forbidden",
    )
    .await;
    assert_eq!(
        get("/partners", &keys.alice.key).await.unwrap().status(),
        200
    );

    // Claim conditions read consumer metadata for key-authenticated callers.
    assert_eq!(
        get("/tenants/acme/orders", &keys.alice.key)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_problem(
        get("/tenants/globex/orders", &keys.alice.key)
            .await
            .unwrap(),
        403,
        "forbidden",
    )
    .await;
    assert_eq!(
        get("/tenants/globex/orders", &keys.bob.key)
            .await
            .unwrap()
            .status(),
        200
    );
    let response = client
        .get(gateway.url("/header-tenant"))
        .header("x-api-key", &keys.alice.key)
        .header("x-tenant", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client
        .get(gateway.url("/header-tenant"))
        .header("x-api-key", &keys.alice.key)
        .header("x-tenant", "globex")
        .send()
        .await
        .unwrap();
    assert_problem(response, 403, "forbidden").await;

    // Anonymous fallback when no credential is sent at all.
    let seen = body(client.get(gateway.url("/maybe")).send().await.unwrap()).await;
    assert_eq!(seen["headers"]["x-consumer-id"], "guest");
    assert_eq!(seen["headers"]["x-credential"], "anonymous");
    let seen = body(get("/maybe", &keys.alice.key).await.unwrap()).await;
    assert_eq!(seen["headers"]["x-consumer-id"], "alice");

    // Keys grant no scopes.
    let headers = assert_problem(
        get("/scoped", &keys.alice.key).await.unwrap(),
        403,
        "insufficient_scope",
    )
    .await;
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"orders:write\""), "{challenge}");
}

#[tokio::test]
async fn ip_filters_allow_and_deny_by_cidr() {
    let upstream = echo("ip").await;
    let gateway = Gateway::start(&format!(
        r#"listeners:
  - name: public
    listen: 127.0.0.1:0
    trusted_proxies: [127.0.0.1]
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
routes:
  - match: {{ path: {{ prefix: /internal }} }}
    service: echo
    ip_filter: {{ allow: [10.0.0.0/8, 127.0.0.1], deny: [10.9.0.0/16] }}
  - match: {{ path: {{ prefix: /public }} }}
    service: echo
    ip_filter: {{ deny: [192.0.2.0/24] }}
"#
    ));
    let client = client();
    let from = |path: &str, forwarded: Option<&str>| {
        let mut request = client.get(gateway.url(path));
        if let Some(ip) = forwarded {
            request = request.header("x-forwarded-for", ip);
        }
        request.send()
    };
    // The peer (127.0.0.1) is a trusted proxy, so the client IP comes from X-Forwarded-For.
    assert_eq!(from("/internal", None).await.unwrap().status(), 200);
    assert_eq!(
        from("/internal", Some("10.1.2.3")).await.unwrap().status(),
        200
    );
    assert_problem(
        from("/internal", Some("10.9.1.1")).await.unwrap(),
        403,
        "ip_denied",
    )
    .await;
    assert_problem(
        from("/internal", Some("203.0.113.5")).await.unwrap(),
        403,
        "ip_denied",
    )
    .await;
    assert_eq!(
        from("/public", Some("203.0.113.5")).await.unwrap().status(),
        200
    );
    assert_problem(
        from("/public", Some("192.0.2.44")).await.unwrap(),
        403,
        "ip_denied",
    )
    .await;
}

#[tokio::test]
async fn basic_auth_checks_argon2_hashes() {
    let upstream = echo("basic").await;
    let hash = hash_password("correct horse battery staple");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let gateway = Gateway::start(&format!(
        r#"listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
authentication:
  methods:
    staff-login:
      basic: {{ realm: staff }}
consumers:
  - id: carol
    groups: [staff]
    basic_auth: {{ username: carol, password_hash: "{hash}" }}
routes:
  - service: echo
    auth: {{ methods: [staff-login] }}
"#
    ));
    let client = client();
    let response = client.get(gateway.url("/")).send().await.unwrap();
    let headers = assert_problem(response, 401, "credentials_missing").await;
    assert_eq!(
        headers["www-authenticate"],
        "Basic realm=\"staff\", charset=\"UTF-8\""
    );
    for _ in 0..2 {
        // The second round is served from the verified-credential cache.
        let response = client
            .get(gateway.url("/"))
            .basic_auth("carol", Some("correct horse battery staple"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let seen = body(response).await;
        assert_eq!(seen["headers"]["x-consumer-id"], "carol");
        assert_eq!(seen["headers"]["x-credential"], "basic:carol");
        assert!(
            seen["headers"].get("authorization").is_none(),
            "the password is hidden from the upstream"
        );
    }
    for (user, password) in [
        ("carol", "wrong"),
        ("mallory", "correct horse battery staple"),
    ] {
        let response = client
            .get(gateway.url("/"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap();
        assert_problem(response, 401, "invalid_credentials").await;
    }
    let response = client
        .get(gateway.url("/"))
        .header("authorization", "Basic !!!not-base64")
        .send()
        .await
        .unwrap();
    assert_problem(response, 401, "invalid_credentials").await;
}

#[tokio::test]
async fn plain_passwords_and_unknown_methods_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    common::write(
        &path,
        r#"authentication:
  methods:
    keys:
      api_key: {}
    token:
      jwt:
        issuer: https://idp.example.com
        algorithms: [none, RS265]
consumers:
  - id: dave
    basic_auth: { username: dave, password_hash: hunter2 }
    api_keys:
      - id: abc123
        hash: "plain"
routes:
  - service: nowhere
    auth: { methods: [kyes], anonymous: nobody }
"#,
    );
    let output = Command::new(binary())
        .args(["check", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    // Problems go to stdout, one `FILE:LINE:COLUMN: message` line each.
    let stderr =
        String::from_utf8(output.stdout).unwrap() + &String::from_utf8(output.stderr).unwrap();
    let file = path.display().to_string();
    for expected in [
        "`none` is never accepted",
        "unknown JWT algorithm `RS265`, did you mean `RS256`?",
        "set `jwks_uri`, `discovery: true` or `hmac_secret`",
        "password_hash must be an argon2 hash",
        "API key hash must look like `hmac-sha256:<base64>`",
        "`authentication.api_key_secret` is not set",
        "undefined authentication method `kyes`, did you mean `keys`?",
        "anonymous consumer `nobody` is not defined",
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&file) && l.contains(expected)),
            "missing `{expected}` in:\n{stderr}"
        );
    }
    for line in stderr.lines() {
        let rest = line
            .strip_prefix(&format!("{file}:"))
            .unwrap_or_else(|| panic!("{line}"));
        let mut parts = rest.splitn(3, ':');
        let line_no: u32 = parts.next().unwrap().parse().unwrap();
        assert!(line_no > 0, "problem without a location: {line}");
    }
}

mod mtls {
    use super::*;
    use common::pki::{self, issue, Party};

    #[tokio::test]
    async fn client_certificates_map_to_consumers() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_cert, ca) = pki::ca("Test CA");
        let (server, server_key) = issue(
            &ca,
            "api.test",
            vec![rcgen::SanType::DnsName("api.test".try_into().unwrap())],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        let uri = |s: &str| rcgen::SanType::URI(s.try_into().unwrap());
        let (partner, partner_key) = issue(
            &ca,
            "partner-a",
            vec![uri("spiffe://partners.test/a")],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        let (stranger, stranger_key) = issue(
            &ca,
            "stranger",
            vec![uri("spiffe://partners.test/unknown")],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        let (_other_ca_cert, other_ca) = pki::ca("Other CA");
        let (forged, forged_key) = issue(
            &other_ca,
            "partner-a",
            vec![uri("spiffe://partners.test/a")],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            common::write(&path, &text);
            path.display().to_string()
        };
        let ca_path = write("ca.pem", ca_cert.pem());
        let cert_path = write("server.pem", server.pem());
        let key_path = write("server.key", server_key.serialize_pem());
        let party = Party::new;

        let upstream = echo("mtls").await;
        let listener = |required: bool| {
            format!(
                r#"listeners:
  - name: public
    listen: 127.0.0.1:0
    tls:
      certificates: [{{ cert: "{cert_path}", key: "{key_path}" }}]
      client_auth: {{ ca: "{ca_path}", required: {required} }}
"#
            )
        };
        let rest = format!(
            r#"
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
authentication:
  methods:
    partner-certs:
      client_certificate: {{ identity_from: san_uri }}
consumers:
  - id: partner-a
    certificate_identities: ["spiffe://partners.test/a"]
routes:
  - service: echo
    auth: {{ methods: [partner-certs] }}
"#
        );
        let gateway = Gateway::start(&format!("{}{rest}", listener(false)));
        let port = gateway.addr().port();
        let url = format!("https://api.test:{port}/orders");
        let with = |identity: Option<&Party>| pki::client(ca_cert.der(), identity);
        let response = with(Some(&party(&partner, &partner_key)))
            .get(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let seen = body(response).await;
        assert_eq!(seen["headers"]["x-consumer-id"], "partner-a");
        assert_eq!(
            seen["headers"]["x-credential"],
            "client_certificate:spiffe://partners.test/a"
        );

        // A valid certificate of no consumer: 401; no certificate: 401 asking for one.
        let response = with(Some(&party(&stranger, &stranger_key)))
            .get(&url)
            .send()
            .await
            .unwrap();
        assert_problem(response, 401, "invalid_credentials").await;
        let response = with(None).get(&url).send().await.unwrap();
        assert_problem(response, 401, "credentials_missing").await;

        // A certificate from another CA fails the handshake.
        let forged_result = with(Some(&party(&forged, &forged_key)))
            .get(&url)
            .send()
            .await;
        assert!(
            forged_result.is_err(),
            "a certificate of an untrusted CA is refused"
        );

        // `required: true`: no certificate, no connection; a valid one still gets through.
        let strict = Gateway::start(&format!("{}{rest}", listener(true)));
        let url = format!("https://api.test:{}/orders", strict.addr().port());
        assert!(
            with(None).get(&url).send().await.is_err(),
            "the handshake needs a client certificate"
        );
        let response = with(Some(&party(&partner, &partner_key)))
            .get(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}
