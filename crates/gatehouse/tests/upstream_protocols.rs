//! How the gateway talks to upstreams: HTTP/2 (h2c), TLS with CA verification and SNI, DNS
//! names, and `Expect: 100-continue` answered at the edge.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use common::{admin_block, client, echo, Gateway};
use serde_json::Value;

fn example_cert(file: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/certs")
        .join(file)
        .to_str()
        .unwrap()
        .to_owned()
}

fn single_service(service: &str) -> String {
    format!("listeners:\n  - name: public\n    listen: 127.0.0.1:0\nservices:\n{service}\nroutes:\n  - service: up\n")
}

#[tokio::test]
async fn http2_upstreams_get_http2() {
    let upstream = echo("echo-h2").await;
    let gateway = Gateway::start(&single_service(&format!(
        "  - name: up\n    protocol: http2\n    endpoints: [{{ address: \"{upstream}\" }}]"
    )));
    let seen: Value = client()
        .get(gateway.url("/h2?x=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["version"], "HTTP/2.0");
    assert_eq!(seen["path"], "/h2");
    assert_eq!(seen["query"], "x=1");
}

#[tokio::test]
async fn upstream_tls_verifies_the_certificate_against_the_configured_ca() {
    let upstream = echo("echo-behind-tls").await;
    // The upstream is itself a TLS listener (a second gateway) in front of the echo service.
    let tls_front = Gateway::start(&format!(
        "listeners:\n  - name: tls\n    listen: 127.0.0.1:0\n    tls:\n      certificates: [{{ cert: \"{}\", key: \"{}\" }}]\nservices:\n  - name: echo\n    endpoints: [{{ address: \"{upstream}\" }}]\nroutes:\n  - service: echo\n",
        example_cert("api.example.test.pem"),
        example_cert("api.example.test.key"),
    ));
    let tls_addr = tls_front.addr();
    let trusted = Gateway::start(&single_service(&format!(
        "  - name: up\n    endpoints: [{{ address: \"{tls_addr}\" }}]\n    tls: {{ ca: \"{}\", server_name: api.example.test }}",
        example_cert("ca.pem")
    )));
    let response = client().get(trusted.url("/over-tls")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["path"], "/over-tls");
    assert_eq!(
        seen["headers"]["x-forwarded-proto"], "https",
        "the TLS front saw a TLS connection"
    );

    // A CA that did not sign the upstream's certificate, or a name the certificate does not
    // cover: the connection is refused.
    for (ca, server_name) in [
        ("api.example.test.pem", "api.example.test"),
        ("ca.pem", "other.test"),
    ] {
        let refused = Gateway::start(&single_service(&format!(
            "  - name: up\n    endpoints: [{{ address: \"{tls_addr}\" }}]\n    retries: {{ attempts: 0 }}\n    tls: {{ ca: \"{}\", server_name: {server_name} }}",
            example_cert(ca)
        )));
        let response = client().get(refused.url("/over-tls")).send().await.unwrap();
        assert_eq!(response.status(), 503, "ca {ca}, server name {server_name}");
    }
}

#[tokio::test]
async fn dns_names_are_resolved() {
    let upstream = echo("echo-dns").await;
    let port = upstream.port();
    let gateway = Gateway::start(&format!(
        "{}{}",
        admin_block(),
        single_service(&format!(
            "  - name: up\n    endpoints: [{{ address: \"localhost:{port}\" }}]"
        ))
    ));
    let response = client().get(gateway.url("/by-name")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let services: Value = gateway.admin_json("/admin/services").await;
    let addresses: Vec<&str> = services["services"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap())
        .collect();
    assert!(
        addresses.contains(&format!("127.0.0.1:{port}").as_str()),
        "{addresses:?}"
    );
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let upstream = echo("echo-expect").await;
    let gateway = Gateway::start(&single_service(&format!(
        "  - name: up\n    endpoints: [{{ address: \"{upstream}\" }}]"
    )));
    let addr = gateway.addr();
    tokio::task::spawn_blocking(move || {
        let mut socket = std::net::TcpStream::connect(addr).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        socket
            .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            .unwrap();
        let mut interim = [0u8; 25];
        socket.read_exact(&mut interim).unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        socket.write_all(b"hello").unwrap();
        let mut response = Vec::new();
        let mut buffer = [0u8; 4096];
        while !String::from_utf8_lossy(&response).contains("\"body\":\"hello\"") {
            let n = socket.read(&mut buffer).unwrap();
            assert!(n > 0, "connection closed early: {}", String::from_utf8_lossy(&response));
            response.extend_from_slice(&buffer[..n]);
        }
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("\"expect\""), "Expect is handled at the edge, not forwarded: {text}");
    })
    .await
    .unwrap();
}

/// An HTTP/1.1 upstream that counts the connections it accepts.
async fn connection_counting_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn upstream_connections_are_reused_and_closed_when_idle() {
    use std::sync::atomic::Ordering;
    let (upstream, accepted) = connection_counting_upstream().await;
    let gateway = Gateway::start(&single_service(&format!(
        "  - name: up\n    endpoints: [{{ address: \"{upstream}\" }}]\n    timeouts: {{ idle: 400ms }}"
    )));
    let client = client();
    for _ in 0..5 {
        let response = client.get(gateway.url("/reuse")).send().await.unwrap();
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "sequential requests share one pooled connection"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let response = client.get(gateway.url("/after-idle")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "ok");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the idle connection was closed, a new one opened"
    );
}

/// A TLS upstream that requires a client certificate signed by the example CA.
async fn mutual_tls_upstream() -> std::net::SocketAddr {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    common::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(example_cert("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(std::sync::Arc::new(roots))
        .build()
        .unwrap();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(example_cert("api.example.test.pem"))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
    let key = PrivateKeyDer::from_pem_file(example_cert("api.example.test.key")).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let presented = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|c| !c.is_empty());
                let service = hyper::service::service_fn(move |_request| async move {
                    let body = if presented {
                        "client certificate verified"
                    } else {
                        "no client certificate"
                    };
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_mutual_tls_presents_the_client_certificate() {
    let upstream = mutual_tls_upstream().await;
    let tls = format!(
        "{{ ca: \"{}\", server_name: api.example.test, client_certificate: {{ cert: \"{}\", key: \"{}\" }} }}",
        example_cert("ca.pem"),
        example_cert("api.example.test.pem"),
        example_cert("api.example.test.key"),
    );
    let gateway = Gateway::start(&single_service(&format!(
        "  - name: up\n    endpoints: [{{ address: \"{upstream}\" }}]\n    tls: {tls}"
    )));
    let response = client().get(gateway.url("/mtls")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        "client certificate verified"
    );

    // Without a client certificate the upstream refuses the handshake.
    let without = Gateway::start(&single_service(&format!(
        "  - name: up\n    endpoints: [{{ address: \"{upstream}\" }}]\n    retries: {{ attempts: 0 }}\n    tls: {{ ca: \"{}\", server_name: api.example.test }}",
        example_cert("ca.pem")
    )));
    let response = client().get(without.url("/mtls")).send().await.unwrap();
    let status = response.status().as_u16();
    assert!(
        matches!(status, 502 | 503),
        "the upstream refused us, the gateway says so: {status}"
    );
}

#[tokio::test]
async fn http2_over_tls_to_upstreams_negotiates_h2_by_alpn() {
    let upstream = echo("echo-behind-h2-tls").await;
    let tls_front = Gateway::start(&format!(
        "listeners:\n  - name: tls\n    listen: 127.0.0.1:0\n    tls:\n      certificates: [{{ cert: \"{}\", key: \"{}\" }}]\nservices:\n  - name: echo\n    endpoints: [{{ address: \"{upstream}\" }}]\nroutes:\n  - service: echo\n",
        example_cert("api.example.test.pem"),
        example_cert("api.example.test.key"),
    ));
    let gateway = Gateway::start(&single_service(&format!(
        "  - name: up\n    protocol: http2\n    endpoints: [{{ address: \"{}\" }}]\n    tls: {{ ca: \"{}\", server_name: api.example.test }}",
        tls_front.addr(),
        example_cert("ca.pem")
    )));
    let seen: Value = client()
        .get(gateway.url("/h2-tls"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Each gateway adds its hop to Via with the protocol it received: the second hop was h2.
    assert_eq!(seen["headers"]["via"], "1.1 gatehouse, 2 gatehouse");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
}
