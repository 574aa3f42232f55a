//! The service mesh end to end: a real control plane, real sidecars in front of real
//! applications, mTLS between them, on loopback.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{binary, client, echo, free_port, Gateway};
use gatehouse_mesh::{ControlClient, Member, SpiffeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A control plane with its store and trust anchors in one directory.
struct Mesh {
    control: Option<Gateway>,
    dir: tempfile::TempDir,
    port: u16,
    /// The `store:` section and the start of `control:`, before the test's settings.
    base_yaml: String,
    control_yaml: String,
}

impl Mesh {
    /// `settings`: more of the `control:` section (YAML, indented by two).
    fn start(settings: &str) -> Mesh {
        Self::start_on(None, settings)
    }

    /// A control plane on the store at `store_url` (default: a SQLite file of its own).
    fn start_on(store_url: Option<&str>, settings: &str) -> Mesh {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let store = store_url.map_or_else(
            || format!("sqlite:{}", dir.path().join("control.db").display()),
            str::to_owned,
        );
        let base_yaml = format!(
            "store:\n  url: {store}\ncontrol:\n  listen: 127.0.0.1:{port}\n  trust_anchors_out: {anchors}\n",
            anchors = dir.path().join("ca.pem").display(),
        );
        let mut mesh = Mesh {
            control: None,
            dir,
            port,
            control_yaml: format!("{base_yaml}{settings}"),
            base_yaml,
        };
        mesh.start_control();
        mesh
    }

    fn start_control(&mut self) {
        self.control = Some(Gateway::start_role("control", &self.control_yaml, &[], &[]));
    }

    fn stop_control(&mut self) {
        self.control = None;
    }

    /// Stops the control plane and starts it with other `settings` on the same store.
    fn restart_control_with(&mut self, settings: &str) {
        self.stop_control();
        self.control_yaml = format!("{}{settings}", self.base_yaml);
        self.start_control();
    }

    fn control_config(&self) -> PathBuf {
        self.control
            .as_ref()
            .expect("control plane running")
            .config_path
            .clone()
    }

    fn anchors(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn token(&self, namespace: &str, service: &str) -> String {
        let output = Command::new(binary())
            .args(["control", "-c"])
            .arg(self.control_config())
            .args(["token", "--namespace", namespace, "--service", service])
            .output()
            .expect("gatehouse control token");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    fn membership(&self, namespace: &str, service: &str) -> String {
        format!(
            "mesh:\n  control: 127.0.0.1:{port}\n  trust_anchors: {anchors}\n  namespace: {namespace}\n  service: {service}\n  join_token: {token}\n",
            port = self.port,
            anchors = self.anchors().display(),
            token = self.token(namespace, service),
        )
    }

    /// A sidecar for `service` in front of `application`, with outbound ports to `calls`.
    fn sidecar(
        &self,
        namespace: &str,
        service: &str,
        application: SocketAddr,
        calls: &[&str],
        labels: &str,
    ) -> Sidecar {
        self.sidecar_with(
            namespace,
            service,
            application,
            calls,
            &format!("  labels: {{{labels}}}\n"),
        )
    }

    /// [`Mesh::sidecar`] with more lines under `sidecar:` (`extra`, indented by two).
    fn sidecar_with(
        &self,
        namespace: &str,
        service: &str,
        application: SocketAddr,
        calls: &[&str],
        extra: &str,
    ) -> Sidecar {
        let inbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut yaml = self.membership(namespace, service);
        yaml.push_str(&format!(
            "sidecar:\n  inbound:\n    listen: {inbound}\n    application: {application}\n{extra}"
        ));
        if !calls.is_empty() {
            yaml.push_str("  outbound:\n");
            for call in calls {
                yaml.push_str(&format!(
                    "    - {{ listen: 127.0.0.1:0, service: {call} }}\n"
                ));
            }
        }
        yaml.push_str(&common::admin_block());
        Sidecar {
            process: Gateway::start_role("sidecar", &yaml, &[], &[]),
            inbound,
        }
    }

    /// An in-process member of the mesh with `service`'s identity (a test's own client).
    async fn member(&self, namespace: &str, service: &str) -> Arc<Member> {
        let anchors = gatehouse_proxy::tls::load_certs(&self.anchors()).expect("anchors");
        let member = Member::new(SpiffeId::new("mesh.local", namespace, service), anchors).unwrap();
        let control = ControlClient::new(&member, &format!("127.0.0.1:{}", self.port)).unwrap();
        member
            .join(&control, &self.token(namespace, service))
            .await
            .expect("join");
        member
    }
}

struct Sidecar {
    process: Gateway,
    inbound: SocketAddr,
}

impl Sidecar {
    fn outbound(&self, service: &str) -> String {
        format!(
            "http://{}",
            self.process.listener(&format!("outbound-{service}"))
        )
    }
}

/// Sends one HTTP/1.1 request over `tls` to `addr` and returns the status (or the error
/// that stopped it) and the response text.
async fn request_over_tls(
    addr: SocketAddr,
    tls: rustls::ClientConfig,
    request: &str,
) -> Result<(u16, String), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("orders.shop.mesh").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no HTTP response: {text:?}"))?;
    Ok((status, text))
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n")
}

const ORDERS_POLICY: &str = "  services:
    - name: orders
      namespace: shop
      authorization:
        default: deny
        rules:
          - sources: [spiffe://mesh.local/ns/shop/sa/web]
          - sources: [\"spiffe://mesh.local/ns/shop/*\"]
            methods: [GET]
            paths: [/public/]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_listeners_admit_mesh_identities_by_policy_only() {
    let mesh = Mesh::start(ORDERS_POLICY);
    let orders_app = echo("orders-1").await;
    let orders = mesh.sidecar("shop", "orders", orders_app, &[], "");
    let web = mesh.sidecar_with(
        "shop",
        "web",
        echo("web-1").await,
        &["orders"],
        "  http_proxy: { listen: 127.0.0.1:0 }\n",
    );

    // The allowed caller, through its sidecar: the application sees the caller's identity,
    // not one the caller's application claimed.
    let http = client();
    let response = http
        .get(format!("{}/orders/7", web.outbound("orders")))
        .header(
            "x-gatehouse-peer-identity",
            "spiffe://mesh.local/ns/shop/sa/admin",
        )
        .header("traceparent", TRACEPARENT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-demo-instance"], "orders-1");
    let echoed: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        echoed["headers"]["x-gatehouse-peer-identity"],
        "spiffe://mesh.local/ns/shop/sa/web"
    );
    // The caller's trace continues across both sidecars.
    let traceparent = echoed["headers"]["traceparent"]
        .as_str()
        .unwrap_or_default();
    assert!(
        traceparent.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "trace context lost: {traceparent:?}"
    );
    // The HTTP-proxy port picks the service by Host: its name, or name.namespace.
    let proxy = web.process.listener("http-proxy");
    for host in ["orders", "orders.shop"] {
        let response = http
            .get(format!("http://{proxy}/orders/8"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "Host: {host}");
        assert_eq!(response.headers()["x-demo-instance"], "orders-1");
    }
    let response = http
        .get(format!("http://{proxy}/orders/8"))
        .header("host", "payments")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404, "an unknown service is no route");

    // Golden metrics on both sides, by direction and peer identity.
    let inbound_requests = r#"gatehouse_mesh_requests_total{direction="inbound",peer="spiffe://mesh.local/ns/shop/sa/web",status_class="2xx"} 3"#;
    let inbound = orders.process.metrics_with(&[inbound_requests]).await;
    assert!(inbound.contains(inbound_requests), "{inbound}");
    assert!(
        inbound.contains(r#"gatehouse_mesh_request_duration_seconds_count{direction="inbound",peer="spiffe://mesh.local/ns/shop/sa/web"} 3"#),
        "{inbound}"
    );
    let outbound_requests = r#"gatehouse_mesh_requests_total{direction="outbound",peer="spiffe://mesh.local/ns/shop/sa/orders",status_class="2xx"} 3"#;
    let outbound = web.process.metrics_with(&[outbound_requests]).await;
    assert!(outbound.contains(outbound_requests), "{outbound}");

    // Another workload of the namespace: only what its rule allows.
    let reports = mesh.member("shop", "reports").await;
    let orders_id = SpiffeId::new("mesh.local", "shop", "orders");
    let tls = || {
        reports
            .client_config(orders_id.clone(), &[b"http/1.1"])
            .unwrap()
    };
    let (status, _) = request_over_tls(orders.inbound, tls(), &get("/public/catalog"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, text) = request_over_tls(orders.inbound, tls(), &get("/orders/7"))
        .await
        .unwrap();
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("peer_not_authorized"), "{text}");

    // Plaintext is not spoken on the inbound listener.
    let mut tcp = tokio::net::TcpStream::connect(orders.inbound)
        .await
        .unwrap();
    tcp.write_all(get("/public/catalog").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"),
        "plaintext was served: {answer:?}"
    );

    // No client certificate: refused.
    let anonymous = Arc::new(
        gatehouse_mesh::tls::Credentials::with_bundle(
            gatehouse_proxy::tls::load_certs(&mesh.anchors()).unwrap(),
        )
        .unwrap(),
    );
    let tls =
        gatehouse_mesh::tls::client_config(&anonymous, orders_id.clone(), &[b"http/1.1"]).unwrap();
    let outcome = request_over_tls(orders.inbound, tls, &get("/public/catalog")).await;
    assert!(
        outcome.is_err(),
        "served without a certificate: {outcome:?}"
    );

    // A certificate naming the allowed caller, from another CA: refused.
    let forged = forged_credentials(&mesh, "spiffe://mesh.local/ns/shop/sa/web");
    let tls =
        gatehouse_mesh::tls::client_config(&forged, orders_id.clone(), &[b"http/1.1"]).unwrap();
    let outcome = request_over_tls(orders.inbound, tls, &get("/orders/7")).await;
    assert!(outcome.is_err(), "served a forged identity: {outcome:?}");

    // And a sidecar calling out checks the peer: a server with the wrong identity is
    // refused by the client side too.
    let web_member = mesh.member("shop", "web").await;
    let wrong_peer = web_member
        .client_config(
            SpiffeId::new("mesh.local", "shop", "payments"),
            &[b"http/1.1"],
        )
        .unwrap();
    let outcome = request_over_tls(orders.inbound, wrong_peer, &get("/orders/7")).await;
    assert!(
        matches!(&outcome, Err(e) if e.contains("expected spiffe://mesh.local/ns/shop/sa/payments")),
        "{outcome:?}"
    );
    drop(web);
}

/// Credentials whose certificate names `uri` but comes from a CA the mesh does not know.
fn forged_credentials(mesh: &Mesh, uri: &str) -> Arc<gatehouse_mesh::tls::Credentials> {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.self_signed(&ca_key).unwrap();
    credentials_signed_by(
        &rcgen::Issuer::new(ca, ca_key),
        uri,
        gatehouse_proxy::tls::load_certs(&mesh.anchors()).unwrap(),
    )
}

/// Credentials with a certificate for `uri` (rcgen's default, long validity) signed by `issuer`, trusting
/// `bundle`: a test's own mesh client outside the control plane's reach.
fn credentials_signed_by(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    uri: &str,
    bundle: Vec<rustls_pki_types::CertificateDer<'static>>,
) -> Arc<gatehouse_mesh::tls::Credentials> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::default();
    leaf.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    let cert = leaf.signed_by(&key, issuer).unwrap();
    let certified = rustls::sign::CertifiedKey::from_der(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        &gatehouse_mesh::tls::provider(),
    )
    .unwrap();
    let credentials = Arc::new(gatehouse_mesh::tls::Credentials::with_bundle(bundle).unwrap());
    credentials.install(Arc::new(certified));
    credentials
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_logs_what_it_would_deny_and_denies_nothing() {
    let mesh = Mesh::start(
        "  services:
    - name: orders
      namespace: shop
      authorization:
        default: deny
        audit: true
        rules:
          - sources: [spiffe://mesh.local/ns/shop/sa/web]
",
    );
    let orders = mesh.sidecar("shop", "orders", echo("orders-1").await, &[], "");
    let reports = mesh.sidecar("shop", "reports", echo("reports-1").await, &["orders"], "");
    let response = client()
        .get(format!("{}/orders/7", reports.outbound("orders")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = orders.process.stderr();
        if log.contains("audit") && log.contains("spiffe://mesh.local/ns/shop/sa/reports") {
            break;
        }
        assert!(Instant::now() < deadline, "no audit line:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The decision is counted in the log phase, which may end after the line is logged.
    let metrics = orders
        .process
        .metrics_with(&["decision=\"audit_deny\""])
        .await;
    assert!(
        metrics.contains("decision=\"audit_deny\""),
        "audit decisions are counted:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_gets_its_weight_and_a_header_picks_it() {
    let mesh = Mesh::start(
        "  services:
    - name: reviews
      namespace: shop
      subsets:
        v1: { version: v1 }
        v2: { version: v2 }
      routes:
        - headers: [{ name: x-canary, exact: \"1\" }]
          backends: [{ subset: v2, weight: 100 }]
        - backends: [{ subset: v1, weight: 90 }, { subset: v2, weight: 10 }]
",
    );
    let _v1 = mesh.sidecar(
        "shop",
        "reviews",
        echo("reviews-v1").await,
        &[],
        "version: v1",
    );
    let _v2 = mesh.sidecar(
        "shop",
        "reviews",
        echo("reviews-v2").await,
        &[],
        "version: v2",
    );
    let web = mesh.sidecar("shop", "web", echo("web-1").await, &["reviews"], "");
    let url = format!("{}/reviews", web.outbound("reviews"));
    wait_for_endpoints(&url, &["reviews-v1", "reviews-v2"]).await;

    let seen = common::distribution(&client(), &url, 1000).await;
    let v2 = seen.get("reviews-v2").copied().unwrap_or(0);
    let v1 = seen.get("reviews-v1").copied().unwrap_or(0);
    assert_eq!(v1 + v2, 1000, "{seen:?}");
    // 10% of 1000: a binomial standard deviation of ~9.5; ±30 is beyond three of them.
    assert!((70..=130).contains(&v2), "v2 got {v2} of 1000: {seen:?}");

    let http = client();
    for _ in 0..20 {
        let response = http.get(&url).header("x-canary", "1").send().await.unwrap();
        assert_eq!(response.headers()["x-demo-instance"], "reviews-v2");
    }
}

/// Waits until requests to `url` have reached every one of `instances` (registrations
/// reach the caller's sidecar with the next snapshot). Requests go out 20 at a time: one
/// by one, power of two choices would rightly keep picking the faster instance.
async fn wait_for_endpoints(url: &str, instances: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let http = client();
    loop {
        let answers = futures_util::future::join_all((0..20).map(|_| http.get(url).send())).await;
        let seen: std::collections::BTreeSet<String> = answers
            .into_iter()
            .flatten()
            .filter_map(|r| {
                r.headers()
                    .get("x-demo-instance")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .collect();
        if instances.iter().all(|i| seen.contains(*i)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never reached all of {instances:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_no_failures(sent: usize, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed; the first: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
}

/// Sends requests until `until` resolves; returns (sent, failed) with the failures' text.
async fn traffic_during<F: std::future::Future>(url: &str, until: F) -> (usize, Vec<String>) {
    let http = client();
    let mut sent = 0;
    let mut failures = Vec::new();
    tokio::pin!(until);
    let started = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = &mut until => return (sent, failures),
            response = http.get(url).send() => {
                sent += 1;
                match response {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => failures.push(format!("{}: {}", r.status(), r.text().await.unwrap_or_default())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "traffic loop ran away"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_die_and_the_control_plane_restarts_without_a_failed_request() {
    let mut mesh = Mesh::start("  lease: 3s\n");
    let first = mesh.sidecar("shop", "orders", echo("orders-1").await, &[], "");
    let _second = mesh.sidecar("shop", "orders", echo("orders-2").await, &[], "");
    let web = mesh.sidecar("shop", "web", echo("web-1").await, &["orders"], "");
    let url = format!("{}/orders", web.outbound("orders"));
    wait_for_endpoints(&url, &["orders-1", "orders-2"]).await;

    // One instance's sidecar is killed: retries move its requests to the survivor, and
    // the lease takes it out of the registry.
    let (sent, failures) = traffic_during(&url, async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(first);
        tokio::time::sleep(Duration::from_secs(3)).await;
    })
    .await;
    assert_no_failures(sent, &failures);
    assert!(sent > 50, "only {sent} requests");
    let seen = common::distribution(&client(), &url, 20).await;
    assert_eq!(seen.get("orders-2"), Some(&20), "{seen:?}");

    // The control plane goes away for longer than the 3 s lease and comes back: data
    // planes keep their last snapshot, then resynchronise; leases did not run meanwhile,
    // so the registry it starts with still holds the live instance.
    let (sent, failures) = traffic_during(&url, async {
        mesh.stop_control();
        tokio::time::sleep(Duration::from_secs(4)).await;
        mesh.start_control();
        tokio::time::sleep(Duration::from_secs(3)).await;
    })
    .await;
    assert_no_failures(sent, &failures);
    let control_log = mesh.control.as_ref().unwrap().stderr();
    assert!(
        control_log.contains("data plane watching"),
        "data planes came back:\n{control_log}"
    );
    assert!(
        control_log.contains("registered instances keep the lease they had left"),
        "{control_log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_traffic_without_a_failed_request() {
    let mesh = Mesh::start("  certificate_lifetime: 6s\n");
    let orders = mesh.sidecar("shop", "orders", echo("orders-1").await, &[], "");
    let web = mesh.sidecar("shop", "web", echo("web-1").await, &["orders"], "");
    let url = format!("{}/orders", web.outbound("orders"));
    wait_for_endpoints(&url, &["orders-1"]).await;
    let (sent, failures) = traffic_during(&url, tokio::time::sleep(Duration::from_secs(10))).await;
    assert_no_failures(sent, &failures);
    for sidecar in [&orders.process, &web.process] {
        let renewals = sidecar.stderr().matches("certificate renewed").count();
        assert!(renewals >= 2, "{renewals} renewals:\n{}", sidecar.stderr());
    }
}

/// One request over mTLS with `credentials` to the inbound listener at `addr`, whose
/// certificate must name `peer`.
async fn mtls_get(
    addr: SocketAddr,
    credentials: &Arc<gatehouse_mesh::tls::Credentials>,
    peer: &SpiffeId,
) -> Result<(u16, String), String> {
    let tls = gatehouse_mesh::tls::client_config(credentials, peer.clone(), &[b"http/1.1"])
        .map_err(|e| e.to_string())?;
    request_over_tls(addr, tls, &get("/rotation")).await
}

/// Retries [`mtls_get`] until it is answered 200 (the sidecar renewed its certificate, or
/// took a new bundle); fails after 15 s.
async fn until_served(
    addr: SocketAddr,
    credentials: &Arc<gatehouse_mesh::tls::Credentials>,
    peer: &SpiffeId,
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let outcome = mtls_get(addr, credentials, peer).await;
        if matches!(outcome, Ok((200, _))) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {outcome:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The trust anchors the control plane serves (subject, expiry, fingerprint each).
async fn trust_anchors(mesh: &Mesh) -> Vec<serde_json::Value> {
    let control = mesh.control.as_ref().expect("control plane running");
    let status = control.admin_json("/admin/mesh").await;
    status["trust_anchors"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn wait_until_in_sync(mesh: &Mesh, nodes: &[&str], what: &str) {
    let control = mesh.control.as_ref().expect("control plane running");
    wait_for_data_planes(control, what, |planes| {
        nodes
            .iter()
            .all(|node| plane(planes, node).is_some_and(|p| p["state"] == "in_sync"))
    })
    .await;
}

/// The procedure of docs/mesh.md ("Rotating the root"), under traffic: the next root is
/// trusted everywhere first, then the CA signs with it while the old root is still trusted,
/// then the old root is retired. Test clients with certificates from each root show what
/// every sidecar trusts and presents at each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_root_rotates_under_traffic_without_a_failed_request() {
    // The operator's root to start with (so the test can sign with it too).
    let (_, old_pem, old_key) = gatehouse_mesh::ca::Authority::generate("mesh.local").unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let path = |name: &str| scratch.path().join(name).display().to_string();
    common::write(Path::new(&path("old-root.pem")), &old_pem);
    common::write(Path::new(&path("old-root.key")), &old_key);
    let admin = common::admin_block();
    let step = |ca: &str, additional: Option<&str>| {
        format!(
            "  certificate_lifetime: 6s\n  ca: {{ cert: {cert}, key: {key} }}\n{extra}{admin}",
            cert = path(&format!("{ca}.pem")),
            key = path(&format!("{ca}.key")),
            extra = additional.map_or(String::new(), |a| format!(
                "  additional_trust_anchors: {}\n",
                path(&format!("{a}.pem"))
            )),
        )
    };
    let mut mesh = Mesh::start(&step("old-root", None));
    let orders = mesh.sidecar("shop", "orders", echo("orders-1").await, &[], "");
    let web = mesh.sidecar("shop", "web", echo("web-1").await, &["orders"], "");
    let url = format!("{}/orders", web.outbound("orders"));
    wait_for_endpoints(&url, &["orders-1"]).await;

    // Step 0: the next root, made by the CLI; its key is readable by its owner only, and
    // an existing root is never overwritten.
    let new_root = || {
        Command::new(binary())
            .args(["control", "-c"])
            .arg(mesh.control_config())
            .args(["new-root", "--cert", &path("new-root.pem")])
            .args(["--key", &path("new-root.key")])
            .output()
            .unwrap()
    };
    let made = new_root();
    assert!(made.status.success(), "{made:?}");
    assert!(String::from_utf8_lossy(&made.stdout).contains("mesh.local root CA"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(path("new-root.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let again = new_root();
    assert!(!again.status.success(), "{again:?}");

    let issuer = |name: &str| {
        let pem = std::fs::read_to_string(path(&format!("{name}.pem"))).unwrap();
        let key = std::fs::read_to_string(path(&format!("{name}.key"))).unwrap();
        rcgen::Issuer::from_ca_cert_pem(&pem, rcgen::KeyPair::from_pem(&key).unwrap()).unwrap()
    };
    let roots = |names: &[&str]| -> Vec<rustls_pki_types::CertificateDer<'static>> {
        names
            .iter()
            .flat_map(|n| {
                gatehouse_proxy::tls::load_certs(Path::new(&path(&format!("{n}.pem")))).unwrap()
            })
            .collect()
    };
    let web_uri = "spiffe://mesh.local/ns/shop/sa/web";
    // Clients signed by each root. Those trusting both roots test what a sidecar trusts;
    // the one trusting the new root only also tests what the sidecar presents.
    let old_client = credentials_signed_by(
        &issuer("old-root"),
        web_uri,
        roots(&["old-root", "new-root"]),
    );
    let new_client = credentials_signed_by(
        &issuer("new-root"),
        web_uri,
        roots(&["old-root", "new-root"]),
    );
    let new_only = credentials_signed_by(&issuer("new-root"), web_uri, roots(&["new-root"]));
    let orders_id = SpiffeId::new("mesh.local", "shop", "orders");
    let web_id = SpiffeId::new("mesh.local", "shop", "web");

    assert!(matches!(
        mtls_get(orders.inbound, &old_client, &orders_id).await,
        Ok((200, _))
    ));
    let refused = mtls_get(orders.inbound, &new_client, &orders_id).await;
    assert!(
        refused.is_err(),
        "the next root trusted before step 1: {refused:?}"
    );

    let (sent, failures) = traffic_during(&url, async {
        // Step 1: every member trusts both roots; the CA still signs with the old one.
        mesh.restart_control_with(&step("old-root", Some("new-root")));
        wait_until_in_sync(&mesh, &["orders-", "web-"], "step 1").await;
        assert_eq!(trust_anchors(&mesh).await.len(), 2);
        // Taken with the snapshot, not with the next certificate.
        for (addr, id) in [(orders.inbound, &orders_id), (web.inbound, &web_id)] {
            let served = mtls_get(addr, &new_client, id).await;
            assert!(
                matches!(served, Ok((200, _))),
                "the next root not trusted: {served:?}"
            );
        }
        let presented = mtls_get(orders.inbound, &new_only, &orders_id).await;
        assert!(
            presented.is_err(),
            "signed by the next root already: {presented:?}"
        );
        assert!(
            std::fs::read_to_string(mesh.anchors())
                .unwrap()
                .matches("BEGIN CERTIFICATE")
                .count()
                == 2
        );

        // Step 2: the CA signs with the new root; the old one stays trusted while members
        // renew (6 s certificates: within 4 s).
        mesh.restart_control_with(&step("new-root", Some("old-root")));
        // In sync: both reconnected to a control plane whose certificate chains to the new
        // root, verified against the bundle step 1 pushed.
        wait_until_in_sync(&mesh, &["orders-", "web-"], "step 2").await;
        until_served(
            orders.inbound,
            &new_only,
            &orders_id,
            "orders renewed from the new root",
        )
        .await;
        until_served(
            web.inbound,
            &new_only,
            &web_id,
            "web renewed from the new root",
        )
        .await;
        let still = mtls_get(orders.inbound, &old_client, &orders_id).await;
        assert!(
            matches!(still, Ok((200, _))),
            "the old root dropped too early: {still:?}"
        );

        // Step 3: the old root is retired.
        mesh.restart_control_with(&step("new-root", None));
        wait_until_in_sync(&mesh, &["orders-", "web-"], "step 3").await;
        assert_eq!(trust_anchors(&mesh).await.len(), 1);
        let refused = mtls_get(orders.inbound, &old_client, &orders_id).await;
        assert!(
            refused.is_err(),
            "the retired root still trusted: {refused:?}"
        );
        let refused = mtls_get(web.inbound, &old_client, &web_id).await;
        assert!(
            refused.is_err(),
            "the retired root still trusted: {refused:?}"
        );
        assert!(matches!(
            mtls_get(orders.inbound, &new_only, &orders_id).await,
            Ok((200, _))
        ));
        // Traffic carries on under the new root alone.
        tokio::time::sleep(Duration::from_secs(2)).await;
    })
    .await;
    assert_no_failures(sent, &failures);
    assert!(sent > 100, "only {sent} requests");
    for sidecar in [&orders.process, &web.process] {
        assert!(
            sidecar.stderr().contains("mesh: trust bundle changed"),
            "{}",
            sidecar.stderr()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_calls_into_the_mesh_with_its_own_identity() {
    let mesh = Mesh::start(
        "  services:
    - name: orders
      namespace: shop
      authorization:
        default: deny
        rules:
          - sources: [spiffe://mesh.local/ns/edge/sa/gateway]
",
    );
    let _orders = mesh.sidecar("shop", "orders", echo("orders-1").await, &[], "");
    let gateway_yaml = format!(
        "{membership}listeners:\n  - name: public\n    listen: 127.0.0.1:0\nservices:\n  - name: orders\n    mesh: {{ service: orders, namespace: shop }}\nroutes:\n  - match: {{ path: {{ prefix: /orders }} }}\n    service: orders\n",
        membership = mesh.membership("edge", "gateway"),
    );
    let gateway = Gateway::start(&gateway_yaml);
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(10);
    let response = loop {
        let response = http
            .get(gateway.url("/orders/7"))
            .header(
                "x-gatehouse-peer-identity",
                "spiffe://mesh.local/ns/shop/sa/web",
            )
            .send()
            .await
            .unwrap();
        if response.status() == 200 || Instant::now() > deadline {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(response.status(), 200);
    let echoed: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        echoed["headers"]["x-gatehouse-peer-identity"],
        "spiffe://mesh.local/ns/edge/sa/gateway"
    );

    // Another workload is not the gateway: the public-facing service refuses it.
    let reports = mesh.member("shop", "reports").await;
    let tls = reports
        .client_config(
            SpiffeId::new("mesh.local", "shop", "orders"),
            &[b"http/1.1"],
        )
        .unwrap();
    let (status, _) = request_over_tls(_orders.inbound, tls, &get("/orders/7"))
        .await
        .unwrap();
    assert_eq!(status, 403);
}

/// A TCP echo server: what it reads, it writes back.
async fn tcp_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = tcp.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

/// Writes `message` to the sidecar port and returns what comes back before the connection
/// closes or a second passes.
async fn tcp_round_trip(port: SocketAddr, message: &[u8]) -> Vec<u8> {
    let mut tcp = tokio::net::TcpStream::connect(port).await.unwrap();
    tcp.write_all(message).await.unwrap();
    let mut answer = vec![0; message.len()];
    match tokio::time::timeout(Duration::from_secs(1), tcp.read_exact(&mut answer)).await {
        Ok(Ok(_)) => answer,
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_crosses_the_mesh_for_allowed_callers_only() {
    let mesh = Mesh::start(
        "  services:
    - name: ledger
      namespace: shop
      protocol: tcp
      authorization:
        default: deny
        rules:
          - sources: [spiffe://mesh.local/ns/shop/sa/billing]
",
    );
    let app = tcp_echo().await;
    let inbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut ledger_yaml = mesh.membership("shop", "ledger");
    ledger_yaml.push_str(&format!(
        "sidecar:\n  inbound:\n    listen: {inbound}\n    application: {app}\n    protocol: tcp\n"
    ));
    let _ledger = Gateway::start_role("sidecar", &ledger_yaml, &[], &[]);
    let caller = |service: &str| {
        let mut yaml = mesh.membership("shop", service);
        yaml.push_str(&format!(
            "sidecar:\n  inbound:\n    listen: 127.0.0.1:{}\n    application: 127.0.0.1:9\n  outbound:\n    - {{ listen: 127.0.0.1:0, service: ledger, protocol: tcp }}\n",
            free_port()
        ));
        Gateway::start_role("sidecar", &yaml, &[], &[])
    };
    let billing = caller("billing");
    let reports = caller("reports");

    let port = billing.listener("outbound-ledger");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // 64 KiB each way: bytes pass through untouched.
        let message: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();
        let echoed = tcp_round_trip(port, &message).await;
        if echoed == message {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ledger never echoed through the mesh"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Another workload is refused at the ledger's sidecar: nothing comes back.
    let echoed = tcp_round_trip(reports.listener("outbound-ledger"), b"ping").await;
    assert!(echoed.is_empty(), "{echoed:?}");
    // Plaintext to the inbound port reaches nothing either.
    let echoed = tcp_round_trip(inbound, b"ping").await;
    assert_ne!(echoed, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_http2_crosses_two_sidecars() {
    use gatehouse_grpc_fixture::library::library_service_client::LibraryServiceClient;
    use gatehouse_grpc_fixture::library::{GetBookRequest, WatchShelfRequest};
    let mesh = Mesh::start(
        "  services:\n    - name: library\n      namespace: shop\n      protocol: http2\n",
    );
    let server = gatehouse_grpc_fixture::serve().await.unwrap();
    let _library = mesh.sidecar_with("shop", "library", server.addr, &[], "    protocol: http2\n");
    let reader = mesh.sidecar("shop", "reader", echo("reader-1").await, &["library"], "");
    let channel = tonic::transport::Channel::from_shared(reader.outbound("library"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the outbound port");
    let mut client = LibraryServiceClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(10);
    let book = loop {
        let request = tonic::Request::new(GetBookRequest {
            name: "shelves/1/books/1".into(),
            book_id: String::new(),
        });
        match client.get_book(request).await {
            Ok(book) => break book.into_inner(),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(status) => panic!("GetBook: {status:?}"),
        }
    };
    assert_eq!(book.title, "Dune");
    let seen = server.observed.last_metadata("GetBook").unwrap();
    assert_eq!(
        seen.get("x-gatehouse-peer-identity").unwrap(),
        "spiffe://mesh.local/ns/shop/sa/reader"
    );
    // A server stream crosses too.
    let mut stream = client
        .watch_shelf(WatchShelfRequest {
            shelf: "shelves/1".into(),
            limit: 0,
        })
        .await
        .expect("WatchShelf")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an event in time")
        .expect("stream ok");
    assert!(first.is_some(), "the stream sent an event");
}

/// Two control planes on one PostgreSQL database are one control plane to their members:
/// the same CA, join tokens and registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_of_control_planes_shares_the_ca_and_the_registry_in_postgresql() {
    let database = common::TestDatabase::create("mesh_pair");
    let relay = common::PgRelay::start("127.0.0.1:0".parse().unwrap()).await;
    let url = database.url_via(&relay.addr.to_string());
    // Long leases: nothing expires during the store outage below.
    let settings = format!("  lease: 60s\n{}", common::admin_block());
    let first = Mesh::start_on(Some(&url), &settings);
    let second = Mesh::start_on(Some(&url), &settings);
    assert_eq!(
        std::fs::read_to_string(first.anchors()).unwrap(),
        std::fs::read_to_string(second.anchors()).unwrap(),
        "one CA for the pair"
    );
    // Registered through the first, called by a member of the second.
    let orders = first.sidecar("shop", "orders", echo("orders-1").await, &[], "");
    let web = second.sidecar("shop", "web", echo("web-1").await, &["orders"], "");
    let orders_url = format!("{}/orders", web.outbound("orders"));
    wait_for_endpoints(&orders_url, &["orders-1"]).await;

    // The same identity watching each control plane is sent the same version: the version
    // is a digest of the content, not a counter of either plane.
    let watcher = first.member("shop", "web").await;
    let watcher_client =
        ControlClient::new(&watcher, &format!("127.0.0.1:{}", first.port)).unwrap();
    tokio::spawn(watcher.clone().follow(
        watcher_client,
        "web-watcher".to_owned(),
        Arc::new(|_| Ok(())),
    ));
    // Each plane re-reads the shared registry every half second, so for a moment they can
    // serve different states; once both have the same, the versions must agree.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let on_first = first
            .control
            .as_ref()
            .unwrap()
            .admin_json("/admin/mesh/data-planes")
            .await;
        let on_second = second
            .control
            .as_ref()
            .unwrap()
            .admin_json("/admin/mesh/data-planes")
            .await;
        let applied = |planes: &serde_json::Value, node: &str| {
            plane(planes.as_array().unwrap(), node)
                .filter(|p| p["state"] == "in_sync")
                .map(|p| p["applied_version"].clone())
        };
        let (watcher_version, sidecar_version) = (
            applied(&on_first, "web-watcher"),
            applied(&on_second, "web-"),
        );
        if watcher_version.is_some() && watcher_version == sidecar_version {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both planes of the pair version the same content alike: {on_first:#} {on_second:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The store goes away: both planes keep serving their last registry. Traffic flows, and
    // a data plane that reconnects meanwhile is sent a snapshot with the live endpoints.
    // (Joining needs the store: the late watcher joins now and watches during the outage.)
    let late_watcher = second.member("shop", "web").await;
    let relay_addr = relay.cut().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..20 {
        let response = client().get(&orders_url).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let reconnecting_client =
        ControlClient::new(&late_watcher, &format!("127.0.0.1:{}", second.port)).unwrap();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(late_watcher.clone().follow(
        reconnecting_client,
        "web-during-outage".to_owned(),
        Arc::new(move |snapshot: &Arc<gatehouse_mesh::proto::Snapshot>| {
            let orders: Vec<String> = snapshot
                .destinations
                .iter()
                .filter(|d| d.name == "orders")
                .flat_map(|d| d.endpoints.iter().map(|e| e.address.clone()))
                .collect();
            let _ = seen_tx.send(orders);
            Ok(())
        }),
    ));
    let endpoints = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
        .await
        .expect("a snapshot during the store outage")
        .unwrap();
    assert_eq!(endpoints, vec![orders.inbound.to_string()]);
    let status = second
        .control
        .as_ref()
        .unwrap()
        .admin_json("/admin/mesh/services")
        .await;
    assert!(
        status.to_string().contains(&orders.inbound.to_string()),
        "the registry is still served: {status:#}"
    );

    // Back: joins and registrations (which need the store) flow again.
    let _relay = common::PgRelay::start(relay_addr).await;
    let _second_orders = first.sidecar("shop", "orders", echo("orders-2").await, &[], "");
    wait_for_endpoints(&orders_url, &["orders-1", "orders-2"]).await;
}

/// Polls the control plane's admin API until `done` holds for the data planes it lists.
async fn wait_for_data_planes(
    control: &Gateway,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let planes = control.admin_json("/admin/mesh/data-planes").await;
        let planes = planes.as_array().cloned().unwrap_or_default();
        if done(&planes) {
            return planes;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: data planes are {planes:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn plane<'a>(planes: &'a [serde_json::Value], node_prefix: &str) -> Option<&'a serde_json::Value> {
    planes.iter().find(|p| {
        p["node"]
            .as_str()
            .is_some_and(|n| n.starts_with(node_prefix))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_reports_applied_and_rejected_versions_and_sigterm_deregisters() {
    // A long lease: an instance that leaves the registry quickly was deregistered, not expired.
    let mesh = Mesh::start(&format!("  lease: 60s\n{}", common::admin_block()));
    let control = mesh.control.as_ref().expect("control plane");
    let unauthorized = client()
        .get(control.admin_url("/admin/mesh"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);

    let catalog = mesh.sidecar("shop", "catalog", echo("catalog-1").await, &[], "");
    // A data plane that refuses every snapshot (as one would whose generated configuration
    // does not validate).
    let refusing = mesh.member("shop", "reviews").await;
    let client_of_refusing =
        ControlClient::new(&refusing, &format!("127.0.0.1:{}", mesh.port)).unwrap();
    tokio::spawn(refusing.clone().follow(
        client_of_refusing,
        "reviews-refusing".to_owned(),
        Arc::new(|_: &Arc<gatehouse_mesh::proto::Snapshot>| {
            Err::<(), _>("refused by the test".to_owned())
        }),
    ));

    let planes = wait_for_data_planes(control, "sidecar in sync, member rejecting", |planes| {
        plane(planes, "catalog-").is_some_and(|p| p["state"] == "in_sync")
            && plane(planes, "reviews-refusing").is_some_and(|p| p["state"] == "rejected")
    })
    .await;
    let synced = plane(&planes, "catalog-").unwrap();
    assert_eq!(synced["identity"], "spiffe://mesh.local/ns/shop/sa/catalog");
    assert_eq!(synced["sent_version"], synced["applied_version"]);
    assert!(synced["connected"].as_bool().unwrap());
    let rejecting = plane(&planes, "reviews-refusing").unwrap();
    assert_eq!(rejecting["rejected"]["reason"], "refused by the test");
    assert_eq!(rejecting["rejected"]["version"], rejecting["sent_version"]);
    assert!(rejecting["applied_version"].is_null());

    let status = control.admin_json("/admin/mesh").await;
    assert_eq!(status["trust_domain"], "mesh.local");
    assert_eq!(status["trust_anchors"].as_array().map(Vec::len), Some(1));
    let catalog_service = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "catalog")
        .cloned()
        .expect("catalog in the registry");
    assert_eq!(
        catalog_service["instances"][0]["address"],
        catalog.inbound.to_string()
    );

    // SIGTERM: the sidecar deregisters as it starts draining, long before its lease ends,
    // and its watch stream closes.
    catalog.process.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let services = control.admin_json("/admin/mesh/services").await;
        let instances = services
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "catalog")
            .map_or(0, |s| s["instances"].as_array().map_or(0, Vec::len));
        // (An undeclared service leaves the list with its last instance.)
        if instances == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "catalog still registered after SIGTERM: {services:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_data_planes(control, "the stopped sidecar disconnected", |planes| {
        plane(planes, "catalog-").is_some_and(|p| p["state"] == "disconnected")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_reloads_its_file_on_sighup_and_refuses_identity_changes() {
    let mesh = Mesh::start("");
    let first_app = echo("orders-1").await;
    let orders = mesh.sidecar("shop", "orders", first_app, &[], "");
    let web = mesh.sidecar("shop", "web", echo("web-1").await, &["orders"], "");
    let orders_url = format!("{}/orders", web.outbound("orders"));
    wait_for_endpoints(&orders_url, &["orders-1"]).await;

    // A new local application address: applied on SIGHUP, no restart.
    let path = orders.process.config_path.clone();
    let text = std::fs::read_to_string(&path).unwrap();
    let second_app = echo("orders-2").await;
    common::write(
        &path,
        &text.replace(&first_app.to_string(), &second_app.to_string()),
    );
    orders.process.signal("HUP");
    wait_for_endpoints(&orders_url, &["orders-2"]).await;

    // Another identity is refused: the sidecar keeps serving as before and says why.
    let renamed = std::fs::read_to_string(&path)
        .unwrap()
        .replace("service: orders", "service: payments");
    common::write(&path, &renamed);
    orders.process.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !orders.process.stderr().contains("that needs a restart") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged: {}",
            orders.process.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..5 {
        let response = client().get(&orders_url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-demo-instance"], "orders-2");
    }
}
