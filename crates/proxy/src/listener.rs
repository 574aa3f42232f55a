//! Accepting client connections: bind, limit, TLS handshake with ALPN, HTTP/1.1 or HTTP/2
//! (h2c prior knowledge or `h2` over TLS), idle timeout, and draining on shutdown.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::pipeline::{self, ConnInfo};
use crate::reload::ConfigStore;
use crate::upstream::endpoint::now_ms;

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

async fn serve_connection(
    store: Arc<ConfigStore>,
    listener_name: &str,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let snapshot = store.snapshot();
    let Some(listener) = snapshot.listener(listener_name).cloned() else {
        return;
    };
    drop(snapshot);
    let _ = stream.set_nodelay(true);
    let limits = listener.limits.clone();
    let activity = Arc::new(AtomicU64::new(now_ms()));

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.0)
        .max_buf_size((limits.max_header_bytes.0 as usize).max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes.0.min(u64::from(u32::MAX)) as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)));

    let (io, is_tls): (Box<dyn Io>, bool) = match &listener.tls {
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
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            builder = if h2 {
                builder.http2_only()
            } else {
                builder.http1_only()
            };
            (Box::new(Tracked::new(tls, activity.clone())), true)
        }
        None => {
            if !listener.http2 {
                builder = builder.http1_only();
            }
            (Box::new(Tracked::new(stream, activity.clone())), false)
        }
    };

    let conn_info = Arc::new(ConnInfo {
        peer,
        tls: is_tls,
        listener: listener.clone(),
    });
    let in_flight = Arc::new(AtomicU64::new(0));
    let service = {
        let in_flight = in_flight.clone();
        let activity = activity.clone();
        service_fn(move |request| {
            let store = store.clone();
            let conn_info = conn_info.clone();
            let in_flight = in_flight.clone();
            let activity = activity.clone();
            async move {
                in_flight.fetch_add(1, Ordering::Relaxed);
                let response = pipeline::handle(store.snapshot(), &conn_info, request).await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
                activity.store(now_ms(), Ordering::Relaxed);
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let idle_limit = limits.idle_timeout.0.as_millis() as u64;
    let mut closing = false;
    loop {
        let idle_for = now_ms().saturating_sub(activity.load(Ordering::Relaxed));
        let wake_in = Duration::from_millis(idle_limit.saturating_sub(idle_for).max(10));
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%peer, err = %err, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.wait_for(|s| *s), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep(wake_in), if !closing => {
                let idle = now_ms().saturating_sub(activity.load(Ordering::Relaxed)) >= idle_limit;
                if idle && in_flight.load(Ordering::Relaxed) == 0 {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Records the time of the last byte read or written, for the idle timeout.
struct Tracked<T> {
    inner: T,
    activity: Arc<AtomicU64>,
}

impl<T> Tracked<T> {
    fn new(inner: T, activity: Arc<AtomicU64>) -> Self {
        Self { inner, activity }
    }
    fn touch(&self) {
        self.activity.store(now_ms(), Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
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
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
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
