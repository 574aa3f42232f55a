//! Metered usage on its way out: from the log phase's in-memory aggregate to the store
//! every `store.usage_flush_interval` (given back to the aggregate when the store fails,
//! so nothing is lost while the gateway runs), and from the store's outbox to the usage
//! webhook, signed, retried with backoff until the receiver accepts it.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_config::UsageWebhookConfig;
use gatehouse_policy::fetch::HttpFetcher;
use gatehouse_proxy::reload::ConfigStore;
use gatehouse_store::usage::UsageRow;
use gatehouse_store::Store;

/// Deliveries claimed per round; the rest wait for the next.
const DELIVERIES_PER_ROUND: i64 = 20;
/// The longest wait between two attempts of one delivery.
const MAX_BACKOFF_SECS: i64 = 3600;

/// Flushes and delivers until the task is dropped.
pub fn start(data: Arc<Store>, config: Arc<ConfigStore>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let interval = config
                .snapshot()
                .config
                .store
                .as_ref()
                .map_or(Duration::from_secs(5), |store| store.usage_flush_interval.0);
            tokio::time::sleep(interval).await;
            flush(&data, &config).await;
            let webhook = config
                .snapshot()
                .config
                .store
                .as_ref()
                .and_then(|store| store.usage_webhook.clone());
            if let Some(webhook) = webhook {
                deliver(&data, &webhook).await;
            }
        }
    })
}

/// Writes what was metered since the last flush (and queues it for the webhook when one
/// is configured). On failure the counts go back to the aggregate for the next flush.
pub async fn flush(data: &Store, config: &ConfigStore) {
    let batch = config.telemetry.usage.take();
    if batch.is_empty() {
        return;
    }
    let rows: Vec<UsageRow> = batch
        .iter()
        .map(|(key, counts)| UsageRow {
            day: key.day,
            date: String::new(),
            consumer_id: key.consumer.to_string(),
            product_id: key.product.to_string(),
            plan_id: key.plan.to_string(),
            route: key.route.to_string(),
            sandbox: key.sandbox,
            requests: counts.requests,
            client_errors: counts.client_errors,
            server_errors: counts.server_errors,
            latency_ms_sum: counts.latency_ms_sum,
            latency_buckets: counts.latency_buckets,
        })
        .collect();
    let deliver = config
        .snapshot()
        .config
        .store
        .as_ref()
        .is_some_and(|store| store.usage_webhook.is_some());
    match data.record_usage(&rows, deliver).await {
        Ok(delivery) => {
            tracing::debug!(
                aggregates = rows.len(),
                ?delivery,
                "usage written to the store"
            )
        }
        Err(err) => {
            tracing::error!(error = %err, aggregates = rows.len(), "usage not written to the store; kept for the next flush");
            config.telemetry.usage.restore(batch);
        }
    }
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA-256 of "<t>.<body>">`, as receivers verify it.
pub fn signature(secret: &[u8], timestamp: i64, body: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut context = aws_lc_rs::hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body.as_bytes());
    let tag = context.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

async fn deliver(data: &Store, webhook: &UsageWebhookConfig) {
    let lease = (webhook.timeout.0.as_secs() as i64 * 2).max(30);
    let due = match data.claim_deliveries(DELIVERIES_PER_ROUND, lease).await {
        Ok(due) => due,
        Err(err) => {
            tracing::error!(error = %err, "cannot read usage deliveries from the store");
            return;
        }
    };
    if due.is_empty() {
        return;
    }
    let fetcher = match HttpFetcher::new(
        webhook.ca.as_deref().map(std::path::Path::new),
        webhook.timeout.0,
    ) {
        Ok(fetcher) => fetcher,
        Err(err) => {
            tracing::error!(error = %err, "usage webhook client not usable");
            return;
        }
    };
    for delivery in due {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let headers = [
            (
                "gatehouse-signature",
                signature(webhook.secret.value.0.as_bytes(), timestamp, &delivery.body),
            ),
            ("gatehouse-delivery", delivery.id.clone()),
        ];
        let outcome = fetcher
            .post_json(&webhook.url.value, delivery.body.clone(), &headers)
            .await;
        let failure = match outcome {
            Ok(response) if response.status.is_success() => None,
            Ok(response) => Some(format!("answered {}", response.status)),
            Err(err) => Some(err.to_string()),
        };
        let recorded = match &failure {
            None => data.delivery_succeeded(&delivery.id).await,
            Some(error) => {
                let backoff = 5_i64
                    .saturating_mul(1 << delivery.attempts.clamp(0, 20))
                    .min(MAX_BACKOFF_SECS);
                tracing::warn!(delivery = %delivery.id, attempts = delivery.attempts + 1, retry_in_secs = backoff, %error, "usage webhook delivery failed");
                data.delivery_failed(&delivery.id, error, backoff).await
            }
        };
        if let Err(err) = recorded {
            tracing::error!(delivery = %delivery.id, error = %err, "cannot record the usage delivery's outcome; it may be sent again");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signatures_cover_the_timestamp_and_the_body() {
        // HMAC-SHA-256("key", "1.{}"), as `printf %s "1.{}" | openssl dgst -sha256 -hmac key` computes it.
        assert_eq!(
            super::signature(b"key", 1, "{}"),
            "t=1,v1=1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
        );
    }
}
