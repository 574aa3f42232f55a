//! What every handler of the store's admin API shares: the store's errors as problems,
//! JSON bodies read with a clear error.

use axum::http::StatusCode;
use axum::response::Response;
use gatehouse_store::StoreError;

use crate::problem;

pub(crate) fn store_problem(err: StoreError) -> Response {
    match err {
        StoreError::Conflict(detail) => problem(StatusCode::CONFLICT, "conflict", detail, None),
        StoreError::NotFound(detail) => problem(StatusCode::NOT_FOUND, "not_found", detail, None),
        StoreError::Invalid(detail) => {
            problem(StatusCode::BAD_REQUEST, "invalid_request", detail, None)
        }
        other => {
            tracing::warn!(error = %other, "store request failed");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                other.to_string(),
                None,
            )
        }
    }
}

/// A JSON body whose members are all optional: an empty body is the defaults.
pub(crate) fn optional_json<T: Default + serde::de::DeserializeOwned>(
    body: &[u8],
    expected: &str,
) -> Result<T, Box<Response>> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|err| {
        Box::new(problem(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("expected {expected}: {err}"),
            None,
        ))
    })
}

pub(crate) fn no_store() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "store_not_configured",
        "the configuration has no `store`; consumers come from the file only".to_owned(),
        None,
    )
}

/// A JSON body that must be there.
pub(crate) fn required_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
    expected: &str,
) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|err| {
        Box::new(problem(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("expected {expected}: {err}"),
            None,
        ))
    })
}

/// Records an admin API action in the store's audit log (when there is a store). A failed
/// write is logged as an error; the change itself stands.
pub(crate) async fn audit(
    state: &crate::AdminState,
    action: &str,
    target: &str,
    details: serde_json::Value,
) {
    let Some(data) = &state.data else {
        return;
    };
    if let Err(err) = data.audit("api-token", action, target, &details).await {
        tracing::error!(error = %err, action, target, "audit log entry not written");
    }
}
