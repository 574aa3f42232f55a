//! A lean HTTP/1.1 client for the proxy's common upstream exchange: a plaintext connection,
//! a request whose body the gateway holds whole (none, or buffered for retries), and a
//! response streamed back to the client.
//!
//! hyper's client connection runs as its own task fed through a channel, parses the
//! response head into a `HeaderMap` through a general dispatcher, and re-frames the body;
//! on the benchmark's plain GET it was about a third of all the gateway's instructions.
//! Here the request's own task writes the head and body in one write, parses the response
//! head with httparse in place, and reads the body through the same buffer. Streaming
//! request bodies, upgrades, TLS and HTTP/2 stay on hyper (see `pool.rs`).

use std::io::Write as _;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::endpoint::Endpoint;
use crate::body::BoxError;
use crate::forward::tokens;
use crate::header_maps::{self, FieldNames};
use crate::io_buffer;

/// The most response head (status line and fields) or trailer section read before the
/// upstream is judged broken.
const MAX_HEAD_BYTES: usize = 256 * 1024;
/// The most fields in one response head (hyper's default).
const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (with extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Read buffer growth per read.
const READ_CHUNK: usize = 16 * 1024;
/// Bodies up to this size are copied behind the head, so the request is one write.
const BODY_IN_HEAD_WRITE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection ended, or failed, before any byte of a response: on a reused
    /// connection the upstream most likely closed it while idle.
    #[error("upstream connection closed before a response: {0}")]
    NoResponse(std::io::Error),
    #[error("upstream connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid response from the upstream: {0}")]
    Invalid(&'static str),
    #[error("upstream closed the connection before the response ended")]
    Truncated,
}

/// One keep-alive connection to an endpoint.
pub struct Connection {
    io: TcpStream,
    /// Bytes read and not yet consumed; response heads and body chunks are split off it.
    buf: BytesMut,
    /// The field names of the last response head.
    names: FieldNames,
}

impl Connection {
    pub fn new(io: TcpStream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            names: FieldNames::default(),
        }
    }

    /// Whether an idle connection may take a request: the upstream has neither closed it
    /// nor sent anything unasked. Costs no system call unless the socket became readable.
    pub fn is_usable(&self) -> bool {
        let mut probe = [0u8; 1];
        self.buf.is_empty()
            && matches!(self.io.try_read(&mut probe), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Send a request and read the response head; the body follows through the returned
    /// response, which gives the connection back to `endpoint`'s pool when it ends.
    pub async fn send(
        mut self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        body: &Bytes,
        endpoint: &Arc<Endpoint>,
    ) -> Result<Response<ResponseBody>, Error> {
        // The head is gathered in a buffer of the thread's, given back once written.
        let mut out = io_buffer::take_write_buffer();
        encode_head(&mut out, method, target, headers, body);
        let written = if body.len() <= BODY_IN_HEAD_WRITE {
            out.extend_from_slice(body);
            self.io.write_all(&out).await
        } else {
            match self.io.write_all(&out).await {
                Ok(()) => self.io.write_all(body).await,
                Err(err) => Err(err),
            }
        };
        io_buffer::give_back_write_buffer(out);
        if let Err(err) = written {
            // An upstream may answer (413, say) and close before taking the whole body:
            // read what it said, or report that nothing came.
            return match self.read_head(method).await {
                Ok(head) => Ok(self.respond(
                    Head {
                        keep_alive: false,
                        ..head
                    },
                    endpoint,
                )),
                Err(Error::NoResponse(_)) => Err(Error::NoResponse(err)),
                Err(other) => Err(other),
            };
        }
        let head = self.read_head(method).await?;
        Ok(self.respond(head, endpoint))
    }

    fn respond(self, head: Head, endpoint: &Arc<Endpoint>) -> Response<ResponseBody> {
        let mut body = ResponseBody {
            connection: Some((self, endpoint.clone())),
            framing: head.framing,
            keep_alive: head.keep_alive,
        };
        body.release_if_done();
        Response::from_parts(head.parts, body)
    }

    /// Read and parse the response head, skipping interim (1xx) responses.
    async fn read_head(&mut self, method: &Method) -> Result<Head, Error> {
        let mut received = false;
        loop {
            if !self.buf.is_empty() {
                received = true;
                match self.parse_head(method)? {
                    Some(Parsed::Interim) => continue,
                    Some(Parsed::Final(head)) => return Ok(head),
                    None => {}
                }
                if self.buf.len() >= MAX_HEAD_BYTES {
                    return Err(Error::Invalid("response head too large"));
                }
            }
            match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) if received => return Err(Error::Truncated),
                Ok(0) => return Err(Error::NoResponse(std::io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(err) if received => return Err(Error::Io(err)),
                Err(err) => return Err(Error::NoResponse(err)),
            }
        }
    }

    /// Parse one response head from the buffer; `None` when it is not complete yet.
    fn parse_head(&mut self, method: &Method) -> Result<Option<Parsed>, Error> {
        // Left uninitialised: filling a hundred empty fields cost more than parsing.
        let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            &self.buf,
            &mut fields,
        );
        let head_len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Invalid("too many header fields"))
            }
            Err(_) => return Err(Error::Invalid("malformed response head")),
        };
        let code = response.code.unwrap_or(0);
        let version = match response.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        if (100..200).contains(&code) {
            if code == 101 {
                return Err(Error::Invalid("protocol switch that was not asked for"));
            }
            self.buf.advance(head_len);
            return Ok(Some(Parsed::Interim));
        }
        let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("status code"))?;
        // Field values are kept as slices of the head: no copy per field.
        let base = self.buf.as_ptr() as usize;
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let count = response.headers.len();
        for (span, field) in spans.iter_mut().zip(response.headers.iter()) {
            let name = field.name.as_ptr() as usize - base;
            let value = field.value.as_ptr() as usize - base;
            *span = (
                name as u32,
                (name + field.name.len()) as u32,
                value as u32,
                (value + field.value.len()) as u32,
            );
        }
        let head = self.buf.split_to(head_len).freeze();

        // Room for the fields the gateway adds (`Via`, the request id, CORS and the like),
        // so the map does not grow on the way; a spare from `header_maps` when there is one.
        let mut headers = header_maps::take(count + 8);
        let mut content_length: Option<u64> = None;
        let mut chunked = None;
        let mut close = version == Version::HTTP_10;
        for (position, &(name_start, name_end, value_start, value_end)) in
            spans[..count].iter().enumerate()
        {
            let name = self
                .names
                .name(position, &head[name_start as usize..name_end as usize])
                .map_err(|_| Error::Invalid("header field name"))?;
            let value = HeaderValue::from_maybe_shared(
                head.slice(value_start as usize..value_end as usize),
            )
            .map_err(|_| Error::Invalid("header field value"))?;
            if name == header::CONTENT_LENGTH {
                let length = parse_content_length(value.as_bytes())
                    .ok_or(Error::Invalid("content-length"))?;
                if content_length.is_some_and(|seen| seen != length) {
                    return Err(Error::Invalid("differing content-length values"));
                }
                content_length = Some(length);
            } else if name == header::TRANSFER_ENCODING {
                // Only the final coding decides (RFC 9112 section 6.3).
                let last = tokens(&value).last().unwrap_or_default();
                chunked = Some(last.eq_ignore_ascii_case("chunked"));
            } else if name == header::CONNECTION {
                for token in tokens(&value) {
                    if token.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive")
                        && version == Version::HTTP_10
                    {
                        close = false;
                    }
                }
            }
            headers.append(name, value);
        }

        let framing = if method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::Done
        } else if let Some(chunked) = chunked {
            if content_length.is_some() {
                // Both: the transfer coding wins, and the connection is not trusted further
                // (RFC 9112 section 6.3).
                headers.remove(header::CONTENT_LENGTH);
                close = true;
            }
            if chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                close = true;
                Framing::UntilClose
            }
        } else if let Some(length) = content_length {
            if length == 0 {
                Framing::Done
            } else {
                Framing::Length(length)
            }
        } else {
            close = true;
            Framing::UntilClose
        };

        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        let (parts, ()) = response.into_parts();
        Ok(Some(Parsed::Final(Head {
            parts,
            framing,
            keep_alive: !close,
        })))
    }

    /// Read more from the upstream into the buffer; `Ok(0)` at its end. Through tokio's
    /// `poll_read`, which takes a short read as the socket drained: the next wait costs no
    /// system call that would only say "nothing yet".
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() == 0 {
            // Before the response comes: wait without taking a buffer to give back at once.
            std::task::ready!(self.io.poll_read_ready(cx))?;
        }
        io_buffer::poll_fill(&mut self.io, &mut self.buf, READ_CHUNK, cx)
    }
}

/// A request head for a whole `body` into `out`.
fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body: &Bytes,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(if target.is_empty() { "/" } else { target }.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut declared_length = false;
    for (name, value) in headers {
        // The body is whole: its length is the framing, whatever the client declared.
        if name == header::CONTENT_LENGTH {
            declared_length = true;
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if declared_length || !body.is_empty() {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
}

enum Parsed {
    /// A 1xx response, consumed; the final one follows.
    Interim,
    Final(Head),
}

/// A final response head, how its body is delimited, and whether the connection may be
/// reused after it.
struct Head {
    parts: http::response::Parts,
    framing: Framing,
    keep_alive: bool,
}

/// How the response body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// This many bytes remain.
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// A chunk-size line comes next.
    Size,
    /// This many bytes of chunk data remain.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

/// A response body read from a [`Connection`]; the connection goes back to its endpoint's
/// pool when the body has been read to its end and the upstream allows reuse, and is closed
/// when the body is dropped early or fails.
pub struct ResponseBody {
    connection: Option<(Connection, Arc<Endpoint>)>,
    framing: Framing,
    keep_alive: bool,
}

impl ResponseBody {
    fn release_if_done(&mut self) {
        if !matches!(self.framing, Framing::Done) {
            return;
        }
        if let Some((mut connection, endpoint)) = self.connection.take() {
            // Bytes after the response's end were not asked for: the connection is not
            // trusted further.
            if self.keep_alive && connection.buf.is_empty() {
                // An idle connection holds no read buffer.
                io_buffer::give_back_read_buffer(&mut connection.buf);
                endpoint.pool.put_direct(connection);
            }
        }
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.connection = None;
        self.framing = Framing::Done;
        Poll::Ready(Some(Err(error.into())))
    }

    fn finish(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.framing = Framing::Done;
        self.release_if_done();
        Poll::Ready(None)
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let framing = this.framing;
            let Some((connection, _)) = this.connection.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut connection.buf;
            // What the buffer holds decides, or more is read and the loop goes again.
            match framing {
                Framing::Done => return this.finish(),
                Framing::Length(0) => return this.finish(),
                Framing::Length(remaining) if !buf.is_empty() => {
                    let take = remaining.min(buf.len() as u64);
                    let data = buf.split_to(take as usize).freeze();
                    this.framing = Framing::Length(remaining - take);
                    if remaining == take {
                        this.framing = Framing::Done;
                        this.release_if_done();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::UntilClose if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(Chunk::Size) if !buf.is_empty() => {
                    match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((line, 0))) => {
                            buf.advance(line);
                            this.framing = Framing::Chunked(Chunk::Trailers);
                            continue;
                        }
                        Ok(httparse::Status::Complete((line, size))) => {
                            buf.advance(line);
                            this.framing = Framing::Chunked(Chunk::Data(size));
                            continue;
                        }
                        Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => {}
                        _ => return this.fail(Error::Invalid("chunk size line")),
                    }
                }
                Framing::Chunked(Chunk::Data(remaining)) if !buf.is_empty() => {
                    let take = remaining.min(buf.len() as u64);
                    let data = buf.split_to(take as usize).freeze();
                    this.framing = Framing::Chunked(if remaining == take {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(remaining - take)
                    });
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(Chunk::DataEnd) if buf.len() >= 2 => {
                    if &buf[..2] != b"\r\n" {
                        return this.fail(Error::Invalid("chunk data not ended by CRLF"));
                    }
                    buf.advance(2);
                    this.framing = Framing::Chunked(Chunk::Size);
                    continue;
                }
                Framing::Chunked(Chunk::Trailers) if !buf.is_empty() => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        return this.finish();
                    }
                    match parse_trailers(buf) {
                        Ok(Some(trailers)) => {
                            this.framing = Framing::Done;
                            this.release_if_done();
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Ok(None) if buf.len() < MAX_HEAD_BYTES => {}
                        Ok(None) => return this.fail(Error::Invalid("trailer section too large")),
                        Err(error) => return this.fail(error),
                    }
                }
                _ => {}
            }
            match ready!(connection.poll_fill(cx)) {
                Ok(0) if matches!(framing, Framing::UntilClose) => {
                    this.keep_alive = false;
                    return this.finish();
                }
                Ok(0) => return this.fail(Error::Truncated),
                Ok(_) => {}
                Err(err) => return this.fail(Error::Io(err)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(remaining) => SizeHint::with_exact(remaining),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// The trailer section at the front of `buf`, consumed; `None` when it is not complete.
fn parse_trailers(buf: &mut BytesMut) -> Result<Option<HeaderMap>, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (len, fields) = match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(parsed)) => parsed,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Error::Invalid("trailer section")),
    };
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(field.name.as_bytes()),
            HeaderValue::from_bytes(field.value),
        ) else {
            return Err(Error::Invalid("trailer field"));
        };
        trailers.append(name, value);
    }
    buf.advance(len);
    Ok(Some(trailers))
}

/// A `Content-Length` value: digits, or a list of equal digit strings (RFC 9110 section
/// 8.6).
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let parsed = part
            .iter()
            .fold(0u64, |n, digit| n * 10 + u64::from(digit - b'0'));
        if length.is_some_and(|seen| seen != parsed) {
            return None;
        }
        length = Some(parsed);
    }
    length
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    /// An upstream that answers each request it reads with the next scripted answer (and
    /// closes the connection after it when asked), reporting each request's bytes and
    /// counting connections.
    async fn upstream(
        answers: Vec<(&'static [u8], bool)>,
    ) -> (
        Arc<Endpoint>,
        Arc<AtomicUsize>,
        mpsc::UnboundedReceiver<Vec<u8>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Arc::new(Endpoint::new(listener.local_addr().unwrap(), 1));
        let connections = Arc::new(AtomicUsize::new(0));
        let (requests, received) = mpsc::unbounded_channel();
        let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
        let accepted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (answers, requests) = (answers.clone(), requests.clone());
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    loop {
                        let Some(request) = read_request(&mut socket, &mut seen).await else {
                            return;
                        };
                        let _ = requests.send(request);
                        let Some((answer, close)) = answers.lock().unwrap().pop_front() else {
                            return;
                        };
                        if socket.write_all(answer).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        (endpoint, connections, received)
    }

    /// One request (head, and a body of its Content-Length) off the socket.
    async fn read_request(socket: &mut TcpStream, seen: &mut Vec<u8>) -> Option<Vec<u8>> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .map_or(0, |n| n.trim().parse().unwrap());
                if seen.len() >= end + 4 + length {
                    return Some(seen.drain(..end + 4 + length).collect());
                }
            }
            let n = socket.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            seen.extend_from_slice(&chunk[..n]);
        }
    }

    struct Exchanged {
        head: http::response::Parts,
        body: Result<(Vec<u8>, Option<HeaderMap>), BoxError>,
    }

    /// Send one request through the endpoint's pool (or a new connection) and read the
    /// whole response.
    async fn exchange(
        endpoint: &Arc<Endpoint>,
        method: Method,
        body: &'static [u8],
    ) -> Result<Exchanged, Error> {
        let connection = match endpoint.pool.take_direct(60_000) {
            Some(connection) => connection,
            None => Connection::new(TcpStream::connect(endpoint.addr).await?),
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("upstream"));
        let response = connection
            .send(
                &method,
                "/path?q=1",
                &headers,
                &Bytes::from_static(body),
                endpoint,
            )
            .await?;
        let (head, body) = response.into_parts();
        let body = body.collect().await.map(|collected| {
            let trailers = collected.trailers().cloned();
            (collected.to_bytes().to_vec(), trailers)
        });
        Ok(Exchanged { head, body })
    }

    #[tokio::test]
    async fn length_delimited_responses_keep_the_connection() {
        let answer: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Answer: yes\r\n\r\nhello";
        let (endpoint, connections, mut requests) =
            upstream(vec![(answer, false), (answer, false)]).await;

        let first = exchange(&endpoint, Method::GET, b"").await.unwrap();
        assert_eq!(first.head.status, StatusCode::OK);
        assert_eq!(first.head.headers["x-answer"], "yes");
        assert_eq!(first.body.unwrap().0, b"hello");
        let pooled = endpoint.pool.take_direct(60_000).unwrap();
        assert_eq!(
            pooled.buf.capacity(),
            0,
            "an idle connection holds a read buffer"
        );
        endpoint.pool.put_direct(pooled);
        let sent = requests.recv().await.unwrap();
        assert_eq!(sent, b"GET /path?q=1 HTTP/1.1\r\nhost: upstream\r\n\r\n");

        let second = exchange(&endpoint, Method::POST, b"abc").await.unwrap();
        assert_eq!(second.body.unwrap().0, b"hello");
        let sent = requests.recv().await.unwrap();
        assert_eq!(
            sent,
            b"POST /path?q=1 HTTP/1.1\r\nhost: upstream\r\ncontent-length: 3\r\n\r\nabc"
        );
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "the connection was reused"
        );
    }

    #[tokio::test]
    async fn chunked_responses_stream_their_data_and_trailers() {
        let chunked: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n";
        let plain: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
        let (endpoint, connections, _requests) =
            upstream(vec![(chunked, false), (plain, false)]).await;

        let response = exchange(&endpoint, Method::GET, b"").await.unwrap();
        let (body, trailers) = response.body.unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(trailers.unwrap()["x-checksum"], "42");
        let after = exchange(&endpoint, Method::GET, b"").await.unwrap();
        assert_eq!(after.head.status, StatusCode::NO_CONTENT);
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn interim_responses_are_skipped_and_head_answers_have_no_body() {
        let interim: &[u8] =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
        let head: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        let (endpoint, connections, _requests) =
            upstream(vec![(interim, false), (head, false)]).await;

        let created = exchange(&endpoint, Method::PUT, b"x").await.unwrap();
        assert_eq!(created.head.status, StatusCode::CREATED);
        assert!(created.body.unwrap().0.is_empty());
        let head = exchange(&endpoint, Method::HEAD, b"").await.unwrap();
        assert_eq!(head.head.headers["content-length"], "100");
        assert!(head.body.unwrap().0.is_empty());
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn close_delimited_and_doubly_framed_bodies_end_their_connection() {
        let until_close: &[u8] = b"HTTP/1.0 200 OK\r\n\r\nuntil the end";
        let both: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\
            Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        let (endpoint, connections, _requests) =
            upstream(vec![(until_close, true), (both, false)]).await;

        let first = exchange(&endpoint, Method::GET, b"").await.unwrap();
        assert_eq!(first.head.version, Version::HTTP_10);
        assert_eq!(first.body.unwrap().0, b"until the end");
        // Chunked wins over Content-Length, which is dropped; the connection is not kept.
        let second = exchange(&endpoint, Method::GET, b"").await.unwrap();
        assert!(!second.head.headers.contains_key(header::CONTENT_LENGTH));
        assert_eq!(second.body.unwrap().0, b"ok");
        assert!(endpoint.pool.take_direct(60_000).is_none());
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn broken_framing_is_an_error() {
        let differing: &[u8] =
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello";
        let truncated: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort";
        let bad_chunk: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        let (endpoint, _connections, _requests) = upstream(vec![
            (differing, true),
            (truncated, true),
            (bad_chunk, true),
        ])
        .await;

        let refused = exchange(&endpoint, Method::GET, b"").await;
        assert!(
            matches!(refused, Err(Error::Invalid(_))),
            "differing lengths"
        );
        let truncated = exchange(&endpoint, Method::GET, b"").await.unwrap();
        let error = truncated.body.unwrap_err();
        assert!(
            error.to_string().contains("before the response ended"),
            "{error}"
        );
        let bad_chunk = exchange(&endpoint, Method::GET, b"").await.unwrap();
        let error = bad_chunk.body.unwrap_err();
        assert!(error.to_string().contains("chunk size"), "{error}");
    }

    #[tokio::test]
    async fn an_unasked_protocol_switch_is_an_error() {
        let switch: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        let (endpoint, _connections, _requests) = upstream(vec![(switch, true)]).await;
        let refused = exchange(&endpoint, Method::GET, b"").await;
        assert!(
            matches!(refused, Err(Error::Invalid(_))),
            "101 without an upgrade"
        );
    }

    /// Through the connector: a kept connection the upstream closes when the next request
    /// arrives, without answering. A GET goes again on a new connection; a POST, which
    /// the upstream may have acted on, is not repeated.
    #[tokio::test]
    async fn only_idempotent_requests_go_again_after_a_kept_connection_closes_unanswered() {
        use super::super::pool::Connector;
        use super::super::OutgoingBody;

        let ok: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let unanswered: &[u8] = b"";
        let connector = Connector {
            tls: None,
            http2: false,
            connect_timeout: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(60),
        };
        let request = |method: Method| {
            http::Request::builder()
                .method(method)
                .uri("/path")
                .header(header::HOST, "upstream")
                .body(OutgoingBody::Buffered(Bytes::new()))
                .unwrap()
        };

        for (method, answered) in [(Method::GET, true), (Method::POST, false)] {
            let (endpoint, connections, mut requests) =
                upstream(vec![(ok, false), (unanswered, true), (ok, false)]).await;
            let first = connector
                .send(&endpoint, request(Method::GET))
                .await
                .unwrap();
            first.into_body().collect().await.unwrap();
            let second = connector.send(&endpoint, request(method.clone())).await;
            if answered {
                let body = second.unwrap().into_body().collect().await.unwrap();
                assert_eq!(body.to_bytes(), "ok");
                assert_eq!(connections.load(Ordering::SeqCst), 2);
                assert_eq!(requests.recv().await.unwrap()[..4], *b"GET ");
                assert_eq!(requests.recv().await.unwrap()[..4], *b"GET ");
                assert_eq!(requests.recv().await.unwrap()[..4], *b"GET ", "sent again");
            } else {
                let error = second.err().expect("a POST is not repeated");
                assert!(matches!(
                    error,
                    super::super::pool::SendError::Direct(Error::NoResponse(_))
                ));
                assert_eq!(connections.load(Ordering::SeqCst), 1);
            }
        }
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_not_taken() {
        let answer: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let (endpoint, _connections, _requests) = upstream(vec![(answer, true)]).await;
        let response = exchange(&endpoint, Method::GET, b"").await.unwrap();
        assert_eq!(response.body.unwrap().0, b"ok");
        // The upstream closes after answering; once its FIN arrives the kept connection
        // reads as closed.
        let mut taken = true;
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            let Some(connection) = endpoint.pool.take_direct(60_000) else {
                taken = false;
                break;
            };
            endpoint.pool.put_direct(connection);
        }
        assert!(!taken, "a closed connection stayed in the pool");
    }
}
