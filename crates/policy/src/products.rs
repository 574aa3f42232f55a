//! API products at the gateway: which routes each product exposes, which consumers
//! (applications) hold an approved subscription to it, and the rate limits and monthly
//! quota of their plan. Built off the request path from the store's contents, swapped in
//! whole; a request on a product's route is admitted only under a subscription.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use gatehouse_config::{
    FailureMode, HumanDuration, LimitAlgorithm, LimitConfig, LimitMode, QuotaConfig, QuotaPeriod,
    RateLimitPolicy,
};
use http::header::{HeaderName, HeaderValue};
use http::StatusCode;

use crate::openapi::OpenApiDocument;
use crate::quota::{Quota, Quotas};
use crate::rate_limit::{LimitRequest, RateLimiter};
use crate::redis::RedisLink;
use crate::rejection::Rejection;

/// A product as the gateway needs it.
#[derive(Debug, Clone)]
pub struct ProductSpec {
    pub id: String,
    /// Names of the configuration's routes.
    pub routes: Vec<String>,
    pub sandbox: Option<SandboxSpec>,
}

/// A product's sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The product's OpenAPI document, for the mock.
    pub openapi: Option<serde_json::Value>,
    /// A service of the configuration to send sandbox requests to instead of the mock.
    pub service: Option<String>,
    pub limits: Vec<PlanLimitSpec>,
}

/// One rate limit of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimitSpec {
    pub requests: u64,
    pub per: Duration,
    pub burst: Option<u64>,
}

/// A plan as the gateway enforces it.
#[derive(Debug, Clone)]
pub struct PlanSpec {
    pub id: String,
    pub limits: Vec<PlanLimitSpec>,
    /// Requests per calendar month (UTC), refused beyond: plans that bill overage instead
    /// have none here.
    pub hard_quota: Option<u64>,
}

/// An approved subscription.
#[derive(Debug, Clone)]
pub struct SubscriptionSpec {
    pub id: String,
    pub consumer_id: String,
    pub product_id: String,
    pub plan_id: String,
}

/// Where plan limits count.
pub struct PlanCounters<'a> {
    pub mode: LimitMode,
    pub redis: Option<Arc<RedisLink>>,
    /// The snapshot's quotas, whose local counters (and `quota_store`) plans share.
    pub quotas: &'a Quotas,
}

/// A compiled plan: the same limiter and quota for every subscription on it, counted per
/// application.
pub struct PlanRules {
    pub id: String,
    limiter: Option<RateLimiter>,
    quota: Option<Quota>,
}

/// What an application may do with a product: the grant that admitted a request (and
/// what its usage is metered by).
pub struct Entitlement {
    /// Empty for sandbox calls.
    pub subscription_id: String,
    pub consumer_id: Arc<str>,
    pub product_id: Arc<str>,
    /// `sandbox` for sandbox calls.
    pub plan_id: Arc<str>,
    pub plan: Arc<PlanRules>,
    /// A sandbox call: metered, never billed.
    pub sandbox: bool,
}

/// Where a sandbox answers from.
pub enum SandboxTarget {
    /// The mock of the product's OpenAPI document, or why there is none.
    Mock(Result<Arc<OpenApiDocument>, String>),
    /// A service of the configuration.
    Service(String),
}

/// A compiled sandbox.
pub struct SandboxRules {
    pub product_id: Arc<str>,
    pub rules: Arc<PlanRules>,
    pub target: SandboxTarget,
}

/// How a request on a product's route is admitted.
pub enum Access {
    /// Under an approved subscription.
    Live(Arc<Entitlement>),
    /// With a sandbox key, to the product's sandbox.
    Sandbox(Arc<SandboxRules>),
}

struct ProductAccess {
    id: String,
    /// Consumer id → its approved subscription.
    subscribers: HashMap<String, Arc<Entitlement>>,
    sandbox: Option<Arc<SandboxRules>>,
}

/// Every product, by the routes it exposes.
#[derive(Default)]
pub struct ProductCatalog {
    by_route: HashMap<String, Vec<Arc<ProductAccess>>>,
    plans: HashMap<String, Arc<PlanRules>>,
    sandboxes: HashMap<String, Arc<SandboxRules>>,
}

/// The catalog every snapshot looks at, replaced whole when the store changes.
pub type StoredCatalog = Arc<ArcSwap<ProductCatalog>>;

impl ProductCatalog {
    /// Compiles the catalog. Counters of plan limits unchanged since `previous` are kept,
    /// so a store change hands out no fresh allowance; a changed limit starts afresh.
    /// A plan that cannot be compiled is logged and its subscribers refused (never let
    /// through unlimited).
    pub fn build(
        products: &[ProductSpec],
        plans: &[PlanSpec],
        subscriptions: &[SubscriptionSpec],
        counters: &PlanCounters<'_>,
        previous: Option<&ProductCatalog>,
    ) -> Self {
        let mut compiled = HashMap::new();
        for plan in plans {
            let old = previous.and_then(|p| p.plans.get(&plan.id));
            match PlanRules::compile(plan, counters, old.map(|o| &**o)) {
                Ok(rules) => {
                    compiled.insert(plan.id.clone(), Arc::new(rules));
                }
                Err(message) => {
                    tracing::error!(plan = %plan.id, error = %message, "plan not enforceable; its subscriptions are refused")
                }
            }
        }
        let mut sandboxes = HashMap::new();
        for product in products {
            let Some(spec) = &product.sandbox else {
                continue;
            };
            let old = previous
                .and_then(|p| p.sandboxes.get(&product.id))
                .map(|s| &*s.rules);
            match SandboxRules::compile(&product.id, spec, counters, old) {
                Ok(rules) => {
                    sandboxes.insert(product.id.clone(), Arc::new(rules));
                }
                Err(message) => {
                    tracing::error!(product = %product.id, error = %message, "sandbox not enforceable; sandbox keys are refused")
                }
            }
        }
        let mut accesses: HashMap<&str, ProductAccess> = products
            .iter()
            .map(|product| {
                (
                    product.id.as_str(),
                    ProductAccess {
                        id: product.id.clone(),
                        subscribers: HashMap::new(),
                        sandbox: sandboxes.get(&product.id).cloned(),
                    },
                )
            })
            .collect();
        for subscription in subscriptions {
            let (Some(access), Some(plan)) = (
                accesses.get_mut(subscription.product_id.as_str()),
                compiled.get(&subscription.plan_id),
            ) else {
                continue;
            };
            access.subscribers.insert(
                subscription.consumer_id.clone(),
                Arc::new(Entitlement {
                    subscription_id: subscription.id.clone(),
                    consumer_id: Arc::from(subscription.consumer_id.as_str()),
                    product_id: Arc::from(subscription.product_id.as_str()),
                    plan_id: Arc::from(subscription.plan_id.as_str()),
                    plan: plan.clone(),
                    sandbox: false,
                }),
            );
        }
        let mut by_route: HashMap<String, Vec<Arc<ProductAccess>>> = HashMap::new();
        let accesses: HashMap<&str, Arc<ProductAccess>> = accesses
            .into_iter()
            .map(|(id, access)| (id, Arc::new(access)))
            .collect();
        for product in products {
            let Some(access) = accesses.get(product.id.as_str()) else {
                continue;
            };
            for route in &product.routes {
                by_route
                    .entry(route.clone())
                    .or_default()
                    .push(access.clone());
            }
        }
        Self {
            by_route,
            plans: compiled,
            sandboxes,
        }
    }

    /// How a request on `route` is admitted: `Ok(None)` for a route outside every product
    /// called with a live credential. `sandbox_key`: the identity's credential is a sandbox
    /// key, which reaches a product's sandbox or nothing.
    pub fn access(
        &self,
        route: &str,
        consumer: Option<&str>,
        sandbox_key: bool,
    ) -> Result<Option<Access>, Rejection> {
        if !sandbox_key {
            return Ok(self.entitlement(route, consumer)?.map(Access::Live));
        }
        let sandbox = self
            .by_route
            .get(route)
            .and_then(|products| products.iter().find_map(|p| p.sandbox.clone()));
        match sandbox {
            Some(sandbox) => Ok(Some(Access::Sandbox(sandbox))),
            None => Err(Rejection::new(
                StatusCode::FORBIDDEN,
                "sandbox_key",
                if self.by_route.contains_key(route) {
                    "this API has no sandbox; sandbox keys call sandboxes only"
                } else {
                    "sandbox keys call the sandboxes of API products only"
                },
            )),
        }
    }

    /// Whether some product exposes `route` (requests on it need a subscription).
    pub fn governs(&self, route: &str) -> bool {
        // Most gateways sell nothing: skip hashing the route name.
        !self.by_route.is_empty() && self.by_route.contains_key(route)
    }

    /// The subscription that lets `consumer` call `route`, or why not. `Ok(None)`: the
    /// route belongs to no product.
    pub fn entitlement(
        &self,
        route: &str,
        consumer: Option<&str>,
    ) -> Result<Option<Arc<Entitlement>>, Rejection> {
        let Some(products) = self.by_route.get(route) else {
            return Ok(None);
        };
        let names = || {
            products
                .iter()
                .map(|p| format!("`{}`", p.id))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(consumer) = consumer else {
            return Err(Rejection::new(
                StatusCode::UNAUTHORIZED,
                "credentials_required",
                format!(
                    "this API belongs to product {}; call it with your application's key",
                    names()
                ),
            ));
        };
        products
            .iter()
            .find_map(|product| product.subscribers.get(consumer).cloned())
            .map(Some)
            .ok_or_else(|| {
                Rejection::new(
                    StatusCode::FORBIDDEN,
                    "subscription_required",
                    format!(
                        "this API belongs to product {}; your application has no approved subscription to it",
                        names()
                    ),
                )
            })
    }
}

impl SandboxRules {
    fn compile(
        product: &str,
        spec: &SandboxSpec,
        counters: &PlanCounters<'_>,
        previous: Option<&PlanRules>,
    ) -> Result<Self, String> {
        let limits = if spec.limits.is_empty() {
            vec![PlanLimitSpec {
                requests: 10,
                per: Duration::from_secs(1),
                burst: None,
            }]
        } else {
            spec.limits.clone()
        };
        let rules = PlanRules::compile(
            &PlanSpec {
                id: format!("sandbox-{product}"),
                limits,
                hard_quota: None,
            },
            counters,
            previous,
        )?;
        let target = match (&spec.service, &spec.openapi) {
            (Some(service), _) => SandboxTarget::Service(service.clone()),
            (None, Some(document)) => {
                SandboxTarget::Mock(OpenApiDocument::from_value(document.clone()).map(Arc::new))
            }
            (None, None) => {
                SandboxTarget::Mock(Err("the product has no OpenAPI document to mock".to_owned()))
            }
        };
        Ok(Self {
            product_id: Arc::from(product),
            rules: Arc::new(rules),
            target,
        })
    }

    /// What the sandbox call is metered as.
    pub fn entitlement(&self, consumer: &str) -> Entitlement {
        Entitlement {
            subscription_id: String::new(),
            consumer_id: Arc::from(consumer),
            product_id: self.product_id.clone(),
            plan_id: Arc::from("sandbox"),
            plan: self.rules.clone(),
            sandbox: true,
        }
    }
}

impl PlanRules {
    fn compile(
        plan: &PlanSpec,
        counters: &PlanCounters<'_>,
        previous: Option<&PlanRules>,
    ) -> Result<Self, String> {
        let redis = match counters.mode {
            LimitMode::Cluster => counters.redis.clone(),
            LimitMode::Local => None,
        };
        let name = format!("plan-{}", plan.id);
        let limiter = if plan.limits.is_empty() {
            None
        } else {
            let policy = RateLimitPolicy {
                limits: plan
                    .limits
                    .iter()
                    .enumerate()
                    .map(|(index, limit)| LimitConfig {
                        name: Some(format!("{name}-{index}")),
                        requests: limit.requests,
                        per: HumanDuration(limit.per),
                        burst: limit.burst,
                        algorithm: LimitAlgorithm::Gcra,
                        key: Vec::new(),
                    })
                    .collect(),
                mode: counters.mode,
                on_redis_failure: FailureMode::Open,
                headers: true,
                legacy_headers: false,
            };
            Some(RateLimiter::new(
                &name,
                &policy,
                redis.clone(),
                previous.and_then(|p| p.limiter.as_ref()),
            )?)
        };
        let quota = plan
            .hard_quota
            .map(|requests| {
                counters.quotas.extra(
                    &name,
                    &QuotaConfig {
                        requests,
                        period: QuotaPeriod::Month,
                        key: Vec::new(),
                        mode: counters.mode,
                        on_redis_failure: FailureMode::Open,
                        headers: true,
                    },
                    redis.clone(),
                )
            })
            .transpose()?;
        Ok(Self {
            id: plan.id.clone(),
            limiter,
            quota,
        })
    }

    /// Counts the request against the plan's limits, then its quota: the headers for the
    /// response, or the refusal.
    pub async fn admit(
        &self,
        request: &LimitRequest<'_>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Rejection> {
        let mut headers = Vec::new();
        if let Some(limiter) = &self.limiter {
            headers.extend(limiter.check(request).await?);
        }
        if let Some(quota) = &self.quota {
            headers.extend(Box::pin(quota.check(request)).await?);
        }
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_key_reaches_a_sandbox_or_nothing_whatever_the_catalog_holds() {
        // Empty, as the catalog is for an instant when the store follower has published a
        // new sandbox key's directory but not yet the catalog built from the same read.
        let catalog = ProductCatalog::default();
        let refused = match catalog.access("books", Some("acme"), true) {
            Err(rejection) => rejection,
            Ok(_) => panic!("a sandbox key was let through to a live route"),
        };
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert_eq!(refused.code, "sandbox_key");
        assert!(matches!(
            catalog.access("books", Some("acme"), false),
            Ok(None)
        ));
    }
}
