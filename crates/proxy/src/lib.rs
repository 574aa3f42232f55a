//! The Gatehouse data plane: listeners, the request pipeline, routing and upstreams.
//!
//! Request path (see `pipeline`): accept (`listener`) → TLS/ALPN → HTTP/1.1 or HTTP/2 →
//! snapshot load → route (`router`) → action → upstream (`upstream`: balance, send, retry)
//! → response. Failures become responses in exactly one place (`error`; in gRPC form for gRPC
//! calls, `grpc`).

pub mod body;
pub mod cache;
pub mod error;
pub mod explain;
pub mod forward;
pub mod framing;
pub mod grpc;
pub mod header_maps;
mod io_buffer;
pub mod listener;
pub mod mirror;
pub mod pipeline;
pub mod reload;
pub mod router;
pub mod sidecar;
pub mod snapshot;
mod spares;
pub mod timer;
pub mod tls;
pub mod transform;
pub mod upstream;
pub mod versioning;

pub use reload::ConfigStore;
pub use snapshot::Snapshot;
