//! Metered usage and invoices from the store: what applications used per day, and the
//! monthly statements priced from their plans, as JSON or CSV.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gatehouse_store::billing::{to_csv, Invoice, Month};
use gatehouse_store::usage::{date_of, day_of, UsageRow};
use serde::{Deserialize, Serialize};

use crate::stored::{no_store, store_problem};
use crate::{problem, AdminState};

#[derive(Deserialize)]
pub(crate) struct UsageQuery {
    consumer_id: Option<String>,
    /// `YYYY-MM-DD`, default 29 days before `to`.
    from: Option<String>,
    /// `YYYY-MM-DD`, default today (UTC).
    to: Option<String>,
}

/// Daily usage aggregates.
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct UsageReport {
    from: String,
    to: String,
    rows: Vec<UsageRow>,
}

#[derive(Deserialize)]
pub(crate) struct InvoiceQuery {
    /// `YYYY-MM`, default the current month (to date).
    month: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// Usage webhook deliveries the receiver has not accepted yet.
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct PendingDeliveries {
    pending: Vec<PendingDelivery>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct PendingDelivery {
    id: String,
    attempts: i64,
    last_error: Option<String>,
}

fn invalid(detail: String) -> Response {
    problem(StatusCode::BAD_REQUEST, "invalid_request", detail, None)
}

fn today() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) async fn get_usage(
    State(state): State<AdminState>,
    Query(query): Query<UsageQuery>,
) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    let parse = |text: &Option<String>, default: i64| match text {
        Some(text) => day_of(text).ok_or_else(|| format!("`{text}` is not a date like 2026-11-30")),
        None => Ok(default),
    };
    let to = match parse(&query.to, today().div_euclid(86_400)) {
        Ok(day) => day,
        Err(message) => return invalid(message),
    };
    let from = match parse(&query.from, to - 29) {
        Ok(day) => day,
        Err(message) => return invalid(message),
    };
    if from > to || to - from > 366 {
        return invalid("`from` must be on or before `to`, at most 366 days apart".to_owned());
    }
    match data.usage(query.consumer_id.as_deref(), from, to).await {
        Ok(rows) => Json(UsageReport {
            from: date_of(from),
            to: date_of(to),
            rows,
        })
        .into_response(),
        Err(err) => store_problem(err),
    }
}

fn month_of(query: &InvoiceQuery) -> Result<Month, Box<Response>> {
    match &query.month {
        Some(text) => Month::parse(text)
            .ok_or_else(|| Box::new(invalid(format!("`{text}` is not a month like 2026-11")))),
        None => Ok(Month::containing(today())),
    }
}

fn render(invoices: Vec<Invoice>, single: bool, format: Option<&str>) -> Response {
    match format {
        Some("csv") => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            to_csv(&invoices),
        )
            .into_response(),
        None | Some("json") if single => match invoices.into_iter().next() {
            Some(invoice) => Json(invoice).into_response(),
            None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        },
        None | Some("json") => Json(invoices).into_response(),
        Some(other) => invalid(format!("format `{other}`: use json or csv")),
    }
}

pub(crate) async fn list_invoices(
    State(state): State<AdminState>,
    Query(query): Query<InvoiceQuery>,
) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    let month = match month_of(&query) {
        Ok(month) => month,
        Err(response) => return *response,
    };
    match data.invoices(month).await {
        Ok(invoices) => render(invoices, false, query.format.as_deref()),
        Err(err) => store_problem(err),
    }
}

pub(crate) async fn get_invoice(
    State(state): State<AdminState>,
    Path(consumer): Path<String>,
    Query(query): Query<InvoiceQuery>,
) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    let month = match month_of(&query) {
        Ok(month) => month,
        Err(response) => return *response,
    };
    match data.invoice(&consumer, month).await {
        Ok(invoice) => render(vec![invoice], true, query.format.as_deref()),
        Err(err) => store_problem(err),
    }
}

pub(crate) async fn pending_deliveries(State(state): State<AdminState>) -> Response {
    let Some(data) = &state.data else {
        return no_store();
    };
    match data.undelivered().await {
        Ok(pending) => Json(PendingDeliveries {
            pending: pending
                .into_iter()
                .map(|(id, attempts, last_error)| PendingDelivery {
                    id,
                    attempts,
                    last_error,
                })
                .collect(),
        })
        .into_response(),
        Err(err) => store_problem(err),
    }
}
