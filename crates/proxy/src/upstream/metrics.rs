//! Metrics read from the running snapshot at scrape time: endpoint health, outlier
//! ejections, retries, and the response cache's size. The request path only bumps the services' own atomics;
//! a reload that keeps a service keeps its counts, one that replaces it starts them anew
//! (Prometheus treats that as a counter reset).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{endpoint, RETRY_REASONS};
use crate::snapshot::Snapshot;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    service: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    service: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

/// Registered once in the metrics registry; follows reloads through the shared snapshot.
pub struct UpstreamCollector {
    pub current: Arc<ArcSwap<Snapshot>>,
}

impl std::fmt::Debug for UpstreamCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamCollector")
    }
}

impl Collector for UpstreamCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.current.load_full();
        let mut services: Vec<_> = snapshot.services.values().collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        let now = endpoint::now_ms();

        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "upstream_endpoint_healthy",
            "1 when an endpoint takes traffic (healthy and not ejected), 0 otherwise",
            None,
            gauge.metric_type(),
        )?;
        for service in &services {
            for endpoint in service.endpoints().endpoints.iter() {
                let labels = EndpointLabels {
                    service: service.name.clone(),
                    endpoint: endpoint.addr.to_string(),
                };
                ConstGauge::new(i64::from(endpoint.is_available(now)))
                    .encode(family.encode_family(&labels)?)?;
            }
        }

        let counter = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "upstream_endpoint_ejections",
            "Times outlier detection ejected an endpoint",
            None,
            counter.metric_type(),
        )?;
        for service in &services {
            if service.config.outlier_detection.is_none() {
                continue;
            }
            for endpoint in service.endpoints().endpoints.iter() {
                let labels = EndpointLabels {
                    service: service.name.clone(),
                    endpoint: endpoint.addr.to_string(),
                };
                ConstCounter::new(u64::from(endpoint.ejection_count()))
                    .encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "upstream_retries",
            "Upstream requests retried, by service and reason (status, connect, timeout, reset)",
            None,
            counter.metric_type(),
        )?;
        for service in &services {
            for (index, reason) in RETRY_REASONS.iter().enumerate() {
                let count = service.retry_stats.by_reason[index].load(Ordering::Relaxed);
                let labels = RetryLabels {
                    service: service.name.clone(),
                    reason,
                };
                ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "upstream_retry_budget_exhausted",
            "Retries the policy wanted but the retry budget refused, by service",
            None,
            counter.metric_type(),
        )?;
        for service in &services {
            let count = service.retry_stats.budget_exhausted.load(Ordering::Relaxed);
            let labels = ServiceLabels {
                service: service.name.clone(),
            };
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }
        let gauge = ConstGauge::new(0i64);
        let family = encoder.encode_descriptor(
            "cache_bytes",
            "Bytes the response cache holds (bodies, headers and keys)",
            None,
            gauge.metric_type(),
        )?;
        ConstGauge::new(snapshot.response_cache.weight() as i64).encode(family)?;
        let family = encoder.encode_descriptor(
            "cache_entries",
            "Entries in the response cache",
            None,
            gauge.metric_type(),
        )?;
        ConstGauge::new(snapshot.response_cache.len() as i64).encode(family)?;
        Ok(())
    }
}
