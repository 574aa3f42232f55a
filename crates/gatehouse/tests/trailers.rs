//! Trailers pass through the gateway in both directions over HTTP/2 (what gRPC relies on).

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use common::Gateway;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// An HTTP/2 (h2c) upstream: answers with the request body, the request trailer
/// `x-checksum` echoed as response trailer `x-echo-checksum`, and `grpc-status: 0`.
async fn trailer_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let collected = request.into_body().collect().await.unwrap();
                    let checksum = collected
                        .trailers()
                        .and_then(|t| t.get("x-checksum").cloned())
                        .unwrap_or_else(|| HeaderValue::from_static("missing"));
                    let mut trailers = HeaderMap::new();
                    trailers.insert("x-echo-checksum", checksum);
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    let frames = vec![
                        Ok::<_, Infallible>(Frame::data(collected.to_bytes())),
                        Ok(Frame::trailers(trailers)),
                    ];
                    Ok::<_, Infallible>(Response::new(StreamBody::new(futures_util::stream::iter(
                        frames,
                    ))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn request_and_response_trailers_pass_through_http2() {
    let upstream = trailer_echo().await;
    let gateway = Gateway::start(&format!(
        "listeners:\n  - name: public\n    listen: 127.0.0.1:0\nservices:\n  - name: up\n    protocol: http2\n    endpoints: [{{ address: \"{upstream}\" }}]\nroutes:\n  - service: up\n"
    ));
    let tcp = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = Request::post("http://gw/shop.v1.Shop/Echo")
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(Bytes::from_static(b"payload"), false)
        .unwrap();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
    send.send_trailers(trailers).unwrap();

    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        data.extend_from_slice(&chunk);
    }
    assert_eq!(data, b"payload");
    let trailers = body.trailers().await.unwrap().expect("response trailers");
    assert_eq!(
        trailers["x-echo-checksum"], "abc123",
        "request trailers reached the upstream"
    );
    assert_eq!(trailers["grpc-status"], "0");
}
