//! Accepting client connections: bind, limit, TLS handshake with ALPN, HTTP/1.1 or HTTP/2
//! (h2c prior knowledge or `h2` over TLS), idle timeout, and draining on shutdown.
//!
//! HTTP/1.1 connections start on the lean server (`h1.rs`), which hands a connection to
//! hyper at its first request that is not plain (upgrades, streaming uploads, `Expect`,
//! doubtful framing, HTTP/2 prior knowledge).

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use futures_util::FutureExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::body::{BoxError, ProxyBody, RequestBody};
use crate::framing::{Http1Framing, Verdict, REJECT_TAIL};
use crate::pipeline::{self, ConnInfo};
use crate::reload::ConfigStore;
use crate::upstream::endpoint::now_ms;

mod h1;

use h1::{Closing, Ended};

#[derive(Debug, thiserror::Error)]
#[error("cannot bind listener `{name}` on {addr}: {source}")]
pub struct BindError {
    pub name: String,
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// A bound listener, ready to serve.
pub struct BoundListener {
    name: String,
    socket: TcpListener,
    connections: Arc<Semaphore>,
    max_connections: usize,
}

impl BoundListener {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Bind every listener of the current configuration (before serving, so bind errors surface
/// at start-up).
pub async fn bind_all(store: &ConfigStore) -> Result<Vec<BoundListener>, BindError> {
    let snapshot = store.snapshot();
    let mut bound = Vec::new();
    for listener in &snapshot.config.listeners {
        let Some(runtime) = snapshot.listener(&listener.name.value) else {
            continue;
        };
        let socket = TcpListener::bind(runtime.addr)
            .await
            .map_err(|source| BindError {
                name: runtime.name.clone(),
                addr: runtime.addr,
                source,
            })?;
        let max_connections = runtime.limits.max_connections as usize;
        bound.push(BoundListener {
            name: runtime.name.clone(),
            socket,
            connections: Arc::new(Semaphore::new(max_connections)),
            max_connections,
        });
    }
    Ok(bound)
}

/// Serve until `shutdown` turns true, then stop accepting and give open connections until
/// `drain` to finish their requests.
pub async fn serve(
    store: Arc<ConfigStore>,
    listener: BoundListener,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut stop = shutdown.clone();
    loop {
        let permit = tokio::select! {
            permit = listener.connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.socket.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %listener.name, %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let store = store.clone();
        let name = listener.name.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve_connection(store, &name, stream, peer, shutdown).await;
            drop(permit);
        });
    }
    drop(listener.socket);
    let all = listener.max_connections as u32;
    let drained = tokio::time::timeout(drain, listener.connections.acquire_many(all)).await;
    if drained.is_err() {
        tracing::warn!(listener = %listener.name, "drain deadline passed with connections still open");
    }
}

/// Per-connection timing state shared by the IO wrapper, the service and the connection loop.
struct ConnState {
    /// When the last request started or finished (ms, see `now_ms`). Requests, not bytes:
    /// HTTP/2 keep-alive pings must not keep an unused connection open forever.
    activity: AtomicU64,
    /// When bytes of a request head started to arrive with no request in progress; 0 = none.
    head_started: AtomicU64,
    in_flight: AtomicU64,
    /// HTTP/2 multiplexes: request-head deadlines apply only before its first request.
    http2: AtomicBool,
}

/// Counts a request as in progress until dropped (also when the client goes away mid-request).
struct RequestGuard(Arc<ConnState>);

impl RequestGuard {
    fn start(state: &Arc<ConnState>, version: http::Version) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        state.head_started.store(0, Ordering::Relaxed);
        if version == http::Version::HTTP_2 {
            state.http2.store(true, Ordering::Relaxed);
        }
        Self(state.clone())
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.head_started.store(0, Ordering::Relaxed);
        self.0.activity.store(now_ms(), Ordering::Relaxed);
    }
}

#[derive(Clone, Copy)]
enum Protocol {
    /// Plain listener with HTTP/2 enabled: HTTP/1.1 or h2c prior knowledge, detected.
    Detect,
    Http1,
    Http2,
}

async fn serve_connection(
    store: Arc<ConfigStore>,
    listener_name: &str,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let snapshot = store.snapshot();
    let Some(listener) = snapshot.listener(listener_name).cloned() else {
        return;
    };
    drop(snapshot);
    let _open = OpenConnection::count(&store.telemetry, listener_name);
    let _ = stream.set_nodelay(true);
    let limits = listener.limits.clone();
    let now = now_ms();
    let state = Arc::new(ConnState {
        activity: AtomicU64::new(now),
        // The connection itself starts the clock for the first request head.
        head_started: AtomicU64::new(now),
        in_flight: AtomicU64::new(0),
        http2: AtomicBool::new(false),
    });

    let mut client_certificate = None;
    let (stream, protocol, is_tls): (Box<dyn Io>, Protocol, bool) = match &listener.tls {
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(limits.header_read_timeout.0, acceptor.accept(stream)).await;
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, %err, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            client_certificate = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(crate::tls::client_certificate_identity)
                .map(Arc::new);
            // ALPN decided the protocol; the client must stick to it.
            let protocol = match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                _ => Protocol::Http1,
            };
            (Box::new(tls), protocol, true)
        }
        None => {
            let protocol = if listener.http2 {
                Protocol::Detect
            } else {
                Protocol::Http1
            };
            (Box::new(stream), protocol, false)
        }
    };

    let io = Tracked::new(stream, state.clone());
    let conn_info = Arc::new(ConnInfo {
        peer,
        peer_ip: http::HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| http::HeaderValue::from_static("unknown")),
        tls: is_tls,
        client_certificate,
        listener: listener.clone(),
    });
    let handler = Handler {
        store,
        conn_info,
        state: state.clone(),
    };
    let closing = Arc::new(Closing::default());
    let connection: Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> = match protocol {
        Protocol::Http2 => {
            state.http2.store(true, Ordering::Relaxed);
            Box::pin(serve_hyper(
                io,
                protocol,
                handler,
                limits.clone(),
                closing.clone(),
            ))
        }
        Protocol::Http1 | Protocol::Detect => {
            let closing = closing.clone();
            let limits = limits.clone();
            let max_head = limits.max_header_bytes.0 as usize;
            Box::pin(async move {
                let lean = h1::serve(io, |request| handler.call(request), &closing, max_head);
                match lean.await? {
                    Ended::Closed => Ok(()),
                    Ended::Handover { io, read } => {
                        let io = io.hand_over(read);
                        serve_hyper(io, protocol, handler, limits, closing).await
                    }
                }
            })
        }
    };
    drive(connection, &closing, &state, &limits, shutdown, peer).await;
}

/// The connection's request handler, shared by the lean HTTP/1.1 server and hyper.
#[derive(Clone)]
struct Handler {
    store: Arc<ConfigStore>,
    conn_info: Arc<ConnInfo>,
    state: Arc<ConnState>,
}

impl Handler {
    fn call(
        &self,
        request: http::Request<RequestBody>,
    ) -> impl Future<Output = http::Response<GuardedBody>> + Send + 'static {
        let guard = RequestGuard::start(&self.state, request.version());
        // A combinator, not an `async` block: a block would hold the request and then the
        // pipeline's future beside it, and each request's state is written in full.
        pipeline::handle(
            self.store.snapshot(),
            self.conn_info.clone(),
            self.store.telemetry.clone(),
            request,
        )
        .map(move |response| {
            response.map(|inner| GuardedBody {
                inner,
                _guard: guard,
            })
        })
    }
}

/// Serve a connection with hyper: HTTP/2, HTTP/1.1 (or either, detected) with upgrades.
async fn serve_hyper(
    io: Tracked<Box<dyn Io>>,
    protocol: Protocol,
    handler: Handler,
    limits: gatehouse_config::ListenerLimits,
    closing: Arc<Closing>,
) -> Result<(), BoxError> {
    let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let response = handler.call(request.map(RequestBody::Incoming));
        async move { Ok::<_, std::convert::Infallible>(response.await) }
    });
    let io = TokioIo::new(io);
    let max_header_list = limits.max_header_bytes.0.min(u64::from(u32::MAX)) as u32;
    let timer = TokioTimer::new();
    // hyper's own header timeout would also cut idle keep-alive connections; `drive`
    // enforces `header_read_timeout` and `idle_timeout` separately.
    match protocol {
        Protocol::Detect => {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(timer.clone())
                .header_read_timeout(None)
                .max_buf_size((limits.max_header_bytes.0 as usize).max(8192));
            builder
                .http2()
                .timer(timer)
                .max_header_list_size(max_header_list)
                .keep_alive_interval(Some(Duration::from_secs(30)));
            let connection = builder.serve_connection_with_upgrades(io, service);
            until_closed(connection, |c| c.graceful_shutdown(), &closing).await
        }
        Protocol::Http1 => {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(timer)
                .header_read_timeout(None)
                .max_buf_size((limits.max_header_bytes.0 as usize).max(8192))
                .serve_connection(io, service)
                .with_upgrades();
            until_closed(connection, |c| c.graceful_shutdown(), &closing).await
        }
        Protocol::Http2 => {
            let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(timer)
                .max_header_list_size(max_header_list)
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .serve_connection(io, service);
            until_closed(connection, |c| c.graceful_shutdown(), &closing).await
        }
    }
}

/// Run a hyper connection to its end, shutting it down gracefully once `closing` is asked.
async fn until_closed<C, E>(
    connection: C,
    graceful_shutdown: fn(Pin<&mut C>),
    closing: &Closing,
) -> Result<(), BoxError>
where
    C: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => return result.map_err(Into::into),
        () = closing.requested() => {}
    }
    graceful_shutdown(connection.as_mut());
    connection.await.map_err(Into::into)
}

/// Run a connection to its end, enforcing the request-head deadline (slowloris, and silent
/// connections), the idle timeout, and graceful shutdown.
async fn drive(
    connection: Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>,
    closing: &Closing,
    state: &ConnState,
    limits: &gatehouse_config::ListenerLimits,
    mut shutdown: watch::Receiver<bool>,
    peer: SocketAddr,
) {
    let mut connection = connection;
    let head_limit = limits.header_read_timeout.0.as_millis() as u64;
    let idle_limit = limits.idle_timeout.0.as_millis() as u64;
    // The timer and the shutdown signal wake the task through `supervision`, which notes it: a
    // wake-up for the connection's own I/O (two a request) polls only the connection.
    let supervision = Arc::new(Supervision::default());
    let supervision_waker = Waker::from(supervision.clone());
    let mut shutdown_signal = pin!(shutdown.wait_for(|s| *s));
    let first_check = Deadlines::of(state, head_limit, idle_limit).next_check(now_ms(), head_limit);
    let mut timer = pin!(tokio::time::sleep(first_check));
    // Closing was asked: the connection finishes what it serves, then ends on its own.
    let mut closed = false;
    loop {
        let event = poll_fn(|cx| {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                return Poll::Ready(Supervised::Ended(result));
            }
            if closed {
                return Poll::Pending;
            }
            supervision.task.register(cx.waker());
            if !supervision.woken.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            let mut watched = Context::from_waker(&supervision_waker);
            if shutdown_signal.as_mut().poll(&mut watched).is_ready() {
                return Poll::Ready(Supervised::Shutdown);
            }
            if timer.as_mut().poll(&mut watched).is_ready() {
                return Poll::Ready(Supervised::Check);
            }
            Poll::Pending
        })
        .await;
        match event {
            Supervised::Ended(result) => {
                if let Err(err) = result {
                    tracing::debug!(%peer, %err, "connection ended with an error");
                }
                return;
            }
            Supervised::Shutdown => {
                closing.begin();
                closed = true;
            }
            Supervised::Check => {
                // Requests may have come and gone while we slept: judge the state as it is now.
                let now = now_ms();
                let idle = state.in_flight.load(Ordering::Relaxed) == 0;
                let deadlines = Deadlines::of(state, head_limit, idle_limit);
                if idle && deadlines.head.is_some_and(|head| now >= head) {
                    tracing::debug!(%peer, "no complete request head within the header read timeout");
                    return;
                }
                if idle && deadlines.head.is_none() && now >= deadlines.idle {
                    closing.begin();
                    closed = true;
                } else {
                    let wake_in = deadlines.next_check(now, head_limit);
                    timer.as_mut().reset(tokio::time::Instant::now() + wake_in);
                    // The new deadline needs a poll to be waited for.
                    supervision.woken.store(true, Ordering::Release);
                }
            }
        }
    }
}

/// A connection's deadlines, in `now_ms` milliseconds.
struct Deadlines {
    /// For the request head being read (HTTP/1 only), if one has started.
    head: Option<u64>,
    /// For the connection to stay idle.
    idle: u64,
}

impl Deadlines {
    fn of(state: &ConnState, head_limit: u64, idle_limit: u64) -> Deadlines {
        let head_started = state.head_started.load(Ordering::Relaxed);
        let head_clock = head_started != 0 && !state.http2.load(Ordering::Relaxed);
        Deadlines {
            head: head_clock.then(|| head_started.saturating_add(head_limit)),
            idle: state.activity.load(Ordering::Relaxed) + idle_limit,
        }
    }

    /// How long until `drive` next judges the connection: the next deadline, and at least
    /// every header read timeout, so a request head that starts arriving meanwhile is
    /// noticed within twice that timeout.
    fn next_check(&self, now: u64, head_limit: u64) -> Duration {
        Duration::from_millis(
            self.head
                .unwrap_or(u64::MAX)
                .min(self.idle)
                .min(now + head_limit)
                .saturating_sub(now)
                .max(5),
        )
    }
}

/// What woke `drive` with something to do.
enum Supervised {
    Ended(Result<(), BoxError>),
    Shutdown,
    Check,
}

/// The waker `drive` gives its timer and shutdown signal: it notes that one of them fired
/// and wakes the connection's task.
struct Supervision {
    /// Set by a wake-up from the timer or the shutdown signal (and at the start, so both
    /// are polled once and register).
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Default for Supervision {
    fn default() -> Self {
        Supervision {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }
    }
}

impl Wake for Supervision {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Notes when request-head bytes start arriving on a connection with no request in progress
/// (for the header read timeout), and puts HTTP/1 framing through `framing` (smuggling).
struct Tracked<T> {
    inner: T,
    state: Arc<ConnState>,
    /// HTTP/1 served by hyper: the smuggling check in front of its parser. The lean server
    /// judges its own requests and hands any doubtful one over.
    framing: Option<Http1Framing>,
    /// Bytes the lean server read and did not serve, read again before the stream's.
    replay: bytes::Bytes,
}

impl<T> Tracked<T> {
    fn new(inner: T, state: Arc<ConnState>) -> Self {
        Self {
            inner,
            state,
            framing: None,
            replay: bytes::Bytes::new(),
        }
    }

    /// The connection passes from the lean server to hyper: hyper reads `read` first, and
    /// every byte goes through the framing check (HTTP/2 prior knowledge passes it).
    fn hand_over(self, read: bytes::Bytes) -> Self {
        Self {
            framing: Some(Http1Framing::new()),
            replay: read,
            ..self
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = if this.replay.is_empty() {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else {
            let take = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay.split_to(take));
            Poll::Ready(Ok(()))
        };
        if buf.filled().len() == before {
            return result;
        }
        if this.state.in_flight.load(Ordering::Relaxed) == 0 {
            let _ = this.state.head_started.compare_exchange(
                0,
                now_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        if let Some(framing) = &mut this.framing {
            match framing.inspect(&buf.filled()[before..]) {
                Verdict::Pass => {}
                Verdict::Reject { keep } => {
                    tracing::debug!("ambiguous HTTP/1 request framing refused");
                    buf.set_filled(before + keep);
                    if buf.remaining() < REJECT_TAIL.len() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "ambiguous HTTP/1 request framing",
                        )));
                    }
                    buf.put_slice(REJECT_TAIL);
                }
                Verdict::Closed => buf.set_filled(before),
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request counted as in progress until the last byte is
/// sent (or the body is dropped), so idle and head timers never cut a streaming response.
struct GuardedBody {
    inner: ProxyBody,
    _guard: RequestGuard,
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Counts a client connection in `gatehouse_open_connections` while it lives.
struct OpenConnection(prometheus_client::metrics::gauge::Gauge);

impl OpenConnection {
    fn count(telemetry: &gatehouse_telemetry::Telemetry, listener: &str) -> Self {
        let gauge = telemetry
            .metrics
            .open_connections
            .get_or_create(&gatehouse_telemetry::metrics::ListenerLabels {
                listener: listener.to_owned(),
            })
            .clone();
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}
