//! gRPC through the gateway: recognising a call, its deadline (`grpc-timeout`), answering
//! in gRPC form when the gateway itself ends a call, and reading the status a call ended
//! with for logs and metrics.
//!
//! A gRPC client cannot read `application/problem+json`: what the gateway answers on a
//! gRPC call is a trailers-only response (HTTP 200, `grpc-status`, `grpc-message`) with the
//! rich error model in `grpc-status-details-bin` (a `google.rpc.Status` carrying a
//! `google.rpc.ErrorInfo` whose `reason` is the gateway's stable error code).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::Frame;

use crate::body::{BoxError, ProxyBody};
use crate::error::GatewayError;

pub mod descriptors;
pub mod template;
pub mod transcode;
pub mod web;

pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
pub const GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");

/// Whether the request is a gRPC call over HTTP/2 (`application/grpc`, `application/grpc+proto`,
/// ...). gRPC-Web (`application/grpc-web...`) is not: browsers read ordinary responses.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let bytes = content_type.as_bytes();
    let Some(rest) = bytes.strip_prefix(b"application/grpc") else {
        return false;
    };
    matches!(rest.first(), None | Some(b'+') | Some(b';'))
}

/// The status codes of gRPC (`grpc/doc/statuscodes.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    pub fn from_number(number: u32) -> Option<Code> {
        Self::ALL.get(number as usize).copied()
    }

    /// The status of a `grpc-status` header value; unparsable values are `UNKNOWN`, as
    /// a client would read them.
    pub fn from_header(value: &HeaderValue) -> Code {
        std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .and_then(Code::from_number)
            .unwrap_or(Code::Unknown)
    }

    pub fn number(self) -> u32 {
        self as u32
    }

    /// The canonical name (`DEADLINE_EXCEEDED`): the metrics label and log field.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    fn header_value(self) -> HeaderValue {
        HeaderValue::from(self.number())
    }
}

/// The gRPC status that says what a gateway error means to a gRPC client. Policies keep
/// their meaning (a rate limit is `RESOURCE_EXHAUSTED`, not the `UNAVAILABLE` that the
/// generic HTTP 429 mapping of the gRPC spec would give).
pub fn code_for(error: &GatewayError) -> Code {
    match error {
        GatewayError::NoRoute { .. } => Code::Unimplemented,
        GatewayError::PayloadTooLarge { .. } => Code::ResourceExhausted,
        GatewayError::BadRequest(_) => Code::Internal,
        GatewayError::NoHealthyEndpoint { .. }
        | GatewayError::UpstreamConnect(_)
        | GatewayError::BadGateway(_) => Code::Unavailable,
        GatewayError::UpstreamTimeout { .. } | GatewayError::DeadlineExceeded => {
            Code::DeadlineExceeded
        }
        GatewayError::Transform { .. } => Code::Internal,
        GatewayError::Transcode { .. } => Code::InvalidArgument,
        GatewayError::Rejected(rejection) => code_for_status(rejection.status),
    }
}

fn code_for_status(status: StatusCode) -> Code {
    match status.as_u16() {
        400 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        408 | 504 => Code::DeadlineExceeded,
        409 => Code::Aborted,
        413 | 429 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        502 | 503 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// `grpc-message`: percent-encoded UTF-8 (the spec's "Percent-Encoded" rule: everything
/// outside printable ASCII, and `%` itself).
fn encode_message(message: &str) -> HeaderValue {
    const ENCODED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');
    let encoded = percent_encoding::utf8_percent_encode(message, ENCODED).to_string();
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `google.rpc.Status`, `google.protobuf.Any` and the detail messages the gateway sends.
mod rpc {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(message, repeated, tag = "3")]
        pub details: Vec<Any>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(string, tag = "1")]
        pub type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ErrorInfo {
        #[prost(string, tag = "1")]
        pub reason: String,
        #[prost(string, tag = "2")]
        pub domain: String,
        #[prost(map = "string, string", tag = "3")]
        pub metadata: std::collections::HashMap<String, String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RetryInfo {
        #[prost(message, optional, tag = "1")]
        pub retry_delay: Option<Duration>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Duration {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }

    pub fn any<M: prost::Message>(type_name: &str, message: &M) -> Any {
        Any {
            type_url: format!("type.googleapis.com/{type_name}"),
            value: message.encode_to_vec(),
        }
    }
}

/// The domain of the gateway's `ErrorInfo` details.
pub const ERROR_DOMAIN: &str = "gatehouse.dev";

/// The gateway's own answer to a gRPC call it ends: trailers-only, with the status, the
/// message, and the details (`ErrorInfo` with the stable code as reason and the request id;
/// `RetryInfo` when the refusal says when to come back). The error's headers
/// (`WWW-Authenticate`, `RateLimit-*`, `Retry-After`) are kept as metadata.
pub fn error_response(
    error: GatewayError,
    request_id: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    let code = code_for(&error);
    let message = match &error {
        GatewayError::Rejected(rejection) => rejection.detail.to_string(),
        other => other.to_string(),
    };
    let mut metadata = std::collections::HashMap::new();
    if let Some(id) = request_id.and_then(|v| v.to_str().ok()) {
        metadata.insert("request_id".to_owned(), id.to_owned());
    }
    let mut details = vec![rpc::any(
        "google.rpc.ErrorInfo",
        &rpc::ErrorInfo {
            reason: error.code().to_ascii_uppercase(),
            domain: ERROR_DOMAIN.to_owned(),
            metadata,
        },
    )];
    let extra_headers = match error {
        GatewayError::Rejected(rejection) => rejection.headers,
        _ => Vec::new(),
    };
    let retry_after = extra_headers
        .iter()
        .find(|(name, _)| name == header::RETRY_AFTER)
        .and_then(|(_, value)| value.to_str().ok()?.trim().parse::<i64>().ok());
    if let Some(seconds) = retry_after {
        details.push(rpc::any(
            "google.rpc.RetryInfo",
            &rpc::RetryInfo {
                retry_delay: Some(rpc::Duration { seconds, nanos: 0 }),
            },
        ));
    }
    let status = rpc::Status {
        code: code.number() as i32,
        message: message.clone(),
        details,
    };
    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD
        .encode(prost::Message::encode_to_vec(&status));
    let mut response = Response::new(crate::body::empty());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(GRPC_STATUS, code.header_value());
    headers.insert(GRPC_MESSAGE, encode_message(&message));
    if let Ok(value) = HeaderValue::from_str(&encoded) {
        headers.insert(GRPC_STATUS_DETAILS, value);
    }
    if let Some(id) = request_id {
        headers.insert(crate::forward::X_REQUEST_ID, id.clone());
    }
    for (name, value) in extra_headers {
        headers.append(name, value);
    }
    response
}

/// The deadline of a call from its `grpc-timeout` header: 1 to 8 ASCII digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`). A malformed value is ignored, as gRPC servers do.
pub fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let bytes = value.as_bytes();
    let (&unit, digits) = bytes.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// A `grpc-timeout` value for `remaining`, in the finest unit that fits in 8 digits,
/// rounded up: the upstream's deadline must not end before the gateway's.
pub fn timeout_value(remaining: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = remaining.as_nanos().max(1);
    let units: [(u128, &str); 6] = [
        (1, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
        (60_000_000_000, "M"),
        (3_600_000_000_000, "H"),
    ];
    for (size, unit) in units {
        let amount = nanos.div_ceil(size);
        if amount <= MAX {
            return HeaderValue::from_str(&format!("{amount}{unit}"))
                .unwrap_or_else(|_| HeaderValue::from_static("99999999H"));
        }
    }
    HeaderValue::from_static("99999999H")
}

/// `message` as one length-prefixed message of a gRPC stream (not compressed).
pub fn frame(message: &[u8]) -> Bytes {
    frame_flagged(0, message)
}

/// A length-prefixed frame with `flag` (bit 0: compressed; gRPC-Web's 0x80: trailers).
pub fn frame_flagged(flag: u8, payload: &[u8]) -> Bytes {
    let mut framed = bytes::BytesMut::with_capacity(5 + payload.len());
    framed.extend_from_slice(&[flag]);
    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend_from_slice(payload);
    framed.freeze()
}

/// The next whole uncompressed message of a gRPC stream, if `buffer` holds one.
pub fn take_message(buffer: &mut bytes::BytesMut) -> Result<Option<Bytes>, String> {
    use bytes::Buf;
    if buffer.len() < 5 {
        return Ok(None);
    }
    if buffer[0] != 0 {
        return Err("the upstream sent a compressed message, which is not supported".to_owned());
    }
    let length = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
    if buffer.len() < 5 + length {
        return Ok(None);
    }
    buffer.advance(5);
    Ok(Some(buffer.split_to(length).freeze()))
}

/// The deadline the client set, as an instant (from `grpc-timeout`).
pub fn deadline(headers: &HeaderMap, now: Instant) -> Option<Instant> {
    headers
        .get(GRPC_TIMEOUT)
        .and_then(parse_timeout)
        .and_then(|timeout| now.checked_add(timeout))
}

/// An upstream status that ends a call whose deadline has passed: `CANCELLED` there means
/// the deadline ended it (tonic servers report their expired `grpc-timeout` so, and the
/// upstream's copy of the deadline may fire before the gateway's own timer is polled), and
/// the client is told `DEADLINE_EXCEEDED`, as when the gateway's timer ends the call.
pub fn status_after_deadline(status: &mut HeaderMap, deadline: Instant, now: Instant) {
    let cancelled = status
        .get(GRPC_STATUS)
        .is_some_and(|code| code.as_bytes() == b"1");
    if cancelled && now >= deadline {
        status.insert(GRPC_STATUS, Code::DeadlineExceeded.header_value());
        status.insert(GRPC_MESSAGE, encode_message("deadline exceeded"));
    }
}

/// A proxied call's response body bounded by the call's deadline: when the deadline passes
/// before the upstream has finished, the upstream stream is dropped (which cancels it) and
/// the client gets trailers with `DEADLINE_EXCEEDED`.
pub fn with_deadline(body: ProxyBody, deadline: Instant) -> ProxyBody {
    struct Bounded {
        inner: Option<ProxyBody>,
        timer: Pin<Box<tokio::time::Sleep>>,
        deadline: Instant,
    }
    impl http_body::Body for Bounded {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            let this = &mut *self;
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            if let Poll::Ready(mut frame) = Pin::new(inner).poll_frame(cx) {
                match &mut frame {
                    None => this.inner = None,
                    Some(Ok(frame)) => {
                        if let Some(trailers) = frame.trailers_mut() {
                            status_after_deadline(trailers, this.deadline, Instant::now());
                        }
                    }
                    Some(Err(_)) => {}
                }
                return Poll::Ready(frame);
            }
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.inner = None;
            let mut trailers = HeaderMap::new();
            trailers.insert(GRPC_STATUS, Code::DeadlineExceeded.header_value());
            trailers.insert(GRPC_MESSAGE, encode_message("deadline exceeded"));
            Poll::Ready(Some(Ok(Frame::trailers(trailers))))
        }
        fn is_end_stream(&self) -> bool {
            self.inner
                .as_ref()
                .is_none_or(|inner| inner.is_end_stream())
        }
    }
    use http_body_util::BodyExt;
    Bounded {
        inner: Some(body),
        timer: Box::pin(tokio::time::sleep_until(deadline.into())),
        deadline,
    }
    .boxed_unsync()
}

/// The health checking protocol (`grpc.health.v1`), as the active health check speaks it.
pub mod health {
    use bytes::Bytes;

    pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

    #[derive(Clone, PartialEq, prost::Message)]
    struct HealthCheckRequest {
        #[prost(string, tag = "1")]
        service: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct HealthCheckResponse {
        #[prost(int32, tag = "1")]
        status: i32,
    }

    const SERVING: i32 = 1;

    /// The length-prefixed message of a `Check` call about `service`.
    pub fn check_request(service: &str) -> Bytes {
        super::frame(&prost::Message::encode_to_vec(&HealthCheckRequest {
            service: service.to_owned(),
        }))
    }

    /// Whether a `Check` answer (its body, and the `grpc-status` from trailers or a
    /// trailers-only head) says `SERVING`.
    pub fn is_serving(status: Option<super::Code>, body: &[u8]) -> bool {
        if status != Some(super::Code::Ok) {
            return false;
        }
        let mut buffer = bytes::BytesMut::from(body);
        let Ok(Some(message)) = super::take_message(&mut buffer) else {
            return false;
        };
        <HealthCheckResponse as prost::Message>::decode(message)
            .is_ok_and(|response| response.status == SERVING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancelled_after_the_deadline_is_reported_as_deadline_exceeded() {
        let deadline = Instant::now();
        let status = |code: &'static str, now: Instant| {
            let mut headers = HeaderMap::new();
            headers.insert(GRPC_STATUS, HeaderValue::from_static(code));
            status_after_deadline(&mut headers, deadline, now);
            headers[GRPC_STATUS].to_str().unwrap().to_owned()
        };
        let later = deadline + Duration::from_millis(1);
        assert_eq!(status("1", later), "4");
        assert_eq!(status("1", deadline), "4");
        // Before the deadline a cancellation is the upstream's own; other statuses stand.
        assert_eq!(status("1", deadline - Duration::from_millis(1)), "1");
        assert_eq!(status("0", later), "0");
        assert_eq!(status("14", later), "14");
    }

    #[test]
    fn timeouts_parse_in_every_unit_and_refuse_malformed_values() {
        let parse = |s: &str| parse_timeout(&HeaderValue::from_str(s).unwrap());
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "m", "123456789m", "1.5S", "10s", "-1S", " 1S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn timeout_values_use_the_finest_unit_that_fits() {
        let value = |d: Duration| timeout_value(d).to_str().unwrap().to_owned();
        assert_eq!(value(Duration::from_nanos(5)), "5n");
        assert_eq!(value(Duration::from_millis(250)), "250000u");
        assert_eq!(value(Duration::from_secs(1)), "1000000u");
        assert_eq!(value(Duration::from_secs(120)), "120000m");
        assert_eq!(value(Duration::from_secs(86_400 * 365)), "31536000S");
        assert_eq!(value(Duration::ZERO), "1n");
        for d in [Duration::from_millis(1234), Duration::from_secs(99_999)] {
            assert!(parse_timeout(&timeout_value(d)).unwrap() >= d);
        }
    }

    #[test]
    fn grpc_content_types_are_recognised_and_grpc_web_is_not() {
        let headers = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            h
        };
        assert!(is_grpc(&headers("application/grpc")));
        assert!(is_grpc(&headers("application/grpc+proto")));
        assert!(!is_grpc(&headers("application/grpc-web")));
        assert!(!is_grpc(&headers("application/grpc-web-text+proto")));
        assert!(!is_grpc(&headers("application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn health_answers_are_serving_only_when_ok_and_serving() {
        let request = health::check_request("library.v1.LibraryService");
        assert_eq!(&request[..5], &[0, 0, 0, 0, 27]);
        // HealthCheckResponse { status: SERVING } and { status: NOT_SERVING }, framed.
        let serving = [0u8, 0, 0, 0, 2, 0x08, 1];
        let not_serving = [0u8, 0, 0, 0, 2, 0x08, 2];
        assert!(health::is_serving(Some(Code::Ok), &serving));
        assert!(!health::is_serving(Some(Code::Ok), &not_serving));
        assert!(!health::is_serving(Some(Code::NotFound), &serving));
        assert!(!health::is_serving(None, &serving));
        assert!(!health::is_serving(Some(Code::Ok), &serving[..6]));
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("50% off\nnow é"), "50%25 off%0Anow %C3%A9");
    }
}
