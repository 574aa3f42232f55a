//! The gateway's admin API: liveness and readiness, configuration versions, reload and
//! rollback, and read-only views of routes and services. Binds to loopback by default and
//! requires a bearer token for everything except `/health` and `/ready`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use gatehouse_config::ConfigErrors;
use gatehouse_proxy::reload::RollbackError;
use gatehouse_proxy::snapshot::{Backends, RouteAction};
use gatehouse_proxy::ConfigStore;
use serde_json::{json, Value};

mod billing;
mod catalog;
mod consumers;
pub mod control;
pub mod openapi;
mod stored;
pub mod views;

use views::*;

/// Environment variable read when the configuration sets no admin token.
pub const TOKEN_ENV: &str = "GATEHOUSE_ADMIN_TOKEN";

#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<ConfigStore>,
    /// The durable store of consumers and keys, when the configuration has one.
    pub data: Option<Arc<gatehouse_store::Store>>,
    /// True once the listeners are bound and until shutdown begins.
    pub ready: Arc<AtomicBool>,
}

pub fn router(state: AdminState) -> Router {
    let protected = Router::new()
        .route("/admin/config", get(get_config).post(post_config))
        .route("/admin/config/versions", get(get_versions))
        .route("/admin/config/rollback/{version}", post(post_rollback))
        .route("/admin/routes", get(get_routes))
        .route("/admin/services", get(get_services))
        .route("/metrics", get(get_metrics))
        .route("/admin/explain", post(post_explain))
        .route("/admin/cache/purge", post(post_purge))
        .route("/admin/openapi.json", get(get_openapi))
        .route(
            "/admin/consumers",
            get(consumers::list_consumers).post(consumers::create_consumer),
        )
        .route("/admin/consumers/{id}/keys", post(consumers::issue_key))
        .route(
            "/admin/keys/{public_id}/revoke",
            post(consumers::revoke_key),
        )
        .route(
            "/admin/keys/{public_id}/rotate",
            post(consumers::rotate_key),
        )
        .route(
            "/admin/products",
            get(catalog::list_products).post(catalog::create_product),
        )
        .route(
            "/admin/products/{id}",
            get(catalog::get_product)
                .patch(catalog::update_product)
                .delete(catalog::delete_product),
        )
        .route("/admin/products/{id}/plans", post(catalog::create_plan))
        .route("/admin/plans/{id}", patch(catalog::update_plan))
        .route(
            "/admin/subscriptions",
            get(catalog::list_subscriptions).post(catalog::create_subscription),
        )
        .route(
            "/admin/subscriptions/{id}/plan",
            post(catalog::move_subscription),
        )
        .route("/admin/audit", get(consumers::audit_log))
        .route("/admin/developers", get(consumers::list_developers))
        .route(
            "/admin/developers/{id}/disable",
            post(consumers::disable_developer),
        )
        .route(
            "/admin/developers/{id}/enable",
            post(consumers::enable_developer),
        )
        .route("/admin/usage", get(billing::get_usage))
        .route("/admin/usage/deliveries", get(billing::pending_deliveries))
        .route("/admin/invoices", get(billing::list_invoices))
        .route("/admin/invoices/{consumer_id}", get(billing::get_invoice))
        .route(
            "/admin/subscriptions/{id}/approve",
            post(catalog::approve_subscription),
        )
        .route(
            "/admin/subscriptions/{id}/reject",
            post(catalog::reject_subscription),
        )
        .route(
            "/admin/subscriptions/{id}/cancel",
            post(catalog::cancel_subscription),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    // The dashboard signs its users in with their own sessions, not the admin token.
    let dashboard = state.data.as_ref().map(|data| {
        gatehouse_portal::dashboard::router(gatehouse_portal::dashboard::DashboardState::new(
            state.store.clone(),
            data.clone(),
        ))
    });
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(get_ready))
        .merge(protected)
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such admin endpoint".into(),
                None,
            )
        })
        .with_state(state);
    match dashboard {
        Some(dashboard) => app.merge(dashboard),
        None => app,
    }
}

/// Serve the admin API on an already bound listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

pub fn admin_addr(store: &ConfigStore) -> Option<SocketAddr> {
    store
        .snapshot()
        .config
        .admin
        .as_ref()
        .and_then(|a| a.listen.value.parse().ok())
}

fn configured_token(store: &ConfigStore) -> Option<String> {
    admin_token(store.snapshot().config.admin.as_ref())
}

/// The admin token of a configuration's `admin` block, else from [`TOKEN_ENV`].
fn admin_token(admin: Option<&gatehouse_config::AdminConfig>) -> Option<String> {
    admin
        .and_then(|a| a.token.as_ref())
        .map(|t| t.0.clone())
        .filter(|t| !t.is_empty())
        .or_else(|| std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()))
}

/// Compare without an early exit so response time does not reveal how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(
    State(state): State<AdminState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    match bearer_rejection(configured_token(&state.store), &headers) {
        Some(rejection) => rejection,
        None => next.run(request).await,
    }
}

/// The answer to a request without the admin token, or `None` when it carries it.
fn bearer_rejection(expected: Option<String>, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = expected else {
        return Some(problem(
            StatusCode::FORBIDDEN,
            "admin_token_not_configured",
            format!("set admin.token in the configuration or {TOKEN_ENV} to use the admin API"),
            None,
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => None,
        _ => {
            let mut response = problem(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required".into(),
                None,
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            Some(response)
        }
    }
}

fn problem(
    status: StatusCode,
    code: &str,
    detail: String,
    errors: Option<Vec<String>>,
) -> Response {
    let body = Problem {
        kind: format!("https://gatehouse.dev/problems/{code}"),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        code: code.to_owned(),
        detail,
        errors,
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        serde_json::to_string(&body).unwrap_or_default(),
    )
        .into_response()
}

fn config_problem(errors: &ConfigErrors) -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "invalid_configuration",
        "the configuration was rejected; the running configuration is unchanged".into(),
        Some(errors.lines()),
    )
}

async fn get_ready(State(state): State<AdminState>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn get_config(State(state): State<AdminState>) -> Response {
    let snapshot = state.store.snapshot();
    Json(ConfigDocument {
        version: snapshot.version,
        config: &snapshot.config,
    })
    .into_response()
}

async fn get_openapi() -> Json<Value> {
    Json(openapi::document())
}

/// `gatehouse explain` against the running configuration (live endpoint health).
async fn post_explain(State(state): State<AdminState>, body: Bytes) -> Response {
    use axum::response::IntoResponse;
    let request: ExplainBody = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("expected {{\"method\", \"url\", \"headers\", \"client_ip\"}}: {err}"),
                None,
            )
        }
    };
    let Ok(method) = http::Method::from_bytes(request.method.as_bytes()) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("`{}` is not a method", request.method),
            None,
        );
    };
    let snapshot = state.store.snapshot();
    let explain_request = gatehouse_proxy::explain::ExplainRequest {
        method,
        url: request.url,
        headers: request.headers.into_iter().collect(),
        client_ip: request.client_ip,
        live: true,
    };
    let listener = request.listener.as_deref();
    match gatehouse_proxy::explain::explain_on(&snapshot, &explain_request, listener).await {
        Ok(mut report) => {
            report["version"] = json!(snapshot.version);
            Json(report).into_response()
        }
        Err(message) => problem(StatusCode::BAD_REQUEST, "invalid_request", message, None),
    }
}

async fn post_purge(State(state): State<AdminState>, body: Bytes) -> Response {
    use gatehouse_proxy::cache::Purge;
    let invalid =
        |detail: String| problem(StatusCode::BAD_REQUEST, "invalid_request", detail, None);
    let request: PurgeBody = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return invalid(format!(
                "expected one of `all`, `url`, `route`, `prefix` or `tag`: {err}"
            ))
        }
    };
    let selectors = [
        request.all,
        request.url.is_some(),
        request.route.is_some(),
        request.prefix.is_some(),
        request.tag.is_some(),
    ];
    if selectors.iter().filter(|s| **s).count() != 1 {
        return invalid("give exactly one of `all`, `url`, `route`, `prefix` or `tag`".into());
    }
    if request.host.is_some() && request.prefix.is_none() {
        return invalid("`host` only narrows a `prefix` purge".into());
    }
    let snapshot = state.store.snapshot();
    let caches = snapshot
        .router
        .routes()
        .iter()
        .filter_map(|route| route.payload.cache.as_ref());
    let purge = if request.all {
        Purge::All
    } else if let Some(url) = request.url {
        let Some((host, path, query)) = split_url(&url) else {
            return invalid(format!("`{url}` is not an absolute URL with a valid path"));
        };
        Purge::Urls(
            caches
                .map(|cache| {
                    let key = cache.url_key(&host, &path, query.as_deref());
                    (cache.route().to_owned(), key)
                })
                .collect(),
        )
    } else if let Some(route) = request.route {
        if !caches.clone().any(|cache| cache.route() == route) {
            return problem(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route named `{route}` caches responses"),
                None,
            );
        }
        Purge::Route(route)
    } else if let Some(prefix) = request.prefix {
        if !prefix.starts_with('/') {
            return invalid(format!("prefix `{prefix}` must start with `/`"));
        }
        Purge::Prefix {
            host: request.host.map(|h| h.to_ascii_lowercase()),
            prefix,
        }
    } else {
        Purge::Tag(request.tag.unwrap_or_default())
    };
    let purged = snapshot.response_cache.purge(&purge);
    let fleet = match snapshot.response_cache.fleet() {
        None => None,
        Some(fleet) => match fleet.purge(&purge).await {
            Ok(deleted) => Some(deleted),
            Err(err) => {
                tracing::error!(?purge, purged, error = %err, "response cache purged here, not in Redis");
                return problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "redis_unavailable",
                    format!("purged {purged} keys from this gateway's memory, but not from the fleet's Redis: {err}; retry"),
                    None,
                );
            }
        },
    };
    tracing::info!(?purge, purged, ?fleet, "response cache purged");
    stored::audit(
        &state,
        "cache.purge",
        "cache",
        json!({"purge": format!("{purge:?}"), "purged": purged}),
    )
    .await;
    Json(Purged { purged, fleet }).into_response()
}

/// Host (lowercase, no port), normalized path and query of an absolute URL, as the
/// gateway keys a request.
fn split_url(url: &str) -> Option<(String, String, Option<String>)> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.authority()?.host().to_ascii_lowercase();
    let path = gatehouse_proxy::pipeline::normalize_path(uri.path())?.into_owned();
    Some((host, path, uri.query().map(str::to_owned)))
}

async fn post_config(State(state): State<AdminState>, body: Bytes) -> Response {
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_configuration",
            "the body is not UTF-8".into(),
            None,
        );
    };
    let store = state.store.clone();
    let applied =
        tokio::task::spawn_blocking(move || store.apply_text(&text, "request", "admin api")).await;
    match applied {
        Ok(Ok(version)) => {
            stored::audit(
                &state,
                "config.apply",
                "config",
                json!({"version": version}),
            )
            .await;
            Json(Applied { version }).into_response()
        }
        Ok(Err(errors)) => {
            tracing::warn!("configuration from the admin API rejected:\n{errors}");
            config_problem(&errors)
        }
        Err(err) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            err.to_string(),
            None,
        ),
    }
}

async fn get_versions(State(state): State<AdminState>) -> Json<Versions> {
    let snapshot = state.store.snapshot();
    let versions = state
        .store
        .versions()
        .into_iter()
        .map(|v| VersionView {
            version: v.version,
            applied_at: v.applied_at,
            reason: v.reason,
            active: v.active,
        })
        .collect();
    Json(Versions {
        active: snapshot.version,
        versions,
    })
}

async fn post_rollback(State(state): State<AdminState>, Path(version): Path<u64>) -> Response {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.rollback(version)).await {
        Ok(Ok(new_version)) => {
            stored::audit(
                &state,
                "config.rollback",
                "config",
                json!({"version": new_version, "rolled_back_to": version}),
            )
            .await;
            Json(RolledBack {
                version: new_version,
                rolled_back_to: version,
            })
            .into_response()
        }
        Ok(Err(RollbackError::UnknownVersion(v))) => problem(
            StatusCode::NOT_FOUND,
            "unknown_version",
            format!("version {v} is not in the history"),
            None,
        ),
        Ok(Err(RollbackError::Invalid(errors))) => config_problem(&errors),
        Err(err) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            err.to_string(),
            None,
        ),
    }
}

async fn get_routes(State(state): State<AdminState>) -> Json<Routes> {
    let snapshot = state.store.snapshot();
    let routes = snapshot
        .router
        .routes()
        .iter()
        .map(|route| {
            let config = &snapshot.config.routes[route.index];
            let action = match &route.payload.action {
                RouteAction::Forward {
                    backends: Backends::One(service),
                    ..
                } => ActionView::Service(service.name.clone()),
                RouteAction::Forward { backends, .. } => ActionView::Backends(
                    backends
                        .weighted()
                        .into_iter()
                        .map(|(service, weight)| BackendView {
                            service: service.name.clone(),
                            weight,
                        })
                        .collect(),
                ),
                RouteAction::Redirect(redirect) => ActionView::Redirect(redirect.clone()),
                RouteAction::Respond { status, .. } => ActionView::Respond(status.as_u16()),
            };
            let auth = config.auth.as_ref().map(|auth| AuthView {
                methods: auth.methods.iter().map(|m| m.value.clone()).collect(),
                anonymous: auth.anonymous.as_ref().map(|a| a.value.clone()),
            });
            RouteView {
                name: route.name.clone(),
                priority: config.priority,
                matches: config.matches.value.clone(),
                action,
                auth,
            }
        })
        .collect();
    Json(Routes {
        version: snapshot.version,
        routes,
    })
}

/// Prometheus metrics (text format 0.0.4). Upstream state (endpoint health, ejections,
/// retries) is read from the running snapshot at scrape time.
async fn get_metrics(State(state): State<AdminState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let snapshot = state.store.snapshot();
    if !snapshot.config.metrics.enabled {
        return problem(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are disabled (`metrics.enabled: false`)".into(),
            None,
        )
        .into_response();
    }
    let metrics = &state.store.telemetry.metrics;
    match metrics.encode() {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics_failed",
            "metrics could not be encoded".into(),
            None,
        )
        .into_response(),
    }
}

async fn get_services(State(state): State<AdminState>) -> Json<Services> {
    let snapshot = state.store.snapshot();
    let now = gatehouse_proxy::upstream::endpoint::now_ms();
    let mut services: Vec<ServiceView> = snapshot
        .services
        .values()
        .map(|service| ServiceView {
            name: service.name.clone(),
            load_balancing: service.config.load_balancing.clone(),
            endpoints: service
                .endpoints()
                .endpoints
                .iter()
                .map(|e| EndpointView {
                    address: e.addr.to_string(),
                    weight: e.weight,
                    healthy: e.is_healthy(),
                    ejected: e.is_ejected(now),
                    ejections: e.ejection_count(),
                    in_flight: e.in_flight(),
                })
                .collect(),
        })
        .collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Json(Services {
        version: snapshot.version,
        services,
    })
}
