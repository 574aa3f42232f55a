//! The store's contents made into what every snapshot's request path looks at: the
//! directory of consumers and keys (authentication) and the catalog of API products,
//! plans and subscriptions (admission), kept up to date by following the store.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_config::LimitMode;
use gatehouse_policy::products::{
    PlanCounters, PlanLimitSpec, PlanSpec, ProductCatalog, ProductSpec, SandboxSpec,
    SubscriptionSpec,
};
use gatehouse_policy::{Consumer, StaticDirectory};
use gatehouse_proxy::reload::ConfigStore;
use gatehouse_store::catalog::SubscriptionStatus;
use gatehouse_store::{Contents, Store};

/// The directory for `contents`. A malformed row is skipped and logged: the rest serves.
pub fn directory_from(contents: &Contents) -> StaticDirectory {
    let mut directory = StaticDirectory::default();
    let mut consumers = std::collections::HashMap::new();
    for stored in &contents.consumers {
        let consumer = directory.add_consumer(Consumer {
            id: stored.id.clone(),
            name: stored.name.clone(),
            groups: stored.groups.clone(),
            metadata: stored.metadata.clone(),
            quotas: Default::default(),
            api_versions: Default::default(),
        });
        consumers.insert(stored.id.as_str(), consumer);
    }
    for key in &contents.keys {
        let Some(consumer) = consumers.get(key.consumer_id.as_str()) else {
            continue; // deleted with its consumer
        };
        if let Err(err) = directory.add_api_key(
            consumer,
            &key.public_id,
            &key.hash,
            key.expires_at,
            key.revoked_at.is_some(),
            key.sandbox,
        ) {
            tracing::warn!(error = %err, "skipping a malformed API key of the store");
        }
    }
    directory
}

/// The product catalog for `contents`: only approved subscriptions grant anything.
pub fn catalog_from(
    contents: &Contents,
    counters: &PlanCounters<'_>,
    previous: Option<&ProductCatalog>,
) -> ProductCatalog {
    let products: Vec<ProductSpec> = contents
        .products
        .iter()
        .map(|product| ProductSpec {
            id: product.id.clone(),
            routes: product.routes.clone(),
            sandbox: product.sandbox.as_ref().map(|sandbox| SandboxSpec {
                openapi: product.openapi.clone(),
                service: sandbox.service.clone(),
                limits: sandbox.limits.iter().map(limit_spec).collect(),
            }),
        })
        .collect();
    let plans: Vec<PlanSpec> = contents
        .plans
        .iter()
        .map(|plan| PlanSpec {
            id: plan.id.clone(),
            limits: plan.terms.limits.iter().map(limit_spec).collect(),
            hard_quota: plan
                .terms
                .quota
                .as_ref()
                .filter(|quota| quota.overage_cents_per_1000.is_none())
                .map(|quota| quota.requests_per_month),
        })
        .collect();
    let subscriptions: Vec<SubscriptionSpec> = contents
        .subscriptions
        .iter()
        .filter(|s| s.status == SubscriptionStatus::Approved)
        .map(|s| SubscriptionSpec {
            id: s.id.clone(),
            consumer_id: s.consumer_id.clone(),
            product_id: s.product_id.clone(),
            plan_id: s.plan_id.clone(),
        })
        .collect();
    ProductCatalog::build(&products, &plans, &subscriptions, counters, previous)
}

fn limit_spec(limit: &gatehouse_store::catalog::PlanLimit) -> PlanLimitSpec {
    PlanLimitSpec {
        requests: limit.requests,
        per: Duration::from_secs(limit.per_seconds),
        burst: limit.burst,
    }
}

/// Puts `contents` in force for every later request of the running configuration.
fn apply(config: &ConfigStore, contents: &Contents) {
    let snapshot = config.snapshot();
    snapshot
        .security
        .stored_directory()
        .store(Arc::new(directory_from(contents)));
    let counters = PlanCounters {
        mode: snapshot
            .config
            .store
            .as_ref()
            .map_or(LimitMode::Local, |store| store.plan_limits),
        redis: snapshot.rate_limits.redis.clone(),
        quotas: &snapshot.quotas,
    };
    let previous = snapshot.products.load_full();
    snapshot
        .products
        .store(Arc::new(catalog_from(contents, &counters, Some(&previous))));
}

/// Reads the store now (so keys and subscriptions work from the first request), then
/// follows it in the background.
pub async fn start(
    store: Arc<Store>,
    poll: Duration,
    config: Arc<ConfigStore>,
) -> Result<tokio::task::JoinHandle<()>, gatehouse_store::StoreError> {
    let contents = store.contents().await?;
    apply(&config, &contents);
    tracing::info!(
        store = %store.display_url(),
        version = contents.version,
        consumers = contents.consumers.len(),
        keys = contents.keys.len(),
        products = contents.products.len(),
        subscriptions = contents.subscriptions.len(),
        "store loaded"
    );
    Ok(tokio::spawn(gatehouse_store::follow::follow(
        store,
        poll,
        move |contents| {
            tracing::debug!(version = contents.version, "store changed");
            apply(&config, &contents);
        },
    )))
}
