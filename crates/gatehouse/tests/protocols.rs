//! Protocols end to end: h2c, TLS with ALPN, certificates chosen by SNI, TLS versions, the
//! HTTP→HTTPS redirect listener and WebSocket upgrades.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{client, echo, install_crypto_provider, Gateway};
use futures_util::{SinkExt, StreamExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{DigitallySignedStruct, ProtocolVersion, SignatureScheme, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
const ONLY_12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const ONLY_13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// A test CA and two server certificates it signed (`a.test` and `*.b.test`), written as PEM
/// files into a temporary directory.
struct Pki {
    _dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    a: Leaf,
    b: Leaf,
}

struct Leaf {
    der: CertificateDer<'static>,
    cert: String,
    key: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Gatehouse Test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(params, ca_key);
        let a = leaf(&issuer, dir.path(), "a", "a.test");
        let b = leaf(&issuer, dir.path(), "b", "*.b.test");
        Pki {
            _dir: dir,
            ca: ca.der().clone(),
            a,
            b,
        }
    }

    /// The `certificates:` block of a listener's `tls:` section (`a.test` first = default).
    fn certificates_yaml(&self) -> String {
        format!(
            "      certificates:\n        - {{ cert: \"{}\", key: \"{}\" }}\n        - {{ cert: \"{}\", key: \"{}\" }}\n",
            self.a.cert, self.a.key, self.b.cert, self.b.key
        )
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("add CA");
        roots
    }

    /// A client configuration trusting only the test CA.
    fn client_config(
        &self,
        versions: &[&'static SupportedProtocolVersion],
    ) -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .expect("protocol versions")
            .with_root_certificates(self.roots())
            .with_no_client_auth()
    }
}

fn leaf(issuer: &rcgen::Issuer<'_, rcgen::KeyPair>, dir: &Path, stem: &str, name: &str) -> Leaf {
    let key = rcgen::KeyPair::generate().expect("leaf key");
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("leaf params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, issuer).expect("leaf certificate");
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    common::write(&cert_path, &cert.pem());
    common::write(&key_path, &key.serialize_pem());
    Leaf {
        der: cert.der().clone(),
        cert: cert_path.display().to_string(),
        key: key_path.display().to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Start a gateway with one listener on an ephemeral loopback port (`settings` are extra
/// YAML lines for it) and one echo service that every request routes to. One listener per
/// gateway: configuration validation rejects two listeners on `127.0.0.1:0`.
fn start(settings: &str, upstream: SocketAddr) -> Gateway {
    Gateway::start(&format!(
        "listeners:\n  - name: main\n    listen: 127.0.0.1:0\n{settings}services:\n  - name: echo\n    endpoints: [{{ address: \"{upstream}\" }}]\nroutes:\n  - service: echo\n"
    ))
}

/// A reqwest client trusting only the test CA, offering `alpn`, with `names` resolved to `addr`.
fn tls_client(pki: &Pki, alpn: &[&str], names: &[&str], addr: SocketAddr) -> reqwest::Client {
    install_crypto_provider();
    let mut tls = pki.client_config(BOTH);
    tls.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .use_preconfigured_tls(tls);
    if !alpn.contains(&"h2") {
        builder = builder.http1_only();
    }
    for name in names {
        builder = builder.resolve(name, addr);
    }
    builder.build().expect("TLS client")
}

async fn echo_json(response: reqwest::Response) -> Value {
    assert!(
        response.status().is_success(),
        "status {}",
        response.status()
    );
    assert_eq!(response.headers()["x-demo-instance"], "echo-1");
    response.json().await.expect("echo JSON")
}

/// Verifies the presented chain against the test CA, but for a fixed name instead of the SNI,
/// so a handshake with an SNI no certificate covers can still complete and be inspected.
#[derive(Debug)]
struct VerifyAs {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for VerifyAs {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Handshake with `sni` (none when `None`) and return the end-entity certificate the
/// gateway presented; the chain must verify against the test CA for `verify_as`.
async fn presented_certificate(
    addr: SocketAddr,
    pki: &Pki,
    sni: Option<&str>,
    verify_as: &str,
) -> CertificateDer<'static> {
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(pki.roots()), provider())
        .build()
        .expect("verifier");
    let verifier = VerifyAs {
        inner,
        name: ServerName::try_from(verify_as.to_owned()).expect("name"),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(BOTH)
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.enable_sni = sni.is_some();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    // With SNI disabled the name only feeds verification, which `VerifyAs` overrides.
    let name = ServerName::try_from(sni.unwrap_or("no-sni.invalid").to_owned()).expect("name");
    let tls = connector
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("handshake with SNI {sni:?}: {e}"));
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .expect("peer certificates");
    chain[0].clone().into_owned()
}

/// Complete a TLS handshake offering only `versions`; the negotiated version on success.
async fn handshake(
    addr: SocketAddr,
    pki: &Pki,
    versions: &[&'static SupportedProtocolVersion],
) -> std::io::Result<ProtocolVersion> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client_config(versions)));
    let tcp = TcpStream::connect(addr).await?;
    let tls = connector
        .connect(ServerName::try_from("a.test").expect("name"), tcp)
        .await?;
    Ok(tls
        .get_ref()
        .1
        .protocol_version()
        .expect("negotiated version"))
}

#[tokio::test]
async fn h2c_prior_knowledge_and_http1_share_a_plain_listener() {
    let upstream = echo("echo-1").await;
    let gateway = start("", upstream);
    let plain = gateway.listener("main");

    install_crypto_provider();
    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("h2c client");
    let response = h2c
        .get(format!("http://{plain}/over/h2c?x=1"))
        .send()
        .await
        .expect("h2c request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let seen = echo_json(response).await;
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/over/h2c");
    assert_eq!(seen["query"], "x=1");
    // The client side is HTTP/2; the gateway talks HTTP/1.1 to this upstream.
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["headers"]["host"], plain.to_string());

    // Several streams multiplexed on the same h2c connection.
    let requests = (0..8).map(|i| {
        let h2c = h2c.clone();
        async move {
            let response = h2c
                .get(format!("http://{plain}/stream/{i}"))
                .send()
                .await
                .expect("h2c request");
            assert_eq!(response.version(), reqwest::Version::HTTP_2);
            let seen = echo_json(response).await;
            assert_eq!(seen["path"], format!("/stream/{i}"));
        }
    });
    futures_util::future::join_all(requests).await;

    // The same listener detects HTTP/1.1.
    let response = client()
        .get(format!("http://{plain}/over/h1"))
        .send()
        .await
        .expect("HTTP/1.1 request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    let seen = echo_json(response).await;
    assert_eq!(seen["path"], "/over/h1");
    assert_eq!(seen["version"], "HTTP/1.1");
}

/// `http2: false` must hold a plain listener to HTTP/1.1. (The listener calls hyper-util's
/// `auto::Builder::http1_only`, which `serve_connection_with_upgrades` ignores.)
#[tokio::test]
async fn h2c_is_refused_when_http2_is_disabled() {
    install_crypto_provider();
    let upstream = echo("echo-1").await;
    let gateway = start("    http2: false\n", upstream);
    let addr = gateway.listener("main");

    let response = client()
        .get(format!("http://{addr}/yes"))
        .send()
        .await
        .expect("HTTP/1.1 request");
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(echo_json(response).await["path"], "/yes");

    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("h2c client");
    let refused = h2c.get(format!("http://{addr}/nope")).send().await;
    assert!(
        refused.is_err(),
        "h2c accepted with http2: false: {refused:?}"
    );
}

#[tokio::test]
async fn tls_alpn_negotiates_h2_or_http1() {
    let pki = Pki::new();
    let upstream = echo("echo-1").await;
    let certificates = pki.certificates_yaml();
    let gateway = start(&format!("    tls:\n{certificates}"), upstream);
    let tls = gateway.listener("main");
    let port = tls.port();

    // (a) A client offering h2 gets HTTP/2.
    let h2 = tls_client(&pki, &["h2", "http/1.1"], &["a.test"], tls);
    let response = h2
        .get(format!("https://a.test:{port}/alpn/h2"))
        .send()
        .await
        .expect("h2 request");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let seen = echo_json(response).await;
    assert_eq!(seen["path"], "/alpn/h2");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    assert_eq!(seen["headers"]["host"], format!("a.test:{port}"));

    // (b) An HTTP/1.1-only client gets HTTP/1.1, whether it says so in ALPN or sends no ALPN.
    for alpn in [&["http/1.1"][..], &[]] {
        let h1 = tls_client(&pki, alpn, &["a.test"], tls);
        let response = h1
            .get(format!("https://a.test:{port}/alpn/h1"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("HTTP/1.1 request with ALPN {alpn:?}: {e}"));
        assert_eq!(
            response.version(),
            reqwest::Version::HTTP_11,
            "ALPN {alpn:?}"
        );
        let seen = echo_json(response).await;
        assert_eq!(seen["path"], "/alpn/h1");
        assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    }

    // (c) With `http2: false` an h2-capable client is held to HTTP/1.1.
    let h1_gateway = start(
        &format!("    http2: false\n    tls:\n{certificates}"),
        upstream,
    );
    let tls_h1 = h1_gateway.listener("main");
    let h2 = tls_client(&pki, &["h2", "http/1.1"], &["a.test"], tls_h1);
    let response = h2
        .get(format!("https://a.test:{}/alpn/off", tls_h1.port()))
        .send()
        .await
        .expect("request to http2: false listener");
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(echo_json(response).await["path"], "/alpn/off");

    // A client that insists on h2 alone cannot agree on a protocol with that listener.
    let mut only_h2 = pki.client_config(BOTH);
    only_h2.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(only_h2));
    let tcp = TcpStream::connect(tls_h1).await.expect("connect");
    let refused = connector
        .connect(ServerName::try_from("a.test").expect("name"), tcp)
        .await;
    assert!(
        refused.is_err(),
        "handshake offering only h2 succeeded on an http2: false listener"
    );
}

#[tokio::test]
async fn sni_selects_the_certificate() {
    let pki = Pki::new();
    let upstream = echo("echo-1").await;
    let gateway = start(&format!("    tls:\n{}", pki.certificates_yaml()), upstream);
    let addr = gateway.listener("main");

    // (SNI sent, name the test verifier checks, expected certificate, why)
    let cases = [
        (Some("a.test"), "a.test", &pki.a.der, "exact name"),
        (
            Some("x.b.test"),
            "x.b.test",
            &pki.b.der,
            "wildcard *.b.test",
        ),
        (
            Some("X.B.Test"),
            "x.b.test",
            &pki.b.der,
            "names compare case-insensitively",
        ),
        (
            Some("y.x.b.test"),
            "a.test",
            &pki.a.der,
            "a wildcard covers one label: default",
        ),
        (
            Some("other.test"),
            "a.test",
            &pki.a.der,
            "unknown name: default",
        ),
        (None, "a.test", &pki.a.der, "no SNI: default"),
    ];
    for (sni, verify_as, expected, why) in cases {
        let cert = presented_certificate(addr, &pki, sni, verify_as).await;
        assert!(&cert == expected, "SNI {sni:?}: wrong certificate ({why})");
    }

    // Ordinary verifying clients complete requests for both names.
    let client = tls_client(&pki, &["h2", "http/1.1"], &["a.test", "x.b.test"], addr);
    for host in ["a.test", "x.b.test"] {
        let response = client
            .get(format!("https://{host}:{}/sni", addr.port()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request to {host}: {e}"));
        let seen = echo_json(response).await;
        assert_eq!(seen["headers"]["host"], format!("{host}:{}", addr.port()));
    }
}

#[tokio::test]
async fn tls_minimum_version_is_enforced() {
    let pki = Pki::new();
    let upstream = echo("echo-1").await;
    let certificates = pki.certificates_yaml();
    let modern_gateway = start(
        &format!("    tls:\n      min_version: \"1.3\"\n{certificates}"),
        upstream,
    );
    let modern = modern_gateway.listener("main");
    let default_gateway = start(&format!("    tls:\n{certificates}"), upstream);
    let default = default_gateway.listener("main");

    let refused = handshake(modern, &pki, ONLY_12).await;
    assert!(
        refused.is_err(),
        "TLS 1.2 accepted with min_version 1.3: {refused:?}"
    );
    assert_eq!(
        handshake(modern, &pki, ONLY_13)
            .await
            .expect("TLS 1.3 handshake"),
        ProtocolVersion::TLSv1_3
    );
    assert_eq!(
        handshake(modern, &pki, BOTH)
            .await
            .expect("TLS 1.2/1.3 handshake"),
        ProtocolVersion::TLSv1_3
    );

    assert_eq!(
        handshake(default, &pki, ONLY_12)
            .await
            .expect("TLS 1.2 handshake"),
        ProtocolVersion::TLSv1_2
    );
    assert_eq!(
        handshake(default, &pki, BOTH)
            .await
            .expect("TLS 1.2/1.3 handshake"),
        ProtocolVersion::TLSv1_3
    );
}

#[tokio::test]
async fn plain_listener_redirects_to_https() {
    let upstream = echo("echo-1").await;
    let gateway = start("    redirect_to_https: { port: 8443 }\n", upstream);
    let client = client();

    let redirect = gateway.listener("main");
    for host in ["example.com", "example.com:8080"] {
        let response = client
            .get(format!("http://{redirect}/a?b=1"))
            .header("host", host)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 308, "Host {host}");
        assert_eq!(
            response.headers()["location"],
            "https://example.com:8443/a?b=1",
            "Host {host}"
        );
        assert!(response.headers().get("x-demo-instance").is_none());
    }

    let standard_gateway = start(
        "    redirect_to_https: { port: 443, status: 301 }\n",
        upstream,
    );
    let standard = standard_gateway.listener("main");
    let response = client
        .post(format!("http://{standard}/x/y"))
        .header("host", "Example.COM")
        .body("ignored")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 301);
    assert_eq!(response.headers()["location"], "https://example.com/x/y");
}

/// A WebSocket echo upstream that, unlike the demo's, finishes the close handshake: it keeps
/// reading after the peer's Close, which lets tungstenite send the Close reply.
async fn close_answering_ws_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// How the upstream behind a WebSocket route ends a session the client closes.
#[derive(Clone, Copy, PartialEq)]
enum Closing {
    /// Answers the Close frame, then closes the connection: a clean close handshake.
    Answered,
    /// The demo echo stops at the client's Close and drops the connection without answering
    /// (it does so without the gateway too); the gateway must still end the client session.
    Dropped,
}

/// Send text and binary messages, expect them echoed unchanged, then close the session.
async fn websocket_round_trip<S>(url: &str, stream: S, closing: Closing)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ws, response) = tokio_tungstenite::client_async(url, stream)
        .await
        .unwrap_or_else(|e| panic!("WebSocket handshake with {url}: {e}"));
    assert_eq!(response.status(), 101);
    let binary: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();
    let messages = [
        Message::text("hello through the gateway"),
        Message::binary(binary),
        Message::text("ünïcödé ✓"),
        Message::binary(vec![7u8; 100_000]),
    ];
    for message in messages {
        ws.send(message.clone()).await.expect("send");
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo in time")
            .expect("stream open")
            .expect("message");
        assert!(
            echoed == message,
            "{url}: echoed message differs: {echoed:?}"
        );
    }
    ws.close(None).await.expect("send close");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut answered = false;
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(_)) => answered = true,
                Ok(other) => panic!("{url}: unexpected message after close: {other:?}"),
                Err(tokio_tungstenite::tungstenite::Error::Protocol(
                    tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) if closing == Closing::Dropped => break,
                Err(err) => panic!("{url}: error after close: {err}"),
            }
        }
        answered
    })
    .await
    .unwrap_or_else(|_| panic!("{url}: session not ended within 10 s of the client's close"));
    if closing == Closing::Answered {
        assert!(ended, "{url}: the close frame was not answered");
    }
}

/// A gateway with one listener (`settings` as in `start`) routing `/ws` to the demo echo and
/// `/closing` to `closer`.
fn start_websocket(settings: &str, echo: SocketAddr, closer: SocketAddr) -> Gateway {
    Gateway::start(&format!(
        r#"listeners:
  - name: main
    listen: 127.0.0.1:0
{settings}services:
  - name: echo
    endpoints: [{{ address: "{echo}" }}]
  - name: closer
    endpoints: [{{ address: "{closer}" }}]
routes:
  - match: {{ path: {{ prefix: /ws }} }}
    service: echo
  - match: {{ path: {{ prefix: /closing }} }}
    service: closer
"#
    ))
}

#[tokio::test]
async fn websocket_echo_through_the_gateway() {
    let pki = Pki::new();
    let upstream = echo("echo-1").await;
    let closer = close_answering_ws_upstream().await;

    let gateway = start_websocket("", upstream, closer);
    let plain = gateway.listener("main");
    for (path, closing) in [("/ws", Closing::Dropped), ("/closing", Closing::Answered)] {
        let tcp = TcpStream::connect(plain).await.expect("connect");
        websocket_round_trip(&format!("ws://{plain}{path}"), tcp, closing).await;
    }

    // Over TLS (HTTP/1.1 by ALPN) as well.
    let tls_gateway = start_websocket(
        &format!("    tls:\n{}", pki.certificates_yaml()),
        upstream,
        closer,
    );
    let tls = tls_gateway.listener("main");
    let mut config = pki.client_config(BOTH);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    for (path, closing) in [("/ws", Closing::Dropped), ("/closing", Closing::Answered)] {
        let tcp = TcpStream::connect(tls).await.expect("connect");
        let stream = connector
            .connect(ServerName::try_from("a.test").expect("name"), tcp)
            .await
            .expect("TLS handshake");
        let url = format!("wss://a.test:{}{path}", tls.port());
        websocket_round_trip(&url, stream, closing).await;
    }
}
