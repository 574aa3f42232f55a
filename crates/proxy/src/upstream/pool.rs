//! Connections to upstream endpoints: connect (TCP, optional TLS with ALPN), HTTP/1.1
//! connections kept idle per endpoint and reused, one shared HTTP/2 connection per endpoint.
//!
//! Written for the proxy's request path instead of a general-purpose client: no pool-key
//! hashing or global pool lock, no connect racing a checkout, and an HTTP/1.1 connection goes
//! back to its endpoint's idle list when its response body ends, without a task per request.
//!
//! A plaintext HTTP/1.1 request whose body the gateway holds whole (most requests) goes
//! through the lean client of `h1.rs`; streaming bodies, upgrades and TLS go through hyper.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::endpoint::{now_ms, Endpoint};
use super::{h1, OutgoingBody};
use crate::body::{BoxError, ProxyBody};

/// Why an exchange with an upstream failed.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (TCP or TLS): nothing reached the upstream.
    Connect(String),
    /// The exchange failed after the request was handed to a connection.
    Exchange(hyper::Error),
    /// The exchange failed on a connection of the lean client.
    Direct(h1::Error),
}

/// How to open connections to a service's endpoints.
pub struct Connector {
    pub tls: Option<(tokio_rustls::TlsConnector, Option<ServerName<'static>>)>,
    pub http2: bool,
    pub connect_timeout: Duration,
    /// Idle HTTP/1.1 connections older than this are not reused.
    pub idle_timeout: Duration,
}

/// The connections of one endpoint.
#[derive(Default)]
pub struct Pool {
    idle: IdleList<http1::SendRequest<ProxyBody>>,
    /// The lean client's connections.
    idle_direct: IdleList<h1::Connection>,
    shared_h2: Mutex<Option<http2::SendRequest<ProxyBody>>>,
}

/// Idle keep-alive connections with the time each became idle (ms); the most recently used
/// at the back, reused first.
struct IdleList<C>(Mutex<VecDeque<(C, u64)>>);

impl<C> Default for IdleList<C> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<C> IdleList<C> {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(C, u64)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used connection younger than `idle_timeout_ms` that is `usable`;
    /// older or unusable ones met on the way are closed.
    fn take(&self, idle_timeout_ms: u64, usable: impl Fn(&C) -> bool) -> Option<C> {
        let now = now_ms();
        let mut idle = self.lock();
        while let Some((connection, since)) = idle.pop_back() {
            if now.saturating_sub(since) < idle_timeout_ms && usable(&connection) {
                return Some(connection);
            }
        }
        None
    }

    fn put(&self, connection: C) {
        self.lock().push_back((connection, now_ms()));
    }

    /// Close connections idle for `idle_timeout_ms` or more, or no longer `usable`.
    fn prune(&self, idle_timeout_ms: u64, usable: impl Fn(&C) -> bool) {
        let now = now_ms();
        self.lock().retain(|(connection, since)| {
            now.saturating_sub(*since) < idle_timeout_ms && usable(connection)
        });
    }
}

impl Pool {
    pub(super) fn take_direct(&self, idle_timeout_ms: u64) -> Option<h1::Connection> {
        self.idle_direct
            .take(idle_timeout_ms, h1::Connection::is_usable)
    }

    pub(super) fn put_direct(&self, connection: h1::Connection) {
        self.idle_direct.put(connection);
    }

    fn take_idle(&self, idle_timeout_ms: u64) -> Option<http1::SendRequest<ProxyBody>> {
        self.idle
            .take(idle_timeout_ms, |sender| !sender.is_closed())
    }

    fn put_idle(&self, sender: http1::SendRequest<ProxyBody>) {
        if !sender.is_closed() {
            self.idle.put(sender);
        }
    }

    /// Close connections idle for longer than `idle_timeout_ms`, and those their upstream
    /// closed while they waited.
    pub fn prune(&self, idle_timeout_ms: u64) {
        self.idle
            .prune(idle_timeout_ms, |sender| !sender.is_closed());
        self.idle_direct
            .prune(idle_timeout_ms, h1::Connection::is_usable);
    }
}

impl Connector {
    /// Send `request` to `endpoint`; the response body returns an HTTP/1.1 connection to
    /// the endpoint's pool when it ends.
    pub async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        request: Request<OutgoingBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let (parts, body) = request.into_parts();
        match body {
            OutgoingBody::Buffered(body) if self.is_direct(&parts.method, &parts.headers) => {
                let target = parts
                    .uri
                    .path_and_query()
                    .map_or("/", |target| target.as_str());
                self.send_direct(endpoint, &parts.method, target, &parts.headers, &body)
                    .await
            }
            body => {
                self.send_other(endpoint, Request::from_parts(parts, body))
                    .await
            }
        }
    }

    /// Whether the lean HTTP/1.1 client takes a request with a buffered body: a plaintext
    /// HTTP/1.1 upstream, and no protocol switch.
    pub fn is_direct(&self, method: &http::Method, headers: &http::HeaderMap) -> bool {
        !self.http2
            && self.tls.is_none()
            && method != http::Method::CONNECT
            && !headers.contains_key(http::header::UPGRADE)
    }

    /// Send a request that [`Connector::is_direct`] does not take: HTTP/2, TLS, a streamed
    /// body or an upgrade.
    pub async fn send_other(
        &self,
        endpoint: &Arc<Endpoint>,
        request: Request<OutgoingBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let request = request.map(OutgoingBody::into_proxy_body);
        // Boxed: the lean client takes most requests, and these futures would otherwise
        // enlarge every request's.
        if self.http2 {
            Box::pin(self.send_h2(endpoint, request)).await
        } else {
            Box::pin(self.send_hyper(endpoint, request)).await
        }
    }

    /// Send through the lean HTTP/1.1 client, from a head the caller keeps.
    pub async fn send_direct(
        &self,
        endpoint: &Arc<Endpoint>,
        method: &http::Method,
        target: &str,
        headers: &http::HeaderMap,
        body: &Bytes,
    ) -> Result<Response<PooledBody>, SendError> {
        let idle_ms = self.idle_timeout.as_millis() as u64;
        loop {
            let (connection, reused) = match endpoint.pool.take_direct(idle_ms) {
                Some(connection) => (connection, true),
                None => {
                    let tcp = Box::pin(self.connect_tcp(endpoint.addr)).await?;
                    (h1::Connection::new(tcp), false)
                }
            };
            let sent = connection
                .send(method, target, headers, body, endpoint)
                .await;
            match sent {
                Ok(response) => return Ok(response.map(|body| PooledBody(Kind::Direct(body)))),
                // A kept connection the upstream closed as it was taken: nothing came back,
                // so a request that may be repeated goes again on another connection.
                Err(h1::Error::NoResponse(_)) if reused && method.is_idempotent() => {}
                Err(err) => return Err(SendError::Direct(err)),
            }
        }
    }

    async fn send_hyper(
        &self,
        endpoint: &Arc<Endpoint>,
        request: Request<ProxyBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let idle_ms = self.idle_timeout.as_millis() as u64;
        let mut request = request;
        loop {
            let (mut sender, reused) = match endpoint.pool.take_idle(idle_ms) {
                Some(sender) => (sender, true),
                // Boxed: connecting (TCP, TLS, handshake) is rare next to reuse, and its
                // future would otherwise enlarge every request's.
                None => (Box::pin(self.connect_h1(endpoint.addr)).await?, false),
            };
            if poll_fn(|cx| sender.poll_ready(cx)).await.is_err() {
                if reused {
                    continue; // the upstream closed it while idle
                }
                return Err(SendError::Connect("connection closed before use".into()));
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let reusable = response.status() != http::StatusCode::SWITCHING_PROTOCOLS;
                    let slot = reusable.then(|| (sender, endpoint.clone()));
                    return Ok(response.map(|body| HyperBody::pooled(body, slot)));
                }
                Err(mut err) => match err.take_message() {
                    // Not sent: a pooled connection went away under us; try another.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(SendError::Exchange(err.into_error())),
                },
            }
        }
    }

    async fn send_h2(
        &self,
        endpoint: &Arc<Endpoint>,
        request: Request<ProxyBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let shared = endpoint
            .pool
            .shared_h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|s| !s.is_closed());
        let mut sender = match shared {
            Some(sender) => sender,
            None => {
                let sender = Box::pin(self.connect_h2(endpoint.addr)).await?;
                *endpoint
                    .pool
                    .shared_h2
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(sender.clone());
                sender
            }
        };
        poll_fn(|cx| sender.poll_ready(cx))
            .await
            .map_err(SendError::Exchange)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(SendError::Exchange)?;
        Ok(response.map(|body| HyperBody::pooled(body, None)))
    }

    async fn connect_h1(
        &self,
        addr: SocketAddr,
    ) -> Result<http1::SendRequest<ProxyBody>, SendError> {
        let tcp = self.connect_tcp(addr).await?;
        match &self.tls {
            Some(_) => start_h1(self.handshake_tls(tcp, addr).await?).await,
            None => start_h1(TokioIo::new(tcp)).await,
        }
    }

    async fn connect_h2(
        &self,
        addr: SocketAddr,
    ) -> Result<http2::SendRequest<ProxyBody>, SendError> {
        let tcp = self.connect_tcp(addr).await?;
        match &self.tls {
            Some(_) => start_h2(self.handshake_tls(tcp, addr).await?).await,
            None => start_h2(TokioIo::new(tcp)).await,
        }
    }

    async fn connect_tcp(&self, addr: SocketAddr) -> Result<TcpStream, SendError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                SendError::Connect(format!(
                    "connect to {addr} timed out after {} ms",
                    self.connect_timeout.as_millis()
                ))
            })?
            .map_err(|e| SendError::Connect(format!("connect to {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn handshake_tls(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
    ) -> Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, SendError> {
        let Some((connector, server_name)) = &self.tls else {
            return Err(SendError::Connect("TLS is not configured".into()));
        };
        let name = server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        connector
            .connect(name, tcp)
            .await
            .map(TokioIo::new)
            .map_err(|e| SendError::Connect(format!("TLS handshake with {addr}: {e}")))
    }
}

/// HTTP/1.1 handshake; the connection is driven by its own task (upgrades included).
async fn start_h1<T>(io: T) -> Result<http1::SendRequest<ProxyBody>, SendError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(io)
        .await
        .map_err(|e| SendError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(%err, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

async fn start_h2<T>(io: T) -> Result<http2::SendRequest<ProxyBody>, SendError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(io)
        .await
        .map_err(|e| SendError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%err, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}

/// An upstream response body that hands its HTTP/1.1 connection back to the endpoint's pool
/// once the body has ended (a body dropped early closes the connection instead).
pub struct PooledBody(Kind);

enum Kind {
    Hyper(HyperBody),
    Direct(h1::ResponseBody),
}

struct HyperBody {
    inner: Incoming,
    slot: Option<(http1::SendRequest<ProxyBody>, Arc<Endpoint>)>,
}

impl HyperBody {
    fn pooled(
        inner: Incoming,
        slot: Option<(http1::SendRequest<ProxyBody>, Arc<Endpoint>)>,
    ) -> PooledBody {
        let mut body = Self { inner, slot };
        if http_body::Body::is_end_stream(&body.inner) {
            body.release();
        }
        PooledBody(Kind::Hyper(body))
    }

    fn release(&mut self) {
        if let Some((sender, endpoint)) = self.slot.take() {
            endpoint.pool.put_idle(sender);
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(http_body::Body::poll_frame(Pin::new(&mut self.inner), cx));
        match &frame {
            None => self.release(),
            Some(Ok(_)) if http_body::Body::is_end_stream(&self.inner) => self.release(),
            Some(Err(_)) => self.slot = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match &mut self.0 {
            Kind::Hyper(body) => body.poll_frame(cx),
            Kind::Direct(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Hyper(body) => body.inner.is_end_stream(),
            Kind::Direct(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.0 {
            Kind::Hyper(body) => body.inner.size_hint(),
            Kind::Direct(body) => body.size_hint(),
        }
    }
}
