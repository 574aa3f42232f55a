//! Consumers and API keys kept in the store (`store:` in the configuration): create a
//! consumer, issue a key (shown once; only its keyed hash is kept), revoke a key. Every
//! gateway following the store sees a change within `store.poll_interval` (at once on
//! PostgreSQL).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gatehouse_store::StoredConsumer;
use serde::{Deserialize, Serialize};

use crate::stored::{audit, no_store, optional_json, store_problem};
use crate::{problem, AdminState};

#[derive(Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewKey {
    /// Letters and digits before the first `_` of the key (default `live`).
    #[serde(default)]
    prefix: Option<String>,
    /// RFC 3339 time after which the key is refused.
    #[serde(default)]
    expires: Option<String>,
    /// A sandbox key (default prefix `sandbox`): it calls products' sandboxes only.
    #[serde(default)]
    sandbox: bool,
}

#[derive(Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rotation {
    /// How long the old key keeps working, e.g. `24h` (the default) or `0s`.
    #[serde(default)]
    overlap: Option<String>,
    /// Prefix of the new key (default `live`, or `sandbox` for a sandbox key).
    #[serde(default)]
    prefix: Option<String>,
}

/// A key replaced: the new key (shown this once) and until when the old one works.
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct RotatedKey {
    key: String,
    public_id: String,
    consumer_id: String,
    previous: gatehouse_store::StoredKey,
    note: &'static str,
}

/// A key just issued: the only time the key itself is shown.
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct IssuedKey {
    key: String,
    public_id: String,
    consumer_id: String,
    expires_at: Option<i64>,
    note: &'static str,
}

/// What the store holds (keys without their hashes).
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct Listing {
    version: i64,
    consumers: Vec<StoredConsumer>,
    api_keys: Vec<gatehouse_store::StoredKey>,
}

pub(crate) async fn list_consumers(State(state): State<AdminState>) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    match data.contents().await {
        Ok(contents) => Json(Listing {
            version: contents.version,
            consumers: contents.consumers,
            api_keys: contents.keys,
        })
        .into_response(),
        Err(err) => store_problem(err),
    }
}

pub(crate) async fn create_consumer(State(state): State<AdminState>, body: Bytes) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    let mut consumer: StoredConsumer = match serde_json::from_slice(&body) {
        Ok(consumer) => consumer,
        Err(err) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("expected {{\"id\", \"name\", \"groups\", \"metadata\"}}: {err}"),
                None,
            )
        }
    };
    let valid_id = gatehouse_store::catalog::valid_id(&consumer.id);
    if !valid_id {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`id` must be 1 to 64 letters, digits, `-`, `_` or `.`".to_owned(),
            None,
        );
    }
    if consumer.name.is_empty() {
        consumer.name = consumer.id.clone();
    }
    match data.create_consumer(&consumer).await {
        Ok(created) => {
            audit(
                &state,
                "consumer.create",
                &format!("consumer:{}", created.id),
                serde_json::json!({"name": created.name, "groups": created.groups}),
            )
            .await;
            (StatusCode::CREATED, Json(created)).into_response()
        }
        Err(err) => store_problem(err),
    }
}

pub(crate) async fn issue_key(
    State(state): State<AdminState>,
    Path(consumer): Path<String>,
    body: Bytes,
) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    let invalid =
        |detail: String| problem(StatusCode::BAD_REQUEST, "invalid_request", detail, None);
    let request: NewKey = match optional_json(&body, "{\"prefix\", \"expires\", \"sandbox\"}") {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let expires_at = match &request.expires {
        Some(text) => match gatehouse_config::parse_rfc3339(text) {
            Some(at) => Some(at),
            None => return invalid(format!("`expires` `{text}` is not an RFC 3339 time")),
        },
        None => None,
    };
    let default_prefix = if request.sandbox { "sandbox" } else { "live" };
    let generated = match generate_key(
        &state,
        Some(request.prefix.as_deref().unwrap_or(default_prefix)),
    ) {
        Ok(generated) => generated,
        Err(response) => return *response,
    };
    match data
        .add_key(
            &consumer,
            &generated.public_id,
            &generated.hash,
            expires_at,
            request.sandbox,
        )
        .await
    {
        Ok(stored) => {
            audit(&state, "key.issue", &format!("key:{}", stored.public_id), serde_json::json!({"consumer_id": stored.consumer_id, "expires_at": stored.expires_at})).await;
            (
                StatusCode::CREATED,
                Json(IssuedKey {
                    key: generated.key,
                    public_id: stored.public_id,
                    consumer_id: stored.consumer_id,
                    expires_at: stored.expires_at,
                    note: "the key is shown only now; the store keeps its keyed hash",
                }),
            )
                .into_response()
        }
        Err(err) => store_problem(err),
    }
}

/// Generates a key under the running configuration's `api_key_secret`.
fn generate_key(
    state: &AdminState,
    prefix: Option<&str>,
) -> Result<gatehouse_policy::auth::api_key::GeneratedKey, Box<Response>> {
    let snapshot = state.store.snapshot();
    let Some(hasher) =
        gatehouse_policy::auth::api_key::KeyHasher::from_config(&snapshot.config.authentication)
    else {
        return Err(Box::new(problem(
            StatusCode::CONFLICT,
            "api_key_secret_missing",
            "keys need `authentication.api_key_secret` to be hashed".to_owned(),
            None,
        )));
    };
    gatehouse_policy::auth::api_key::generate(&hasher, prefix.unwrap_or("live")).map_err(|err| {
        Box::new(problem(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            err,
            None,
        ))
    })
}

pub(crate) async fn rotate_key(
    State(state): State<AdminState>,
    Path(public_id): Path<String>,
    body: Bytes,
) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    let invalid =
        |detail: String| problem(StatusCode::BAD_REQUEST, "invalid_request", detail, None);
    let request: Rotation = match optional_json(&body, "{\"overlap\", \"prefix\"}") {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let text = request.overlap.as_deref().unwrap_or("24h");
    let overlap = match serde_json::from_value::<gatehouse_config::HumanDuration>(
        serde_json::Value::from(text),
    ) {
        Ok(duration) => duration.0.as_secs() as i64,
        Err(_) => {
            return invalid(format!(
                "`overlap` `{text}` is not a duration like 24h or 90s"
            ))
        }
    };
    // The new key is of the old one's kind: a sandbox key stays a sandbox key.
    let default_prefix = match data.key(&public_id).await {
        Ok(key) if key.sandbox => "sandbox",
        Ok(_) => "live",
        Err(err) => return store_problem(err),
    };
    let generated = match generate_key(
        &state,
        Some(request.prefix.as_deref().unwrap_or(default_prefix)),
    ) {
        Ok(generated) => generated,
        Err(response) => return *response,
    };
    match data
        .rotate_key(&public_id, &generated.public_id, &generated.hash, overlap)
        .await
    {
        Ok((previous, new)) => {
            audit(&state, "key.rotate", &format!("key:{}", previous.public_id), serde_json::json!({"new_public_id": new.public_id, "old_expires_at": previous.expires_at})).await;
            (
            StatusCode::CREATED,
            Json(RotatedKey {
                key: generated.key,
                public_id: new.public_id,
                consumer_id: new.consumer_id,
                previous,
                note: "the new key is shown only now; the old one works until previous.expires_at",
            }),
        )
            .into_response()
        }
        Err(err) => store_problem(err),
    }
}

pub(crate) async fn revoke_key(
    State(state): State<AdminState>,
    Path(public_id): Path<String>,
) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    match data.revoke_key(&public_id).await {
        Ok(key) => {
            audit(
                &state,
                "key.revoke",
                &format!("key:{}", key.public_id),
                serde_json::json!({"consumer_id": key.consumer_id}),
            )
            .await;
            Json(key).into_response()
        }
        Err(err) => store_problem(err),
    }
}

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    /// The newest this many entries (default 100, at most 1000).
    limit: Option<i64>,
}

/// The audit log, newest first.
pub(crate) async fn audit_log(
    State(state): State<AdminState>,
    axum::extract::Query(query): axum::extract::Query<AuditQuery>,
) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    match data
        .audit_log(query.limit.unwrap_or(100).clamp(1, 1000))
        .await
    {
        Ok(entries) => Json(entries).into_response(),
        Err(err) => store_problem(err),
    }
}

/// The developer accounts of the portal (never their password hashes).
pub(crate) async fn list_developers(State(state): State<AdminState>) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    match data.developers().await {
        Ok(developers) => Json(developers).into_response(),
        Err(err) => store_problem(err),
    }
}

async fn set_developer(state: AdminState, id: String, disabled: bool) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    match data.set_developer_disabled(&id, disabled).await {
        Ok(developer) => {
            let action = if disabled {
                "developer.disable"
            } else {
                "developer.enable"
            };
            audit(
                &state,
                action,
                &format!("developer:{id}"),
                serde_json::json!({"email": developer.email}),
            )
            .await;
            Json(developer).into_response()
        }
        Err(err) => store_problem(err),
    }
}

/// Disables a developer account: its sessions end; its applications' keys keep working
/// until revoked.
pub(crate) async fn disable_developer(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Response {
    set_developer(state, id, true).await
}

pub(crate) async fn enable_developer(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Response {
    set_developer(state, id, false).await
}
