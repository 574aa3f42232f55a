//! The access log: one line per finished request, written on a dedicated thread. The log
//! phase renders the line, from a record that borrows the request's data, into a buffer of
//! its thread, then appends it to a shared batch of at most `buffer_lines` lines that the
//! writer swaps for an empty one each time it looks; when the writer falls behind (slow
//! disk, blocked pipe) lines are dropped and counted, never waited for. No field is copied
//! into the record, and no line is an allocation of its own that another thread frees
//! (glibc frees another thread's allocation under its arena's lock).

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
    pub method: &'a str,
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

fn rfc3339<S: serde::Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_time(*time))
}

fn format_time(time: SystemTime) -> String {
    // Millisecond precision keeps lines short and sortable.
    let millis = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i128)
        .unwrap_or(0);
    ::time::OffsetDateTime::from_unix_timestamp_nanos(millis * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&::time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
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
        std::thread::Builder::new()
            .name("gatehouse-access-log".to_owned())
            .spawn(move || {
                let open = |path: &str| -> Option<Box<dyn Write>> {
                    if path == "stdout" {
                        return Some(Box::new(std::io::BufWriter::with_capacity(
                            64 << 10,
                            std::io::stdout(),
                        )));
                    }
                    match OpenOptions::new().create(true).append(true).open(path) {
                        Ok(file) => {
                            Some(Box::new(std::io::BufWriter::with_capacity(64 << 10, file)))
                        }
                        Err(err) => {
                            tracing::error!(%path, error = %err, "cannot open the access log");
                            None
                        }
                    }
                };
                let mut writer = open(&path);
                let mut taken = Vec::new();
                let mut last_flush = std::time::Instant::now();
                // The writer polls instead of being woken: a request never has to wake this
                // thread, so logging costs the request path one render into the batch.
                loop {
                    let closed = {
                        let mut batch = pending.lock().unwrap_or_else(PoisonError::into_inner);
                        std::mem::swap(&mut batch.bytes, &mut taken);
                        batch.lines = 0;
                        batch.closed
                    };
                    let wrote = !taken.is_empty();
                    if wrote {
                        if let Some(out) = writer.as_mut() {
                            if out.write_all(&taken).is_err() {
                                writer = None;
                            }
                        }
                    }
                    taken.clear();
                    if taken.capacity() > KEPT_BATCH_BYTES {
                        taken = Vec::new();
                    }
                    if closed {
                        if let Some(out) = writer.as_mut() {
                            let _ = out.flush();
                        }
                        return;
                    }
                    // Idle, or a second since the last flush: write out what is buffered.
                    if !wrote || last_flush.elapsed() >= Duration::from_secs(1) {
                        if let Some(out) = writer.as_mut() {
                            let _ = out.flush();
                        }
                        last_flush = std::time::Instant::now();
                    }
                    if reopen_flag.swap(false, Ordering::AcqRel) {
                        if let Some(out) = writer.as_mut() {
                            let _ = out.flush();
                        }
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

    /// The request target with the values of secret-looking query parameters replaced.
    pub fn redact_target(&self, path: &str, query: Option<&str>) -> String {
        let Some(query) = query else {
            return path.to_owned();
        };
        let mut out = String::with_capacity(path.len() + query.len() + 1);
        out.push_str(path);
        out.push('?');
        for (index, pair) in query.split('&').enumerate() {
            if index > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) if self.redacted.iter().any(|r| r.eq_ignore_ascii_case(name)) => {
                    out.push_str(name);
                    out.push_str("=REDACTED");
                }
                _ => out.push_str(pair),
            }
        }
        out
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
    let string = |out: &mut Vec<u8>, value: &str| {
        let _ = serde_json::to_writer(&mut *out, value);
    };
    let optional = |out: &mut Vec<u8>, value: Option<&str>| match value {
        Some(value) => {
            let _ = serde_json::to_writer(&mut *out, value);
        }
        None => out.extend_from_slice(b"null"),
    };
    out.extend_from_slice(b"{\"time\":\"");
    clock.write(record.time, out);
    out.extend_from_slice(b"\",\"request_id\":");
    string(out, record.request_id);
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
    out.extend_from_slice(b",\"method\":");
    string(out, record.method);
    out.extend_from_slice(b",\"path\":");
    string(out, record.path);
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

/// An address as `Display` writes it; IPv4, the common case, without the formatting
/// machinery (which cost more than the rest of the line), into one copy.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut length = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[length] = b'.';
                    length += 1;
                }
                let (hundreds, tens, ones) = (octet / 100, octet / 10 % 10, octet % 10);
                if hundreds > 0 {
                    text[length] = b'0' + hundreds;
                    length += 1;
                }
                if hundreds > 0 || tens > 0 {
                    text[length] = b'0' + tens;
                    length += 1;
                }
                text[length] = b'0' + ones;
                length += 1;
            }
            out.extend_from_slice(&text[..length]);
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Milliseconds with three decimals (microsecond resolution), as integers.
fn write_millis(out: &mut Vec<u8>, ms: f64) {
    let micros = (ms * 1000.0).round().max(0.0) as u64;
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(micros / 1000).as_bytes());
    out.push(b'.');
    write_thousandths(out, (micros % 1000) as u32);
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
            method: "GET",
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
        // The template format reads the same record through serde.
        assert_eq!(
            serde_json::to_value(&record).unwrap()["endpoint"],
            "127.0.0.1:8081"
        );
    }
}
