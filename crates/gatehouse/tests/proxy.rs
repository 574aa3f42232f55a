//! Proxy semantics end to end: forwarding headers, hop-by-hop removal, request ids, rewrites,
//! redirects and direct responses.

mod common;

use common::{client, echo, Gateway};
use serde_json::Value;

fn config(echo_addr: std::net::SocketAddr, trusted: &str) -> String {
    format!(
        r#"
listeners:
  - name: public
    listen: 127.0.0.1:0
    trusted_proxies: [{trusted}]
services:
  - name: echo
    endpoints: [{{ address: "{echo_addr}" }}]
routes:
  - name: strip
    match: {{ path: {{ prefix: /strip }} }}
    rewrite: {{ strip_prefix: true }}
    service: echo
  - name: replace
    match: {{ path: {{ prefix: /old }} }}
    rewrite: {{ replace_prefix: /new }}
    service: echo
  - name: template
    match: {{ path: {{ template: "/users/{{id}}/avatar" }} }}
    rewrite: {{ path: "/images/{{id}}.png" }}
    host_rewrite: images.internal
    service: echo
  - name: moved
    match: {{ path: {{ template: "/v1/items/{{id}}" }} }}
    redirect: {{ scheme: https, host: api.example.com, path: "/v2/items/{{id}}", status: 308 }}
  - name: teapot
    match: {{ path: {{ exact: /teapot }} }}
    respond: {{ status: 418, body: "short and stout", content_type: text/plain, headers: {{ x-tea: earl-grey }} }}
  - name: everything
    service: echo
"#
    )
}

async fn echo_json(response: reqwest::Response) -> Value {
    assert!(
        response.status().is_success(),
        "status {}",
        response.status()
    );
    response.json().await.unwrap()
}

#[tokio::test]
async fn forwarding_headers_and_hop_by_hop_removal() {
    let upstream = echo("echo-1").await;
    let gateway = Gateway::start(&config(upstream, "10.0.0.0/8"));
    let response = client()
        .get(gateway.url("/some/path?q=1"))
        .header("host", "shop.example.com:8443")
        .header("connection", "keep-alive, x-secret-hop")
        .header("x-secret-hop", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-request-id", "client-id-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-id-123");
    assert_eq!(response.headers()["via"], "1.1 gatehouse");
    let seen = echo_json(response).await;
    let headers = &seen["headers"];
    assert_eq!(seen["path"], "/some/path");
    assert_eq!(seen["query"], "q=1");
    // The peer (127.0.0.1) is not trusted: client-supplied forwarding headers are replaced.
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "shop.example.com:8443");
    assert_eq!(headers["host"], "shop.example.com:8443");
    assert_eq!(headers["via"], "1.1 gatehouse");
    assert_eq!(headers["x-request-id"], "client-id-123");
    assert!(headers.get("x-secret-hop").is_none(), "{headers}");
    assert!(headers.get("keep-alive").is_none(), "{headers}");
}

#[tokio::test]
async fn trusted_proxies_extend_forwarding_headers() {
    let upstream = echo("echo-1").await;
    let gateway = Gateway::start(&config(upstream, "127.0.0.0/8"));
    let response = client()
        .get(gateway.url("/x"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let seen = echo_json(response).await;
    assert_eq!(seen["headers"]["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn request_ids_are_generated_when_missing() {
    let upstream = echo("echo-1").await;
    let gateway = Gateway::start(&config(upstream, "10.0.0.0/8"));
    let response = client().get(gateway.url("/x")).send().await.unwrap();
    let returned = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(returned.len(), 32);
    let seen = echo_json(response).await;
    assert_eq!(seen["headers"]["x-request-id"], returned.as_str());
}

#[tokio::test]
async fn rewrites_redirects_and_direct_responses() {
    let upstream = echo("echo-1").await;
    let gateway = Gateway::start(&config(upstream, "10.0.0.0/8"));
    let client = client();

    let seen = echo_json(
        client
            .get(gateway.url("/strip/a/b?k=v"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seen["path"], "/a/b");
    assert_eq!(seen["query"], "k=v");
    let seen = echo_json(client.get(gateway.url("/strip")).send().await.unwrap()).await;
    assert_eq!(seen["path"], "/");
    let seen = echo_json(client.get(gateway.url("/old/thing")).send().await.unwrap()).await;
    assert_eq!(seen["path"], "/new/thing");
    let seen = echo_json(
        client
            .get(gateway.url("/users/7/avatar"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seen["path"], "/images/7.png");
    assert_eq!(seen["headers"]["host"], "images.internal");

    let response = client
        .get(gateway.url("/v1/items/9?full=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.headers()["location"],
        "https://api.example.com/v2/items/9?full=1"
    );

    let response = client.get(gateway.url("/teapot")).send().await.unwrap();
    assert_eq!(response.status(), 418);
    assert_eq!(response.headers()["x-tea"], "earl-grey");
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.text().await.unwrap(), "short and stout");
}

#[tokio::test]
async fn request_bodies_stream_through_and_oversized_ones_get_413() {
    let upstream = echo("echo-1").await;
    let yaml = config(upstream, "10.0.0.0/8").replace(
        "    trusted_proxies",
        "    limits: { max_request_body: 1KiB }\n    trusted_proxies",
    );
    let gateway = Gateway::start(&yaml);
    let client = client();
    let seen = echo_json(
        client
            .post(gateway.url("/post"))
            .body("hello body")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seen["body"], "hello body");
    assert_eq!(seen["method"], "POST");

    let response = client
        .post(gateway.url("/post"))
        .body(vec![b'a'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "payload_too_large");

    // Without a Content-Length (chunked), the limit applies while streaming.
    let chunks =
        futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b'b'; 512])));
    let response = client
        .post(gateway.url("/post"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
}
