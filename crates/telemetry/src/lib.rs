//! Telemetry of the data plane: Prometheus metrics and the access log. The request path
//! only records numbers and hands finished-request records to a bounded queue; encoding
//! and writing happen elsewhere (at scrape time, on the log writer thread).

pub mod access_log;
pub mod metrics;

pub use access_log::{AccessLog, AccessRecord};
pub use metrics::Metrics;

/// Everything a finished request reports to.
pub struct Telemetry {
    pub metrics: Metrics,
    pub access_log: Option<AccessLog>,
}
