//! The control plane's admin API (`gatehouse control` with an `admin` block): the registry it
//! serves, its trust anchors, and each data plane's sent, applied and rejected snapshot
//! versions. Same rules as the gateway's: loopback by default, bearer token required for
//! everything but `/health` and `/ready`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use gatehouse_control::{ControlPlane, ControlStatus, DataPlane, ServiceStatus};

#[derive(Clone)]
struct ControlAdmin {
    plane: Arc<ControlPlane>,
    token: Option<String>,
}

/// The router; `admin` is the configuration's `admin` block (its token, else
/// `GATEHOUSE_ADMIN_TOKEN`).
pub fn router(plane: Arc<ControlPlane>, admin: Option<&gatehouse_config::AdminConfig>) -> Router {
    let state = ControlAdmin {
        plane,
        token: super::admin_token(admin),
    };
    let protected = Router::new()
        .route("/admin/mesh", get(get_status))
        .route("/admin/mesh/services", get(get_services))
        .route("/admin/mesh/data-planes", get(get_data_planes))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(|| async { "ready\n" }))
        .merge(protected)
        .fallback(|| async {
            super::problem(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such admin endpoint".into(),
                None,
            )
        })
        .with_state(state)
}

/// Serve the control plane's admin API on a bound listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    plane: Arc<ControlPlane>,
    admin: Option<&gatehouse_config::AdminConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(plane, admin).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn require_token(
    State(state): State<ControlAdmin>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    match super::bearer_rejection(state.token.clone(), &headers) {
        Some(rejection) => rejection,
        None => next.run(request).await,
    }
}

async fn get_status(State(state): State<ControlAdmin>) -> Json<ControlStatus> {
    Json(state.plane.status())
}

async fn get_services(State(state): State<ControlAdmin>) -> Json<Vec<ServiceStatus>> {
    Json(state.plane.services())
}

async fn get_data_planes(State(state): State<ControlAdmin>) -> Json<Vec<DataPlane>> {
    Json(state.plane.data_planes())
}
