//! Traffic mirroring: a sampled copy of a request goes to another service in the background.
//! The copy's answer is read and dropped; it never delays or changes the client's response,
//! and when the mirror is slow, copies beyond `max_in_flight` are skipped instead of piling up.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatehouse_config::MirrorConfig;
use http::{HeaderMap, Method};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;

use crate::upstream::{OutgoingBody, Service, UpstreamRequest};

pub struct Mirror {
    service: Arc<Service>,
    percent: f64,
    pub max_body: u64,
    slots: Arc<Semaphore>,
    timeout: Duration,
}

impl Mirror {
    pub fn new(config: &MirrorConfig, service: Arc<Service>) -> Self {
        Self {
            service,
            percent: config.percent,
            max_body: config.max_body.0,
            slots: Arc::new(Semaphore::new(config.max_in_flight as usize)),
            timeout: config.timeout.0,
        }
    }

    /// Whether this request is among the sampled share.
    pub fn sample(&self) -> bool {
        self.percent >= 100.0 || fastrand::f64() * 100.0 < self.percent
    }

    /// Send the copy in the background (skipped when `max_in_flight` copies are pending).
    pub fn send(
        &self,
        method: Method,
        path_and_query: http::uri::PathAndQuery,
        headers: HeaderMap,
        body: Bytes,
    ) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            tracing::debug!(service = %self.service.name, "mirror busy; copy skipped");
            return;
        };
        let service = self.service.clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let call = async {
                let (response, _) = service
                    .call(
                        UpstreamRequest {
                            method,
                            path_and_query,
                            headers,
                            body: OutgoingBody::Buffered(body),
                            hash_key: None,
                            retryable: false,
                            upgrade: false,
                            deadline: None,
                        },
                        None,
                    )
                    .await?;
                // Read the answer so the connection can be reused.
                let _ = response.into_body().collect().await;
                Ok::<_, crate::error::GatewayError>(())
            };
            // The same reused timers as the request's own timeout (`crate::timer`).
            let deadline = tokio::time::Instant::now() + timeout;
            match crate::timer::timeout_at(deadline, call).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::debug!(service = %service.name, error = %err, "mirror copy failed")
                }
                Err(_) => tracing::debug!(service = %service.name, "mirror copy timed out"),
            }
        });
    }
}
