//! A second look at HTTP/1 request framing, in front of hyper's parser.
//!
//! hyper (through httparse) accepts two things RFC 9112 lets a server refuse and that request
//! smuggling builds on: bare LF line ends in a request head, and a request carrying both
//! `Content-Length` and `Transfer-Encoding` (hyper drops the length and reads chunked). This
//! scanner follows the byte stream of a connection request by request (heads, then bodies by
//! their framing) and, when a head is ambiguous, rewrites the rest of the read so that hyper's
//! own parser fails on it: the client gets hyper's `400 Bad Request`, the connection closes,
//! and nothing reaches an upstream.
//!
//! It only follows what it understands; on anything else (a protocol upgrade, a malformed
//! chunk, an oversized head) it stops looking and leaves the connection to hyper, which
//! rejects malformed input itself.

/// Longest request head followed; past it hyper answers 431 anyway.
const MAX_HEAD: usize = 256 << 10;
/// Longest chunk-size line followed.
const MAX_CHUNK_LINE: usize = 4 << 10;

#[derive(Debug)]
enum State {
    /// Collecting a request head.
    Head,
    /// Skipping a body of known length.
    Body { remaining: u64 },
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data, then its CRLF.
    ChunkData { remaining: u64 },
    /// Reading trailer lines until the empty one.
    Trailers,
    /// Not following any more (HTTP/2, upgrades, input hyper will reject).
    Passthrough,
    /// An ambiguous head was neutralised; nothing more is passed on.
    Rejected,
}

#[derive(Debug)]
pub struct Http1Framing {
    state: State,
    /// Bytes of the current head, or of the current chunk-size / trailer line.
    line: Vec<u8>,
    /// After the current request's body: stop following (a protocol upgrade was asked for).
    upgrade_pending: bool,
    /// Nothing seen yet: an HTTP/2 preface means this is not HTTP/1.
    first_bytes: bool,
}

/// What the caller must do with the bytes just read.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Pass them on unchanged.
    Pass,
    /// Keep the first `keep` bytes and append `REJECT_TAIL` in place of the rest: hyper will
    /// then fail to parse the head and answer 400.
    Reject { keep: usize },
    /// The connection was already rejected: report end of stream.
    Closed,
}

/// Appended after the bytes kept: a NUL cannot start a header name or a request line, so
/// httparse fails on it wherever the head stands, and the blank line makes the head complete.
pub const REJECT_TAIL: &[u8] = b"\0\r\n\r\n";

impl Default for Http1Framing {
    fn default() -> Self {
        Self::new()
    }
}

impl Http1Framing {
    pub fn new() -> Self {
        Self {
            state: State::Head,
            line: Vec::new(),
            upgrade_pending: false,
            first_bytes: true,
        }
    }

    /// Follow `data`, the bytes of one read, in order.
    pub fn inspect(&mut self, data: &[u8]) -> Verdict {
        if self.first_bytes && !data.is_empty() {
            self.first_bytes = false;
            if data.starts_with(b"PRI ") {
                self.state = State::Passthrough;
            }
        }
        let mut at = 0;
        while at < data.len() {
            match &mut self.state {
                State::Passthrough => return Verdict::Pass,
                State::Rejected => return Verdict::Closed,
                State::Body { remaining } | State::ChunkData { remaining } if *remaining > 0 => {
                    let take = (*remaining).min((data.len() - at) as u64);
                    *remaining -= take;
                    at += take as usize;
                    if *remaining == 0 && matches!(self.state, State::Body { .. }) {
                        self.end_of_message();
                    }
                }
                State::Body { .. } => self.end_of_message(),
                State::ChunkData { .. } => {
                    // The CRLF after chunk data: read it as a (must be empty) line.
                    match self.take_line(data, &mut at, 2) {
                        Some(true) => self.state = State::ChunkSize,
                        Some(false) => self.state = State::Passthrough,
                        None => {}
                    }
                }
                State::ChunkSize => {
                    if let Some(complete) = self.take_line(data, &mut at, MAX_CHUNK_LINE) {
                        self.state = match (complete, chunk_size(&self.line)) {
                            (_, Some(0)) => State::Trailers,
                            (_, Some(size)) => State::ChunkData { remaining: size },
                            (_, None) => State::Passthrough,
                        };
                        self.line.clear();
                    }
                }
                State::Trailers => {
                    if let Some(empty) = self.take_line(data, &mut at, MAX_CHUNK_LINE) {
                        if empty {
                            self.end_of_message();
                        }
                        self.line.clear();
                    }
                }
                State::Head => {
                    let start = at;
                    if self.take_head(data, &mut at) == Some(false) {
                        self.state = State::Rejected;
                        self.line.clear();
                        // Keep what belonged to earlier messages; hyper already has the
                        // earlier part of this head, if any.
                        return Verdict::Reject { keep: start };
                    }
                }
            }
        }
        Verdict::Pass
    }

    fn end_of_message(&mut self) {
        self.state = if self.upgrade_pending {
            State::Passthrough
        } else {
            State::Head
        };
    }

    /// Read up to the end of a line into `self.line`. Returns `Some(line_was_empty)` when
    /// the line ended; `None` when more bytes are needed. Gives up (passthrough) on lines
    /// longer than `max`.
    fn take_line(&mut self, data: &[u8], at: &mut usize, max: usize) -> Option<bool> {
        let rest = &data[*at..];
        match memchr::memchr(b'\n', rest) {
            Some(end) => {
                self.line.extend_from_slice(&rest[..end]);
                *at += end + 1;
                let empty = self.line.is_empty() || self.line == b"\r";
                let result = Some(empty);
                if !matches!(self.state, State::ChunkSize) {
                    self.line.clear();
                }
                result
            }
            None => {
                self.line.extend_from_slice(rest);
                *at = data.len();
                if self.line.len() > max {
                    self.state = State::Passthrough;
                }
                None
            }
        }
    }

    /// Collect head bytes; at the end of the head, judge it. `Some(true)`: a sound head (the
    /// state now follows its body), `Some(false)`: ambiguous, `None`: incomplete.
    fn take_head(&mut self, data: &[u8], at: &mut usize) -> Option<bool> {
        let rest = &data[*at..];
        if self.line.is_empty() {
            // Usual case: the whole head is in this read; judge it in place, no copy.
            // Leading empty lines before a request line are allowed (RFC 9112 section 2.2).
            let mut skip = 0;
            while rest[skip..].starts_with(b"\r\n") {
                skip += 2;
            }
            let head = &rest[skip..];
            if let Some(end) = head_end(head) {
                *at += skip + end;
                return Some(self.follow(&head[..end]));
            }
            self.line.extend_from_slice(head);
        } else {
            self.line.extend_from_slice(rest);
            if let Some(end) = head_end(&self.line) {
                // The bytes after the head belong to the body: give them back.
                let after = self.line.len() - end;
                *at = data.len() - after;
                let line = std::mem::take(&mut self.line);
                let sound = self.follow(&line[..end]);
                self.line = line;
                self.line.clear();
                return Some(sound);
            }
        }
        *at = data.len();
        if self.line.len() > MAX_HEAD {
            self.state = State::Passthrough;
            self.line.clear();
        }
        None
    }

    /// Judge a complete head and follow its body; false when it is ambiguous.
    fn follow(&mut self, head: &[u8]) -> bool {
        let Some(framing) = judge(head) else {
            return false;
        };
        self.upgrade_pending = framing.upgrade;
        self.state = match framing.body {
            BodyFraming::None if framing.upgrade => State::Passthrough,
            BodyFraming::None => State::Head,
            BodyFraming::Length(n) => State::Body { remaining: n },
            BodyFraming::Chunked => State::ChunkSize,
            BodyFraming::Unknown => State::Passthrough,
        };
        true
    }
}

/// One past the LF that ends the head (an empty line), if the head is complete. Every
/// request head passes through here and `judge`: line ends are found with `memchr`, not
/// byte by byte.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for i in memchr::memchr_iter(b'\n', bytes) {
        let line = &bytes[line_start..i];
        if (line.is_empty() || line == b"\r") && line_start > 0 {
            return Some(i + 1);
        }
        line_start = i + 1;
    }
    None
}

/// The lines of a head, each without its line end.
fn head_lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = head;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(end) => (&rest[..end], &rest[end + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    })
}

enum BodyFraming {
    None,
    Length(u64),
    Chunked,
    /// Something hyper will judge (and reject) itself.
    Unknown,
}

struct Framing {
    body: BodyFraming,
    upgrade: bool,
}

/// The framing of a complete head, or `None` when it is ambiguous: a bare LF line end, or
/// both `Content-Length` and `Transfer-Encoding`.
fn judge(head: &[u8]) -> Option<Framing> {
    if memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r') {
        return None;
    }
    let mut lines = head_lines(head);
    let request_line = lines.next().unwrap_or_default();
    let connect = request_line.starts_with(b"CONNECT ");
    let (mut length, mut lengths, mut chunked, mut encodings) = (None, 0, false, 0);
    let (mut upgrade_header, mut connection_upgrade) = (false, false);
    for line in lines.filter(|l| !l.is_empty()) {
        let Some(colon) = memchr::memchr(b':', line) else {
            continue; // hyper rejects lines without a colon
        };
        let name = &line[..colon];
        let value = || trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            length = std::str::from_utf8(value())
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            encodings += 1;
            chunked = value().eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_header = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection_upgrade |= value()
                .split(|b| *b == b',')
                .any(|token| trim(token).eq_ignore_ascii_case(b"upgrade"));
        }
    }
    if lengths > 0 && encodings > 0 {
        return None;
    }
    let body = match (encodings, chunked, lengths, length) {
        (0, _, 0, _) => BodyFraming::None,
        (1, true, 0, _) => BodyFraming::Chunked,
        (0, _, 1, Some(n)) => BodyFraming::Length(n),
        _ => BodyFraming::Unknown,
    };
    Some(Framing {
        body,
        upgrade: connect || (upgrade_header && connection_upgrade),
    })
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &bytes[start..end.max(start)]
}

/// The size of a chunk-size line (`1a;ext=1\r`), if it is hex.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let size = line.split(|b| *b == b';').next().unwrap_or_default();
    let size = trim(size);
    if size.is_empty() || size.len() > 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(framing: &mut Http1Framing, pieces: &[&[u8]]) -> Vec<Verdict> {
        pieces.iter().map(|p| framing.inspect(p)).collect()
    }

    #[test]
    fn sound_requests_pass_across_reads_and_keep_alive() {
        let mut framing = Http1Framing::new();
        let verdicts = feed(
            &mut framing,
            &[
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Le",
                b"ngth: 5\r\n\r\nhel",
                b"loPOST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r",
                b"\n0\r\nX-T: 1\r\n\r\nGET /last HTTP/1.1\r\nHost: a\r\n\r\n",
            ],
        );
        assert!(verdicts.iter().all(|v| *v == Verdict::Pass), "{verdicts:?}");
        assert!(matches!(framing.state, State::Head), "{:?}", framing.state);
    }

    #[test]
    fn both_length_and_chunked_is_rejected_at_the_head() {
        let mut framing = Http1Framing::new();
        let verdict = framing.inspect(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        );
        assert_eq!(verdict, Verdict::Reject { keep: 27 });
        assert_eq!(framing.inspect(b"more"), Verdict::Closed);
    }

    #[test]
    fn bare_lf_is_rejected_even_when_split_across_reads() {
        let mut framing = Http1Framing::new();
        assert_eq!(framing.inspect(b"GET / HTTP/1.1\nHo"), Verdict::Pass);
        assert_eq!(
            framing.inspect(b"st: a\r\n\r\n"),
            Verdict::Reject { keep: 0 }
        );
    }

    #[test]
    fn http2_preface_and_upgrades_are_left_alone() {
        let mut framing = Http1Framing::new();
        assert_eq!(
            framing.inspect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\n\n\n"),
            Verdict::Pass
        );
        let mut framing = Http1Framing::new();
        framing.inspect(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert!(matches!(framing.state, State::Passthrough));
        assert_eq!(framing.inspect(b"\x81\x05\nbare"), Verdict::Pass);
    }
}
