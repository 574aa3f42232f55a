//! gRPC proxied natively through the gateway to a real tonic server (the library API of
//! `gatehouse-grpc-fixture`): all four kinds of call, deadlines, cancellation, answers the
//! gateway gives in gRPC form, the status in logs and metrics, and gRPC health checks.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::{admin_block, closed_port, generate_api_key, Gateway};
use futures_util::StreamExt;
use gatehouse_grpc_fixture::health::health_check_response::ServingStatus;
use gatehouse_grpc_fixture::health::health_client::HealthClient;
use gatehouse_grpc_fixture::health::HealthCheckRequest;
use gatehouse_grpc_fixture::library::library_service_client::LibraryServiceClient;
use gatehouse_grpc_fixture::library::*;
use gatehouse_grpc_fixture::{serve, SLOW_SHELF};
use prost::Message;
use tonic::transport::Channel;
use tonic::Code;

const KEY_SECRET: &str = "test-api-key-secret-0123456789abcdef";

/// One h2c listener, the library behind it, and the routes and policies the tests need:
/// `CreateBook` needs an API key, `ListBooks` allows two calls an hour, everything else
/// of the library is open; the health service is not routed.
fn config(library: SocketAddr, key_entry: &str, extra: &str) -> String {
    format!(
        r#"{admin}listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: library
    protocol: http2
    endpoints: [{{ address: "{library}" }}]
  - name: nowhere
    protocol: http2
    endpoints: [{{ address: "{closed}" }}]
rate_limits:
  two-an-hour:
    limits: [{{ requests: 2, per: 1h, key: [route] }}]
authentication:
  api_key_secret: "{KEY_SECRET}"
  methods:
    keys:
      api_key: {{ header: x-api-key }}
consumers:
  - id: librarian
    api_keys:
{key_entry}routes:
  - name: create-book
    match: {{ path: {{ exact: /library.v1.LibraryService/CreateBook }} }}
    service: library
    auth: {{ methods: [keys] }}
  - name: list-books
    match: {{ path: {{ exact: /library.v1.LibraryService/ListBooks }} }}
    service: library
    rate_limits: [two-an-hour]
  - name: library
    match: {{ path: {{ prefix: /library.v1.LibraryService/ }} }}
    service: library
  - name: unreachable
    match: {{ path: {{ prefix: /grpc.health.v1.Health/ }}, headers: [{{ name: x-route, exact: nowhere }}] }}
    service: nowhere
{extra}"#,
        admin = admin_block(),
        closed = closed_port(),
    )
}

async fn library_client(gateway: &Gateway) -> LibraryServiceClient<Channel> {
    let channel = Channel::from_shared(gateway.url(""))
        .unwrap()
        .connect()
        .await
        .expect("connect to the gateway");
    LibraryServiceClient::new(channel)
}

#[tokio::test]
async fn unary_calls_and_their_errors_pass_through() {
    let server = serve().await.unwrap();
    let (_, entry) = generate_api_key(KEY_SECRET, &[]);
    let gateway = Gateway::start(&config(server.addr, &entry, ""));
    let mut client = library_client(&gateway).await;

    let mut request = tonic::Request::new(GetBookRequest {
        name: "shelves/1/books/1".into(),
        book_id: String::new(),
    });
    request
        .metadata_mut()
        .insert("x-caller", "unary-test".parse().unwrap());
    request.metadata_mut().insert_bin(
        "x-trace-bin",
        tonic::metadata::MetadataValue::from_bytes(&[0, 1, 2, 255]),
    );
    let response = client.get_book(request).await.expect("GetBook");
    assert!(response.metadata().get("x-request-id").is_some());
    assert_eq!(response.metadata().get("x-served-by").unwrap(), "library");
    let book = response.into_inner();
    assert_eq!(book.title, "Dune");
    assert_eq!(book.page_count, 9_007_199_254_740_993);
    assert_eq!(book.genre, Genre::Fiction as i32);
    assert_eq!(book.edition, Some(2));
    let seen = server.observed.last_metadata("GetBook").unwrap();
    assert_eq!(seen.get("x-caller").unwrap(), "unary-test");
    let binary = seen.get_bin("x-trace-bin").unwrap().to_bytes().unwrap();
    assert_eq!(&binary[..], &[0, 1, 2, 255]);
    assert_eq!(seen.get("x-forwarded-for").unwrap(), "127.0.0.1");

    // The server's own error status and message reach the client untouched.
    let missing = client
        .get_book(GetBookRequest {
            name: "shelves/9/books/9".into(),
            book_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(missing.message(), "no book named `shelves/9/books/9`");

    let listed = client
        .list_books(ListBooksRequest {
            parent: "shelves/1".into(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.books.len(), 2);
    assert_eq!(listed.next_page_token, "2");
    assert_eq!(listed.total_size, 3);
}

#[tokio::test]
async fn streaming_calls_of_each_kind_pass_through() {
    let server = serve().await.unwrap();
    let (_, entry) = generate_api_key(KEY_SECRET, &[]);
    let gateway = Gateway::start(&config(server.addr, &entry, ""));
    let mut client = library_client(&gateway).await;

    // Server streaming: three existing books, then three ticks, then OK.
    let events: Vec<BookEvent> = client
        .watch_shelf(WatchShelfRequest {
            shelf: "shelves/1".into(),
            limit: 3,
        })
        .await
        .unwrap()
        .into_inner()
        .map(|event| event.expect("event"))
        .collect()
        .await;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["existing", "existing", "existing", "tick", "tick", "tick"]
    );
    assert_eq!(
        events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );

    // Client streaming: fifty books in, one summary out.
    let books = (0..50).map(|i| Book {
        name: format!("shelves/import/books/{i}"),
        page_count: i,
        ..Default::default()
    });
    let summary = client
        .import_books(futures_util::stream::iter(books))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.imported, 50);
    assert_eq!(summary.total_pages, (0..50).sum::<i64>());

    // Bidirectional: each answer arrives before the next message is sent, so nothing is
    // buffered whole on the way.
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let mut replies = client
        .chat(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    for sequence in 1..=5 {
        sender
            .send(ChatMessage {
                text: format!("hello {sequence}"),
                sequence,
            })
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.next())
            .await
            .expect("a reply while the stream stays open")
            .unwrap()
            .unwrap();
        assert_eq!(reply.sequence, sequence);
        assert_eq!(reply.text, format!("echo: hello {sequence}"));
    }
    drop(sender);
    assert!(replies.next().await.is_none(), "the call ends with OK");
}

/// A raw HTTP/2 gRPC call (no client-side deadline of its own, unlike tonic's): the
/// response head and, when it has a body, its frames and trailers.
struct RawCall {
    head: http::response::Parts,
    data: Vec<Bytes>,
    trailers: Option<http::HeaderMap>,
}

fn framed<M: Message>(message: &M) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut framed = BytesMut::new();
    framed.put_u8(0);
    framed.put_u32(encoded.len() as u32);
    framed.put_slice(&encoded);
    framed.freeze()
}

async fn raw_call(
    gateway: SocketAddr,
    path: &str,
    message: Bytes,
    headers: &[(&str, &str)],
) -> RawCall {
    let tcp = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut request = http::Request::post(format!("http://{gateway}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, mut body) = client
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    body.send_data(message, true).unwrap();
    let (head, mut incoming) = response.await.unwrap().into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = incoming.data().await {
        let chunk = chunk.unwrap();
        let _ = incoming.flow_control().release_capacity(chunk.len());
        data.push(chunk);
    }
    let trailers = incoming.trailers().await.unwrap();
    RawCall {
        head,
        data,
        trailers,
    }
}

async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_gateway_enforces_and_propagates_the_calls_deadline() {
    let server = serve().await.unwrap();
    let (_, entry) = generate_api_key(KEY_SECRET, &[]);
    let gateway = Gateway::start(&config(server.addr, &entry, ""));

    // Unary: the server would take a minute; the gateway answers DEADLINE_EXCEEDED at
    // 300 ms, trailers-only, and the server's handler is cancelled.
    let started = Instant::now();
    let call = raw_call(
        gateway.addr(),
        "/library.v1.LibraryService/GetBook",
        framed(&GetBookRequest {
            name: format!("{SLOW_SHELF}/books/1"),
            book_id: String::new(),
        }),
        &[("grpc-timeout", "300m")],
    )
    .await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(call.head.status, 200);
    assert_eq!(call.head.headers["content-type"], "application/grpc");
    assert_eq!(call.head.headers["grpc-status"], "4");
    assert!(call.data.is_empty() && call.trailers.is_none());
    // The upstream was told the time that remained (at most the client's 300 ms).
    let seen = server.observed.last_metadata("GetBook").unwrap();
    let timeout = seen
        .get("grpc-timeout")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let (amount, unit) = timeout.split_at(timeout.len() - 1);
    let nanos: u64 = amount.parse::<u64>().unwrap()
        * match unit {
            "n" => 1,
            "u" => 1_000,
            "m" => 1_000_000,
            other => panic!("unexpected unit in {other}"),
        };
    assert!(
        nanos > 100_000_000 && nanos <= 300_000_000,
        "grpc-timeout {timeout}"
    );
    eventually("the slow handler to be cancelled", || {
        (server.observed.abandoned() >= 1).then_some(())
    })
    .await;

    // Server streaming: events flow until the deadline, then the gateway ends the call
    // with DEADLINE_EXCEEDED in the trailers and the server's stream is cancelled.
    let before = server.observed.abandoned();
    let call = raw_call(
        gateway.addr(),
        "/library.v1.LibraryService/WatchShelf",
        framed(&WatchShelfRequest {
            shelf: "shelves/1".into(),
            limit: 0,
        }),
        &[("grpc-timeout", "400m")],
    )
    .await;
    assert_eq!(call.head.status, 200);
    assert!(!call.data.is_empty(), "events arrived before the deadline");
    let trailers = call.trailers.expect("trailers");
    assert_eq!(trailers["grpc-status"], "4", "{trailers:?}");
    eventually("the stream to be cancelled", || {
        (server.observed.abandoned() > before).then_some(())
    })
    .await;
}

#[tokio::test]
async fn client_cancellation_reaches_the_server() {
    let server = serve().await.unwrap();
    let (_, entry) = generate_api_key(KEY_SECRET, &[]);
    let gateway = Gateway::start(&config(server.addr, &entry, ""));
    let mut client = library_client(&gateway).await;

    let mut events = client
        .watch_shelf(WatchShelfRequest {
            shelf: "shelves/1".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..5 {
        events.next().await.unwrap().unwrap();
    }
    assert_eq!(server.observed.abandoned(), 0);
    drop(events);
    eventually("the watch to be cancelled upstream", || {
        (server.observed.abandoned() == 1).then_some(())
    })
    .await;

    // The same for a bidirectional call dropped mid-conversation.
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let mut replies = client
        .chat(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    sender
        .send(ChatMessage {
            text: "hi".into(),
            sequence: 1,
        })
        .await
        .unwrap();
    replies.next().await.unwrap().unwrap();
    drop(replies);
    drop(sender);
    drop(client);
    eventually("the chat to be cancelled upstream", || {
        (server.observed.abandoned() == 2).then_some(())
    })
    .await;
}

/// The `google.rpc.ErrorInfo` reason in a status's details.
fn error_reason(status: &tonic::Status) -> String {
    #[derive(Clone, PartialEq, prost::Message)]
    struct RpcStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
        #[prost(message, repeated, tag = "3")]
        details: Vec<prost_types_any::Any>,
    }
    mod prost_types_any {
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Any {
            #[prost(string, tag = "1")]
            pub type_url: String,
            #[prost(bytes = "vec", tag = "2")]
            pub value: Vec<u8>,
        }
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct ErrorInfo {
        #[prost(string, tag = "1")]
        reason: String,
        #[prost(string, tag = "2")]
        domain: String,
    }
    let decoded = RpcStatus::decode(status.details()).expect("google.rpc.Status details");
    assert_eq!(decoded.code, status.code() as i32);
    let info = decoded
        .details
        .iter()
        .find(|any| any.type_url == "type.googleapis.com/google.rpc.ErrorInfo")
        .expect("ErrorInfo detail");
    let info = ErrorInfo::decode(info.value.as_slice()).unwrap();
    assert_eq!(info.domain, "gatehouse.dev");
    info.reason
}

#[tokio::test]
async fn gateway_answers_arrive_as_grpc_statuses() {
    let server = serve().await.unwrap();
    let (key, entry) = generate_api_key(KEY_SECRET, &[]);
    let gateway = Gateway::start(&config(server.addr, &entry, ""));
    let mut client = library_client(&gateway).await;
    let create = |key: Option<&str>| {
        let mut request = tonic::Request::new(CreateBookRequest {
            parent: "shelves/1".into(),
            book_id: "new".into(),
            book: Some(Book {
                title: "New".into(),
                ..Default::default()
            }),
        });
        if let Some(key) = key {
            request
                .metadata_mut()
                .insert("x-api-key", key.parse().unwrap());
        }
        request
    };

    // No credentials: UNAUTHENTICATED, with the stable code in the details.
    let refused = client.create_book(create(None)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(error_reason(&refused), "CREDENTIALS_MISSING");
    assert!(refused.metadata().get("www-authenticate").is_some());
    assert_eq!(server.observed.calls("CreateBook"), 0);
    let created = client.create_book(create(Some(&key))).await.unwrap();
    assert_eq!(created.into_inner().name, "shelves/1/books/new");

    // Over the rate limit: RESOURCE_EXHAUSTED.
    let list = || ListBooksRequest {
        parent: "shelves/1".into(),
        ..Default::default()
    };
    client.list_books(list()).await.unwrap();
    client.list_books(list()).await.unwrap();
    let limited = client.list_books(list()).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    assert_eq!(error_reason(&limited), "RATE_LIMITED");
    assert_eq!(server.observed.calls("ListBooks"), 2);

    // No route: UNIMPLEMENTED. An unreachable service: UNAVAILABLE.
    let channel = Channel::from_shared(gateway.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let unrouted = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(unrouted.code(), Code::Unimplemented, "{unrouted:?}");
    assert_eq!(error_reason(&unrouted), "ROUTE_NOT_FOUND");
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request
        .metadata_mut()
        .insert("x-route", "nowhere".parse().unwrap());
    let unavailable = health.check(request).await.unwrap_err();
    assert_eq!(unavailable.code(), Code::Unavailable, "{unavailable:?}");
    assert_eq!(error_reason(&unavailable), "UPSTREAM_UNAVAILABLE");
}

#[tokio::test]
async fn grpc_statuses_are_logged_and_counted() {
    let server = serve().await.unwrap();
    let (_, entry) = generate_api_key(KEY_SECRET, &[]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gateway = Gateway::start(&config(
        server.addr,
        &entry,
        &format!("access_log:\n  path: \"{}\"\n", log.display()),
    ));
    let mut client = library_client(&gateway).await;
    let get = |name: &str| GetBookRequest {
        name: name.into(),
        book_id: String::new(),
    };
    // A call's line is written once its response has ended, which the client may see after
    // its next call has started: each call waits for its line, so the order below is the
    // order of the calls.
    let logged = |count: usize| {
        let log = log.clone();
        eventually("the call's access-log line", move || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            (text.lines().count() >= count).then_some(())
        })
    };
    client.get_book(get("shelves/1/books/2")).await.unwrap();
    logged(1).await;
    client
        .get_book(get("shelves/1/books/404"))
        .await
        .unwrap_err();
    logged(2).await;
    client
        .create_book(CreateBookRequest::default())
        .await
        .unwrap_err();
    logged(3).await;
    let events: Vec<_> = client
        .watch_shelf(WatchShelfRequest {
            shelf: "shelves/2".into(),
            limit: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(events.len(), 2);

    let lines = eventually("four access-log lines", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        (lines.len() >= 4).then_some(lines)
    })
    .await;
    let statuses: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["route"].as_str().unwrap(),
                l["grpc_status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("library", "OK"),
            ("library", "NOT_FOUND"),
            ("create-book", "UNAUTHENTICATED"),
            ("library", "OK"),
        ]
    );
    assert!(lines
        .iter()
        .all(|l| l["status"] == 200 && l["protocol"] == "HTTP/2"));

    let metrics = gateway.metrics().await;
    for expected in [
        r#"gatehouse_grpc_responses_total{route="library",code="OK"} 2"#,
        r#"gatehouse_grpc_responses_total{route="library",code="NOT_FOUND"} 1"#,
        r#"gatehouse_grpc_responses_total{route="create-book",code="UNAUTHENTICATED"} 1"#,
    ] {
        assert!(metrics.contains(expected), "{expected} missing:\n{metrics}");
    }
}

#[tokio::test]
async fn grpc_health_checks_take_a_not_serving_endpoint_out_and_back() {
    let healthy = serve().await.unwrap();
    let sick = serve().await.unwrap();
    let gateway = Gateway::start(&format!(
        r#"listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: library
    protocol: http2
    endpoints: [{{ address: "{}" }}, {{ address: "{}" }}]
    health_check:
      grpc: {{ service: library.v1.LibraryService }}
      interval: 50ms
      timeout: 1s
      healthy_threshold: 1
      unhealthy_threshold: 1
routes:
  - service: library
"#,
        healthy.addr, sick.addr
    ));
    sick.observed
        .set_health("library.v1.LibraryService", ServingStatus::NotServing);
    // The checks ask about the configured service name.
    eventually("health checks on both endpoints", || {
        (healthy.observed.calls("Check") > 0 && sick.observed.calls("Check") > 0).then_some(())
    })
    .await;
    let seen = sick.observed.last_metadata("Check").unwrap();
    assert_eq!(seen.get("user-agent").unwrap(), "gatehouse-health-check");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut client = library_client(&gateway).await;
    let get = || GetBookRequest {
        name: "shelves/1/books/1".into(),
        book_id: String::new(),
    };
    for _ in 0..10 {
        client.get_book(get()).await.unwrap();
    }
    assert_eq!(sick.observed.calls("GetBook"), 0);
    assert_eq!(healthy.observed.calls("GetBook"), 10);

    // SERVING again: traffic returns to it.
    sick.observed
        .set_health("library.v1.LibraryService", ServingStatus::Serving);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..10 {
        client.get_book(get()).await.unwrap();
    }
    assert!(sick.observed.calls("GetBook") >= 3, "traffic returned");
}

/// The frames of a gRPC-Web body: `(flag, payload)`.
fn web_frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while body.len() >= 5 {
        let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        frames.push((body[0], body[5..5 + length].to_vec()));
        body = &body[5 + length..];
    }
    assert!(body.is_empty(), "trailing bytes in a gRPC-Web body");
    frames
}

#[tokio::test]
async fn grpc_web_calls_in_both_encodings_reach_the_grpc_server() {
    use base64::Engine as _;
    let server = serve().await.unwrap();
    let gateway = Gateway::start(&format!(
        r#"{admin}listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: library
    protocol: http2
    endpoints: [{{ address: "{}" }}]
routes:
  - name: library
    match: {{ path: {{ prefix: /library.v1.LibraryService/ }} }}
    service: library
    cors:
      allow_origins: [https://app.example]
      allow_methods: [POST]
      allow_headers: [content-type, x-grpc-web, x-user-agent, grpc-timeout]
      expose_headers: [grpc-status, grpc-message]
"#,
        server.addr,
        admin = admin_block(),
    ));
    let http = common::client();
    let web_call = |path: &str, content_type: &str, body: Vec<u8>| {
        http.post(gateway.url(path))
            .header("content-type", content_type)
            .header("x-grpc-web", "1")
            .header("origin", "https://app.example")
            .body(body)
            .send()
    };

    // Binary, unary, over HTTP/1.1: the message, then the trailers as the last frame.
    let response = web_call(
        "/library.v1.LibraryService/GetBook",
        "application/grpc-web+proto",
        framed(&GetBookRequest {
            name: "shelves/1/books/1".into(),
            book_id: String::new(),
        })
        .to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_11);
    assert_eq!(
        response.headers()["content-type"],
        "application/grpc-web+proto"
    );
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let frames = web_frames(&response.bytes().await.unwrap());
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0].0, 0);
    assert_eq!(Book::decode(frames[0].1.as_slice()).unwrap().title, "Dune");
    assert_eq!(frames[1].0, 0x80);
    let trailers = String::from_utf8(frames[1].1.clone()).unwrap();
    assert!(trailers.contains("grpc-status:0\r\n"), "{trailers:?}");
    let seen = server.observed.last_metadata("GetBook").unwrap();
    assert_eq!(seen.get("content-type").unwrap(), "application/grpc+proto");
    assert!(seen.get("x-grpc-web").is_none());

    // Text, server streaming: base64 both ways, each message as it comes, then trailers.
    let request = framed(&WatchShelfRequest {
        shelf: "shelves/2".into(),
        limit: 2,
    });
    let encoded = base64::engine::general_purpose::STANDARD.encode(&request);
    let response = web_call(
        "/library.v1.LibraryService/WatchShelf",
        "application/grpc-web-text+proto",
        encoded.into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/grpc-web-text+proto"
    );
    let text = response.text().await.unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .expect("one base64 stream");
    let frames = web_frames(&decoded);
    assert_eq!(frames.len(), 4, "{frames:?}");
    let events: Vec<BookEvent> = frames[..3]
        .iter()
        .map(|(flag, payload)| {
            assert_eq!(*flag, 0);
            BookEvent::decode(payload.as_slice()).unwrap()
        })
        .collect();
    assert_eq!(events[0].book.as_ref().unwrap().title, "SPQR");
    assert_eq!(events[2].sequence, 3);
    assert_eq!(frames[3].0, 0x80);

    // The server's error: trailers-only, so the status is in the head.
    let response = web_call(
        "/library.v1.LibraryService/GetBook",
        "application/grpc-web+proto",
        framed(&GetBookRequest {
            name: "shelves/9/books/9".into(),
            book_id: String::new(),
        })
        .to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(response.headers()["grpc-status"], "5");
    assert_eq!(
        response.headers()["content-type"],
        "application/grpc-web+proto"
    );

    // The gateway's own answer, in gRPC-Web form.
    let response = web_call(
        "/elsewhere.v1.Nothing/Call",
        "application/grpc-web-text",
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "12");
    assert_eq!(
        response.headers()["content-type"],
        "application/grpc-web-text"
    );

    // The browser's preflight is answered at the gateway.
    let preflight = http
        .request(
            reqwest::Method::OPTIONS,
            gateway.url("/library.v1.LibraryService/GetBook"),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-grpc-web")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("x-grpc-web"), "{allowed}");

    // The statuses of gRPC-Web calls are counted like any gRPC call's.
    let counted = [
        r#"gatehouse_grpc_responses_total{route="library",code="OK"} 2"#,
        r#"gatehouse_grpc_responses_total{route="library",code="NOT_FOUND"} 1"#,
    ];
    let metrics = gateway.metrics_with(&counted).await;
    for expected in counted {
        assert!(metrics.contains(expected), "{expected} missing:\n{metrics}");
    }
}
