//! API products, plans and subscriptions kept in the store. Every gateway following the
//! store enforces a change within `store.poll_interval` (at once on PostgreSQL): a new
//! subscription admits its application, a changed plan limit applies, a cancelled
//! subscription refuses.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gatehouse_store::catalog::{
    Plan, PlanChange, Product, ProductChange, Subscription, SubscriptionStatus,
};
use serde::{Deserialize, Serialize};

use crate::stored::{audit, no_store, required_json, store_problem};
use crate::{problem, AdminState};
use serde_json::json;

/// A product with its plans.
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct ProductDetail {
    #[serde(flatten)]
    product: Product,
    plans: Vec<Plan>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewSubscription {
    /// The consumer (application) that subscribes.
    consumer_id: String,
    /// The plan; its product is what the subscription is to.
    plan_id: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanMove {
    plan_id: String,
}

#[derive(Deserialize)]
pub(crate) struct SubscriptionFilter {
    status: Option<SubscriptionStatus>,
    consumer_id: Option<String>,
}

/// Refuses routes a product could not govern: unknown to the running configuration, or
/// without authentication (a subscription is found through the caller's identity); and a
/// sandbox service the configuration does not have.
fn check_routes(
    state: &AdminState,
    routes: &[String],
    sandbox: Option<&gatehouse_store::catalog::Sandbox>,
) -> Result<(), Box<Response>> {
    let problems = state
        .store
        .snapshot()
        .product_problems(routes, sandbox.and_then(|s| s.service.as_deref()));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Box::new(problem(
            StatusCode::BAD_REQUEST,
            "invalid_routes",
            problems.join("; "),
            Some(problems),
        )))
    }
}

pub(crate) async fn list_products(State(state): State<AdminState>) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    match data.products().await {
        Ok(products) => Json(products).into_response(),
        Err(err) => store_problem(err),
    }
}

pub(crate) async fn create_product(State(state): State<AdminState>, body: Bytes) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    let product: Product = match required_json(
        &body,
        "{\"id\", \"name\", \"routes\", \"description\", \"openapi\", \"version\", \"visibility\"}",
    ) {
        Ok(product) => product,
        Err(response) => return *response,
    };
    if let Err(response) = check_routes(&state, &product.routes, product.sandbox.as_ref()) {
        return *response;
    }
    match data.create_product(&product).await {
        Ok(created) => {
            audit(&state, "product.create", &format!("product:{}", created.id), json!({"name": created.name, "routes": created.routes, "visibility": created.visibility})).await;
            (StatusCode::CREATED, Json(created)).into_response()
        }
        Err(err) => store_problem(err),
    }
}

pub(crate) async fn get_product(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    let product = match data.product(&id).await {
        Ok(product) => product,
        Err(err) => return store_problem(err),
    };
    match data.plans().await {
        Ok(plans) => Json(ProductDetail {
            plans: plans.into_iter().filter(|p| p.product_id == id).collect(),
            product,
        })
        .into_response(),
        Err(err) => store_problem(err),
    }
}

pub(crate) async fn update_product(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    let change: ProductChange = match required_json(&body, "the product's members to change") {
        Ok(change) => change,
        Err(response) => return *response,
    };
    if let Err(response) = check_routes(
        &state,
        change.routes.as_deref().unwrap_or_default(),
        change.sandbox.as_ref(),
    ) {
        return *response;
    }
    match data.update_product(&id, &change).await {
        Ok(product) => {
            audit(&state, "product.update", &format!("product:{id}"), json!({"name": product.name, "routes": product.routes, "visibility": product.visibility, "version": product.version})).await;
            Json(product).into_response()
        }
        Err(err) => store_problem(err),
    }
}

pub(crate) async fn delete_product(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    match data.delete_product(&id).await {
        Ok(()) => {
            audit(
                &state,
                "product.delete",
                &format!("product:{id}"),
                json!({}),
            )
            .await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(err) => store_problem(err),
    }
}

pub(crate) async fn create_plan(
    State(state): State<AdminState>,
    Path(product): Path<String>,
    body: Bytes,
) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    let plan: Plan = match required_json(
        &body,
        "{\"id\", \"name\", \"description\", \"terms\", \"requires_approval\"}",
    ) {
        Ok(plan) => plan,
        Err(response) => return *response,
    };
    match data.create_plan(&product, &plan).await {
        Ok(created) => {
            audit(&state, "plan.create", &format!("plan:{}", created.id), json!({"product_id": created.product_id, "terms": created.terms, "requires_approval": created.requires_approval})).await;
            (StatusCode::CREATED, Json(created)).into_response()
        }
        Err(err) => store_problem(err),
    }
}

pub(crate) async fn update_plan(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    let change: PlanChange = match required_json(&body, "the plan's members to change") {
        Ok(change) => change,
        Err(response) => return *response,
    };
    match data.update_plan(&id, &change).await {
        Ok(plan) => {
            audit(
                &state,
                "plan.update",
                &format!("plan:{id}"),
                json!({"terms": plan.terms, "requires_approval": plan.requires_approval}),
            )
            .await;
            Json(plan).into_response()
        }
        Err(err) => store_problem(err),
    }
}

pub(crate) async fn list_subscriptions(
    State(state): State<AdminState>,
    Query(filter): Query<SubscriptionFilter>,
) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    match data.subscriptions().await {
        Ok(subscriptions) => Json(
            subscriptions
                .into_iter()
                .filter(|s| filter.status.is_none_or(|status| s.status == status))
                .filter(|s| {
                    filter
                        .consumer_id
                        .as_ref()
                        .is_none_or(|consumer| &s.consumer_id == consumer)
                })
                .collect::<Vec<Subscription>>(),
        )
        .into_response(),
        Err(err) => store_problem(err),
    }
}

pub(crate) async fn create_subscription(State(state): State<AdminState>, body: Bytes) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    let request: NewSubscription = match required_json(&body, "{\"consumer_id\", \"plan_id\"}") {
        Ok(request) => request,
        Err(response) => return *response,
    };
    match data.subscribe(&request.consumer_id, &request.plan_id).await {
        Ok(created) => {
            audit(&state, "subscription.create", &format!("subscription:{}", created.id), json!({"consumer_id": created.consumer_id, "plan_id": created.plan_id, "status": created.status})).await;
            (StatusCode::CREATED, Json(created)).into_response()
        }
        Err(err) => store_problem(err),
    }
}

#[derive(Clone, Copy)]
enum Decision {
    Approve,
    Reject,
    Cancel,
}

async fn decide(state: AdminState, id: String, decision: Decision) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    let (result, action) = match decision {
        Decision::Approve => (data.decide_subscription(&id, true).await, "approve"),
        Decision::Reject => (data.decide_subscription(&id, false).await, "reject"),
        Decision::Cancel => (data.cancel_subscription(&id).await, "cancel"),
    };
    match result {
        Ok(subscription) => {
            audit(
                &state,
                &format!("subscription.{action}"),
                &format!("subscription:{id}"),
                json!({"consumer_id": subscription.consumer_id, "plan_id": subscription.plan_id}),
            )
            .await;
            Json(subscription).into_response()
        }
        Err(err) => store_problem(err),
    }
}

pub(crate) async fn approve_subscription(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Response {
    decide(state, id, Decision::Approve).await
}

pub(crate) async fn reject_subscription(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Response {
    decide(state, id, Decision::Reject).await
}

pub(crate) async fn cancel_subscription(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Response {
    decide(state, id, Decision::Cancel).await
}

pub(crate) async fn move_subscription(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    let request: PlanMove = match required_json(&body, "{\"plan_id\"}") {
        Ok(request) => request,
        Err(response) => return *response,
    };
    match data.change_subscription_plan(&id, &request.plan_id).await {
        Ok(subscription) => {
            audit(
                &state,
                "subscription.change_plan",
                &format!("subscription:{id}"),
                json!({"plan_id": subscription.plan_id}),
            )
            .await;
            Json(subscription).into_response()
        }
        Err(err) => store_problem(err),
    }
}
