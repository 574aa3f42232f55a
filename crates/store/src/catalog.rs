//! What is sold: API products (the routes they expose and their OpenAPI document), their
//! plans (rate limits, a monthly quota, prices) and subscriptions of consumers
//! (applications) to a product on a plan. Every change bumps the version, so gateways
//! enforce a new subscription or a changed limit within a second.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::{now, to_json, Store, StoreError};

#[derive(
    Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Listed in the developer portal; developers subscribe themselves.
    #[default]
    Public,
    /// Not listed; only admins subscribe applications.
    Private,
}

impl Visibility {
    fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "public" => Ok(Visibility::Public),
            "private" => Ok(Visibility::Private),
            other => Err(StoreError::Malformed(format!("visibility `{other}`"))),
        }
    }
}

/// An API product: routes of the configuration sold together.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct Product {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The product's OpenAPI document (3.x, as JSON): the portal's reference and the
    /// sandbox's mock.
    #[serde(default)]
    pub openapi: Option<serde_json::Value>,
    /// Names of the configuration's routes the product exposes. A request on one of them
    /// needs an approved subscription of the caller's application.
    pub routes: Vec<String>,
    /// The product's own version label, e.g. `v1`.
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub visibility: Visibility,
    /// The product's sandbox, which sandbox keys call; absent: none.
    #[serde(default)]
    pub sandbox: Option<Sandbox>,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub updated_at: i64,
}

/// Where a product's sandbox answers from, and how much it may be called.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sandbox {
    /// A service of the configuration to send sandbox requests to; absent: a mock that
    /// answers from the product's OpenAPI document (examples, else values made from the
    /// schemas).
    #[serde(default)]
    pub service: Option<String>,
    /// Rate limits per application (default: 10 requests per second).
    #[serde(default)]
    pub limits: Vec<PlanLimit>,
}

/// Changes to a product; absent members stay as they are.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductChange {
    pub name: Option<String>,
    pub description: Option<String>,
    pub openapi: Option<serde_json::Value>,
    pub routes: Option<Vec<String>>,
    pub version: Option<String>,
    pub visibility: Option<Visibility>,
    pub sandbox: Option<Sandbox>,
}

/// One rate limit of a plan, counted per application.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanLimit {
    /// Requests admitted per `per_seconds`.
    pub requests: u64,
    pub per_seconds: u64,
    /// Requests that may arrive at once (default `requests`).
    #[serde(default)]
    pub burst: Option<u64>,
}

/// The requests included per calendar month (UTC).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanQuota {
    pub requests_per_month: u64,
    /// Absent: requests beyond the quota are refused (429 `quota_exceeded`). Present:
    /// they pass and are billed at this price per 1,000 requests, in cents.
    #[serde(default)]
    pub overage_cents_per_1000: Option<u64>,
}

/// One step of graduated per-request pricing: requests up to `up_to` (counted from the
/// start of the month; absent, as it must be in the last tier: all the rest) cost
/// `cents_per_1000` per 1,000.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceTier {
    #[serde(default)]
    pub up_to: Option<u64>,
    pub cents_per_1000: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    /// ISO 4217 code; amounts are in its minor unit ("cents").
    #[serde(default = "usd")]
    pub currency: String,
    /// Charged per month, prorated by the seconds a subscription was on the plan.
    #[serde(default)]
    pub monthly_fee_cents: u64,
    /// Graduated per-request prices; none: requests are free.
    #[serde(default)]
    pub tiers: Vec<PriceTier>,
}

impl Default for Pricing {
    fn default() -> Self {
        Self {
            currency: usd(),
            monthly_fee_cents: 0,
            tiers: Vec::new(),
        }
    }
}

fn usd() -> String {
    "USD".to_owned()
}

/// What a plan grants and costs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanTerms {
    /// Rate limits, all applied, each counted per application.
    #[serde(default)]
    pub limits: Vec<PlanLimit>,
    #[serde(default)]
    pub quota: Option<PlanQuota>,
    #[serde(default)]
    pub pricing: Pricing,
}

impl PlanTerms {
    /// Refuses terms no gateway could enforce or no invoice could price.
    pub fn validate(&self) -> Result<(), String> {
        for (index, limit) in self.limits.iter().enumerate() {
            if limit.requests == 0 || limit.per_seconds == 0 {
                return Err(format!(
                    "limits[{index}]: `requests` and `per_seconds` must be positive"
                ));
            }
            if limit.burst == Some(0) {
                return Err(format!("limits[{index}]: `burst` must be positive"));
            }
        }
        if self
            .quota
            .as_ref()
            .is_some_and(|q| q.requests_per_month == 0)
        {
            return Err("quota: `requests_per_month` must be positive".to_owned());
        }
        let currency = &self.pricing.currency;
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "pricing.currency `{currency}` is not an ISO 4217 code like USD"
            ));
        }
        let mut previous = 0;
        for (index, tier) in self.pricing.tiers.iter().enumerate() {
            let last = index + 1 == self.pricing.tiers.len();
            match tier.up_to {
                Some(up_to) if up_to > previous => previous = up_to,
                Some(_) => {
                    return Err(format!(
                        "pricing.tiers[{index}].up_to must be above the previous tier's"
                    ))
                }
                None if last => {}
                None => {
                    return Err(format!(
                        "pricing.tiers[{index}]: only the last tier may leave `up_to` out"
                    ))
                }
            }
        }
        if self
            .pricing
            .tiers
            .last()
            .is_some_and(|tier| tier.up_to.is_some())
        {
            return Err(
                "pricing.tiers: the last tier must leave `up_to` out (it prices every request beyond the others)"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// A product's plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Plan {
    pub id: String,
    #[serde(default)]
    pub product_id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub terms: PlanTerms,
    /// New subscriptions wait for an admin's approval.
    #[serde(default)]
    pub requires_approval: bool,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub updated_at: i64,
}

/// Changes to a plan; absent members stay as they are.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanChange {
    pub name: Option<String>,
    pub description: Option<String>,
    pub terms: Option<PlanTerms>,
    pub requires_approval: Option<bool>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// Waiting for an admin (the plan requires approval); grants nothing yet.
    Pending,
    /// In force: the application may call the product's routes under the plan.
    Approved,
    Rejected,
    Cancelled,
}

impl SubscriptionStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        Ok(match text {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "rejected" => Self::Rejected,
            "cancelled" => Self::Cancelled,
            other => return Err(StoreError::Malformed(format!("status `{other}`"))),
        })
    }

    /// Pending or approved: the application holds (or is asking for) the product.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Approved)
    }
}

/// An application (consumer) subscribed to a product on a plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Subscription {
    pub id: String,
    pub consumer_id: String,
    pub product_id: String,
    pub plan_id: String,
    pub status: SubscriptionStatus,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A stretch of time a subscription spent on one plan: what invoices prorate by.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct SubscriptionPeriod {
    pub subscription_id: String,
    pub plan_id: String,
    pub started_at: i64,
    /// Absent: still running.
    pub ended_at: Option<i64>,
}

/// Letters, digits, `-`, `_` and `.`: what ids given by admins may hold.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A fresh id for rows the store names itself: `<prefix>_<16 hex digits>`.
pub fn generated_id(prefix: &str) -> String {
    format!("{prefix}_{:016x}", fastrand::u64(..))
}

const PRODUCT_COLUMNS: &str =
    "id, name, description, openapi, routes_json, version, visibility, sandbox_json, created_at, updated_at";
const PLAN_COLUMNS: &str =
    "id, product_id, name, description, terms_json, requires_approval, created_at, updated_at";
const SUBSCRIPTION_COLUMNS: &str =
    "id, consumer_id, product_id, plan_id, status, created_at, updated_at";

fn product_from_row(row: &AnyRow) -> Result<Product, StoreError> {
    let openapi: Option<String> = row.try_get("openapi")?;
    let routes: String = row.try_get("routes_json")?;
    let visibility: String = row.try_get("visibility")?;
    let sandbox: Option<String> = row.try_get("sandbox_json")?;
    Ok(Product {
        sandbox: sandbox
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|err| StoreError::Malformed(format!("sandbox_json: {err}")))?,
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        openapi: openapi
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|err| StoreError::Malformed(format!("openapi: {err}")))?,
        routes: serde_json::from_str(&routes)
            .map_err(|err| StoreError::Malformed(format!("routes_json: {err}")))?,
        version: row.try_get("version")?,
        visibility: Visibility::parse(&visibility)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn plan_from_row(row: &AnyRow) -> Result<Plan, StoreError> {
    let terms: String = row.try_get("terms_json")?;
    let requires_approval: i64 = row.try_get("requires_approval")?;
    Ok(Plan {
        id: row.try_get("id")?,
        product_id: row.try_get("product_id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        terms: serde_json::from_str(&terms)
            .map_err(|err| StoreError::Malformed(format!("terms_json: {err}")))?,
        requires_approval: requires_approval != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn subscription_from_row(row: &AnyRow) -> Result<Subscription, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(Subscription {
        id: row.try_get("id")?,
        consumer_id: row.try_get("consumer_id")?,
        product_id: row.try_get("product_id")?,
        plan_id: row.try_get("plan_id")?,
        status: SubscriptionStatus::parse(&status)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub(crate) async fn all_products(
    tx: &mut Transaction<'_, Any>,
) -> Result<Vec<Product>, StoreError> {
    sqlx::query(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM products ORDER BY id"
    ))
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(product_from_row)
    .collect()
}

pub(crate) async fn all_plans(tx: &mut Transaction<'_, Any>) -> Result<Vec<Plan>, StoreError> {
    sqlx::query(&format!("SELECT {PLAN_COLUMNS} FROM plans ORDER BY id"))
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(plan_from_row)
        .collect()
}

pub(crate) async fn all_subscriptions(
    tx: &mut Transaction<'_, Any>,
) -> Result<Vec<Subscription>, StoreError> {
    sqlx::query(&format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions ORDER BY id"
    ))
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(subscription_from_row)
    .collect()
}

async fn product_in(
    tx: &mut Transaction<'_, Any>,
    id: &str,
) -> Result<Option<Product>, StoreError> {
    sqlx::query(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM products WHERE id = $1"
    ))
    .bind(id.to_owned())
    .fetch_optional(&mut **tx)
    .await?
    .as_ref()
    .map(product_from_row)
    .transpose()
}

async fn plan_in(tx: &mut Transaction<'_, Any>, id: &str) -> Result<Option<Plan>, StoreError> {
    sqlx::query(&format!("SELECT {PLAN_COLUMNS} FROM plans WHERE id = $1"))
        .bind(id.to_owned())
        .fetch_optional(&mut **tx)
        .await?
        .as_ref()
        .map(plan_from_row)
        .transpose()
}

async fn subscription_in(
    tx: &mut Transaction<'_, Any>,
    id: &str,
) -> Result<Subscription, StoreError> {
    sqlx::query(&format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = $1"
    ))
    .bind(id.to_owned())
    .fetch_optional(&mut **tx)
    .await?
    .as_ref()
    .map(subscription_from_row)
    .transpose()?
    .ok_or_else(|| StoreError::NotFound(format!("no subscription `{id}`")))
}

fn invalid(detail: String) -> StoreError {
    StoreError::Invalid(detail)
}

fn openapi_text(document: &Option<serde_json::Value>) -> Result<Option<String>, StoreError> {
    match document {
        Some(value) if !value.is_object() => Err(invalid(
            "`openapi` must be an OpenAPI document (a JSON object)".to_owned(),
        )),
        Some(value) => to_json(value).map(Some),
        None => Ok(None),
    }
}

fn sandbox_text(sandbox: &Option<Sandbox>) -> Result<Option<String>, StoreError> {
    let Some(sandbox) = sandbox else {
        return Ok(None);
    };
    for (index, limit) in sandbox.limits.iter().enumerate() {
        if limit.requests == 0 || limit.per_seconds == 0 {
            return Err(invalid(format!(
                "sandbox.limits[{index}]: `requests` and `per_seconds` must be positive"
            )));
        }
    }
    to_json(sandbox).map(Some)
}

impl Store {
    pub async fn create_product(&self, product: &Product) -> Result<Product, StoreError> {
        if !valid_id(&product.id) {
            return Err(invalid(
                "`id` must be 1 to 64 letters, digits, `-`, `_` or `.`".to_owned(),
            ));
        }
        if product.name.trim().is_empty() {
            return Err(invalid("`name` must not be empty".to_owned()));
        }
        let mut tx = self.pool.begin().await?;
        if product_in(&mut tx, &product.id).await?.is_some() {
            return Err(StoreError::Conflict(format!(
                "product `{}` exists",
                product.id
            )));
        }
        let at = now();
        let created = Product {
            created_at: at,
            updated_at: at,
            ..product.clone()
        };
        sqlx::query(
            "INSERT INTO products (id, name, description, openapi, routes_json, version, visibility, sandbox_json, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(created.id.clone())
        .bind(created.name.clone())
        .bind(created.description.clone())
        .bind(openapi_text(&created.openapi)?)
        .bind(to_json(&created.routes)?)
        .bind(created.version.clone())
        .bind(created.visibility.as_str())
        .bind(sandbox_text(&created.sandbox)?)
        .bind(at)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        self.bump(&mut tx).await?;
        tx.commit().await?;
        Ok(created)
    }

    pub async fn update_product(
        &self,
        id: &str,
        change: &ProductChange,
    ) -> Result<Product, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut product = product_in(&mut tx, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no product `{id}`")))?;
        if let Some(name) = &change.name {
            if name.trim().is_empty() {
                return Err(invalid("`name` must not be empty".to_owned()));
            }
            product.name = name.clone();
        }
        if let Some(description) = &change.description {
            product.description = description.clone();
        }
        if let Some(openapi) = &change.openapi {
            product.openapi = Some(openapi.clone());
        }
        if let Some(routes) = &change.routes {
            product.routes = routes.clone();
        }
        if let Some(version) = &change.version {
            product.version = version.clone();
        }
        if let Some(visibility) = change.visibility {
            product.visibility = visibility;
        }
        if let Some(sandbox) = &change.sandbox {
            product.sandbox = Some(sandbox.clone());
        }
        product.updated_at = now();
        sqlx::query(
            "UPDATE products SET name = $1, description = $2, openapi = $3, routes_json = $4, \
             version = $5, visibility = $6, sandbox_json = $7, updated_at = $8 WHERE id = $9",
        )
        .bind(product.name.clone())
        .bind(product.description.clone())
        .bind(openapi_text(&product.openapi)?)
        .bind(to_json(&product.routes)?)
        .bind(product.version.clone())
        .bind(product.visibility.as_str())
        .bind(sandbox_text(&product.sandbox)?)
        .bind(product.updated_at)
        .bind(id.to_owned())
        .execute(&mut *tx)
        .await?;
        self.bump(&mut tx).await?;
        tx.commit().await?;
        Ok(product)
    }

    /// Deletes a product with its plans; refused while a subscription is pending or
    /// approved (cancel those first: nobody loses access by accident).
    pub async fn delete_product(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if product_in(&mut tx, id).await?.is_none() {
            return Err(StoreError::NotFound(format!("no product `{id}`")));
        }
        let open: i64 = sqlx::query(
            "SELECT COUNT(*) FROM subscriptions WHERE product_id = $1 AND status IN ('pending', 'approved')",
        )
        .bind(id.to_owned())
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        if open > 0 {
            return Err(StoreError::Conflict(format!(
                "product `{id}` has {open} pending or approved subscriptions; cancel them first"
            )));
        }
        // Explicit rather than ON DELETE CASCADE: SQLite enforces foreign keys only when
        // asked to, and the order matters for PostgreSQL.
        sqlx::query("DELETE FROM subscription_periods WHERE subscription_id IN (SELECT id FROM subscriptions WHERE product_id = $1)")
            .bind(id.to_owned())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM subscriptions WHERE product_id = $1")
            .bind(id.to_owned())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM plans WHERE product_id = $1")
            .bind(id.to_owned())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM products WHERE id = $1")
            .bind(id.to_owned())
            .execute(&mut *tx)
            .await?;
        self.bump(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn product(&self, id: &str) -> Result<Product, StoreError> {
        let mut tx = self.pool.begin().await?;
        let product = product_in(&mut tx, id).await?;
        tx.commit().await?;
        product.ok_or_else(|| StoreError::NotFound(format!("no product `{id}`")))
    }

    pub async fn products(&self) -> Result<Vec<Product>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let products = all_products(&mut tx).await?;
        tx.commit().await?;
        Ok(products)
    }

    pub async fn create_plan(&self, product_id: &str, plan: &Plan) -> Result<Plan, StoreError> {
        if !valid_id(&plan.id) {
            return Err(invalid(
                "`id` must be 1 to 64 letters, digits, `-`, `_` or `.`".to_owned(),
            ));
        }
        if plan.name.trim().is_empty() {
            return Err(invalid("`name` must not be empty".to_owned()));
        }
        plan.terms.validate().map_err(invalid)?;
        let mut tx = self.pool.begin().await?;
        if product_in(&mut tx, product_id).await?.is_none() {
            return Err(StoreError::NotFound(format!("no product `{product_id}`")));
        }
        if plan_in(&mut tx, &plan.id).await?.is_some() {
            return Err(StoreError::Conflict(format!("plan `{}` exists", plan.id)));
        }
        let at = now();
        let created = Plan {
            product_id: product_id.to_owned(),
            created_at: at,
            updated_at: at,
            ..plan.clone()
        };
        sqlx::query(
            "INSERT INTO plans (id, product_id, name, description, terms_json, requires_approval, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(created.id.clone())
        .bind(created.product_id.clone())
        .bind(created.name.clone())
        .bind(created.description.clone())
        .bind(to_json(&created.terms)?)
        .bind(i64::from(created.requires_approval))
        .bind(at)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        self.bump(&mut tx).await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Changes a plan; gateways enforce new limits within a second, for every
    /// subscription on the plan.
    pub async fn update_plan(&self, id: &str, change: &PlanChange) -> Result<Plan, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut plan = plan_in(&mut tx, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no plan `{id}`")))?;
        if let Some(name) = &change.name {
            if name.trim().is_empty() {
                return Err(invalid("`name` must not be empty".to_owned()));
            }
            plan.name = name.clone();
        }
        if let Some(description) = &change.description {
            plan.description = description.clone();
        }
        if let Some(terms) = &change.terms {
            terms.validate().map_err(invalid)?;
            plan.terms = terms.clone();
        }
        if let Some(requires_approval) = change.requires_approval {
            plan.requires_approval = requires_approval;
        }
        plan.updated_at = now();
        sqlx::query(
            "UPDATE plans SET name = $1, description = $2, terms_json = $3, requires_approval = $4, \
             updated_at = $5 WHERE id = $6",
        )
        .bind(plan.name.clone())
        .bind(plan.description.clone())
        .bind(to_json(&plan.terms)?)
        .bind(i64::from(plan.requires_approval))
        .bind(plan.updated_at)
        .bind(id.to_owned())
        .execute(&mut *tx)
        .await?;
        self.bump(&mut tx).await?;
        tx.commit().await?;
        Ok(plan)
    }

    pub async fn plan(&self, id: &str) -> Result<Plan, StoreError> {
        let mut tx = self.pool.begin().await?;
        let plan = plan_in(&mut tx, id).await?;
        tx.commit().await?;
        plan.ok_or_else(|| StoreError::NotFound(format!("no plan `{id}`")))
    }

    pub async fn plans(&self) -> Result<Vec<Plan>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let plans = all_plans(&mut tx).await?;
        tx.commit().await?;
        Ok(plans)
    }

    /// Subscribes a consumer (application) to the plan's product: approved at once, or
    /// pending when the plan requires approval. One open subscription per product.
    pub async fn subscribe(
        &self,
        consumer_id: &str,
        plan_id: &str,
    ) -> Result<Subscription, StoreError> {
        let mut tx = self.pool.begin().await?;
        let plan = plan_in(&mut tx, plan_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no plan `{plan_id}`")))?;
        let consumer = sqlx::query("SELECT id FROM consumers WHERE id = $1")
            .bind(consumer_id.to_owned())
            .fetch_optional(&mut *tx)
            .await?;
        if consumer.is_none() {
            return Err(StoreError::NotFound(format!("no consumer `{consumer_id}`")));
        }
        let open = sqlx::query(
            "SELECT id FROM subscriptions WHERE consumer_id = $1 AND product_id = $2 \
             AND status IN ('pending', 'approved')",
        )
        .bind(consumer_id.to_owned())
        .bind(plan.product_id.clone())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = open {
            let existing: String = row.try_get("id")?;
            return Err(StoreError::Conflict(format!(
                "`{consumer_id}` already has subscription `{existing}` to product `{}`; change its plan instead",
                plan.product_id
            )));
        }
        let at = now();
        let subscription = Subscription {
            id: generated_id("sub"),
            consumer_id: consumer_id.to_owned(),
            product_id: plan.product_id.clone(),
            plan_id: plan.id.clone(),
            status: if plan.requires_approval {
                SubscriptionStatus::Pending
            } else {
                SubscriptionStatus::Approved
            },
            created_at: at,
            updated_at: at,
        };
        sqlx::query(
            "INSERT INTO subscriptions (id, consumer_id, product_id, plan_id, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(subscription.id.clone())
        .bind(subscription.consumer_id.clone())
        .bind(subscription.product_id.clone())
        .bind(subscription.plan_id.clone())
        .bind(subscription.status.as_str())
        .bind(at)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        if subscription.status == SubscriptionStatus::Approved {
            start_period(&mut tx, &subscription.id, &subscription.plan_id, at).await?;
        }
        self.bump(&mut tx).await?;
        tx.commit().await?;
        Ok(subscription)
    }

    /// Approves or rejects a pending subscription.
    pub async fn decide_subscription(
        &self,
        id: &str,
        approve: bool,
    ) -> Result<Subscription, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut subscription = subscription_in(&mut tx, id).await?;
        if subscription.status != SubscriptionStatus::Pending {
            return Err(StoreError::Conflict(format!(
                "subscription `{id}` is {}, not pending",
                subscription.status.as_str()
            )));
        }
        let at = now();
        subscription.status = if approve {
            SubscriptionStatus::Approved
        } else {
            SubscriptionStatus::Rejected
        };
        subscription.updated_at = at;
        set_status(&mut tx, &subscription).await?;
        if approve {
            start_period(&mut tx, id, &subscription.plan_id, at).await?;
        }
        self.bump(&mut tx).await?;
        tx.commit().await?;
        Ok(subscription)
    }

    /// Cancels a pending or approved subscription: its application loses the product at
    /// once.
    pub async fn cancel_subscription(&self, id: &str) -> Result<Subscription, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut subscription = subscription_in(&mut tx, id).await?;
        if !subscription.status.is_open() {
            return Err(StoreError::Conflict(format!(
                "subscription `{id}` is already {}",
                subscription.status.as_str()
            )));
        }
        let at = now();
        subscription.status = SubscriptionStatus::Cancelled;
        subscription.updated_at = at;
        set_status(&mut tx, &subscription).await?;
        end_period(&mut tx, id, at).await?;
        self.bump(&mut tx).await?;
        tx.commit().await?;
        Ok(subscription)
    }

    /// Moves a subscription to another plan of the same product, from now on (the
    /// invoice prorates both).
    pub async fn change_subscription_plan(
        &self,
        id: &str,
        plan_id: &str,
    ) -> Result<Subscription, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut subscription = subscription_in(&mut tx, id).await?;
        let plan = plan_in(&mut tx, plan_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no plan `{plan_id}`")))?;
        if plan.product_id != subscription.product_id {
            return Err(invalid(format!(
                "plan `{plan_id}` belongs to product `{}`, not `{}`",
                plan.product_id, subscription.product_id
            )));
        }
        if !subscription.status.is_open() {
            return Err(StoreError::Conflict(format!(
                "subscription `{id}` is {}",
                subscription.status.as_str()
            )));
        }
        if subscription.plan_id == plan_id {
            return Ok(subscription);
        }
        let at = now();
        subscription.plan_id = plan_id.to_owned();
        subscription.updated_at = at;
        sqlx::query("UPDATE subscriptions SET plan_id = $1, updated_at = $2 WHERE id = $3")
            .bind(plan_id.to_owned())
            .bind(at)
            .bind(id.to_owned())
            .execute(&mut *tx)
            .await?;
        if subscription.status == SubscriptionStatus::Approved {
            end_period(&mut tx, id, at).await?;
            start_period(&mut tx, id, plan_id, at).await?;
        }
        self.bump(&mut tx).await?;
        tx.commit().await?;
        Ok(subscription)
    }

    pub async fn subscription(&self, id: &str) -> Result<Subscription, StoreError> {
        let mut tx = self.pool.begin().await?;
        let subscription = subscription_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(subscription)
    }

    pub async fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let subscriptions = all_subscriptions(&mut tx).await?;
        tx.commit().await?;
        Ok(subscriptions)
    }

    /// The plan periods of every subscription that overlap `[from, until)`.
    pub async fn subscription_periods(
        &self,
        from: i64,
        until: i64,
    ) -> Result<Vec<SubscriptionPeriod>, StoreError> {
        let rows = sqlx::query(
            "SELECT subscription_id, plan_id, started_at, ended_at FROM subscription_periods \
             WHERE started_at < $1 AND (ended_at IS NULL OR ended_at > $2) \
             ORDER BY subscription_id, started_at",
        )
        .bind(until)
        .bind(from)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SubscriptionPeriod {
                    subscription_id: row.try_get("subscription_id")?,
                    plan_id: row.try_get("plan_id")?,
                    started_at: row.try_get("started_at")?,
                    ended_at: row.try_get("ended_at")?,
                })
            })
            .collect()
    }
}

async fn set_status(
    tx: &mut Transaction<'_, Any>,
    subscription: &Subscription,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE subscriptions SET status = $1, updated_at = $2 WHERE id = $3")
        .bind(subscription.status.as_str())
        .bind(subscription.updated_at)
        .bind(subscription.id.clone())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn start_period(
    tx: &mut Transaction<'_, Any>,
    subscription_id: &str,
    plan_id: &str,
    at: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO subscription_periods (subscription_id, plan_id, started_at, ended_at) \
         VALUES ($1, $2, $3, NULL)",
    )
    .bind(subscription_id.to_owned())
    .bind(plan_id.to_owned())
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn end_period(
    tx: &mut Transaction<'_, Any>,
    subscription_id: &str,
    at: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE subscription_periods SET ended_at = $1 WHERE subscription_id = $2 AND ended_at IS NULL",
    )
    .bind(at)
    .bind(subscription_id.to_owned())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(up_to: Option<u64>, cents_per_1000: u64) -> PriceTier {
        PriceTier {
            up_to,
            cents_per_1000,
        }
    }

    #[test]
    fn terms_that_cannot_be_enforced_or_priced_are_refused() {
        let mut terms = PlanTerms::default();
        assert!(terms.validate().is_ok());
        terms.pricing.tiers = vec![tier(Some(1000), 0), tier(None, 50)];
        assert!(terms.validate().is_ok());
        terms.pricing.tiers = vec![tier(None, 0), tier(Some(10), 50)];
        assert!(terms.validate().unwrap_err().contains("only the last"));
        terms.pricing.tiers = vec![tier(Some(10), 0), tier(Some(10), 50)];
        assert!(terms.validate().unwrap_err().contains("above the previous"));
        terms.pricing.tiers = vec![tier(Some(10), 0), tier(Some(20), 50)];
        assert!(terms
            .validate()
            .unwrap_err()
            .contains("last tier must leave"));
        terms.pricing.tiers.clear();
        terms.pricing.currency = "usd".into();
        assert!(terms.validate().unwrap_err().contains("ISO 4217"));
        terms.pricing.currency = "EUR".into();
        terms.limits = vec![PlanLimit {
            requests: 0,
            per_seconds: 1,
            burst: None,
        }];
        assert!(terms.validate().unwrap_err().contains("positive"));
    }
}
