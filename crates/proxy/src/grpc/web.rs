//! gRPC-Web (`grpc/grpc` PROTOCOL-WEB.md) translated to gRPC, so browsers can call gRPC
//! services: the request's content type becomes `application/grpc`, a `-text` body is
//! base64-decoded as it streams; on the way back the trailers become the final
//! length-prefixed frame (flag `0x80`, `name:value\r\n` lines), and a `-text` answer is
//! base64-encoded as it streams. Clients may speak HTTP/1.1; the upstream gets HTTP/2.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Response};
use http_body::Frame;
use http_body_util::BodyExt;

use crate::body::{BoxError, ProxyBody};

/// How a gRPC-Web call's bodies are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/grpc-web[+proto]`: the gRPC frames as they are.
    Binary,
    /// `application/grpc-web-text[+proto]`: the frames in base64.
    Text,
}

/// The encoding of a gRPC-Web request, from its `Content-Type`.
pub fn encoding(headers: &HeaderMap) -> Option<Encoding> {
    let content_type = headers.get(header::CONTENT_TYPE)?.as_bytes();
    let (encoding, rest) =
        if let Some(rest) = content_type.strip_prefix(b"application/grpc-web-text") {
            (Encoding::Text, rest)
        } else {
            (
                Encoding::Binary,
                content_type.strip_prefix(b"application/grpc-web")?,
            )
        };
    matches!(rest.first(), None | Some(b'+') | Some(b';')).then_some(encoding)
}

/// The codec suffix of a gRPC-Web content type (`+proto`, or empty).
fn codec_suffix(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .and_then(|ct| ct.find('+').map(|at| ct[at..].trim().to_owned()))
        .unwrap_or_default()
}

/// The content type of answers to a gRPC-Web call with these request headers.
pub fn response_content_type(headers: &HeaderMap, encoding: Encoding) -> HeaderValue {
    let base = match encoding {
        Encoding::Binary => "application/grpc-web",
        Encoding::Text => "application/grpc-web-text",
    };
    HeaderValue::from_str(&format!("{base}{}", codec_suffix(headers)))
        .unwrap_or_else(|_| HeaderValue::from_static("application/grpc-web+proto"))
}

/// Turns the request head into a gRPC one and returns the gRPC body for `body`.
pub fn request_to_grpc<B>(headers: &mut HeaderMap, body: B, encoding: Encoding) -> WebRequestBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let content_type = format!("application/grpc{}", codec_suffix(headers));
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    // Browser-only headers of the gRPC-Web client, meaningless upstream.
    headers.remove("x-grpc-web");
    headers.remove("x-user-agent");
    let text = match encoding {
        Encoding::Binary => None,
        Encoding::Text => {
            headers.remove(header::CONTENT_LENGTH);
            Some(BytesMut::new())
        }
    };
    WebRequestBody { inner: body, text }
}

/// A gRPC-Web request body as a gRPC one. Its error is a concrete type: the request path
/// cannot prove conversions between boxed error trait objects (see `body::read_limited`).
#[derive(Debug, thiserror::Error)]
#[error("grpc-web request body: {0}")]
pub struct WebBodyError(String);

/// `status` is set to the call's `grpc-status` when the trailers pass (for the log phase,
/// which only sees the converted body).
pub fn response_to_web(
    response: Response<ProxyBody>,
    request_headers_content_type: HeaderValue,
    encoding: Encoding,
    status: Arc<AtomicU8>,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    let is_grpc = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    if !is_grpc {
        // Not a gRPC answer (an HTTP error of some proxy on the way): as it came.
        return Response::from_parts(parts, body);
    }
    parts
        .headers
        .insert(header::CONTENT_TYPE, request_headers_content_type);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::TRAILER);
    let body = WebResponse {
        inner: Some(body),
        encoding,
        carry: BytesMut::new(),
        done: false,
        status,
    }
    .boxed_unsync();
    Response::from_parts(parts, body)
}

/// Trailers as the final gRPC-Web frame: flag `0x80`, length, `name:value\r\n` lines.
fn trailer_frame(trailers: &HeaderMap) -> Bytes {
    let mut block = Vec::new();
    for (name, value) in trailers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.push(b':');
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    super::frame_flagged(0x80, &block)
}

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The request body: as it is for binary, or for `-text` decoded as it streams, whole
/// 4-character groups at a time. Clients may send several padded base64 chunks one after
/// the other; each is decoded on its own.
pub struct WebRequestBody<B> {
    inner: B,
    /// Base64 not yet decoded, for `-text`.
    text: Option<BytesMut>,
}

/// Decodes what can be decoded from `pending`: through a padded group, or whole groups.
fn decode_ready(pending: &mut BytesMut, at_end: bool) -> Result<Option<Bytes>, WebBodyError> {
    let truncated = || WebBodyError("truncated base64 in a grpc-web-text body".to_owned());
    if pending.iter().any(u8::is_ascii_whitespace) {
        *pending = pending
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
    }
    let usable = match pending.iter().position(|b| *b == b'=') {
        Some(pad) => {
            let end = (pad / 4 + 1) * 4;
            if end > pending.len() {
                return if at_end { Err(truncated()) } else { Ok(None) };
            }
            end
        }
        None => pending.len() / 4 * 4,
    };
    if usable == 0 {
        return if at_end && !pending.is_empty() {
            Err(truncated())
        } else {
            Ok(None)
        };
    }
    let group = pending.split_to(usable);
    let decoded = BASE64
        .decode(&group)
        .map_err(|err| WebBodyError(format!("invalid base64 in a grpc-web-text body: {err}")))?;
    Ok(Some(Bytes::from(decoded)))
}

impl<B> http_body::Body for WebRequestBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = WebBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, WebBodyError>>> {
        let this = &mut *self;
        loop {
            if let Some(pending) = this.text.as_mut() {
                match decode_ready(pending, false) {
                    Ok(Some(decoded)) => return Poll::Ready(Some(Ok(Frame::data(decoded)))),
                    Ok(None) => {}
                    Err(err) => return Poll::Ready(Some(Err(err))),
                }
            }
            let polled = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(polled) => polled,
            };
            let Some(pending) = this.text.as_mut() else {
                return Poll::Ready(
                    polled.map(|frame| frame.map_err(|err| WebBodyError(err.to_string()))),
                );
            };
            match polled {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        pending.extend_from_slice(&data);
                    }
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(WebBodyError(err.to_string())))),
                None => {
                    return match decode_ready(pending, true) {
                        Ok(Some(decoded)) => Poll::Ready(Some(Ok(Frame::data(decoded)))),
                        Ok(None) => Poll::Ready(None),
                        Err(err) => Poll::Ready(Some(Err(err))),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.text.as_ref().is_none_or(BytesMut::is_empty) && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.text {
            None => self.inner.size_hint(),
            Some(_) => http_body::SizeHint::default(),
        }
    }
}

/// The upstream's gRPC body as a gRPC-Web body: data as it is (or base64 for `-text`,
/// in whole 3-byte groups so the output is one continuous base64 stream), trailers as
/// the final frame.
struct WebResponse {
    inner: Option<ProxyBody>,
    encoding: Encoding,
    /// Bytes of a `-text` answer not yet encoded (fewer than 3).
    carry: BytesMut,
    done: bool,
    status: Arc<AtomicU8>,
}

impl WebResponse {
    fn encode(&mut self, data: &[u8], last: bool) -> Bytes {
        match self.encoding {
            Encoding::Binary => Bytes::copy_from_slice(data),
            Encoding::Text => {
                self.carry.extend_from_slice(data);
                let usable = if last {
                    self.carry.len()
                } else {
                    self.carry.len() / 3 * 3
                };
                let group = self.carry.split_to(usable);
                Bytes::from(BASE64.encode(&group))
            }
        }
    }
}

impl http_body::Body for WebResponse {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let Some(inner) = this.inner.as_mut() else {
                this.done = true;
                let rest = this.encode(&[], true);
                if rest.is_empty() {
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Ok(Frame::data(rest))));
            };
            match Pin::new(inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let encoded = this.encode(&data, false);
                        if !encoded.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(encoded))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            if let Some(code) = trailers.get(super::GRPC_STATUS) {
                                let code = super::Code::from_header(code).number() as u8;
                                this.status.store(code, Ordering::Relaxed);
                            }
                            this.inner = None;
                            this.done = true;
                            let encoded = this.encode(&trailer_frame(&trailers), true);
                            return Poll::Ready(Some(Ok(Frame::data(encoded))));
                        }
                    }
                },
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err))),
                Poll::Ready(None) => this.inner = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        headers
    }

    #[test]
    fn encodings_come_from_the_content_type() {
        assert_eq!(
            encoding(&headers("application/grpc-web")),
            Some(Encoding::Binary)
        );
        assert_eq!(
            encoding(&headers("application/grpc-web+proto")),
            Some(Encoding::Binary)
        );
        assert_eq!(
            encoding(&headers("application/grpc-web-text")),
            Some(Encoding::Text)
        );
        assert_eq!(
            encoding(&headers("application/grpc-web-text+proto")),
            Some(Encoding::Text)
        );
        assert_eq!(encoding(&headers("application/grpc")), None);
        assert_eq!(encoding(&headers("application/grpc-webby")), None);
        assert_eq!(
            response_content_type(&headers("application/grpc-web-text+proto"), Encoding::Text),
            "application/grpc-web-text+proto"
        );
    }

    #[test]
    fn trailers_become_the_final_frame() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("ok"));
        let frame = trailer_frame(&trailers);
        assert_eq!(frame[0], 0x80);
        assert_eq!(&frame[5..], b"grpc-status:0\r\ngrpc-message:ok\r\n");
        assert_eq!(
            u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]),
            32
        );
    }

    #[tokio::test]
    async fn text_bodies_decode_across_chunk_boundaries_and_padded_segments() {
        let chunks = ["AAAA", "AAJo", "aQ", "==AAAA", "AAFh"];
        let stream = futures_util::stream::iter(chunks.iter().map(|c| {
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(c.as_bytes())))
        }));
        let mut headers = headers("application/grpc-web-text+proto");
        let body = request_to_grpc(
            &mut headers,
            http_body_util::StreamBody::new(stream),
            Encoding::Text,
        );
        assert_eq!(headers[header::CONTENT_TYPE], "application/grpc+proto");
        let decoded = body.collect().await.unwrap().to_bytes();
        assert_eq!(&decoded[..], b"\0\0\0\0\x02hi\0\0\0\0\x01a");
    }
}
