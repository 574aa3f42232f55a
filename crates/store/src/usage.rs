//! Metered usage, aggregated per application, product, plan, route and UTC day, and the
//! outbox of usage webhook deliveries. Gateways add their counts in one transaction per
//! flush (an upsert that adds, so every gateway of a fleet writes to the same rows);
//! neither bumps the version: usage is not configuration.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::catalog::generated_id;
use crate::{now, to_json, Store, StoreError};

/// One aggregate of usage.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct UsageRow {
    /// Days since 1970-01-01, UTC.
    pub day: i64,
    /// The day as `YYYY-MM-DD`.
    #[serde(default)]
    pub date: String,
    pub consumer_id: String,
    pub product_id: String,
    pub plan_id: String,
    pub route: String,
    /// Sandbox traffic: metered, never billed.
    pub sandbox: bool,
    pub requests: u64,
    /// Answers 400–499.
    pub client_errors: u64,
    /// Answers 500–599.
    pub server_errors: u64,
    pub latency_ms_sum: u64,
    /// Requests answered within 10, 50, 100, 250 and 1000 ms, and slower.
    pub latency_buckets: [u64; 6],
}

/// A usage webhook delivery waiting to be sent.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub body: String,
    pub attempts: i64,
}

/// What a delivery's body carries.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeliveryBody {
    /// Receivers deduplicate by it: a delivery may arrive more than once.
    pub id: String,
    pub created_at: i64,
    /// The usage each record adds (not totals).
    pub records: Vec<UsageRow>,
}

/// `YYYY-MM-DD` of a day number.
pub fn date_of(day: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(day.saturating_mul(86_400))
        .map(|t| {
            let date = t.date();
            format!(
                "{:04}-{:02}-{:02}",
                date.year(),
                u8::from(date.month()),
                date.day()
            )
        })
        .unwrap_or_default()
}

/// The day number of `YYYY-MM-DD`.
pub fn day_of(date: &str) -> Option<i64> {
    let mut parts = date.split('-');
    let (year, month, day) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return None;
    }
    let month = time::Month::try_from(month.parse::<u8>().ok()?).ok()?;
    let date = time::Date::from_calendar_date(year.parse().ok()?, month, day.parse().ok()?).ok()?;
    Some(
        date.midnight()
            .assume_utc()
            .unix_timestamp()
            .div_euclid(86_400),
    )
}

const BUCKET_COLUMNS: [&str; 6] = [
    "latency_le_10",
    "latency_le_50",
    "latency_le_100",
    "latency_le_250",
    "latency_le_1000",
    "latency_over_1000",
];

fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn usage_from_row(row: &AnyRow) -> Result<UsageRow, StoreError> {
    let unsigned = |column: &str| -> Result<u64, StoreError> {
        Ok(row.try_get::<i64, _>(column)?.max(0) as u64)
    };
    let mut latency_buckets = [0; 6];
    for (slot, column) in latency_buckets.iter_mut().zip(BUCKET_COLUMNS) {
        *slot = unsigned(column)?;
    }
    let day: i64 = row.try_get("day")?;
    Ok(UsageRow {
        day,
        date: date_of(day),
        consumer_id: row.try_get("consumer_id")?,
        product_id: row.try_get("product_id")?,
        plan_id: row.try_get("plan_id")?,
        route: row.try_get("route")?,
        sandbox: row.try_get::<i64, _>("sandbox")? != 0,
        requests: unsigned("requests")?,
        client_errors: unsigned("client_errors")?,
        server_errors: unsigned("server_errors")?,
        latency_ms_sum: unsigned("latency_ms_sum")?,
        latency_buckets,
    })
}

impl Store {
    /// Adds a gateway's counts, and (with `deliver`) queues them for the usage webhook,
    /// in one transaction: counted once, delivered at least once.
    pub async fn record_usage(
        &self,
        rows: &[UsageRow],
        deliver: bool,
    ) -> Result<Option<String>, StoreError> {
        if rows.is_empty() {
            return Ok(None);
        }
        let sums = [
            "requests",
            "client_errors",
            "server_errors",
            "latency_ms_sum",
        ]
        .iter()
        .chain(BUCKET_COLUMNS.iter())
        .map(|column| format!("{column} = usage_daily.{column} + excluded.{column}"))
        .collect::<Vec<_>>()
        .join(", ");
        let statement = format!(
            "INSERT INTO usage_daily (day, consumer_id, product_id, plan_id, route, sandbox, \
             requests, client_errors, server_errors, latency_ms_sum, {buckets}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             ON CONFLICT (day, consumer_id, product_id, plan_id, route, sandbox) DO UPDATE SET {sums}",
            buckets = BUCKET_COLUMNS.join(", ")
        );
        let mut tx = self.pool.begin().await?;
        for row in rows {
            let mut query = sqlx::query(&statement)
                .bind(row.day)
                .bind(row.consumer_id.clone())
                .bind(row.product_id.clone())
                .bind(row.plan_id.clone())
                .bind(row.route.clone())
                .bind(i64::from(row.sandbox))
                .bind(count(row.requests))
                .bind(count(row.client_errors))
                .bind(count(row.server_errors))
                .bind(count(row.latency_ms_sum));
            for bucket in row.latency_buckets {
                query = query.bind(count(bucket));
            }
            query.execute(&mut *tx).await?;
        }
        let delivery = if deliver {
            let at = now();
            let id = generated_id("dlv");
            let body = DeliveryBody {
                id: id.clone(),
                created_at: at,
                records: rows
                    .iter()
                    .map(|row| UsageRow {
                        date: date_of(row.day),
                        ..row.clone()
                    })
                    .collect(),
            };
            sqlx::query(
                "INSERT INTO usage_deliveries (id, body, created_at, attempts, next_attempt_at, delivered_at, last_error) \
                 VALUES ($1, $2, $3, 0, $4, NULL, NULL)",
            )
            .bind(id.clone())
            .bind(to_json(&body)?)
            .bind(at)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            Some(id)
        } else {
            None
        };
        tx.commit().await?;
        Ok(delivery)
    }

    /// Usage from day `from` to day `until` (inclusive), optionally of one consumer.
    pub async fn usage(
        &self,
        consumer_id: Option<&str>,
        from: i64,
        until: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let mut statement = format!(
            "SELECT day, consumer_id, product_id, plan_id, route, sandbox, requests, \
             client_errors, server_errors, latency_ms_sum, {} FROM usage_daily \
             WHERE day >= $1 AND day <= $2",
            BUCKET_COLUMNS.join(", ")
        );
        if consumer_id.is_some() {
            statement.push_str(" AND consumer_id = $3");
        }
        statement.push_str(" ORDER BY day, consumer_id, product_id, plan_id, route, sandbox");
        let mut query = sqlx::query(&statement).bind(from).bind(until);
        if let Some(consumer) = consumer_id {
            query = query.bind(consumer.to_owned());
        }
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(usage_from_row)
            .collect()
    }

    /// Claims up to `limit` deliveries that are due, for `lease_secs` (another gateway
    /// does not take them meanwhile).
    pub async fn claim_deliveries(
        &self,
        limit: i64,
        lease_secs: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let at = now();
        let due = sqlx::query(
            "SELECT id, body, attempts FROM usage_deliveries \
             WHERE delivered_at IS NULL AND next_attempt_at <= $1 ORDER BY created_at LIMIT $2",
        )
        .bind(at)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::new();
        for row in due {
            let id: String = row.try_get("id")?;
            let taken = sqlx::query(
                "UPDATE usage_deliveries SET next_attempt_at = $1 \
                 WHERE id = $2 AND delivered_at IS NULL AND next_attempt_at <= $3",
            )
            .bind(at + lease_secs)
            .bind(id.clone())
            .bind(at)
            .execute(&self.pool)
            .await?;
            if taken.rows_affected() == 1 {
                claimed.push(Delivery {
                    id,
                    body: row.try_get("body")?,
                    attempts: row.try_get("attempts")?,
                });
            }
        }
        Ok(claimed)
    }

    pub async fn delivery_succeeded(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE usage_deliveries SET delivered_at = $1, attempts = attempts + 1, last_error = NULL WHERE id = $2",
        )
        .bind(now())
        .bind(id.to_owned())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a failed attempt; the next one waits `retry_in_secs`.
    pub async fn delivery_failed(
        &self,
        id: &str,
        error: &str,
        retry_in_secs: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE usage_deliveries SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2 WHERE id = $3",
        )
        .bind(now() + retry_in_secs)
        .bind(error.to_owned())
        .bind(id.to_owned())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deliveries not yet accepted by the webhook: (id, attempts, last error).
    pub async fn undelivered(&self) -> Result<Vec<(String, i64, Option<String>)>, StoreError> {
        sqlx::query(
            "SELECT id, attempts, last_error FROM usage_deliveries WHERE delivered_at IS NULL ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.try_get("id")?,
                row.try_get("attempts")?,
                row.try_get("last_error")?,
            ))
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn days_and_dates_round_trip() {
        assert_eq!(super::day_of("1970-01-02"), Some(1));
        let day = super::day_of("2026-11-30").unwrap();
        assert_eq!(super::date_of(day), "2026-11-30");
        assert_eq!(super::day_of("2026-02-30"), None);
        assert_eq!(super::day_of("30.11.2026"), None);
    }
}

#[cfg(test)]
mod delivery_tests {
    use super::*;

    fn row(requests: u64) -> UsageRow {
        UsageRow {
            day: 20_000,
            consumer_id: "acme".into(),
            product_id: "books".into(),
            plan_id: "gold".into(),
            route: "books".into(),
            requests,
            ..UsageRow::default()
        }
    }

    #[tokio::test]
    async fn usage_adds_up_and_a_claimed_delivery_is_not_claimed_again() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let first = store.record_usage(&[row(3)], true).await.unwrap().unwrap();
        assert_eq!(store.record_usage(&[row(4)], false).await.unwrap(), None);
        let rows = store.usage(Some("acme"), 20_000, 20_000).await.unwrap();
        assert_eq!((rows.len(), rows[0].requests), (1, 7));

        // One gateway claims it; another, meanwhile, finds nothing due.
        let claimed = store.claim_deliveries(10, 60).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].id, first);
        assert!(store.claim_deliveries(10, 60).await.unwrap().is_empty());
        // A failed attempt waits its backoff; a success ends it.
        store
            .delivery_failed(&first, "answered 500", 3600)
            .await
            .unwrap();
        assert!(store.claim_deliveries(10, 60).await.unwrap().is_empty());
        assert_eq!(store.undelivered().await.unwrap()[0].1, 1);
        store.delivery_succeeded(&first).await.unwrap();
        assert!(store.undelivered().await.unwrap().is_empty());
    }
}
