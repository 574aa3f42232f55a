//! Request smuggling defences and listener limits, end to end with exact bytes on raw sockets:
//! ambiguous HTTP/1 framing is answered with 400 and a closed connection before any upstream
//! sees the request, malformed HTTP/2 requests are stream errors, and slow, idle or oversized
//! clients are cut off.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::Gateway;

/// No read on a test socket waits longer than this.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time given to anything forwarded by mistake to arrive at the upstream.
const SETTLE: Duration = Duration::from_millis(200);

/// What the counting upstream has seen.
#[derive(Default)]
struct Seen {
    /// Request heads that reached the upstream's handler.
    heads: AtomicUsize,
    /// Requests whose body was also received completely.
    complete: AtomicUsize,
}

impl Seen {
    fn heads(&self) -> usize {
        self.heads.load(Ordering::SeqCst)
    }
    fn complete(&self) -> usize {
        self.complete.load(Ordering::SeqCst)
    }
}

async fn record(State(seen): State<Arc<Seen>>, request: Request) -> StatusCode {
    seen.heads.fetch_add(1, Ordering::SeqCst);
    match axum::body::to_bytes(request.into_body(), usize::MAX).await {
        Ok(_) => {
            seen.complete.fetch_add(1, Ordering::SeqCst);
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

/// An upstream that counts every request it receives.
async fn counting_upstream() -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let router = Router::new().fallback(record).with_state(seen.clone());
    (common::upstream(router).await, seen)
}

/// One listener with `limits`, one service, one catch-all route.
fn config(upstream: SocketAddr, limits: &str) -> String {
    format!(
        r#"
listeners:
  - name: public
    listen: 127.0.0.1:0
    limits: {{ {limits} }}
services:
  - name: up
    endpoints: [{{ address: "{upstream}" }}]
routes:
  - service: up
"#
    )
}

/// How reading a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Orderly close by the gateway.
    Eof,
    /// Closed by the gateway with unread request bytes in its buffer (TCP RST).
    Reset,
    /// Still open after `READ_TIMEOUT`.
    StillOpen,
}

struct Exchange {
    response: Vec<u8>,
    end: End,
}

impl Exchange {
    fn status_line(&self) -> String {
        let line = self.response.split(|&b| b == b'\n').next().unwrap_or(&[]);
        String::from_utf8_lossy(line).trim_end().to_owned()
    }
    fn responses(&self) -> usize {
        self.response
            .windows(9)
            .filter(|w| w == b"HTTP/1.1 ")
            .count()
    }
    fn closed(&self) -> bool {
        matches!(self.end, End::Eof | End::Reset)
    }
}

/// Read everything until the peer closes the connection, at most `READ_TIMEOUT`.
async fn read_to_end(stream: &mut TcpStream) -> Exchange {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut response = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let end = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) => break End::Eof,
            Ok(Ok(n)) => response.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break End::Reset,
            Err(_) => break End::StillOpen,
        }
    };
    Exchange { response, end }
}

/// Send `raw` on a fresh connection and read until the gateway closes it.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> Exchange {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The gateway may close before it has read everything; what it answered is still readable.
    let _ = stream.write_all(raw).await;
    read_to_end(&mut stream).await
}

const CHUNKED_BODY: &str = "5\r\nhello\r\n0\r\n\r\n";

/// A POST with `headers` (each ending in CRLF) and `body`.
fn post(headers: &str, body: &str) -> Vec<u8> {
    format!("POST /smuggle HTTP/1.1\r\nHost: gw\r\n{headers}\r\n{body}").into_bytes()
}

/// Requests whose framing or syntax is ambiguous: each must get 400 and a closed connection
/// before the upstream sees anything. (Content-Length with Transfer-Encoding and bare LF line
/// ends are accepted by hyper's parser; the gateway's framing check in front of it refuses
/// them.)
fn ambiguous_requests() -> Vec<(&'static str, Vec<u8>)> {
    let chunked = CHUNKED_BODY;
    vec![
        // Both Content-Length and Transfer-Encoding.
        (
            "content-length then chunked",
            post("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", chunked),
        ),
        (
            "chunked then content-length",
            post("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", chunked),
        ),
        (
            "content-length with tab-chunked",
            post("Content-Length: 4\r\nTransfer-Encoding:\tchunked\r\n", chunked),
        ),
        // Bare LF line ends.
        ("bare LF head", b"GET / HTTP/1.1\nHost: gw\n\n".to_vec()),
        (
            "bare LF mixed with CRLF",
            b"GET / HTTP/1.1\r\nHost: gw\nX-A: b\r\n\r\n".to_vec(),
        ),
        (
            "bare LF before transfer-encoding",
            format!("POST /smuggle HTTP/1.1\r\nHost: gw\r\nX-A: b\nTransfer-Encoding: chunked\r\n\r\n{chunked}").into_bytes(),
        ),
        // Invalid or conflicting Content-Length.
        ("content-length 5x", post("Content-Length: 5x\r\n", "hello")),
        ("content-length +5", post("Content-Length: +5\r\n", "hello")),
        ("content-length -5", post("Content-Length: -5\r\n", "hello")),
        (
            "content-length 0x5",
            post("Content-Length: 0x5\r\n", "hello"),
        ),
        (
            "content-length 5 5",
            post("Content-Length: 5 5\r\n", "hello"),
        ),
        (
            "content-length empty",
            post("Content-Length: \r\n", "hello"),
        ),
        (
            "content-length list 5, 6",
            post("Content-Length: 5, 6\r\n", "hello"),
        ),
        (
            "content-length overflow",
            post("Content-Length: 99999999999999999999999\r\n", "hello"),
        ),
        (
            "content-length duplicated with different values",
            post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
        ),
        // Transfer-Encoding whose final coding is not chunked, or obfuscated.
        (
            "transfer-encoding xchunked",
            post("Transfer-Encoding: xchunked\r\n", chunked),
        ),
        (
            "transfer-encoding quoted",
            post("Transfer-Encoding: \"chunked\"\r\n", chunked),
        ),
        (
            "transfer-encoding chunked, identity",
            post("Transfer-Encoding: chunked, identity\r\n", chunked),
        ),
        (
            "transfer-encoding identity, chunked",
            post("Transfer-Encoding: identity, chunked\r\n", chunked),
        ),
        (
            "transfer-encoding chunked, chunked",
            post("Transfer-Encoding: chunked, chunked\r\n", chunked),
        ),
        (
            "transfer-encoding with an empty element",
            post("Transfer-Encoding: , chunked\r\n", chunked),
        ),
        (
            "transfer-encoding chunked then identity lines",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                chunked,
            ),
        ),
        (
            "transfer-encoding identity then chunked lines",
            post(
                "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
                chunked,
            ),
        ),
        (
            "transfer-encoding vertical tab",
            post("Transfer-Encoding:\x0bchunked\r\n", chunked),
        ),
        (
            "transfer-encoding form feed",
            post("Transfer-Encoding: chunked\x0c\r\n", chunked),
        ),
        (
            "transfer-encoding NUL",
            post("Transfer-Encoding: chunked\0\r\n", chunked),
        ),
        (
            "transfer-encoding in HTTP/1.0",
            format!(
                "POST /smuggle HTTP/1.0\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"
            )
            .into_bytes(),
        ),
        // Whitespace between a field name and its colon.
        (
            "space before colon in transfer-encoding",
            post("Transfer-Encoding : chunked\r\n", chunked),
        ),
        (
            "tab before colon in transfer-encoding",
            post("Transfer-Encoding\t: chunked\r\n", chunked),
        ),
        (
            "space before colon in content-length",
            post("Content-Length : 5\r\n", "hello"),
        ),
        (
            "space before colon in host",
            b"GET / HTTP/1.1\r\nHost : gw\r\n\r\n".to_vec(),
        ),
        // Obsolete line folding.
        (
            "obs-fold with space",
            post("X-Folded: a\r\n b\r\nContent-Length: 5\r\n", "hello"),
        ),
        (
            "obs-fold with tab",
            post("X-Folded: a\r\n\tb\r\nContent-Length: 5\r\n", "hello"),
        ),
        (
            "obs-fold of transfer-encoding",
            post("Transfer-Encoding:\r\n chunked\r\n", chunked),
        ),
        (
            "first header line starts with a space",
            format!(
                "POST /smuggle HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: gw\r\n\r\n{chunked}"
            )
            .into_bytes(),
        ),
        // CR, LF or NUL inside a field value.
        (
            "CR inside a value",
            post("X-Bad: a\rb\r\nContent-Length: 5\r\n", "hello"),
        ),
        (
            "LF inside a value",
            post("X-Bad: a\nb\r\nContent-Length: 5\r\n", "hello"),
        ),
        (
            "NUL inside a value",
            post("X-Bad: a\0b\r\nContent-Length: 5\r\n", "hello"),
        ),
        (
            "CR LF inside a transfer-encoding name",
            post("Transfer-\r\nEncoding: chunked\r\n", chunked),
        ),
    ]
}

/// Chunked bodies with malformed chunk lines.
fn malformed_chunks() -> Vec<(&'static str, Vec<u8>)> {
    let te = "Transfer-Encoding: chunked\r\n";
    [
        ("chunk size not hex", "zz\r\nhello\r\n0\r\n\r\n"),
        ("chunk size 0x prefix", "0x5\r\nhello\r\n0\r\n\r\n"),
        ("chunk size negative", "-5\r\nhello\r\n0\r\n\r\n"),
        (
            "chunk size overflows 64 bits",
            "10000000000000005\r\nhello\r\n0\r\n\r\n",
        ),
        ("chunk size with inner space", "5 5\r\nhello\r\n0\r\n\r\n"),
        ("chunk size with leading space", " 5\r\nhello\r\n0\r\n\r\n"),
        ("chunk size line with bare LF", "5\nhello\r\n0\r\n\r\n"),
        ("chunk size line with bare CR", "5\rhello\r\n0\r\n\r\n"),
        ("chunk extension with bare LF", "5;a=b\nhello\r\n0\r\n\r\n"),
        ("chunk data longer than its size", "3\r\nhello\r\n0\r\n\r\n"),
        ("chunk data ended by bare LF", "5\r\nhello\n0\r\n\r\n"),
        ("chunk data without CRLF", "5\r\nhello0\r\n\r\n"),
        (
            "second chunk size not hex",
            "5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n",
        ),
        ("last chunk line with bare LF", "5\r\nhello\r\n0\n\r\n"),
    ]
    .into_iter()
    .map(|(name, body)| (name, post(te, body)))
    .collect()
}

/// What a refused request must look like.
#[derive(Clone, Copy)]
enum Refusal {
    /// 400 before the upstream sees even the request head.
    BadRequestUpfront,
    /// 400, and the upstream never receives a complete request (its head may already be on
    /// the way when the body turns out to be malformed).
    NeverComplete,
}

/// Send each case on its own connection; describe every way it was mishandled.
async fn check_refused(
    gateway: &Gateway,
    seen: &Seen,
    cases: Vec<(&'static str, Vec<u8>)>,
    refusal: Refusal,
) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, raw) in cases {
        let heads = seen.heads();
        let complete = seen.complete();
        let reply = exchange(gateway.addr(), &raw).await;
        tokio::time::sleep(SETTLE).await;
        let forwarded = seen.heads() - heads;
        let forwarded_complete = seen.complete() - complete;
        let mut problems = Vec::new();
        let status = reply.status_line();
        let status_ok = match refusal {
            Refusal::BadRequestUpfront => status.starts_with("HTTP/1.1 400 "),
            Refusal::NeverComplete => status.starts_with("HTTP/1.1 400 "),
        };
        if !status_ok {
            problems.push(format!("status line {status:?}"));
        }
        if reply.responses() > 1 {
            problems.push(format!("{} responses on one connection", reply.responses()));
        }
        if !reply.closed() {
            problems.push("connection left open".to_owned());
        }
        let leaked = match refusal {
            Refusal::BadRequestUpfront => forwarded > 0 || forwarded_complete > 0,
            Refusal::NeverComplete => forwarded_complete > 0,
        };
        if leaked {
            problems.push(format!(
                "upstream saw {forwarded} head(s), {forwarded_complete} complete request(s)"
            ));
        }
        eprintln!(
            "{name}: {:?}, {:?}, upstream heads {forwarded}, complete {forwarded_complete}",
            reply.status_line(),
            reply.end
        );
        if !problems.is_empty() {
            failures.push(format!("{name}: {}", problems.join("; ")));
        }
    }
    failures
}

/// The control case: a well-formed chunked POST goes through, so the checks can see forwarding.
async fn check_control(gateway: &Gateway, seen: &Seen) {
    let heads = seen.heads();
    let complete = seen.complete();
    let reply = exchange(
        gateway.addr(),
        &post(
            "Transfer-Encoding: chunked\r\nConnection: close\r\n",
            CHUNKED_BODY,
        ),
    )
    .await;
    tokio::time::sleep(SETTLE).await;
    assert!(
        reply.status_line().starts_with("HTTP/1.1 200 "),
        "control request: {:?}",
        String::from_utf8_lossy(&reply.response)
    );
    assert_eq!(
        reply.end,
        End::Eof,
        "control request with Connection: close"
    );
    assert_eq!(
        seen.heads() - heads,
        1,
        "control request reaches the upstream"
    );
    assert_eq!(
        seen.complete() - complete,
        1,
        "control body reaches the upstream"
    );
}

#[tokio::test]
async fn ambiguous_http1_framing_is_refused_before_the_upstream() {
    let (upstream, seen) = counting_upstream().await;
    let gateway = Gateway::start(&config(upstream, ""));
    check_control(&gateway, &seen).await;
    let failures = check_refused(
        &gateway,
        &seen,
        ambiguous_requests(),
        Refusal::BadRequestUpfront,
    )
    .await;
    check_control(&gateway, &seen).await;
    assert!(
        failures.is_empty(),
        "{} case(s) not refused correctly:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The same refusals on a connection whose first request was plain: the gateway's own
/// HTTP/1.1 server answers that one, then hands the connection to hyper and the framing
/// check starting with the ambiguous request's first byte.
#[tokio::test]
async fn ambiguous_framing_after_a_plain_request_is_refused_on_the_same_connection() {
    let (upstream, seen) = counting_upstream().await;
    let gateway = Gateway::start(&config(upstream, ""));
    let mut failures = Vec::new();
    for (name, raw) in ambiguous_requests() {
        let heads = seen.heads();
        let mut stream = TcpStream::connect(gateway.addr()).await.expect("connect");
        stream
            .write_all(b"GET /plain HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .await
            .expect("send the plain request");
        let first = read_one_response(&mut stream).await;
        let _ = stream.write_all(&raw).await;
        let reply = read_to_end(&mut stream).await;
        tokio::time::sleep(SETTLE).await;
        let forwarded = seen.heads() - heads;
        let mut problems = Vec::new();
        if !first.starts_with("http/1.1 200 ") {
            problems.push(format!("plain request answered {:?}", first.lines().next()));
        }
        if !reply.status_line().starts_with("HTTP/1.1 400 ") {
            problems.push(format!("status line {:?}", reply.status_line()));
        }
        if !reply.closed() {
            problems.push("connection left open".to_owned());
        }
        if forwarded != 1 {
            problems.push(format!(
                "upstream saw {forwarded} head(s), not the plain one alone"
            ));
        }
        if !problems.is_empty() {
            failures.push(format!("{name}: {}", problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) not refused correctly after a plain request:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The head of a chunked request is forwarded as soon as it is parsed and the body streams
/// after it, so a malformed chunk is only found while streaming: the upstream connection is then
/// aborted mid-body and the client gets 400 and a closed connection.
#[tokio::test]
async fn malformed_chunked_bodies_never_reach_the_upstream_complete() {
    let (upstream, seen) = counting_upstream().await;
    let gateway = Gateway::start(&config(upstream, ""));
    check_control(&gateway, &seen).await;
    let failures = check_refused(&gateway, &seen, malformed_chunks(), Refusal::NeverComplete).await;
    check_control(&gateway, &seen).await;
    assert!(
        failures.is_empty(),
        "{} case(s) not refused correctly:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 (h2c prior knowledge)

const PROTOCOL_ERROR: u32 = 0x1;

/// How the gateway reacted to a raw HTTP/2 request on stream 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum H2Outcome {
    StreamReset(u32),
    GoAway(u32),
    Response,
    Closed,
    Timeout,
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// HPACK "literal header field without indexing — new name", no Huffman (RFC 7541 6.2.2).
fn hpack_literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127);
    let mut out = vec![0x00, name.len() as u8];
    out.extend_from_slice(name);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
    out
}

/// Send `GET /` on stream 1 with one extra header field, written as raw frames because the
/// `h2` client refuses to encode these fields; report the gateway's first verdict on stream 1.
async fn raw_h2_request(addr: SocketAddr, name: &[u8], value: &[u8]) -> H2Outcome {
    let mut block = vec![0x82, 0x86, 0x84]; // :method GET, :scheme http, :path /
    block.extend_from_slice(&[0x01, 2, b'g', b'w']); // :authority gw
    block.extend_from_slice(&hpack_literal(name, value));
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
    out.extend(h2_frame(0x1, 0x4 | 0x1, 1, &block)); // HEADERS, END_HEADERS | END_STREAM
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(&out).await.expect("write h2 request");
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut head = [0u8; 9];
        match tokio::time::timeout(left, stream.read_exact(&mut head)).await {
            Err(_) => return H2Outcome::Timeout,
            Ok(Err(_)) => return H2Outcome::Closed,
            Ok(Ok(_)) => {}
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        match tokio::time::timeout(left, stream.read_exact(&mut payload)).await {
            Err(_) => return H2Outcome::Timeout,
            Ok(Err(_)) => return H2Outcome::Closed,
            Ok(Ok(_)) => {}
        }
        let code = |at: usize| {
            payload
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(u32::MAX)
        };
        match kind {
            0x4 if flags & 0x1 == 0 => {
                let _ = stream.write_all(&h2_frame(0x4, 0x1, 0, &[])).await;
            }
            0x3 if id == 1 => return H2Outcome::StreamReset(code(0)),
            0x7 => return H2Outcome::GoAway(code(4)),
            0x1 if id == 1 => return H2Outcome::Response,
            _ => {}
        }
    }
}

async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2c handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// POST with `content-length: declared`, then, after `delay`, `sent` bytes of DATA ending the
/// stream; the gateway's verdict.
async fn h2_post_with_length(
    addr: SocketAddr,
    declared: usize,
    sent: &'static [u8],
    delay: Duration,
) -> Result<u16, String> {
    let mut client = h2_client(addr).await;
    let request = axum::http::Request::post("http://gw/length")
        .header("content-length", declared.to_string())
        .body(())
        .expect("request");
    let (response, mut body) = client
        .send_request(request, false)
        .map_err(|e| format!("send_request: {e}"))?;
    tokio::time::sleep(delay).await;
    body.send_data(Bytes::from_static(sent), true)
        .map_err(|e| format!("send_data: {e}"))?;
    match tokio::time::timeout(READ_TIMEOUT, response).await {
        Err(_) => Err("no answer".to_owned()),
        Ok(Ok(response)) => Ok(response.status().as_u16()),
        Ok(Err(err)) => Err(match err.reason() {
            Some(reason) => format!("reset:{reason:?}"),
            None => format!("error:{err}"),
        }),
    }
}

#[tokio::test]
async fn malformed_http2_requests_are_stream_errors() {
    let (upstream, seen) = counting_upstream().await;
    let gateway = Gateway::start(&config(upstream, ""));
    let addr = gateway.addr();

    // Control: a valid h2c request reaches the upstream.
    let mut client = h2_client(addr).await;
    let request = axum::http::Request::get("http://gw/ok")
        .body(())
        .expect("request");
    let (response, _) = client.send_request(request, true).expect("send");
    let response = tokio::time::timeout(READ_TIMEOUT, response)
        .await
        .expect("control answered")
        .expect("control response");
    assert_eq!(response.status(), 200);
    assert_eq!(seen.complete(), 1, "control request reaches the upstream");

    // Control for the raw frames: a well-formed field gets a response from the upstream.
    let outcome = raw_h2_request(addr, b"x-fine", b"1").await;
    assert_eq!(outcome, H2Outcome::Response, "raw h2c control request");
    tokio::time::sleep(SETTLE).await;
    assert_eq!(seen.heads(), 2, "raw control request reaches the upstream");

    // Header fields RFC 9113 section 8.2 makes malformed; the `h2` client refuses to send them,
    // so they go out as raw frames.
    let mut failures = Vec::new();
    let stream_error = H2Outcome::StreamReset(PROTOCOL_ERROR);
    for (name, value, expected) in [
        // The h2 crate's HPACK decoder rejects an uppercase name while decoding the block, which
        // it treats as a connection error: GOAWAY(PROTOCOL_ERROR) instead of RST_STREAM (RFC 9113
        // section 5.4 lets an endpoint treat a stream error as a connection error).
        (
            &b"X-Upper"[..],
            &b"1"[..],
            H2Outcome::GoAway(PROTOCOL_ERROR),
        ),
        (b"connection", b"keep-alive", stream_error),
        (b"transfer-encoding", b"chunked", stream_error),
        (b"keep-alive", b"timeout=5", stream_error),
        (b"upgrade", b"websocket", stream_error),
        (b"te", b"gzip", stream_error),
    ] {
        let heads = seen.heads();
        let outcome = raw_h2_request(addr, name, value).await;
        tokio::time::sleep(SETTLE).await;
        let forwarded = seen.heads() - heads;
        let label = String::from_utf8_lossy(name);
        eprintln!("h2 {label}: {outcome:?}, upstream heads {forwarded}");
        if outcome != expected || forwarded > 0 {
            failures.push(format!(
                "{label}: {outcome:?} (want {expected:?}), upstream saw {forwarded}"
            ));
        }
    }
    // DATA that disagrees with content-length, sent with the HEADERS or after a pause (so the
    // gateway has the request head in hand first), below and above the retry replay buffer.
    for (declared, delay_ms) in [(10, 0), (10, 300), (2, 0), (2, 300), (100_000, 300)] {
        let sent = &b"abc"[..];
        let delay = Duration::from_millis(delay_ms);
        let heads = seen.heads();
        let complete = seen.complete();
        let outcome = h2_post_with_length(addr, declared, sent, delay).await;
        tokio::time::sleep(SETTLE).await;
        let forwarded = seen.heads() - heads;
        let forwarded_complete = seen.complete() - complete;
        let label = format!(
            "content-length {declared} with {} bytes of DATA after {delay_ms} ms",
            sent.len()
        );
        eprintln!(
            "h2 {label}: {outcome:?}, upstream heads {forwarded}, complete {forwarded_complete}"
        );
        // A streamed request's head may be forwarded before the DATA shows the mismatch; the
        // upstream must then never see the request complete.
        if outcome != Err("reset:PROTOCOL_ERROR".to_owned()) || forwarded_complete > 0 {
            failures.push(format!(
                "{label}: {outcome:?}, upstream saw {forwarded} head(s), {forwarded_complete} complete"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} HTTP/2 case(s) not refused correctly:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Listener limits

/// Open a connection, send `first`, then one byte of `trickle` every 100 ms; return what the
/// gateway answered and how long after connecting it closed the connection.
async fn slow_client(
    addr: SocketAddr,
    first: &[u8],
    trickle: &'static [u8],
) -> (Exchange, Duration) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let (mut read, mut write) = stream.into_split();
    write.write_all(first).await.expect("first bytes");
    let trickler = tokio::spawn(async move {
        for byte in trickle {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if write.write_all(&[*byte]).await.is_err() {
                break;
            }
        }
        // Keep the write half open: the gateway, not the client, must end the connection.
        std::future::pending::<()>().await;
    });
    let mut response = Vec::new();
    let end = match tokio::time::timeout(READ_TIMEOUT, read.read_to_end(&mut response)).await {
        Ok(Ok(_)) => End::Eof,
        Ok(Err(_)) => End::Reset,
        Err(_) => End::StillOpen,
    };
    let elapsed = started.elapsed();
    trickler.abort();
    (Exchange { response, end }, elapsed)
}

#[tokio::test]
async fn slow_clients_are_cut_off_by_header_read_timeout() {
    let (upstream, seen) = counting_upstream().await;
    let gateway = Gateway::start(&config(
        upstream,
        "header_read_timeout: 500ms, idle_timeout: 30s",
    ));
    let cases: [(&str, &[u8], &[u8]); 4] = [
        // Classic slowloris: a partial head, then one header byte at a time.
        (
            "partial HTTP/1 head, trickled",
            b"GET /slow HTTP/1.1\r\nHost: gw\r\n",
            b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ),
        (
            "partial HTTP/1 head, then silence",
            b"GET /slow HTTP/1.1\r\n",
            b"",
        ),
        ("no bytes at all", b"", b""),
        // Never completes the 24-byte h2c preface, so HTTP/1 vs HTTP/2 is never decided.
        (
            "h2c preface, trickled",
            b"P",
            b"RI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ),
    ];
    let mut failures = Vec::new();
    for (name, first, trickle) in cases {
        let (exchange, elapsed) = slow_client(gateway.addr(), first, trickle).await;
        let text = String::from_utf8_lossy(&exchange.response);
        eprintln!(
            "{name}: {:?} after {elapsed:?}, answer {text:?}",
            exchange.end
        );
        if !exchange.closed() {
            failures.push(format!("{name}: still open after {elapsed:?}"));
        } else if elapsed < Duration::from_millis(400) || elapsed > Duration::from_secs(3) {
            failures.push(format!(
                "{name}: closed after {elapsed:?}, want about 500ms"
            ));
        }
        if !(text.is_empty() || text.starts_with("HTTP/1.1 408 ")) {
            failures.push(format!("{name}: unexpected answer {text:?}"));
        }
    }
    assert_eq!(seen.heads(), 0, "a slow request reached the upstream");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Read one response with a `content-length` or chunked body; returns the head.
async fn read_one_response(stream: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + READ_TIMEOUT;
    let complete = |data: &[u8]| -> Option<String> {
        let end = data.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
        let body = &data[end..];
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let done = match length {
            Some(length) => body.len() >= length,
            None => body.ends_with(b"0\r\n\r\n"),
        };
        done.then_some(head)
    };
    loop {
        if let Some(head) = complete(&data) {
            return head;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => data.extend_from_slice(&buf[..n]),
            other => panic!(
                "response incomplete ({other:?}): {:?}",
                String::from_utf8_lossy(&data)
            ),
        }
    }
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_by_idle_timeout() {
    let (upstream, seen) = counting_upstream().await;
    let gateway = Gateway::start(&config(
        upstream,
        "header_read_timeout: 30s, idle_timeout: 500ms",
    ));
    let mut stream = TcpStream::connect(gateway.addr()).await.expect("connect");
    stream
        .write_all(b"GET /idle HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .expect("request");
    let head = read_one_response(&mut stream).await;
    let answered = Instant::now();
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    assert_eq!(seen.complete(), 1);
    let exchange = read_to_end(&mut stream).await;
    let elapsed = answered.elapsed();
    assert!(
        exchange.closed(),
        "idle connection still open after {elapsed:?}"
    );
    assert!(
        exchange.response.is_empty(),
        "unexpected bytes on an idle connection: {:?}",
        String::from_utf8_lossy(&exchange.response)
    );
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed <= Duration::from_secs(3),
        "closed after {elapsed:?}, want about 500ms"
    );
}

/// The header read timeout covers reading a request head, not the wait between requests:
/// a keep-alive connection that answered quickly stays usable past it.
#[tokio::test]
async fn keep_alive_connection_outlives_the_header_read_timeout() {
    let (upstream, seen) = counting_upstream().await;
    let gateway = Gateway::start(&config(
        upstream,
        "header_read_timeout: 300ms, idle_timeout: 30s",
    ));
    let mut stream = TcpStream::connect(gateway.addr()).await.expect("connect");
    for round in 0..3 {
        stream
            .write_all(b"GET /again HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .expect("request");
        let head = read_one_response(&mut stream).await;
        assert!(head.starts_with("http/1.1 200 "), "round {round}: {head}");
        // Idle for more than twice the header read timeout.
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    assert_eq!(seen.complete(), 3);
}

#[tokio::test]
async fn oversized_request_head_gets_431_and_never_reaches_the_upstream() {
    let (upstream, seen) = counting_upstream().await;
    let gateway = Gateway::start(&config(upstream, "max_header_bytes: 8KiB"));
    let big = "a".repeat(20 * 1024);
    let raw = format!("GET /big HTTP/1.1\r\nHost: gw\r\nX-Big: {big}\r\n\r\n");
    let refused = exchange(gateway.addr(), raw.as_bytes()).await;
    tokio::time::sleep(SETTLE).await;
    let status = refused.status_line();
    assert!(
        status.starts_with("HTTP/1.1 431 ") || status.starts_with("HTTP/1.1 400 "),
        "status line {status:?}"
    );
    assert!(refused.closed(), "connection left open");
    assert_eq!(seen.heads(), 0, "oversized head reached the upstream");

    // A head just under the limit still goes through.
    let value = "a".repeat(6 * 1024);
    let raw =
        format!("GET /fits HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nX-Big: {value}\r\n\r\n");
    let fits = exchange(gateway.addr(), raw.as_bytes()).await;
    assert!(
        fits.status_line().starts_with("HTTP/1.1 200 "),
        "status line {:?}",
        fits.status_line()
    );
    assert_eq!(seen.complete(), 1);
}

/// With `max_connections: 1`, a second client waits until the first connection closes.
#[tokio::test]
async fn max_connections_holds_further_clients_until_a_slot_frees() {
    let (upstream, seen) = counting_upstream().await;
    let gateway = Gateway::start(&config(upstream, "max_connections: 1"));
    let mut first = TcpStream::connect(gateway.addr()).await.expect("connect");
    first
        .write_all(b"GET /one HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .expect("request");
    assert!(read_one_response(&mut first)
        .await
        .starts_with("http/1.1 200 "));

    // The kernel completes the second handshake, but the gateway does not take the connection.
    let mut second = TcpStream::connect(gateway.addr()).await.expect("connect");
    second
        .write_all(b"GET /two HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .expect("request");
    let mut buf = [0u8; 64];
    let waited = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
    assert!(
        waited.is_err(),
        "the second connection was served while the first held the only slot"
    );
    assert_eq!(seen.complete(), 1);

    drop(first);
    let head = read_one_response(&mut second).await;
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    assert_eq!(seen.complete(), 2);
}
