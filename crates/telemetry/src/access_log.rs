//! The access log: one line per finished request, written on a dedicated thread. The log
//! phase renders the line, from a record that borrows the request's data, into a buffer of
//! its thread, then appends it to a shared batch of at most `buffer_lines` lines that the
//! writer swaps for an empty one each time it looks; when the writer falls behind (slow
//! disk, blocked pipe) lines are dropped and counted, never waited for. No field is copied
//! into the record, and no line is an allocation of its own that another thread frees
//! (glibc frees another thread's allocation under its arena's lock).

use std::borrow::Cow;
use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use gatehouse_config::AccessLogConfig;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

/// How often the writer looks for new records; `buffer_lines` must hold what arrives
/// meanwhile (8192 lines per 20 ms is 400,000 requests a second).
const POLL: Duration = Duration::from_millis(20);

/// A batch the writer keeps between polls after a burst is freed beyond this size.
const KEPT_BATCH_BYTES: usize = 4 << 20;

/// What a thread that renders lines keeps between them.
#[derive(Default)]
struct Renderer {
    clock: Clock,
    line: Vec<u8>,
}

thread_local! {
    static RENDERER: RefCell<Renderer> = RefCell::new(Renderer::default());
}

/// Query parameters always redacted.
const DEFAULT_REDACTED: [&str; 6] = [
    "api_key",
    "access_token",
    "token",
    "key",
    "password",
    "secret",
];

/// What is known of a request when it has finished.
#[derive(Debug, Clone, Serialize)]
pub struct AccessRecord<'a> {
    /// RFC 3339 with milliseconds, UTC.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub request_id: &'a str,
    pub trace_id: Option<&'a str>,
    pub client_ip: IpAddr,
    pub consumer: Option<&'a str>,
    pub route: Option<&'a str>,
    pub service: Option<&'a str>,
    pub endpoint: Option<SocketAddr>,
    /// A method is a token (RFC 9110 section 9), so the JSON line writes it unescaped.
    #[serde(serialize_with = "method_name")]
    pub method: &'a http::Method,
    /// Path and query, query values of secret-looking parameters redacted.
    pub path: &'a str,
    pub protocol: &'static str,
    pub status: u16,
    /// The status a gRPC call ended with (`OK`, `DEADLINE_EXCEEDED`, ...); null for other
    /// requests.
    pub grpc_status: Option<&'static str>,
    pub total_ms: f64,
    pub upstream_ms: Option<f64>,
    pub gateway_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub user_agent: Option<&'a str>,
    /// The problem code when the gateway answered itself (`rate_limited`, ...).
    pub reason: Option<&'static str>,
}

/// The template format's time: the JSON line's [`Clock`], so both formats write the same
/// text.
fn rfc3339<S: serde::Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    let mut text = Vec::with_capacity(24);
    Clock::default().write(*time, &mut text);
    serializer.serialize_str(std::str::from_utf8(&text).unwrap_or_default())
}

fn method_name<S: serde::Serializer>(
    method: &&http::Method,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(method.as_str())
}

enum Format {
    Json,
    /// Literal text and field names, alternating.
    Template(Vec<Piece>),
}

enum Piece {
    Text(String),
    Field(String),
}

/// Lines rendered and not yet taken by the writer.
#[derive(Default)]
struct Batch {
    lines: usize,
    bytes: Vec<u8>,
    /// Set when the log is dropped (a reload replaced it): the writer writes what is left
    /// and ends.
    closed: bool,
}

pub struct AccessLog {
    batch: Arc<Mutex<Batch>>,
    /// Set (under the batch's lock) when a line found the batch full, cleared when the
    /// writer takes it: while the writer is stuck, lines are dropped before being rendered.
    full: Arc<AtomicBool>,
    buffer_lines: usize,
    format: Format,
    dropped: Counter,
    sample: f64,
    reopen: Arc<AtomicBool>,
    redacted: Vec<String>,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.batch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
    }
}

impl AccessLog {
    /// Start the writer thread. The file is opened on that thread, so a path that blocks
    /// (a FIFO without a reader) never holds up start-up.
    pub fn start(
        config: &AccessLogConfig,
        extra_redacted: Vec<String>,
        dropped: Counter,
    ) -> std::io::Result<Self> {
        let batch = Arc::new(Mutex::new(Batch::default()));
        let pending = batch.clone();
        let reopen = Arc::new(AtomicBool::new(false));
        let format = parse_format(&config.format.value);
        let path = config.path.clone();
        let reopen_flag = reopen.clone();
        let lost = dropped.clone();
        let full = Arc::new(AtomicBool::new(false));
        let taken_full = full.clone();
        std::thread::Builder::new()
            .name("gatehouse-access-log".to_owned())
            .spawn(move || {
                // Unbuffered: a batch is already one large write.
                let open = |path: &str| -> Option<Box<dyn Write>> {
                    if path == "stdout" {
                        return Some(Box::new(std::io::stdout()));
                    }
                    match OpenOptions::new().create(true).append(true).open(path) {
                        Ok(file) => Some(Box::new(file)),
                        Err(err) => {
                            tracing::error!(%path, error = %err, "cannot open the access log");
                            None
                        }
                    }
                };
                let mut writer = open(&path);
                let mut taken = Vec::new();
                // The writer polls instead of being woken: a request never has to wake this
                // thread, so logging costs the request path one render into the batch.
                loop {
                    let (lines, closed) = {
                        let mut batch = pending.lock().unwrap_or_else(PoisonError::into_inner);
                        std::mem::swap(&mut batch.bytes, &mut taken);
                        taken_full.store(false, Ordering::Relaxed);
                        (std::mem::take(&mut batch.lines), batch.closed)
                    };
                    if lines > 0 {
                        let written = writer
                            .as_mut()
                            .map(|out| out.write_all(&taken).and_then(|()| out.flush()));
                        match written {
                            Some(Ok(())) => {}
                            Some(Err(err)) => {
                                tracing::error!(
                                    %path,
                                    error = %err,
                                    "cannot write the access log; lines are dropped until it is reopened (SIGUSR1)"
                                );
                                writer = None;
                                lost.inc_by(lines as u64);
                            }
                            // Not open (see the error at opening): counted as dropped.
                            None => {
                                lost.inc_by(lines as u64);
                            }
                        }
                    }
                    taken.clear();
                    if taken.capacity() > KEPT_BATCH_BYTES {
                        taken = Vec::new();
                    }
                    if closed {
                        return;
                    }
                    if reopen_flag.swap(false, Ordering::AcqRel) {
                        writer = open(&path);
                        tracing::info!(%path, "access log reopened");
                    }
                    std::thread::sleep(POLL);
                }
            })?;
        let mut redacted: Vec<String> = DEFAULT_REDACTED.iter().map(|s| (*s).to_owned()).collect();
        redacted.extend(config.redact_query.iter().cloned());
        redacted.extend(extra_redacted);
        Ok(Self {
            batch,
            full,
            buffer_lines: config.buffer_lines.max(1),
            format,
            dropped,
            sample: config.sample,
            reopen,
            redacted,
        })
    }

    /// Whether this request is among the logged share (server errors always are).
    pub fn wants(&self, status: u16, draw: f64) -> bool {
        status >= 500 || self.sample >= 1.0 || draw < self.sample
    }

    /// Render a record into the batch, or count it dropped when the batch is full; never
    /// waits for the writer.
    pub fn log(&self, record: &AccessRecord) {
        if self.full.load(Ordering::Relaxed) {
            self.dropped.inc();
            return;
        }
        RENDERER.with_borrow_mut(|renderer| {
            // Rendered outside the lock: worker threads hold it only to append.
            renderer.line.clear();
            render(
                &self.format,
                record,
                &mut renderer.clock,
                &mut renderer.line,
            );
            let mut batch = self.batch.lock().unwrap_or_else(PoisonError::into_inner);
            if batch.lines >= self.buffer_lines {
                self.full.store(true, Ordering::Relaxed);
                drop(batch);
                self.dropped.inc();
                return;
            }
            batch.bytes.extend_from_slice(&renderer.line);
            batch.lines += 1;
        });
    }

    /// Reopen the file before the next line (log rotation: SIGUSR1).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// The request target (path and query) with the values of secret-looking query
    /// parameters replaced; borrowed from `uri` when there is nothing to replace.
    pub fn redact_target<'u>(&self, uri: &'u http::Uri) -> Cow<'u, str> {
        let path = uri.path();
        let Some(query) = uri.query() else {
            return Cow::Borrowed(path);
        };
        let secret = |pair: &str| {
            pair.split_once('=')
                .is_some_and(|(name, _)| self.redacted.iter().any(|r| r.eq_ignore_ascii_case(name)))
        };
        if !query.split('&').any(secret) {
            return Cow::Borrowed(uri.path_and_query().map_or(path, |p| p.as_str()));
        }
        let mut out = String::with_capacity(path.len() + query.len() + 1);
        out.push_str(path);
        out.push('?');
        for (index, pair) in query.split('&').enumerate() {
            if index > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) if secret(pair) => {
                    out.push_str(name);
                    out.push_str("=REDACTED");
                }
                _ => out.push_str(pair),
            }
        }
        Cow::Owned(out)
    }
}

fn parse_format(format: &str) -> Format {
    if format == "json" {
        return Format::Json;
    }
    let mut pieces = Vec::new();
    let mut rest = format;
    while let Some(start) = rest.find('{') {
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        if start > 0 {
            pieces.push(Piece::Text(rest[..start].to_owned()));
        }
        pieces.push(Piece::Field(rest[start + 1..start + end].to_owned()));
        rest = &rest[start + end + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    Format::Template(pieces)
}

fn render(format: &Format, record: &AccessRecord, clock: &mut Clock, out: &mut Vec<u8>) {
    match format {
        Format::Json => write_json(record, clock, out),
        Format::Template(pieces) => {
            let value = serde_json::to_value(record).unwrap_or_default();
            for piece in pieces {
                match piece {
                    Piece::Text(text) => out.extend_from_slice(text.as_bytes()),
                    Piece::Field(name) => match value.get(name) {
                        Some(serde_json::Value::String(s)) => out.extend_from_slice(s.as_bytes()),
                        Some(serde_json::Value::Null) | None => out.push(b'-'),
                        Some(other) => out.extend_from_slice(other.to_string().as_bytes()),
                    },
                }
            }
            out.push(b'\n');
        }
    }
}

/// The JSON line, written field by field into a reused buffer: no intermediate value, the
/// time formatted from a per-second cache, durations as fixed-point milliseconds.
fn write_json(record: &AccessRecord, clock: &mut Clock, out: &mut Vec<u8>) {
    let optional = |out: &mut Vec<u8>, value: Option<&str>| match value {
        Some(value) => write_json_string(out, value),
        None => out.extend_from_slice(b"null"),
    };
    out.extend_from_slice(b"{\"time\":\"");
    clock.write(record.time, out);
    out.extend_from_slice(b"\",\"request_id\":");
    write_json_string(out, record.request_id);
    out.extend_from_slice(b",\"trace_id\":");
    optional(out, record.trace_id);
    out.extend_from_slice(b",\"client_ip\":\"");
    write_ip(out, record.client_ip);
    out.push(b'"');
    out.extend_from_slice(b",\"consumer\":");
    optional(out, record.consumer);
    out.extend_from_slice(b",\"route\":");
    optional(out, record.route);
    out.extend_from_slice(b",\"service\":");
    optional(out, record.service);
    out.extend_from_slice(b",\"endpoint\":");
    match record.endpoint {
        Some(endpoint) => {
            out.push(b'"');
            write_ip(out, endpoint.ip());
            out.push(b':');
            out.extend_from_slice(itoa::Buffer::new().format(endpoint.port()).as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"method\":\"");
    out.extend_from_slice(record.method.as_str().as_bytes());
    out.push(b'"');
    out.extend_from_slice(b",\"path\":");
    write_json_string(out, record.path);
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(b",\"protocol\":\"");
    out.extend_from_slice(record.protocol.as_bytes());
    out.extend_from_slice(b"\",\"status\":");
    out.extend_from_slice(digits.format(record.status).as_bytes());
    out.extend_from_slice(b",\"grpc_status\":");
    optional(out, record.grpc_status);
    out.extend_from_slice(b",\"total_ms\":");
    write_millis(out, record.total_ms);
    out.extend_from_slice(b",\"upstream_ms\":");
    match record.upstream_ms {
        Some(ms) => write_millis(out, ms),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"gateway_ms\":");
    write_millis(out, record.gateway_ms);
    out.extend_from_slice(b",\"bytes_in\":");
    out.extend_from_slice(digits.format(record.bytes_in).as_bytes());
    out.extend_from_slice(b",\"bytes_out\":");
    out.extend_from_slice(digits.format(record.bytes_out).as_bytes());
    out.extend_from_slice(b",\"user_agent\":");
    optional(out, record.user_agent);
    out.extend_from_slice(b",\"reason\":");
    optional(out, record.reason);
    out.extend_from_slice(b"}\n");
}

/// A JSON string. Most values need no escaping: checking that without a branch per byte
/// and copying once is cheaper than escaping byte by byte (measured: docs/benchmarks.md).
fn write_json_string(out: &mut Vec<u8>, value: &str) {
    let needs_escaping = value.bytes().fold(false, |found, b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if needs_escaping {
        let _ = serde_json::to_writer(&mut *out, value);
    } else {
        out.reserve(value.len() + 2);
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    }
}

/// An address as `Display` writes it; IPv4, the common case, without the formatting
/// machinery (which cost more than the rest of the line), into one copy.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = [0u8; 16];
            let mut length = 0;
            for octet in v4.octets() {
                let [digits, a, b, c] = OCTET_TEXT[usize::from(octet)];
                text[length..length + 3].copy_from_slice(&[a, b, c]);
                length += usize::from(digits);
                text[length] = b'.';
                length += 1;
            }
            out.extend_from_slice(&text[..length - 1]);
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Each octet's decimal text: its length, then the digits (padded with zeros past the
/// length, which the next write overwrites).
const OCTET_TEXT: [[u8; 4]; 256] = {
    let mut table = [[0u8; 4]; 256];
    let mut octet = 0;
    while octet < 256 {
        let (hundreds, tens, ones) = (
            (octet / 100) as u8,
            (octet / 10 % 10) as u8,
            (octet % 10) as u8,
        );
        table[octet] = if octet >= 100 {
            [3, b'0' + hundreds, b'0' + tens, b'0' + ones]
        } else if octet >= 10 {
            [2, b'0' + tens, b'0' + ones, 0]
        } else {
            [1, b'0' + ones, 0, 0]
        };
        octet += 1;
    }
    table
};

/// Milliseconds with three decimals (microsecond resolution), from one integer.
fn write_millis(out: &mut Vec<u8>, ms: f64) {
    // `as` saturates: negative and NaN durations are written as zero.
    let micros = (ms * 1000.0 + 0.5) as u64;
    let mut buffer = itoa::Buffer::new();
    let digits = buffer.format(micros).as_bytes();
    match digits.len().checked_sub(3) {
        Some(point) if point > 0 => {
            out.extend_from_slice(&digits[..point]);
            out.push(b'.');
            out.extend_from_slice(&digits[point..]);
        }
        _ => {
            out.extend_from_slice(&b"0.000"[..5 - digits.len()]);
            out.extend_from_slice(digits);
        }
    }
}

/// `n` (under 1000) as three digits, zero-padded.
fn write_thousandths(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&[
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

/// RFC 3339 UTC timestamps with milliseconds; the part up to the seconds is formatted once
/// per second.
#[derive(Default)]
struct Clock {
    second: i64,
    prefix: String,
}

impl Clock {
    fn write(&mut self, time: SystemTime, out: &mut Vec<u8>) {
        let since = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let second = since.as_secs() as i64;
        if second != self.second || self.prefix.is_empty() {
            self.second = second;
            self.prefix = ::time::OffsetDateTime::from_unix_timestamp(second)
                .ok()
                .and_then(|t| {
                    t.format(&::time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map(|s| s.trim_end_matches('Z').to_owned())
                .unwrap_or_default();
        }
        out.extend_from_slice(self.prefix.as_bytes());
        out.push(b'.');
        write_thousandths(out, since.subsec_millis());
        out.push(b'Z');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_addresses_are_written_as_display_would() {
        let mut out = Vec::new();
        for ip in [
            "10.0.0.255",
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "1.20.100.9",
            "::1",
            "2001:db8::7",
        ] {
            out.clear();
            write_ip(&mut out, ip.parse().unwrap());
            assert_eq!(out, ip.as_bytes());
        }
        for (ms, written) in [
            (0.0, "0.000"),
            (0.0004, "0.000"),
            (0.0005, "0.001"),
            (1.5, "1.500"),
            (12.3456, "12.346"),
            (1234.0, "1234.000"),
        ] {
            out.clear();
            write_millis(&mut out, ms);
            assert_eq!(String::from_utf8_lossy(&out), written);
        }
    }

    #[test]
    fn strings_are_written_as_serde_json_would() {
        let check = |value: &str| {
            let mut out = Vec::new();
            write_json_string(&mut out, value);
            assert_eq!(out, serde_json::to_vec(value).unwrap(), "{value:?}");
        };
        for value in [
            "",
            "req-1",
            "caf\u{e9} \u{1F600}",
            "quote \" inside",
            "back\\slash",
            "tab\tand\nnewline\u{1}\u{1f}",
            "\u{7f} is not escaped",
            "a long value, long enough to be checked in more than one vector \"",
            "0123456\"89abcdef",
            "01234567\\9abcdef",
            "012345678\u{1f}abcdef",
            "\u{80}\u{9f}\u{a0}\u{ff}\u{100}\u{7ff}\u{800}\u{ffff}",
        ] {
            check(value);
        }
        // Every ASCII byte at every position of a longer value.
        for byte in 0u8..0x80 {
            for position in 0..19 {
                let mut value = vec![b'a'; 19];
                value[position] = byte;
                check(&String::from_utf8(value).unwrap());
            }
        }
    }

    #[test]
    fn a_json_line_carries_every_field() {
        let record = AccessRecord {
            time: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_042),
            request_id: "req-1",
            trace_id: None,
            client_ip: "192.0.2.7".parse().unwrap(),
            consumer: Some("acme"),
            route: Some("books"),
            service: Some("backend"),
            endpoint: Some("127.0.0.1:8081".parse().unwrap()),
            method: &http::Method::GET,
            path: "/books/1",
            protocol: "HTTP/1.1",
            status: 200,
            grpc_status: None,
            total_ms: 1.25,
            upstream_ms: Some(0.5),
            gateway_ms: 0.75,
            bytes_in: 0,
            bytes_out: 42,
            user_agent: Some("curl/8"),
            reason: None,
        };
        let mut out = Vec::new();
        write_json(&record, &mut Clock::default(), &mut out);
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["time"], "2023-11-14T22:13:20.042Z");
        assert_eq!(line["client_ip"], "192.0.2.7");
        assert_eq!(line["endpoint"], "127.0.0.1:8081");
        assert_eq!(line["status"], 200);
        assert_eq!(line["total_ms"], 1.25);
        assert_eq!(line["upstream_ms"], 0.5);
        assert_eq!(line["gateway_ms"], 0.75);
        assert_eq!(line["bytes_out"], 42);
        assert_eq!(line["trace_id"], serde_json::Value::Null);
        // The template format reads the same record through serde, time included.
        let value = serde_json::to_value(&record).unwrap();
        assert_eq!(value["endpoint"], "127.0.0.1:8081");
        assert_eq!(value["time"], "2023-11-14T22:13:20.042Z");
        let whole_second = AccessRecord {
            time: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
            ..record
        };
        assert_eq!(
            serde_json::to_value(&whole_second).unwrap()["time"],
            "2023-11-14T22:13:20.000Z",
            "milliseconds are always written, as in the JSON line"
        );
    }
}
