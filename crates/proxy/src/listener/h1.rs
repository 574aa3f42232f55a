//! A lean HTTP/1.1 server for the gateway's common request, in front of hyper's.
//!
//! hyper's HTTP/1 server connection (its dispatcher, the request head parsed into a
//! `HeaderMap` through a general state machine, the response encoded through its own
//! buffers) was the largest part of the gateway's instructions per request once the lean
//! upstream client had replaced hyper's client (docs/benchmarks.md). This loop parses each
//! request head with httparse in place (field values stay slices of the read buffer), runs
//! the handler in the connection's own task, and writes the response head together with the
//! body's data that is already there.
//!
//! It serves only requests whose meaning is plain: HTTP/1.1 with an origin-form target, not
//! `HEAD` or `CONNECT`, no `Transfer-Encoding`, `TE`, `Upgrade` or `Expect` field, at most one
//! `Content-Length` of at most `MAX_WHOLE_BODY` bytes (read whole before the request is
//! handled), CRLF line ends. At the first request that is anything else, malformed ones
//! included, the connection is handed over to hyper with every byte read so far, unparsed:
//! upgrades, 100-continue, streaming uploads, HTTP/2 prior knowledge and the refusals of
//! ambiguous framing (`framing.rs` in front of hyper) stay where they are tested.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::body::{BoxError, RequestBody};
use crate::forward::tokens;
use crate::header_maps::{self, FieldNames};
use crate::io_buffer;

/// The most fields in one request head (hyper's default; more is hyper's 431).
const MAX_HEADERS: usize = 100;

/// Where a field lies in its head: name start and end, value start and end. A
/// connection keeps one list of them, so that a parse writes only the fields its head has
/// (a hundred-entry array on the stack was zeroed for every request).
type FieldSpan = (u32, u32, u32, u32);

/// Read buffer growth per read (hyper's initial read buffer).
const READ_CHUNK: usize = 8 * 1024;
/// Request bodies up to this size are read whole before the request is handled; larger
/// ones stream, through hyper.
pub(super) const MAX_WHOLE_BODY: usize = 64 * 1024;
/// Response bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;
/// Data frames at least this large are written from their own buffer, not copied.
const COPY_LIMIT: usize = 16 * 1024;

/// Asks a connection to finish the request in progress and close: graceful shutdown and
/// the idle timeout. Only the connection's own task waits on it, so it holds one waker (a
/// `Notify` would queue and unqueue a waiter at every poll of an idle read).
#[derive(Default)]
pub(super) struct Closing {
    requested: AtomicBool,
    waiter: AtomicWaker,
}

impl Closing {
    pub(super) fn begin(&self) {
        self.requested.store(true, Ordering::Release);
        self.waiter.wake();
    }

    pub(super) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    pub(super) fn requested(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(|cx| {
            if self.is_requested() {
                return Poll::Ready(());
            }
            self.waiter.register(cx.waker());
            // `begin` may have run between the check and the registration.
            if self.is_requested() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// How a connection left the lean server.
pub(super) enum Ended<I> {
    /// It is over: closed by either side, or after its last response.
    Closed,
    /// A request it does not serve: hyper takes the connection, starting with `read`, the
    /// bytes read and not yet served (that request's head first).
    Handover { io: I, read: Bytes },
}

/// Serve requests on `io` until it closes, `closing` is requested, or a request needs hyper.
pub(super) async fn serve<I, H, F, B>(
    mut io: I,
    handler: H,
    closing: &Closing,
    max_head: usize,
) -> io::Result<Ended<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request<RequestBody>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut buf = BytesMut::new();
    let mut names = FieldNames::default();
    let mut spans = Vec::new();
    loop {
        let (request, client_closes) =
            match read_request(&mut io, &mut buf, &mut names, &mut spans, closing, max_head).await?
            {
                Next::Request(request, client_closes) => (request, client_closes),
                Next::Closed => return Ok(Ended::Closed),
                Next::Handover => {
                    let read = buf.split().freeze();
                    return Ok(Ended::Handover { io, read });
                }
            };
        let mut handling = pin!(handler(request));
        let response = loop {
            tokio::select! {
                biased;
                response = handling.as_mut() => break response,
                // The connection is read meanwhile, as hyper does: a client that goes away
                // cancels its request, and pipelined bytes wait in the buffer.
                read = fill(&mut io, &mut buf), if buf.len() < max_head => {
                    if read? == 0 {
                        return Ok(Ended::Closed);
                    }
                }
            }
        };
        let keep_alive = !client_closes && !closing.is_requested();
        let mut out = io_buffer::take_write_buffer();
        let keep_alive = write_response(&mut io, &mut out, response, keep_alive).await?;
        io_buffer::give_back_write_buffer(out);
        if !keep_alive || closing.is_requested() {
            let _ = io.shutdown().await;
            return Ok(Ended::Closed);
        }
    }
}

// Returned once per request and taken apart at once: boxing the request would cost an
// allocation per request to save a move.
#[allow(clippy::large_enum_variant)]
enum Next {
    /// A request, and whether its client asked to close the connection after it.
    Request(Request<RequestBody>, bool),
    Closed,
    /// The buffer starts with a request hyper must serve.
    Handover,
}

async fn read_request<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    names: &mut FieldNames,
    spans: &mut Vec<FieldSpan>,
    closing: &Closing,
    max_head: usize,
) -> io::Result<Next> {
    // What the buffer must hold before the next parse: a whole head's body, once known.
    let mut need = 1;
    loop {
        if buf.len() >= need {
            match parse(buf, names, spans) {
                Parse::Request(request, client_closes) => {
                    return Ok(Next::Request(request, client_closes))
                }
                Parse::Handover => return Ok(Next::Handover),
                Parse::Partial { whole: Some(whole) } => need = whole,
                // hyper answers an oversized head (431).
                Parse::Partial { whole: None } if buf.len() >= max_head => {
                    return Ok(Next::Handover)
                }
                Parse::Partial { whole: None } => need = buf.len() + 1,
            }
        }
        let read = if buf.is_empty() {
            tokio::select! {
                biased;
                read = fill(io, buf) => read?,
                () = closing.requested() => return Ok(Next::Closed),
            }
        } else {
            fill(io, buf).await?
        };
        if read == 0 {
            // The client closed, between requests or inside one it never finished.
            return Ok(Next::Closed);
        }
    }
}

/// Read more into the buffer; `Ok(0)` at the connection's end.
async fn fill<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut) -> io::Result<usize> {
    poll_fn(|cx| io_buffer::poll_fill(io, buf, READ_CHUNK, cx)).await
}

#[allow(clippy::large_enum_variant)] // as `Next`
enum Parse {
    Request(Request<RequestBody>, bool),
    /// Not all there yet; `whole` is the length of head and body once the head is complete.
    Partial {
        whole: Option<usize>,
    },
    Handover,
}

/// Parse the request at the start of `buf`, taking its bytes when it is one this server
/// serves.
fn parse(buf: &mut BytesMut, names: &mut FieldNames, spans: &mut Vec<FieldSpan>) -> Parse {
    // Left uninitialised: filling a hundred empty fields costs more than parsing.
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        buf,
        &mut fields,
    );
    let head_len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parse::Partial { whole: None },
        // hyper parses it again and answers the error.
        Err(_) => return Parse::Handover,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Parse::Handover;
    };
    if method == "HEAD" || method == "CONNECT" || !target.starts_with('/') {
        return Parse::Handover;
    }
    let head = &buf[..head_len];
    // httparse takes a bare LF as a line end; the framing check in front of hyper refuses it.
    if memchr::memchr_iter(b'\n', head).any(|at| at == 0 || head[at - 1] != b'\r') {
        return Parse::Handover;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parse::Handover;
    };

    // Field values are kept as slices of the head: no copy per field.
    let base = buf.as_ptr() as usize;
    let target_start = target.as_ptr() as usize - base;
    let target_span = target_start..target_start + target.len();
    spans.clear();
    let mut content_length: Option<usize> = None;
    let mut client_closes = false;
    for field in request.headers.iter() {
        let name = field.name.as_bytes();
        // Lengths first: most fields are none of these.
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                match (content_length, digits(field.value)) {
                    (None, Some(length)) if length <= MAX_WHOLE_BODY => {
                        content_length = Some(length)
                    }
                    _ => return Parse::Handover,
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return Parse::Handover,
            2 if name.eq_ignore_ascii_case(b"te") => return Parse::Handover,
            7 if name.eq_ignore_ascii_case(b"upgrade") => return Parse::Handover,
            6 if name.eq_ignore_ascii_case(b"expect") => return Parse::Handover,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in field.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        client_closes = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        return Parse::Handover;
                    }
                }
            }
            _ => {}
        }
        let name_start = field.name.as_ptr() as usize - base;
        let value_start = field.value.as_ptr() as usize - base;
        spans.push((
            name_start as u32,
            (name_start + field.name.len()) as u32,
            value_start as u32,
            (value_start + field.value.len()) as u32,
        ));
    }
    let body_len = content_length.unwrap_or(0);
    let whole = head_len + body_len;
    if buf.len() < whole {
        return Parse::Partial { whole: Some(whole) };
    }

    let head = buf.split_to(head_len).freeze();
    let body = (body_len > 0).then(|| buf.split_to(body_len).freeze());
    match build(&head, spans, target_span, method, names) {
        Some(mut request) => {
            *request.body_mut() = RequestBody::Whole(body);
            Parse::Request(request, client_closes)
        }
        None => {
            // A field httparse took and `http` does not: put the bytes back for hyper.
            let mut read = BytesMut::with_capacity(head.len() + body_len + buf.len());
            read.extend_from_slice(&head);
            read.extend_from_slice(body.as_deref().unwrap_or_default());
            read.extend_from_slice(buf);
            *buf = read;
            Parse::Handover
        }
    }
}

fn build(
    head: &Bytes,
    spans: &[FieldSpan],
    target: std::ops::Range<usize>,
    method: Method,
    names: &mut FieldNames,
) -> Option<Request<RequestBody>> {
    let uri = Uri::from_maybe_shared(head.slice(target)).ok()?;
    // Room for the fields the gateway adds on the way (forwarding, `Via`, the request id).
    let mut headers = header_maps::take(spans.len() + 8);
    for (position, &(name_start, name_end, value_start, value_end)) in spans.iter().enumerate() {
        let name = names
            .name(position, &head[name_start as usize..name_end as usize])
            .ok()?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(value_start as usize..value_end as usize))
                .ok()?;
        headers.append(name, value);
    }
    let mut request = Request::new(RequestBody::Whole(None));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some(request)
}

/// A `Content-Length` value this server takes: digits only (anything else goes to hyper,
/// which judges lists and refuses the rest).
fn digits(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0usize, |n, digit| n * 10 + usize::from(digit - b'0')),
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    Bodiless,
    Length(u64),
    Chunked,
}

/// Write `response`; whether the connection may take another request after it.
async fn write_response<I, B>(
    io: &mut I,
    out: &mut Vec<u8>,
    response: Response<B>,
    keep_alive: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let mut keep_alive = keep_alive;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut declared_length = None;
    let mut has_date = false;
    let mut says_close = false;
    for (name, value) in &parts.headers {
        // The body's framing is decided below, from the body and a valid declared length.
        if name == header::CONTENT_LENGTH {
            declared_length = digits(value.as_bytes()).map(|length| length as u64);
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        if name == header::DATE {
            has_date = true;
        } else if name == header::CONNECTION
            && tokens(value).any(|token| token.eq_ignore_ascii_case("close"))
        {
            says_close = true;
            keep_alive = false;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    header_maps::give_back(parts.headers);
    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Bodiless
    } else if let Some(length) = declared_length {
        Framing::Length(length)
    } else if body.is_end_stream() {
        Framing::Length(0)
    } else if let Some(length) = body.size_hint().exact() {
        Framing::Length(length)
    } else {
        Framing::Chunked
    };
    match framing {
        Framing::Length(length) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        // A not-modified answer keeps the length it declares (RFC 9110 section 8.6).
        Framing::Bodiless if status == StatusCode::NOT_MODIFIED => {
            if let Some(length) = declared_length {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        Framing::Bodiless => {}
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if !has_date {
        push_date(out);
    }
    if !keep_alive && !says_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");

    if framing == Framing::Bodiless {
        return finish(io, out).await.map(|()| keep_alive);
    }
    let mut remaining = match framing {
        Framing::Length(length) => length,
        _ => 0,
    };
    loop {
        let frame = if out.is_empty() {
            poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        } else {
            // Data that is ready goes out in the same write as what is gathered; before
            // waiting for more, what is gathered is sent.
            match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    finish(io, out).await?;
                    continue;
                }
            }
        };
        let data = match frame {
            None => break,
            Some(Err(err)) => return Err(io::Error::other(err.into())),
            // Trailers go only to clients that ask for them (`TE: trailers`): hyper serves those.
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        let len = data.len() as u64;
        if framing == Framing::Chunked {
            // Writing into a Vec cannot fail; no string is allocated per chunk.
            let _ = write!(out, "{len:x}\r\n");
        } else if len > remaining {
            return Err(io::Error::other(
                "response body longer than its content-length",
            ));
        } else {
            remaining -= len;
        }
        if data.len() >= COPY_LIMIT {
            io.write_all(out).await?;
            out.clear();
            io.write_all(&data).await?;
        } else {
            out.extend_from_slice(&data);
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= WRITE_BATCH {
            io.write_all(out).await?;
            out.clear();
        }
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    finish(io, out).await?;
    if remaining > 0 {
        // The client sees the connection close before the declared length.
        return Err(io::Error::other(
            "response body shorter than its content-length",
        ));
    }
    Ok(keep_alive)
}

/// Write and flush what is gathered in `out`.
async fn finish<I: AsyncWrite + Unpin>(io: &mut I, out: &mut Vec<u8>) -> io::Result<()> {
    io.write_all(out).await?;
    out.clear();
    io.flush().await
}

/// `Date` (RFC 9110 section 6.6.1), formatted once a second per thread.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second || cached.1.is_empty() {
            *cached = (second, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(cached.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::Duration;

    use http_body_util::{BodyExt, Full, StreamBody};
    use tokio::io::{duplex, AsyncReadExt, DuplexStream};
    use tokio::task::JoinHandle;

    use super::*;

    type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

    /// Answers each request with its method, path, `x-test` field and body.
    async fn echo(request: Request<RequestBody>) -> Response<TestBody> {
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = format!(
            "{} {} {} {}",
            parts.method,
            parts.uri,
            parts
                .headers
                .get("x-test")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
            String::from_utf8_lossy(&body)
        );
        Response::new(
            Full::new(Bytes::from(text))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
    }

    fn start(closing: Arc<Closing>) -> (DuplexStream, JoinHandle<io::Result<Ended<DuplexStream>>>) {
        let (client, server) = duplex(1 << 20);
        let task = tokio::spawn(async move { serve(server, echo, &closing, 16 * 1024).await });
        (client, task)
    }

    /// Read from `client` until `expected` responses (by their blank line and declared
    /// length) have arrived.
    async fn read_responses(client: &mut DuplexStream, expected: usize) -> Vec<String> {
        let mut seen = Vec::new();
        let mut responses = Vec::new();
        while responses.len() < expected {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk))
                .await
                .expect("a response within 5 s")
                .expect("read");
            assert!(n > 0, "connection closed after {responses:?}");
            seen.extend_from_slice(&chunk[..n]);
            loop {
                let text = String::from_utf8_lossy(&seen).into_owned();
                let Some(head_end) = text.find("\r\n\r\n") else {
                    break;
                };
                let length: usize = text[..head_end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.parse().unwrap());
                if seen.len() < head_end + 4 + length {
                    break;
                }
                responses.push(text[..head_end + 4 + length].to_owned());
                seen.drain(..head_end + 4 + length);
            }
        }
        responses
    }

    /// The echo of `GET /` saying `Connection: close`, then the end of the connection.
    async fn expect_closing_answer(
        client: &mut DuplexStream,
        task: JoinHandle<io::Result<Ended<DuplexStream>>>,
    ) {
        let mut all = String::new();
        client.read_to_string(&mut all).await.unwrap();
        assert!(all.contains("\r\nconnection: close\r\n"), "{all}");
        assert!(all.ends_with("GET / - "), "{all}");
        assert!(matches!(task.await.unwrap().unwrap(), Ended::Closed));
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let (mut client, task) = start(Arc::default());
        client
            .write_all(
                b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nX-Test: one\r\n\r\n\
                  POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
            )
            .await
            .unwrap();
        let responses = read_responses(&mut client, 2).await;
        assert!(
            responses[0].starts_with("HTTP/1.1 200 OK\r\n"),
            "{}",
            responses[0]
        );
        assert!(responses[0].contains("\r\ndate: "), "{}", responses[0]);
        assert!(
            responses[0].ends_with("\r\n\r\nGET /a?x=1 one "),
            "{}",
            responses[0]
        );
        assert!(
            responses[1].ends_with("\r\n\r\nPOST /b - hello"),
            "{}",
            responses[1]
        );
        drop(client);
        assert!(matches!(task.await.unwrap().unwrap(), Ended::Closed));
    }

    #[tokio::test]
    async fn a_body_split_across_reads_is_handled_whole() {
        let (mut client, _task) = start(Arc::default());
        client
            .write_all(b"PUT /c HTTP/1.1\r\nhost: h\r\ncontent-length: 11\r\n\r\nhello")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(b" world").await.unwrap();
        let responses = read_responses(&mut client, 1).await;
        assert!(
            responses[0].ends_with("PUT /c - hello world"),
            "{}",
            responses[0]
        );
    }

    #[tokio::test]
    async fn connection_close_is_answered_and_honoured() {
        let (mut client, task) = start(Arc::default());
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        expect_closing_answer(&mut client, task).await;
    }

    #[tokio::test]
    async fn requests_that_are_not_plain_go_to_hyper_with_every_byte() {
        let cases: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 70000\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n",
            b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ];
        for &case in cases {
            let (mut client, task) = start(Arc::default());
            client.write_all(case).await.unwrap();
            let ended = tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("handed over at once")
                .unwrap()
                .unwrap();
            match ended {
                Ended::Handover { read, .. } => assert_eq!(
                    read,
                    Bytes::from_static(case),
                    "{}",
                    String::from_utf8_lossy(case)
                ),
                Ended::Closed => panic!("served: {}", String::from_utf8_lossy(case)),
            }
        }
    }

    #[tokio::test]
    async fn a_head_larger_than_the_limit_goes_to_hyper() {
        let (mut client, task) = start(Arc::default());
        let mut request = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', 20 * 1024));
        client.write_all(&request).await.unwrap();
        match task.await.unwrap().unwrap() {
            Ended::Handover { read, .. } => assert!(request.starts_with(&read)),
            Ended::Closed => panic!("served"),
        }
    }

    #[tokio::test]
    async fn a_later_request_that_is_not_plain_hands_over_from_its_own_head() {
        let (mut client, task) = start(Arc::default());
        let upgrade =
            b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        let mut both = b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n".to_vec();
        both.extend_from_slice(upgrade);
        client.write_all(&both).await.unwrap();
        let responses = read_responses(&mut client, 1).await;
        assert!(responses[0].ends_with("GET /first - "), "{}", responses[0]);
        match task.await.unwrap().unwrap() {
            Ended::Handover { read, .. } => assert_eq!(read, Bytes::from_static(upgrade)),
            Ended::Closed => panic!("served"),
        }
    }

    #[tokio::test]
    async fn bodies_of_unknown_length_are_chunked() {
        let (mut client, server) = duplex(1 << 20);
        let closing = Closing::default();
        let handler = |_request: Request<RequestBody>| async {
            let frames = futures_util::stream::unfold(0, |sent| async move {
                if sent == 2 {
                    return None;
                }
                // The second piece is not there at once: the first is sent before it.
                tokio::time::sleep(Duration::from_millis(10 * sent)).await;
                let data = Bytes::from(if sent == 0 { "hello " } else { "world" });
                Some((Ok::<_, BoxError>(http_body::Frame::data(data)), sent + 1))
            });
            Response::new(StreamBody::new(Box::pin(frames)))
        };
        let client_side = async {
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut all = String::new();
            client.read_to_string(&mut all).await.unwrap();
            all
        };
        let (all, served) = tokio::join!(client_side, serve(server, handler, &closing, 16 * 1024));
        assert!(matches!(served.unwrap(), Ended::Closed));
        assert!(all.contains("\r\ntransfer-encoding: chunked\r\n"), "{all}");
        assert!(
            all.ends_with("\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"),
            "{all}"
        );
    }

    #[tokio::test]
    async fn closing_ends_an_idle_connection_and_the_next_response_says_so() {
        let closing = Arc::new(Closing::default());
        let (mut client, task) = start(closing.clone());
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        read_responses(&mut client, 1).await;
        closing.begin();
        let ended = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap();
        assert!(matches!(ended.unwrap().unwrap(), Ended::Closed));

        // Asked with a request already read: it is answered, and the answer closes.
        let (mut client, server) = duplex(1 << 20);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let closing = Closing::default();
        closing.begin();
        let task = tokio::spawn(async move { serve(server, echo, &closing, 16 * 1024).await });
        expect_closing_answer(&mut client, task).await;
    }

    #[tokio::test]
    async fn a_client_that_goes_away_cancels_its_request() {
        let (mut client, server) = duplex(1 << 20);
        let dropped = Arc::new(AtomicUsize::new(0));
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let handler = {
            let dropped = dropped.clone();
            move |_request: Request<RequestBody>| {
                let counted = Counted(dropped.clone());
                async move {
                    let _counted = counted;
                    std::future::pending::<()>().await;
                    Response::new(Full::new(Bytes::new()))
                }
            }
        };
        let task = tokio::spawn(async move {
            let closing = Closing::default();
            serve(server, handler, &closing, 16 * 1024)
                .await
                .map(|_| ())
        });
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }
}
