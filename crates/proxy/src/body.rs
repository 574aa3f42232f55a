//! The body type every response of the data plane carries: upstream bodies stream through
//! unchanged, gateway-generated bodies are a single buffer.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body. Boxed once per response so upstream and generated bodies share a type.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A client's request body: hyper's, or one the lean HTTP/1.1 server (`listener/h1.rs`)
/// read whole before the request was handled.
#[derive(Debug)]
pub enum RequestBody {
    Incoming(hyper::body::Incoming),
    /// Empty when the request had no body.
    Whole(Option<Bytes>),
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Incoming(incoming) => std::pin::Pin::new(incoming).poll_frame(cx),
            Self::Whole(whole) => {
                std::task::Poll::Ready(whole.take().map(|bytes| Ok(http_body::Frame::data(bytes))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Incoming(incoming) => incoming.is_end_stream(),
            Self::Whole(whole) => whole.is_none(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Incoming(incoming) => incoming.size_hint(),
            Self::Whole(whole) => {
                http_body::SizeHint::with_exact(whole.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    full(Bytes::new())
}

pub fn boxed<B>(body: B) -> ProxyBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// `body`, holding `guard` until the body is dropped (sent or abandoned): for limits that
/// count a request until its response has gone out.
pub fn with_guard<G: Send + Unpin + 'static>(body: ProxyBody, guard: G) -> ProxyBody {
    struct Holds<G>(G);
    impl<G: Send + Unpin + 'static> BodyObserver for Holds<G> {
        fn on_data(&mut self, _bytes: usize) {}
    }
    counted(body, Holds(guard))
}

/// Read `body` whole, up to `max` bytes (trailers are dropped). Written out rather than
/// with `Limited`: `Limited<ProxyBody>` needs a higher-ranked `From` bound on boxed errors
/// that the compiler cannot prove inside the request future.
pub async fn read_limited(body: ProxyBody, max: usize) -> Result<Bytes, BoxError> {
    Ok(read_with_trailers(body, max).await?.0)
}

/// [`read_limited`], keeping the trailers (a gRPC answer's status is in them).
pub async fn read_with_trailers(
    mut body: ProxyBody,
    max: usize,
) -> Result<(Bytes, Option<http::HeaderMap>), BoxError> {
    let mut buffer = bytes::BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => {
                if buffer.len() + data.len() > max {
                    return Err(format!("body exceeds {max} bytes").into());
                }
                buffer.extend_from_slice(&data);
            }
            Err(frame) => {
                if let Ok(received) = frame.into_trailers() {
                    trailers = Some(received);
                }
            }
        }
    }
    Ok((buffer.freeze(), trailers))
}

/// Read `body` whole if it ends within `max` bytes: `(bytes, None)`. Otherwise (too long,
/// trailers, or an error) `(what was read, Some(the rest))`, so nothing is lost: send
/// `prefixed(bytes, rest)`.
pub async fn read_prefix(mut body: ProxyBody, max: usize) -> (Bytes, Option<ProxyBody>) {
    let mut buffer = bytes::BytesMut::new();
    loop {
        let frame = match body.frame().await {
            None => return (buffer.freeze(), None),
            Some(Err(err)) => {
                let failed =
                    http_body_util::StreamBody::new(futures_util::stream::iter([Err(err)]));
                return (buffer.freeze(), Some(failed.boxed_unsync()));
            }
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(data) if buffer.len() + data.len() <= max => buffer.extend_from_slice(&data),
            Ok(data) => {
                buffer.extend_from_slice(&data);
                return (buffer.freeze(), Some(body));
            }
            Err(trailers) => {
                let rest =
                    http_body_util::StreamBody::new(futures_util::stream::iter([
                        Ok::<_, BoxError>(trailers),
                    ]));
                return (buffer.freeze(), Some(rest.boxed_unsync()));
            }
        }
    }
}

/// `prefix`, then `rest`.
pub fn prefixed(prefix: Bytes, rest: ProxyBody) -> ProxyBody {
    let first = http_body_util::StreamBody::new(futures_util::stream::iter([Ok::<_, BoxError>(
        http_body::Frame::data(prefix),
    )]));
    let chained = futures_util::stream::StreamExt::chain(
        http_body_util::BodyStream::new(first),
        http_body_util::BodyStream::new(rest),
    );
    http_body_util::StreamBody::new(chained).boxed_unsync()
}

/// Told about the response body as it goes out; dropped when the body is done.
pub trait BodyObserver: Send + Unpin + 'static {
    fn on_data(&mut self, bytes: usize);

    fn on_trailers(&mut self, _trailers: &http::HeaderMap) {}
}

/// `body`, reporting each data frame to `observer`, which is dropped with the body (the
/// log phase runs then).
pub fn counted<O: BodyObserver>(body: ProxyBody, observer: O) -> ProxyBody {
    struct Counted<O> {
        inner: ProxyBody,
        observer: O,
    }
    impl<O: BodyObserver> http_body::Body for Counted<O> {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
            let this = &mut *self;
            let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
            if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
                if let Some(data) = frame.data_ref() {
                    this.observer.on_data(data.len());
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.observer.on_trailers(trailers);
                }
            }
            polled
        }
        fn is_end_stream(&self) -> bool {
            self.inner.is_end_stream()
        }
        fn size_hint(&self) -> http_body::SizeHint {
            self.inner.size_hint()
        }
    }
    Counted {
        inner: body,
        observer,
    }
    .boxed_unsync()
}
