//! Route policies the mesh sidecar reuses, end to end: routes bound to listeners, peer
//! authorization by SPIFFE ID, method and path (with the `authenticated` default and audit
//! mode), the `x-gatehouse-peer-identity` header, and weighted traffic splits.

mod common;

use common::pki::{self, Party};
use common::{admin_block, client, echo, Gateway};
use rustls_pki_types::CertificateDer;
use serde_json::Value;

const ORDERS: &str = "spiffe://mesh.local/ns/shop/sa/orders";
const BILLING: &str = "spiffe://mesh.local/ns/shop/sa/billing";
const FRONTEND: &str = "spiffe://mesh.local/ns/web/sa/frontend";

/// A CA, a server certificate for `api.test`, and client certificates by SPIFFE ID.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
}

impl Pki {
    fn new() -> (Pki, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let (cert, issuer) = pki::ca("Mesh CA");
        let dir = tempfile::tempdir().unwrap();
        common::write(&dir.path().join("ca.pem"), &cert.pem());
        let pki = Pki {
            dir,
            ca: cert.der().clone(),
        };
        (pki, issuer)
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn workload(issuer: &rcgen::Issuer<'_, rcgen::KeyPair>, sans: Vec<rcgen::SanType>) -> Party {
    let (cert, key) = pki::issue(
        issuer,
        "workload",
        sans,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    Party::new(&cert, &key)
}

fn spiffe(id: &str) -> rcgen::SanType {
    rcgen::SanType::URI(id.try_into().unwrap())
}

/// Assert a gateway-generated problem; returns its body.
async fn assert_problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status, "expected {status} {code}");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], code, "{problem}");
    problem
}

/// The gateway of these tests: a plain `public` listener and a mutual-TLS `mesh` listener
/// in front of one echo service.
struct Mesh {
    gateway: Gateway,
    pki: Pki,
    orders: Party,
    billing: Party,
    frontend: Party,
    /// A valid certificate without a SPIFFE ID.
    plain: Party,
}

impl Mesh {
    async fn start() -> Mesh {
        let (pki, ca) = Pki::new();
        let (server, server_key) = pki::issue(
            &ca,
            "api.test",
            vec![rcgen::SanType::DnsName("api.test".try_into().unwrap())],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        common::write(&pki.dir.path().join("server.pem"), &server.pem());
        common::write(
            &pki.dir.path().join("server.key"),
            &server_key.serialize_pem(),
        );
        let upstream = echo("shop").await;
        let yaml = format!(
            r#"{admin}
listeners:
  - name: public
    listen: 127.0.0.1:0
  - name: mesh
    listen: 127.0.0.1:0
    tls:
      certificates: [{{ cert: "{cert}", key: "{key}" }}]
      client_auth: {{ ca: "{ca}", required: false }}
services:
  - name: shop
    endpoints: [{{ address: "{upstream}" }}]
routes:
  - name: internal
    match: {{ path: {{ prefix: /internal }}, listeners: [mesh] }}
    service: shop
  - name: internal-from-outside
    match: {{ path: {{ prefix: /internal }}, listeners: [public] }}
    respond: {{ status: 403, body: "internal only" }}
  - name: shop-api
    match: {{ path: {{ prefix: /shop }} }}
    service: shop
    authorization:
      default: deny
      rules:
        - sources: ["{ORDERS}"]
        - sources: ["spiffe://mesh.local/ns/shop/*"]
          methods: [GET]
          paths: [/shop/catalog/]
        - methods: [GET]
          paths: [/shop/health]
  - name: members
    match: {{ path: {{ prefix: /members }} }}
    service: shop
    authorization: {{ default: authenticated }}
  - name: audited
    match: {{ path: {{ prefix: /audited }} }}
    service: shop
    authorization: {{ default: deny, audit: true }}
  - name: anything
    service: shop
"#,
            admin = admin_block(),
            cert = pki.path("server.pem"),
            key = pki.path("server.key"),
            ca = pki.path("ca.pem"),
        );
        let gateway = Gateway::start(&yaml);
        Mesh {
            orders: workload(&ca, vec![spiffe(ORDERS)]),
            billing: workload(&ca, vec![spiffe(BILLING)]),
            frontend: workload(&ca, vec![spiffe(FRONTEND)]),
            plain: workload(
                &ca,
                vec![rcgen::SanType::DnsName("legacy.test".try_into().unwrap())],
            ),
            gateway,
            pki,
        }
    }

    /// A client of the mesh listener presenting `identity`.
    fn as_peer(&self, identity: Option<&Party>) -> reqwest::Client {
        pki::client(&self.pki.ca, identity)
    }

    fn mesh_url(&self, path: &str) -> String {
        let port = self.gateway.listener("mesh").port();
        format!("https://api.test:{port}{path}")
    }

    fn public_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.listener("public"))
    }
}

#[tokio::test]
async fn routes_bound_to_a_listener_take_only_its_requests() {
    let mesh = Mesh::start().await;
    let response = mesh
        .as_peer(Some(&mesh.orders))
        .get(mesh.mesh_url("/internal/jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["path"], "/internal/jobs");

    // The same path on the public listener is another route's.
    let response = client()
        .get(mesh.public_url("/internal/jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(response.text().await.unwrap(), "internal only");

    // `explain` over the admin API says why the bound route missed.
    let report: Value = client()
        .post(mesh.gateway.admin_url("/admin/explain"))
        .bearer_auth(common::ADMIN_TOKEN)
        .json(&serde_json::json!({
            "method": "GET",
            "url": "http://api.test/internal/jobs",
            "listener": "public",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["route"]["name"], "internal-from-outside", "{report}");
    assert_eq!(report["considered"][0]["route"], "internal", "{report}");
    assert_eq!(
        report["considered"][0]["result"], "listener `public` is not among the route's listeners",
        "{report}"
    );
}

#[tokio::test]
async fn authorization_allows_by_source_method_and_path() {
    let mesh = Mesh::start().await;
    let send = |peer: Option<&Party>, method: reqwest::Method, path: &str| {
        mesh.as_peer(peer)
            .request(method, mesh.mesh_url(path))
            .send()
    };
    use reqwest::Method as M;

    // The orders workload may do anything on the route.
    let response = send(Some(&mesh.orders), M::POST, "/shop/orders")
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Any workload of ns/shop may GET the catalog, below `/shop/catalog/` only.
    let response = send(Some(&mesh.billing), M::GET, "/shop/catalog/items")
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for (peer, method, path) in [
        (&mesh.billing, M::POST, "/shop/catalog/items"),
        (&mesh.billing, M::GET, "/shop/orders"),
        (&mesh.billing, M::GET, "/shop/catalog"),
        (&mesh.frontend, M::GET, "/shop/catalog/items"),
    ] {
        let response = send(Some(peer), method.clone(), path).await.unwrap();
        let problem = assert_problem(response, 403, "peer_not_authorized").await;
        // The detail names the peer's own identity, never the rules' identities or paths.
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(BILLING) || detail.contains(FRONTEND),
            "{method} {path}: {detail}"
        );
        assert!(!detail.contains(ORDERS), "{detail}");
        assert!(!detail.contains("/shop/catalog/"), "{detail}");
    }

    // A rule without sources holds for peers without a certificate, too.
    let response = send(None, M::GET, "/shop/health").await.unwrap();
    assert_eq!(response.status(), 200);
    let response = send(None, M::GET, "/shop/catalog/items").await.unwrap();
    assert_problem(response, 403, "peer_not_authorized").await;
    // Over the plain listener nobody has an identity.
    let response = client()
        .get(mesh.public_url("/shop/catalog/items"))
        .send()
        .await
        .unwrap();
    assert_problem(response, 403, "peer_not_authorized").await;

    let allowed = r#"gatehouse_authorization_decisions_total{route="shop-api",decision="allow"} 3"#;
    let denied = r#"gatehouse_authorization_decisions_total{route="shop-api",decision="deny"} 6"#;
    let metrics = mesh.gateway.metrics_with(&[allowed, denied]).await;
    assert!(metrics.contains(allowed), "{metrics}");
    assert!(metrics.contains(denied), "{metrics}");
}

#[tokio::test]
async fn authenticated_default_needs_a_verified_spiffe_id() {
    let mesh = Mesh::start().await;
    let response = mesh
        .as_peer(Some(&mesh.frontend))
        .get(mesh.mesh_url("/members/profile"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for peer in [None, Some(&mesh.plain)] {
        let response = mesh
            .as_peer(peer)
            .get(mesh.mesh_url("/members/profile"))
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, 403, "peer_not_authorized").await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("no verified SPIFFE identity"),
            "{problem}"
        );
    }
}

#[tokio::test]
async fn audit_mode_logs_and_counts_what_it_would_deny() {
    let mesh = Mesh::start().await;
    let response = mesh
        .as_peer(Some(&mesh.billing))
        .delete(mesh.mesh_url("/audited/records/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "audit mode lets the request through"
    );
    let audited =
        r#"gatehouse_authorization_decisions_total{route="audited",decision="audit_deny"} 1"#;
    let metrics = mesh.gateway.metrics_with(&[audited]).await;
    assert!(metrics.contains(audited), "{metrics}");
    // The gateway's stderr goes to a file; give the write a moment to land.
    let mut log = String::new();
    for _ in 0..50 {
        log = mesh.gateway.stderr();
        if log.contains("audit mode lets it through") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let line = log
        .lines()
        .find(|l| l.contains("audit mode lets it through"))
        .map(without_colors)
        .unwrap_or_else(|| panic!("no audit line in:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("route=audited"), "{line}");
    assert!(line.contains(BILLING), "{line}");
    assert!(line.contains("no rule allows this request"), "{line}");
}

/// A log line without its ANSI colour sequences (`ESC [ ... m`).
fn without_colors(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}

#[tokio::test]
async fn peer_identity_header_is_the_gateways_assertion_only() {
    let mesh = Mesh::start().await;
    let forged = "spiffe://mesh.local/ns/kube-system/sa/admin";
    let seen = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 200);
        let seen: Value = response.json().await.unwrap();
        seen["headers"]["x-gatehouse-peer-identity"].clone()
    };

    // A verified SPIFFE ID replaces whatever the client sent.
    let response = mesh
        .as_peer(Some(&mesh.orders))
        .get(mesh.mesh_url("/identity"))
        .header("x-gatehouse-peer-identity", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(seen(response).await, ORDERS);
    // Naming it in `Connection` does not remove the gateway's own.
    let response = mesh
        .as_peer(Some(&mesh.orders))
        .get(mesh.mesh_url("/identity"))
        .header("connection", "x-gatehouse-peer-identity")
        .send()
        .await
        .unwrap();
    assert_eq!(seen(response).await, ORDERS);
    // Without a SPIFFE ID, or on a listener without client certificates, the client's
    // copy is removed and none is set.
    let response = mesh
        .as_peer(Some(&mesh.plain))
        .get(mesh.mesh_url("/identity"))
        .header("x-gatehouse-peer-identity", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(seen(response).await, Value::Null);
    let response = client()
        .get(mesh.public_url("/identity"))
        .header("x-gatehouse-peer-identity", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(seen(response).await, Value::Null);
}

/// A gateway whose route `split` takes `/orders` to the services `stable` and `canary` (echo
/// servers naming themselves) and `retired` (a closed port), by the `backends` entries given
/// (YAML flow mappings), with `route_extra` (more lines of the route, indented by four).
async fn split_gateway(backends: &[&str], route_extra: &str) -> Gateway {
    let stable = echo("stable").await;
    let canary = echo("canary").await;
    let backends: String = backends
        .iter()
        .map(|backend| format!("      - {backend}\n"))
        .collect();
    Gateway::start(&format!(
        r#"{admin}
listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: stable
    endpoints: [{{ address: "{stable}" }}]
  - name: canary
    endpoints: [{{ address: "{canary}" }}]
  - name: retired
    endpoints: [{{ address: "{closed}" }}]
routes:
  - name: split
    match: {{ path: {{ prefix: /orders }} }}
    backends:
{backends}{route_extra}"#,
        admin = admin_block(),
        closed = common::closed_port(),
    ))
}

#[tokio::test]
async fn weighted_backends_split_traffic_ninety_ten() {
    let gateway = split_gateway(
        &[
            "{ service: stable, weight: 90 }",
            "{ service: retired, weight: 0 }",
            "{ service: canary, weight: 10 }",
        ],
        "",
    )
    .await;
    const REQUESTS: usize = 1000;
    let seen = common::distribution(&client(), &gateway.url("/orders/1"), REQUESTS).await;
    let canary_share = *seen.get("canary").unwrap_or(&0) as f64 / REQUESTS as f64;
    // Binomial(1000, 0.1) has a standard deviation of 0.95 points: ±4 points is more than
    // four of them (a false failure about once in 40,000 runs).
    assert!(
        (0.06..=0.14).contains(&canary_share),
        "canary got {canary_share}: {seen:?}"
    );
    assert_eq!(
        seen.get("stable").unwrap_or(&0) + seen.get("canary").unwrap_or(&0),
        REQUESTS,
        "a zero weight is never drawn: {seen:?}"
    );

    // Metrics name the service each request was actually sent to; the log phase runs as
    // each response ends, so wait for the last one.
    let expected = |service: &str| {
        format!(
            r#"gatehouse_requests_total{{route="split",service="{service}",method="GET",status_class="2xx"}} {}"#,
            seen[service]
        )
    };
    let metrics = gateway
        .metrics_with(&[&expected("stable"), &expected("canary")])
        .await;
    assert!(metrics.contains(&expected("stable")), "{metrics}");
    assert!(metrics.contains(&expected("canary")), "{metrics}");

    // The admin API shows the split.
    let routes = gateway.admin_json("/admin/routes").await;
    assert_eq!(
        routes["routes"][0]["action"]["backends"][2],
        serde_json::json!({ "service": "canary", "weight": 10 }),
        "{routes}"
    );
}

#[tokio::test]
async fn a_cached_split_route_keeps_each_backends_answers_apart() {
    let gateway = split_gateway(
        &[
            "{ service: stable, weight: 50 }",
            "{ service: canary, weight: 50 }",
        ],
        "    cache: { ttl: 30s }\n",
    )
    .await;
    let http = client();
    let url = gateway.url("/orders/1");
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let mut hits = 0;
    for _ in 0..200 {
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let status = response.headers()["cache-status"]
            .to_str()
            .unwrap()
            .to_owned();
        hits += usize::from(status.contains("; hit"));
        let instance = response.headers()["x-demo-instance"].to_str().unwrap();
        *seen.entry(instance.to_owned()).or_default() += 1;
    }
    // Each backend answered its first draw and its entry every later one: the split holds
    // (one shared entry would answer all 200 from whichever backend came first).
    // Binomial(200, 0.5): 60 is more than five standard deviations below the mean.
    assert!(seen.get("stable").is_some_and(|n| *n >= 60), "{seen:?}");
    assert!(seen.get("canary").is_some_and(|n| *n >= 60), "{seen:?}");
    assert!(hits >= 190, "{hits} hits: {seen:?}");
}
