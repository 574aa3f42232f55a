//! Distributed tracing on the request path: the trace context a client sent (W3C
//! `traceparent`/`tracestate`, optionally B3), the sampling decision, span ids for the
//! gateway's request span and each upstream attempt, and finished spans handed to the OTLP
//! exporter's bounded queue. Nothing here blocks or does I/O.

use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::ResultLabels;
use crate::otlp::{self, Command, ExportError};
use gatehouse_config::{Propagation, TracingConfig};

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub static B3: HeaderName = HeaderName::from_static("b3");
const B3_MULTI: [&str; 5] = [
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// The trace a request belongs to, as the gateway continues it.
#[derive(Clone, Debug)]
pub struct TraceContext {
    pub trace_id: TraceId,
    /// The caller's span, when the request carried a valid context.
    pub parent: Option<SpanId>,
    /// The gateway's span for this request.
    pub span_id: SpanId,
    pub sampled: bool,
    /// The caller's `tracestate`, passed on unchanged; dropped when the trace restarts here.
    pub tracestate: Option<HeaderValue>,
    /// Also write the B3 single header upstream.
    pub b3: bool,
}

impl TraceContext {
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// Replace the client's trace headers with the context of a request sent on behalf of
    /// `span` (an upstream attempt).
    pub fn inject(&self, span: SpanId, headers: &mut HeaderMap) {
        let flags = if self.sampled { "01" } else { "00" };
        let traceparent = format!("00-{}-{}-{flags}", hex(&self.trace_id), hex(&span));
        if let Ok(value) = HeaderValue::from_str(&traceparent) {
            headers.insert(TRACEPARENT.clone(), value);
        }
        match &self.tracestate {
            Some(state) => {
                headers.insert(TRACESTATE.clone(), state.clone());
            }
            None => {
                headers.remove(&TRACESTATE);
            }
        }
        if self.b3 {
            for name in B3_MULTI {
                headers.remove(name);
            }
            let sampled = if self.sampled { '1' } else { '0' };
            let b3 = format!("{}-{}-{sampled}", hex(&self.trace_id), hex(&span));
            if let Ok(value) = HeaderValue::from_str(&b3) {
                headers.insert(B3.clone(), value);
            }
        }
    }
}

/// A fresh non-zero span id.
pub fn new_span_id() -> SpanId {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn new_trace_id() -> TraceId {
    loop {
        let id = fastrand::u128(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 15) as usize] as char);
    }
    out
}

/// Two lowercase hex digits.
fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    match pair {
        [high, low] => Some(digit(*high)? << 4 | digit(*low)?),
        _ => None,
    }
}

/// Lowercase hex of exactly `N` bytes, not all zero.
fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = hex_byte(pair)?;
    }
    (out != [0u8; N]).then_some(out)
}

/// A remote parent: trace id, span id and whether the caller sampled.
type Parent = (TraceId, SpanId, bool);

/// W3C Trace Context `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`. Later versions are read
/// by their first four fields, as the specification asks; version `ff` is invalid.
pub fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex_byte(&value[..2])?;
    if version == 0xff
        || (version == 0 && value.len() != 55)
        || (value.len() > 55 && value[55] != b'-')
    {
        return None;
    }
    let trace_id = unhex::<16>(&value[3..35])?;
    let span_id = unhex::<8>(&value[36..52])?;
    let flags = hex_byte(&value[53..55])?;
    Some((trace_id, span_id, flags & 1 == 1))
}

/// B3 single header `{trace}-{span}[-{sampled}[-{parent}]]` or the `X-B3-*` headers. A
/// 64-bit trace id is widened with leading zeros. `None` without both ids.
pub fn parse_b3(headers: &HeaderMap) -> Option<Parent> {
    let widen = |id: &[u8]| -> Option<TraceId> {
        match id.len() {
            32 => unhex::<16>(id),
            16 => unhex::<8>(id).map(|low| {
                let mut wide = [0u8; 16];
                wide[8..].copy_from_slice(&low);
                wide
            }),
            _ => None,
        }
    };
    let sampled = |flag: &[u8]| matches!(flag, b"1" | b"d" | b"true");
    if let Some(single) = headers.get(&B3) {
        let mut parts = single.as_bytes().split(|&b| b == b'-');
        let trace_id = widen(parts.next()?)?;
        let span_id = unhex::<8>(parts.next()?)?;
        let sampled = parts.next().is_some_and(sampled);
        return Some((trace_id, span_id, sampled));
    }
    let trace_id = widen(headers.get("x-b3-traceid")?.as_bytes())?;
    let span_id = unhex::<8>(headers.get("x-b3-spanid")?.as_bytes())?;
    let sampled = headers
        .get("x-b3-sampled")
        .is_some_and(|v| sampled(v.as_bytes()))
        || headers.get("x-b3-flags").is_some_and(|v| v == "1");
    Some((trace_id, span_id, sampled))
}

/// The trace id of a request's `traceparent`, for the access log when tracing is off.
pub fn incoming_trace_id(headers: &HeaderMap) -> Option<String> {
    let (trace_id, _, _) = parse_traceparent(headers.get(&TRACEPARENT)?.as_bytes())?;
    Some(hex(&trace_id))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    Text(String),
    Int(i64),
}

impl From<String> for AttributeValue {
    fn from(value: String) -> Self {
        Self::Text(value)
    }
}
impl From<&str> for AttributeValue {
    fn from(value: &str) -> Self {
        Self::Text(value.to_owned())
    }
}
impl From<i64> for AttributeValue {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

/// A finished span, converted to OTLP on the exporter thread.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    /// The parent is the caller's span (another process), not one of ours.
    pub remote_parent: bool,
    pub tracestate: Option<String>,
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, AttributeValue)>,
    /// Set when the span failed; becomes the span's error status message.
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("invalid OTLP endpoint `{endpoint}`: {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("invalid OTLP header `{0}`")]
    Header(String),
    #[error("cannot start the OTLP exporter thread: {0}")]
    Thread(std::io::Error),
}

impl From<ExportError> for TraceError {
    fn from(err: ExportError) -> Self {
        match err {
            ExportError::Endpoint { endpoint, message } => Self::Endpoint { endpoint, message },
            ExportError::Header(name) => Self::Header(name),
        }
    }
}

/// Starts traces for requests and queues their finished spans for export.
pub struct Tracer {
    /// Traces whose id, read as OpenTelemetry's ratio sampler does, falls below this are
    /// recorded.
    sample_below: u64,
    parent_based: bool,
    b3: bool,
    queue: tokio::sync::mpsc::Sender<Command>,
    spans: Family<ResultLabels, Counter>,
    /// The exporter's limit on one export call; bounds the wait at shutdown.
    export_timeout: Duration,
}

impl Tracer {
    /// Start the exporter thread. `spans` counts spans by result (`exported`, `dropped`,
    /// `failed`).
    pub fn start(
        config: &TracingConfig,
        spans: Family<ResultLabels, Counter>,
    ) -> Result<Self, TraceError> {
        let (queue, receiver) = tokio::sync::mpsc::channel(config.otlp.max_queue.max(1));
        otlp::spawn(config, receiver, spans.clone())?;
        Ok(Self {
            sample_below: (config.sample.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64,
            parent_based: config.parent_based,
            b3: config.propagation.contains(&Propagation::B3),
            queue,
            spans,
            export_timeout: config.otlp.timeout.0,
        })
    }

    /// Continue the client's trace, or start one, and decide whether it is recorded.
    pub fn begin(&self, headers: &HeaderMap) -> TraceContext {
        let parent = headers
            .get(&TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()))
            .or_else(|| self.b3.then(|| parse_b3(headers)).flatten());
        let w3c = headers.contains_key(&TRACEPARENT) && parent.is_some();
        let (trace_id, parent, parent_sampled) = match parent {
            Some((trace_id, span_id, sampled)) => (trace_id, Some(span_id), Some(sampled)),
            None => (new_trace_id(), None, None),
        };
        let sampled = match parent_sampled {
            Some(sampled) if self.parent_based => sampled,
            _ => self.ratio_sampled(&trace_id),
        };
        TraceContext {
            trace_id,
            parent,
            span_id: new_span_id(),
            sampled,
            // tracestate belongs to a valid traceparent; without one it must not be kept.
            tracestate: w3c.then(|| headers.get(&TRACESTATE).cloned()).flatten(),
            b3: self.b3,
        }
    }

    fn ratio_sampled(&self, trace_id: &TraceId) -> bool {
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        (u64::from_be_bytes(low) >> 1) < self.sample_below
    }

    /// Queue a finished span; when the queue is full it is dropped and counted.
    pub fn record(&self, span: SpanRecord) {
        if self.queue.try_send(Command::Span(Box::new(span))).is_err() {
            self.spans
                .get_or_create(&ResultLabels { result: "dropped" })
                .inc();
        }
    }

    /// Export what is queued (at shutdown). Blocks until the exporter is done or one export
    /// timeout has passed beyond the batch in flight.
    pub fn flush(&self) {
        let (done, finished) = std::sync::mpsc::sync_channel(1);
        if self.queue.try_send(Command::Flush(done)).is_ok() {
            let _ = finished.recv_timeout(self.export_timeout * 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_parsing_follows_the_specification() {
        let (trace, span, sampled) = parse_traceparent(VALID.as_bytes()).expect("valid");
        assert_eq!(hex(&trace), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&span), "00f067aa0ba902b7");
        assert!(sampled);
        let unsampled = VALID.replace("-01", "-00");
        assert!(!parse_traceparent(unsampled.as_bytes()).expect("valid").2);
        for invalid in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero span id
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // uppercase
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // v00 with extra
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  // short trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz", // bad flags
        ] {
            assert!(parse_traceparent(invalid.as_bytes()).is_none(), "{invalid}");
        }
        // A future version is read by its first four fields.
        let future = format!("{}-extra", VALID.replacen("00", "01", 1));
        assert!(parse_traceparent(future.as_bytes()).is_some());
    }

    #[test]
    fn b3_single_and_multi_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "b3",
            HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        );
        let (trace, span, sampled) = parse_b3(&headers).expect("single");
        assert_eq!(hex(&trace), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(hex(&span), "e457b5a2e4d86bd1");
        assert!(sampled);
        let mut headers = HeaderMap::new();
        headers.insert("x-b3-traceid", HeaderValue::from_static("a3ce929d0e0e4736"));
        headers.insert("x-b3-spanid", HeaderValue::from_static("00f067aa0ba902b7"));
        headers.insert("x-b3-sampled", HeaderValue::from_static("0"));
        let (trace, _, sampled) = parse_b3(&headers).expect("multi");
        assert_eq!(hex(&trace), "0000000000000000a3ce929d0e0e4736");
        assert!(!sampled);
    }

    #[test]
    fn injected_context_names_the_attempt_span() {
        let context = TraceContext {
            trace_id: parse_traceparent(VALID.as_bytes()).expect("valid").0,
            parent: None,
            span_id: new_span_id(),
            sampled: true,
            tracestate: None,
            b3: true,
        };
        let mut headers = HeaderMap::new();
        headers.insert("tracestate", HeaderValue::from_static("stale=1"));
        headers.insert("x-b3-sampled", HeaderValue::from_static("1"));
        let attempt = [1, 2, 3, 4, 5, 6, 7, 8];
        context.inject(attempt, &mut headers);
        assert_eq!(
            headers["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
        assert_eq!(
            headers["b3"],
            "4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-1"
        );
        assert!(!headers.contains_key("tracestate"));
        assert!(!headers.contains_key("x-b3-sampled"));
    }
}
