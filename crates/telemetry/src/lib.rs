//! Telemetry of the data plane: Prometheus metrics, the access log and traces. The request
//! path only records numbers and hands finished-request records and spans to bounded
//! queues; encoding, writing and export happen elsewhere (at scrape time, on the log writer
//! thread, on the OTLP exporter thread).

pub mod access_log;
pub mod metrics;
mod otlp;
pub mod trace;
pub mod usage;

pub use access_log::{AccessLog, AccessRecord};
pub use metrics::Metrics;
pub use trace::{TraceContext, Tracer};

/// Everything a finished request reports to.
pub struct Telemetry {
    pub metrics: Metrics,
    pub access_log: Option<AccessLog>,
    pub tracer: Option<Tracer>,
    /// Requests under API product subscriptions, until written to the store.
    pub usage: usage::UsageMeter,
}
