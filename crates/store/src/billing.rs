//! Invoices: a monthly statement per application from its plans' prices, the time it spent
//! on each plan and its metered usage. The arithmetic is in [`price`], a pure function;
//! [`Store::invoice`] gathers its inputs.
//!
//! Rules (docs/billing.md): the monthly fee is prorated by the seconds a subscription was on
//! the plan within the month (a running subscription counts to the end of the month);
//! requests are priced per plan over the month's non-sandbox usage on that plan, through
//! graduated tiers, then at the overage price beyond a quota that bills overage. Every line
//! is rounded half up to the minor unit on its own.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::catalog::{all_plans, Plan};
use crate::{Store, StoreError};

/// A calendar month (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Month {
    pub year: i32,
    pub month: u8,
}

impl Month {
    /// `YYYY-MM`.
    pub fn parse(text: &str) -> Option<Self> {
        let (year, month) = text.split_once('-')?;
        if year.len() != 4 || month.len() != 2 {
            return None;
        }
        let month = Self {
            year: year.parse().ok()?,
            month: month.parse().ok()?,
        };
        month.start().map(|_| month)
    }

    /// The month holding the unix time `at`.
    pub fn containing(at: i64) -> Self {
        let date = time::OffsetDateTime::from_unix_timestamp(at)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
            .date();
        Self {
            year: date.year(),
            month: u8::from(date.month()),
        }
    }

    fn start(self) -> Option<i64> {
        let month = time::Month::try_from(self.month).ok()?;
        let date = time::Date::from_calendar_date(self.year, month, 1).ok()?;
        Some(date.midnight().assume_utc().unix_timestamp())
    }

    pub fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// `[start, end)` in unix seconds.
    pub fn bounds(self) -> (i64, i64) {
        (
            self.start().unwrap_or(0),
            self.next().start().unwrap_or(i64::MAX),
        )
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// A stretch of the month a subscription spent on a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanTime {
    pub product_id: String,
    pub plan_id: String,
    pub started_at: i64,
    /// Absent: still running.
    pub ended_at: Option<i64>,
}

/// Billable (non-sandbox) requests of the month on one plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanUsage {
    pub product_id: String,
    pub plan_id: String,
    pub requests: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// The plan's monthly fee, prorated.
    Fee,
    /// Requests in one price tier.
    Requests,
    /// Requests beyond a quota that bills overage.
    Overage,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct InvoiceLine {
    pub product_id: String,
    pub plan_id: String,
    pub kind: LineKind,
    pub description: String,
    /// Seconds on the plan (fees) or requests.
    pub quantity: u64,
    /// Requests lines: the price per 1,000 requests.
    pub cents_per_1000: Option<u64>,
    pub amount_cents: u64,
    pub currency: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Total {
    pub currency: String,
    pub amount_cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Invoice {
    pub consumer_id: String,
    /// `YYYY-MM`.
    pub month: String,
    pub period_start: i64,
    pub period_end: i64,
    pub lines: Vec<InvoiceLine>,
    /// One per currency the lines are in.
    pub totals: Vec<Total>,
}

/// `numerator / denominator`, rounded half up.
fn round_half_up(numerator: u128, denominator: u128) -> u64 {
    if denominator == 0 {
        return 0;
    }
    u64::try_from((numerator * 2 + denominator) / (denominator * 2)).unwrap_or(u64::MAX)
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The invoice of `consumer_id` for `month`. Plans missing from `plans` (deleted) are
/// skipped.
pub fn price(
    consumer_id: &str,
    month: Month,
    times: &[PlanTime],
    usage: &[PlanUsage],
    plans: &HashMap<String, Plan>,
) -> Invoice {
    let (start, end) = month.bounds();
    let month_secs = (end - start).max(1) as u128;
    let mut lines = Vec::new();
    for time in times {
        let Some(plan) = plans.get(&time.plan_id) else {
            continue;
        };
        let from = time.started_at.max(start);
        let until = time.ended_at.unwrap_or(end).min(end);
        if until <= from {
            continue;
        }
        let seconds = (until - from) as u64;
        let fee = plan.terms.pricing.monthly_fee_cents;
        let full = seconds as u128 == month_secs;
        lines.push(InvoiceLine {
            product_id: time.product_id.clone(),
            plan_id: plan.id.clone(),
            kind: LineKind::Fee,
            description: if full {
                format!("{} monthly fee", plan.name)
            } else {
                format!(
                    "{} monthly fee, prorated {:.2} of {} days",
                    plan.name,
                    seconds as f64 / 86_400.0,
                    month_secs / 86_400
                )
            },
            quantity: seconds,
            cents_per_1000: None,
            amount_cents: round_half_up(u128::from(fee) * seconds as u128, month_secs),
            currency: plan.terms.pricing.currency.clone(),
        });
    }
    for used in usage {
        let Some(plan) = plans.get(&used.plan_id) else {
            continue;
        };
        let pricing = &plan.terms.pricing;
        let (tiered, overage) = match &plan.terms.quota {
            Some(quota) if quota.overage_cents_per_1000.is_some() => (
                used.requests.min(quota.requests_per_month),
                used.requests.saturating_sub(quota.requests_per_month),
            ),
            _ => (used.requests, 0),
        };
        let line = |kind, description: String, quantity: u64, cents_per_1000: u64| InvoiceLine {
            product_id: used.product_id.clone(),
            plan_id: plan.id.clone(),
            kind,
            description,
            quantity,
            cents_per_1000: Some(cents_per_1000),
            amount_cents: round_half_up(u128::from(quantity) * u128::from(cents_per_1000), 1000),
            currency: pricing.currency.clone(),
        };
        if pricing.tiers.is_empty() {
            lines.push(line(
                LineKind::Requests,
                format!("{} requests", plan.name),
                tiered,
                0,
            ));
        }
        let mut below = 0;
        for tier in &pricing.tiers {
            let cap = tier.up_to.unwrap_or(u64::MAX);
            let quantity = tiered.min(cap).saturating_sub(below);
            if quantity > 0 {
                let description = match tier.up_to {
                    Some(up_to) => format!(
                        "{} requests {} to {}",
                        plan.name,
                        thousands(below + 1),
                        thousands(up_to)
                    ),
                    None => format!("{} requests above {}", plan.name, thousands(below)),
                };
                lines.push(line(
                    LineKind::Requests,
                    description,
                    quantity,
                    tier.cents_per_1000,
                ));
            }
            below = cap;
            if below >= tiered {
                break;
            }
        }
        if overage > 0 {
            let price = plan
                .terms
                .quota
                .as_ref()
                .and_then(|q| q.overage_cents_per_1000)
                .unwrap_or(0);
            lines.push(line(
                LineKind::Overage,
                format!("{} requests beyond the quota", plan.name),
                overage,
                price,
            ));
        }
    }
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for line in &lines {
        *totals.entry(line.currency.clone()).or_default() += line.amount_cents;
    }
    Invoice {
        consumer_id: consumer_id.to_owned(),
        month: month.to_string(),
        period_start: start,
        period_end: end,
        lines,
        totals: totals
            .into_iter()
            .map(|(currency, amount_cents)| Total {
                currency,
                amount_cents,
            })
            .collect(),
    }
}

/// The invoices as CSV (RFC 4180), one row per line.
pub fn to_csv(invoices: &[Invoice]) -> String {
    fn field(value: &str) -> String {
        if value.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", value.replace('"', "\"\""))
        } else {
            value.to_owned()
        }
    }
    let mut out = String::from(
        "consumer_id,month,product_id,plan_id,kind,description,quantity,cents_per_1000,amount_cents,currency\r\n",
    );
    for invoice in invoices {
        for line in &invoice.lines {
            let kind = match line.kind {
                LineKind::Fee => "fee",
                LineKind::Requests => "requests",
                LineKind::Overage => "overage",
            };
            let row = [
                field(&invoice.consumer_id),
                field(&invoice.month),
                field(&line.product_id),
                field(&line.plan_id),
                kind.to_owned(),
                field(&line.description),
                line.quantity.to_string(),
                line.cents_per_1000
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                line.amount_cents.to_string(),
                field(&line.currency),
            ];
            out.push_str(&row.join(","));
            out.push_str("\r\n");
        }
    }
    out
}

impl Store {
    /// The invoice of one consumer (application) for `month`: to date while the month runs.
    pub async fn invoice(&self, consumer_id: &str, month: Month) -> Result<Invoice, StoreError> {
        let (start, end) = month.bounds();
        let mut tx = self.pool.begin().await?;
        let plans: HashMap<String, Plan> = all_plans(&mut tx)
            .await?
            .into_iter()
            .map(|plan| (plan.id.clone(), plan))
            .collect();
        let times = sqlx::query(
            "SELECT s.product_id, p.plan_id, p.started_at, p.ended_at \
             FROM subscription_periods p JOIN subscriptions s ON s.id = p.subscription_id \
             WHERE s.consumer_id = $1 AND p.started_at < $2 AND (p.ended_at IS NULL OR p.ended_at > $3) \
             ORDER BY p.started_at, p.plan_id",
        )
        .bind(consumer_id.to_owned())
        .bind(end)
        .bind(start)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| {
            Ok(PlanTime {
                product_id: row.try_get("product_id")?,
                plan_id: row.try_get("plan_id")?,
                started_at: row.try_get("started_at")?,
                ended_at: row.try_get("ended_at")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        // SUM of BIGINT is NUMERIC on PostgreSQL: cast back for one decoding path.
        let usage = sqlx::query(
            "SELECT product_id, plan_id, CAST(SUM(requests) AS BIGINT) AS requests FROM usage_daily \
             WHERE consumer_id = $1 AND sandbox = 0 AND day >= $2 AND day < $3 \
             GROUP BY product_id, plan_id ORDER BY product_id, plan_id",
        )
        .bind(consumer_id.to_owned())
        .bind(start.div_euclid(86_400))
        .bind(end.div_euclid(86_400))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| {
            Ok(PlanUsage {
                product_id: row.try_get("product_id")?,
                plan_id: row.try_get("plan_id")?,
                requests: row.try_get::<i64, _>("requests")?.max(0) as u64,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        tx.commit().await?;
        Ok(price(consumer_id, month, &times, &usage, &plans))
    }

    /// The invoices of every consumer with a plan or usage in `month`.
    pub async fn invoices(&self, month: Month) -> Result<Vec<Invoice>, StoreError> {
        let (start, end) = month.bounds();
        let consumers: Vec<String> = sqlx::query(
            "SELECT s.consumer_id AS consumer_id FROM subscription_periods p \
             JOIN subscriptions s ON s.id = p.subscription_id \
             WHERE p.started_at < $1 AND (p.ended_at IS NULL OR p.ended_at > $2) \
             UNION SELECT consumer_id FROM usage_daily WHERE sandbox = 0 AND day >= $3 AND day < $4 \
             ORDER BY consumer_id",
        )
        .bind(end)
        .bind(start)
        .bind(start.div_euclid(86_400))
        .bind(end.div_euclid(86_400))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| row.try_get("consumer_id"))
        .collect::<Result<_, _>>()?;
        let mut invoices = Vec::with_capacity(consumers.len());
        for consumer in consumers {
            invoices.push(self.invoice(&consumer, month).await?);
        }
        Ok(invoices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{PlanQuota, PlanTerms, PriceTier, Pricing};

    fn plan(id: &str, fee: u64, tiers: Vec<PriceTier>, quota: Option<PlanQuota>) -> Plan {
        Plan {
            id: id.into(),
            product_id: "books".into(),
            name: id.to_uppercase(),
            description: String::new(),
            terms: PlanTerms {
                limits: Vec::new(),
                quota,
                pricing: Pricing {
                    currency: "USD".into(),
                    monthly_fee_cents: fee,
                    tiers,
                },
            },
            requires_approval: false,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn tier(up_to: Option<u64>, cents_per_1000: u64) -> PriceTier {
        PriceTier {
            up_to,
            cents_per_1000,
        }
    }

    fn plans(list: Vec<Plan>) -> HashMap<String, Plan> {
        list.into_iter().map(|p| (p.id.clone(), p)).collect()
    }

    const NOVEMBER: Month = Month {
        year: 2026,
        month: 11,
    };

    fn amounts(invoice: &Invoice) -> Vec<(LineKind, u64, u64)> {
        invoice
            .lines
            .iter()
            .map(|l| (l.kind, l.quantity, l.amount_cents))
            .collect()
    }

    #[test]
    fn months_have_their_calendar_bounds() {
        let (start, end) = NOVEMBER.bounds();
        assert_eq!(start, 1_793_491_200); // 2026-11-01T00:00:00Z
        assert_eq!(end - start, 30 * 86_400);
        let february = Month::parse("2028-02").unwrap();
        assert_eq!(february.bounds().1 - february.bounds().0, 29 * 86_400);
        assert_eq!(
            Month::parse("2026-12").unwrap().next().to_string(),
            "2027-01"
        );
        assert_eq!(Month::containing(start + 5), NOVEMBER);
        assert_eq!(Month::containing(start - 1).to_string(), "2026-10");
        for bad in ["2026-13", "2026-1", "26-11", "november"] {
            assert!(Month::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn graduated_tiers_price_each_band_at_its_own_rate() {
        // 10,000 free, 10,001–100,000 at 20¢/1000, beyond at 10¢/1000; 250,000 requests:
        // 0 + 90,000 × 0.20/1000 = 1800¢, 150,000 × 0.10/1000 = 1500¢; fee 4900¢.
        let gold = plan(
            "gold",
            4900,
            vec![
                tier(Some(10_000), 0),
                tier(Some(100_000), 20),
                tier(None, 10),
            ],
            None,
        );
        let (start, _) = NOVEMBER.bounds();
        let invoice = price(
            "alice",
            NOVEMBER,
            &[PlanTime {
                product_id: "books".into(),
                plan_id: "gold".into(),
                started_at: start - 86_400,
                ended_at: None,
            }],
            &[PlanUsage {
                product_id: "books".into(),
                plan_id: "gold".into(),
                requests: 250_000,
            }],
            &plans(vec![gold]),
        );
        assert_eq!(
            amounts(&invoice),
            vec![
                (LineKind::Fee, 30 * 86_400, 4900),
                (LineKind::Requests, 10_000, 0),
                (LineKind::Requests, 90_000, 1800),
                (LineKind::Requests, 150_000, 1500),
            ]
        );
        assert_eq!(invoice.lines[0].description, "GOLD monthly fee");
        assert_eq!(
            invoice.lines[2].description,
            "GOLD requests 10,001 to 100,000"
        );
        assert_eq!(invoice.lines[3].description, "GOLD requests above 100,000");
        assert_eq!(invoice.totals[0].amount_cents, 8200);
    }

    #[test]
    fn overage_beyond_the_quota_is_billed_at_its_price() {
        // Quota 100,000 with overage at 40¢/1000; 123,457 requests: the first 100,000 through
        // the tiers (5¢/1000: 500¢), 23,457 × 0.40/1000 = 938.28¢ → 938¢.
        let pro = plan(
            "pro",
            0,
            vec![tier(None, 5)],
            Some(PlanQuota {
                requests_per_month: 100_000,
                overage_cents_per_1000: Some(40),
            }),
        );
        let invoice = price(
            "bob",
            NOVEMBER,
            &[],
            &[PlanUsage {
                product_id: "books".into(),
                plan_id: "pro".into(),
                requests: 123_457,
            }],
            &plans(vec![pro]),
        );
        assert_eq!(
            amounts(&invoice),
            vec![
                (LineKind::Requests, 100_000, 500),
                (LineKind::Overage, 23_457, 938),
            ]
        );
        assert_eq!(invoice.totals[0].amount_cents, 1438);
    }

    #[test]
    fn a_plan_change_mid_month_prorates_both_fees() {
        // Starter (1000¢) for the first 9 days, Pro (3000¢) from the 10th 00:00 on:
        // 1000 × 9/30 = 300¢, 3000 × 21/30 = 2100¢. A fee of 1001¢ for one third of a
        // 30-day month is 333.67¢ → 334¢ (half up).
        let (start, _) = NOVEMBER.bounds();
        let switch = start + 9 * 86_400;
        let all = plans(vec![
            plan("starter", 1000, vec![], None),
            plan("pro", 3000, vec![], None),
            plan("odd", 1001, vec![], None),
        ]);
        let times = [
            PlanTime {
                product_id: "books".into(),
                plan_id: "starter".into(),
                started_at: start - 100,
                ended_at: Some(switch),
            },
            PlanTime {
                product_id: "books".into(),
                plan_id: "pro".into(),
                started_at: switch,
                ended_at: None,
            },
        ];
        let invoice = price("carol", NOVEMBER, &times, &[], &all);
        assert_eq!(
            amounts(&invoice),
            vec![
                (LineKind::Fee, 9 * 86_400, 300),
                (LineKind::Fee, 21 * 86_400, 2100),
            ]
        );
        assert!(invoice.lines[0]
            .description
            .contains("prorated 9.00 of 30 days"));
        let third = [PlanTime {
            product_id: "books".into(),
            plan_id: "odd".into(),
            started_at: start,
            ended_at: Some(start + 10 * 86_400),
        }];
        assert_eq!(
            price("dan", NOVEMBER, &third, &[], &all).lines[0].amount_cents,
            334
        );
        // A period entirely outside the month is not billed.
        let before = [PlanTime {
            product_id: "books".into(),
            plan_id: "pro".into(),
            started_at: start - 1000,
            ended_at: Some(start),
        }];
        assert!(price("erin", NOVEMBER, &before, &[], &all).lines.is_empty());
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let invoice = Invoice {
            consumer_id: "acme, inc".into(),
            month: "2026-11".into(),
            period_start: 0,
            period_end: 0,
            lines: vec![InvoiceLine {
                product_id: "books".into(),
                plan_id: "gold".into(),
                kind: LineKind::Fee,
                description: "the \"Gold\" fee".into(),
                quantity: 1,
                cents_per_1000: None,
                amount_cents: 4900,
                currency: "USD".into(),
            }],
            totals: vec![],
        };
        let csv = to_csv(&[invoice]);
        let second = csv.lines().nth(1).unwrap();
        assert_eq!(
            second,
            "\"acme, inc\",2026-11,books,gold,fee,\"the \"\"Gold\"\" fee\",1,,4900,USD"
        );
    }
}
