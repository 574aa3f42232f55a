//! The admin dashboard, served under `/dashboard` on the admin listener: traffic analytics,
//! products and plans, subscriptions to approve, developers, applications and keys, and the
//! audit log. Dashboard users have a role (viewer, editor, admin) and their own accounts,
//! sessions and cookie, apart from developers'. Every change is written to the audit log.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Form, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use gatehouse_policy::auth::basic::verify_password;
use gatehouse_policy::rate_limit::local::LocalStore;
use gatehouse_proxy::ConfigStore;
use gatehouse_store::admins::{AdminSession, Role};
use gatehouse_store::catalog::{PlanChange, PlanLimit, PlanQuota, SubscriptionStatus};
use gatehouse_store::usage::UsageRow;
use gatehouse_store::{Store, StoreError};
use http::header::{LOCATION, SET_COOKIE};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::accounts::now;
use crate::charts::{per_second_chart, percentile, usage_chart};
use crate::html::{button_form, csrf_field, esc, field, money, when, Flash, Page};
use crate::session::{self, anonymous_csrf, anonymous_csrf_ok, csrf_matches};

const SESSION_COOKIE: &str = "gh_dashboard_session";
const SESSION_SECS: i64 = 8 * 3600;
const SITE: &str = "Gatehouse dashboard";

/// What the dashboard's handlers share.
#[derive(Clone)]
pub struct DashboardState {
    pub config: Arc<ConfigStore>,
    pub data: Arc<Store>,
    attempts: Arc<LocalStore>,
}

impl DashboardState {
    pub fn new(config: Arc<ConfigStore>, data: Arc<Store>) -> Self {
        Self {
            config,
            data,
            attempts: Arc::new(LocalStore::new()),
        }
    }
}

/// The dashboard's routes, all under `/dashboard`; they authenticate with their own
/// sessions, not the admin token.
pub fn router(state: DashboardState) -> Router {
    Router::new()
        .route("/dashboard", get(overview))
        .route("/dashboard/login", get(login_form).post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/subscriptions", get(subscriptions))
        .route("/dashboard/subscriptions/{id}/{action}", post(decide))
        .route("/dashboard/products", get(products))
        .route("/dashboard/products", post(create_product))
        .route("/dashboard/products/{id}", post(update_product))
        .route("/dashboard/products/{id}/plans", post(create_plan))
        .route("/dashboard/plans/{id}", post(update_plan))
        .route("/dashboard/developers", get(developers))
        .route("/dashboard/developers/{id}/{action}", post(set_developer))
        .route("/dashboard/applications", get(applications))
        .route("/dashboard/keys/{public_id}/revoke", post(revoke_key))
        .route("/dashboard/audit", get(audit))
        .with_state(state)
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, to.to_owned())]).into_response()
}

fn nav(session: Option<&AdminSession>) -> String {
    match session {
        Some(session) => format!(
            r#"<a href="/dashboard">Traffic</a><a href="/dashboard/subscriptions">Subscriptions</a><a href="/dashboard/products">Products</a><a href="/dashboard/applications">Applications</a><a href="/dashboard/developers">Developers</a><a href="/dashboard/audit">Audit log</a><span style="color:#cbd5e1">{name} ({role})</span><form method="post" action="/dashboard/logout">{csrf}<button type="submit">Sign out</button></form>"#,
            name = esc(&session.user.name),
            role = session.user.role.as_str(),
            csrf = csrf_field(&session.csrf),
        ),
        None => r#"<a href="/dashboard/login">Sign in</a>"#.to_owned(),
    }
}

fn page(
    session: Option<&AdminSession>,
    status: StatusCode,
    title: &str,
    flash: Option<Flash>,
    body: String,
) -> Response {
    Page {
        site: SITE,
        title,
        nav: Some(nav(session)),
        signed_in: None,
        flash,
        body,
    }
    .respond(status)
}

fn failure(session: &AdminSession, err: &StoreError) -> Response {
    let (status, message) = match err {
        StoreError::NotFound(detail) => (StatusCode::NOT_FOUND, detail.clone()),
        StoreError::Conflict(detail) | StoreError::Invalid(detail) => {
            (StatusCode::CONFLICT, detail.clone())
        }
        other => {
            tracing::error!(error = %other, "dashboard request failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "The store did not answer; nothing was changed.".to_owned(),
            )
        }
    };
    page(
        Some(session),
        status,
        "Something went wrong",
        Some(Flash::Error(message)),
        String::new(),
    )
}

/// The signed-in user with at least `role`, or the answer to give instead.
async fn require(
    state: &DashboardState,
    headers: &HeaderMap,
    role: Role,
) -> Result<AdminSession, Box<Response>> {
    let Some(id) = session::cookie(headers, SESSION_COOKIE) else {
        return Err(Box::new(redirect("/dashboard/login")));
    };
    let session = match state.data.admin_session(&session::digest_hex(id)).await {
        Ok(Some(session)) => session,
        Ok(None) => return Err(Box::new(redirect("/dashboard/login"))),
        Err(err) => {
            tracing::error!(error = %err, "cannot read dashboard sessions");
            return Err(Box::new(page(
                None,
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                Some(Flash::Error("The store did not answer.".to_owned())),
                String::new(),
            )));
        }
    };
    if session.user.role < role {
        return Err(Box::new(page(
            Some(&session),
            StatusCode::FORBIDDEN,
            "Not allowed",
            Some(Flash::Error(format!(
                "This needs the {} role; you are {}.",
                role.as_str(),
                session.user.role.as_str()
            ))),
            String::new(),
        )));
    }
    Ok(session)
}

/// A change by a signed-in user: the session with the role, and the form's CSRF token.
async fn require_change(
    state: &DashboardState,
    headers: &HeaderMap,
    role: Role,
    csrf: &str,
) -> Result<AdminSession, Box<Response>> {
    let session = require(state, headers, role).await?;
    if !csrf_matches(&session.csrf, csrf) {
        return Err(Box::new(page(
            Some(&session),
            StatusCode::FORBIDDEN,
            "Form expired",
            Some(Flash::Error(
                "This form expired or did not come from this site. Reload and try again."
                    .to_owned(),
            )),
            String::new(),
        )));
    }
    Ok(session)
}

/// Records a dashboard change; a failed write is an error in the log (the change stands).
async fn record(
    state: &DashboardState,
    session: &AdminSession,
    action: &str,
    target: &str,
    details: serde_json::Value,
) {
    let actor = format!("admin:{}", session.user.email);
    if let Err(err) = state.data.audit(&actor, action, target, &details).await {
        tracing::error!(error = %err, %actor, action, target, "audit log entry not written");
    }
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

fn login_page(
    headers: &HeaderMap,
    status: StatusCode,
    flash: Option<Flash>,
    email: &str,
) -> Response {
    // The admin listener is plain http on loopback by default: no `Secure` flag.
    let (csrf, set_cookie) = anonymous_csrf(false, headers);
    let body = format!(
        r#"<h1>Sign in to the dashboard</h1><div class="card"><form method="post" action="/dashboard/login">{csrf}{email}{password}<button type="submit">Sign in</button></form><p class="muted">Dashboard users are added with <code>gatehouse users add</code>.</p></div>"#,
        csrf = csrf_field(&csrf),
        email = field(
            "email",
            "Email",
            "email",
            email,
            r#"required autocomplete="username""#
        ),
        password = field(
            "password",
            "Password",
            "password",
            "",
            r#"required autocomplete="current-password""#
        ),
    );
    let mut response = page(None, status, "Sign in", flash, body);
    if let Some((name, value)) = set_cookie {
        response.headers_mut().append(name, value);
    }
    response
}

async fn login_form(headers: HeaderMap) -> Response {
    login_page(&headers, StatusCode::OK, None, "")
}

async fn login(
    State(state): State<DashboardState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !anonymous_csrf_ok(&headers, &form.csrf) {
        return login_page(
            &headers,
            StatusCode::FORBIDDEN,
            Some(Flash::Error("This form expired. Try again.".to_owned())),
            &form.email,
        );
    }
    if !session::attempt_allowed(
        &state.attempts,
        "dashboard-login",
        client,
        Some(&form.email),
    ) {
        return login_page(
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            Some(Flash::Error(
                "Too many attempts. Wait a few minutes.".to_owned(),
            )),
            &form.email,
        );
    }
    let user = match state.data.admin_user_by_email(&form.email).await {
        Ok(user) => user,
        Err(err) => {
            tracing::error!(error = %err, "dashboard sign-in failed");
            return login_page(
                &headers,
                StatusCode::SERVICE_UNAVAILABLE,
                Some(Flash::Error("The store did not answer.".to_owned())),
                &form.email,
            );
        }
    };
    let hash = user
        .as_ref()
        .map_or(crate::accounts::DECOY_HASH.to_owned(), |u| {
            u.password_hash.clone()
        });
    let password = form.password.clone();
    let verified = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    let Some(user) = user.filter(|u| verified && u.disabled_at.is_none()) else {
        return login_page(
            &headers,
            StatusCode::UNAUTHORIZED,
            Some(Flash::Error("Email or password is wrong.".to_owned())),
            &form.email,
        );
    };
    let (Ok(id), Ok(csrf)) = (session::random_token(), session::random_token()) else {
        return login_page(&headers, StatusCode::SERVICE_UNAVAILABLE, None, &form.email);
    };
    if let Err(err) = state
        .data
        .create_admin_session(
            &session::digest_hex(&id),
            &user.id,
            &csrf,
            now() + SESSION_SECS,
        )
        .await
    {
        tracing::error!(error = %err, "dashboard session not stored");
        return login_page(
            &headers,
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Flash::Error("The store did not answer.".to_owned())),
            &form.email,
        );
    }
    if let Err(err) = state
        .data
        .audit(
            &format!("admin:{}", user.email),
            "session.sign_in",
            &format!("admin_user:{}", user.id),
            &json!({"client": client.ip().to_string()}),
        )
        .await
    {
        tracing::error!(error = %err, "audit log entry not written");
    }
    let mut response = redirect("/dashboard");
    response.headers_mut().append(
        SET_COOKIE,
        http::HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}={id}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}"
        ))
        .unwrap_or_else(|_| http::HeaderValue::from_static("invalid=1")),
    );
    response
}

async fn logout(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match require_change(&state, &headers, Role::Viewer, &form.csrf).await {
        Ok(session) => session,
        Err(response) => return *response,
    };
    if let Some(id) = session::cookie(&headers, SESSION_COOKIE) {
        if let Err(err) = state
            .data
            .delete_admin_session(&session::digest_hex(id))
            .await
        {
            return failure(&session, &err);
        }
    }
    let mut response = redirect("/dashboard/login");
    response.headers_mut().append(
        SET_COOKIE,
        http::HeaderValue::from_static(
            "gh_dashboard_session=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

#[derive(Default)]
struct Totals {
    requests: u64,
    errors: u64,
    buckets: [u64; 6],
}

fn breakdown(rows: &[UsageRow], key: impl Fn(&UsageRow) -> String, heading: &str) -> String {
    let mut groups: BTreeMap<String, Totals> = BTreeMap::new();
    for row in rows {
        let totals = groups.entry(key(row)).or_default();
        totals.requests += row.requests;
        totals.errors += row.client_errors + row.server_errors;
        for (mine, theirs) in totals.buckets.iter_mut().zip(row.latency_buckets) {
            *mine += theirs;
        }
    }
    let mut out = format!(
        r#"<div class="table"><table><thead><tr><th scope="col">{}</th><th scope="col">Requests</th><th scope="col">Error rate</th><th scope="col">p50</th><th scope="col">p95</th><th scope="col">p99</th></tr></thead><tbody>"#,
        esc(heading)
    );
    for (name, totals) in &groups {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{:.1} %</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            totals.requests,
            totals.errors as f64 * 100.0 / totals.requests.max(1) as f64,
            percentile(&totals.buckets, totals.requests, 50),
            percentile(&totals.buckets, totals.requests, 95),
            percentile(&totals.buckets, totals.requests, 99),
        );
    }
    if groups.is_empty() {
        out.push_str(r#"<tr><td colspan="6" class="muted">No metered traffic yet.</td></tr>"#);
    }
    out.push_str("</tbody></table></div>");
    out
}

async fn overview(State(state): State<DashboardState>, headers: HeaderMap) -> Response {
    let session = match require(&state, &headers, Role::Viewer).await {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let today = now().div_euclid(86_400);
    let loaded = async {
        Ok::<_, StoreError>((
            state.data.usage(None, today - 29, today).await?,
            state.data.subscriptions().await?,
        ))
    };
    let (usage, subscriptions) = match loaded.await {
        Ok(loaded) => loaded,
        Err(err) => return failure(&session, &err),
    };
    let billable: Vec<UsageRow> = usage.iter().filter(|r| !r.sandbox).cloned().collect();
    let today_requests: u64 = billable
        .iter()
        .filter(|r| r.day == today)
        .map(|r| r.requests)
        .sum();
    let elapsed = (now() - today * 86_400).max(1);
    let pending = subscriptions
        .iter()
        .filter(|s| s.status == SubscriptionStatus::Pending)
        .count();
    let mut body = format!(
        r#"<h1>Traffic</h1><div class="grid"><section class="card"><h2 style="margin-top:0">Today</h2><p><strong id="requests-today">{today_requests}</strong> requests, {rate:.3} per second on average since 00:00 UTC</p></section><section class="card"><h2 style="margin-top:0">Waiting</h2><p><a href="/dashboard/subscriptions">{pending} subscription{s} to approve</a></p></section></div>"#,
        rate = today_requests as f64 / elapsed as f64,
        s = if pending == 1 { "" } else { "s" },
    );
    // The last minute, from this gateway's meter (before it is written to the store).
    let live = state
        .config
        .telemetry
        .usage
        .live(now(), gatehouse_telemetry::usage::LIVE_SECS);
    body.push_str("<h2>The last minute, live on this gateway</h2>");
    body.push_str(&per_second_chart(&live.per_second));
    let mut rows = String::new();
    for (route, consumer, counts) in &live.by_route_and_consumer {
        let errors = counts.client_errors + counts.server_errors;
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.1} %</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(route),
            esc(consumer),
            counts.requests as f64 / gatehouse_telemetry::usage::LIVE_SECS as f64,
            errors as f64 * 100.0 / counts.requests.max(1) as f64,
            percentile(&counts.latency_buckets, counts.requests, 50),
            percentile(&counts.latency_buckets, counts.requests, 95),
            percentile(&counts.latency_buckets, counts.requests, 99),
        );
    }
    if rows.is_empty() {
        rows.push_str(r#"<tr><td colspan="7" class="muted">No metered requests in the last minute.</td></tr>"#);
    }
    let _ = write!(
        body,
        r#"<div class="table"><table id="live-table"><thead><tr><th scope="col">Route</th><th scope="col">Application</th><th scope="col">Requests/s</th><th scope="col">Error rate</th><th scope="col">p50</th><th scope="col">p95</th><th scope="col">p99</th></tr></thead><tbody>{rows}</tbody></table></div><h2>The last 30 days</h2>"#
    );
    body.push_str(&usage_chart(&billable, today - 29, today, false));
    body.push_str("<h2>By route, last 30 days</h2>");
    body.push_str(&breakdown(&billable, |r| r.route.clone(), "Route"));
    body.push_str("<h2>By application, last 30 days</h2>");
    body.push_str(&breakdown(
        &billable,
        |r| r.consumer_id.clone(),
        "Application",
    ));
    body.push_str(r#"<p class="muted">Metered traffic: requests under API product subscriptions and sandbox calls (sandbox calls are left out of the 30-day view). The live minute is this gateway's; the 30 days are the fleet's, from the store. Latency percentiles are bucket bounds. All traffic, metered or not, is in the Prometheus metrics (<code>/metrics</code>).</p>"#);
    page(Some(&session), StatusCode::OK, "Traffic", None, body)
}

async fn subscriptions(State(state): State<DashboardState>, headers: HeaderMap) -> Response {
    let session = match require(&state, &headers, Role::Viewer).await {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let loaded = async {
        Ok::<_, StoreError>((
            state.data.subscriptions().await?,
            state.data.products().await?,
            state.data.plans().await?,
        ))
    };
    let (mut subscriptions, products, plans) = match loaded.await {
        Ok(loaded) => loaded,
        Err(err) => return failure(&session, &err),
    };
    subscriptions.sort_by_key(|s| (s.status != SubscriptionStatus::Pending, -s.updated_at));
    let editor = session.user.role >= Role::Editor;
    let mut body = String::from(
        r#"<h1>Subscriptions</h1><div class="table"><table><thead><tr><th scope="col">Application</th><th scope="col">Product</th><th scope="col">Plan</th><th scope="col">State</th><th scope="col">Since</th><th scope="col">Actions</th></tr></thead><tbody>"#,
    );
    for subscription in &subscriptions {
        let status = match subscription.status {
            SubscriptionStatus::Pending => "pending",
            SubscriptionStatus::Approved => "approved",
            SubscriptionStatus::Rejected => "rejected",
            SubscriptionStatus::Cancelled => "cancelled",
        };
        let mut actions = String::new();
        if editor {
            let base = format!("/dashboard/subscriptions/{}", subscription.id);
            if subscription.status == SubscriptionStatus::Pending {
                actions.push_str(&button_form(
                    &format!("{base}/approve"),
                    &session.csrf,
                    "Approve",
                    "",
                    &[],
                ));
                actions.push_str(&button_form(
                    &format!("{base}/reject"),
                    &session.csrf,
                    "Reject",
                    "secondary",
                    &[],
                ));
            }
            if subscription.status.is_open() {
                actions.push_str(&button_form(
                    &format!("{base}/cancel"),
                    &session.csrf,
                    "Cancel",
                    "danger",
                    &[],
                ));
            }
        }
        let product = products
            .iter()
            .find(|p| p.id == subscription.product_id)
            .map_or(subscription.product_id.as_str(), |p| p.name.as_str());
        let plan = plans
            .iter()
            .find(|p| p.id == subscription.plan_id)
            .map_or(subscription.plan_id.as_str(), |p| p.name.as_str());
        let _ = write!(
            body,
            r#"<tr data-subscription="{id}"><td><code>{app}</code></td><td>{product}</td><td>{plan}</td><td><span class="tag {status}">{status}</span></td><td>{since}</td><td>{actions}</td></tr>"#,
            id = esc(&subscription.id),
            app = esc(&subscription.consumer_id),
            product = esc(product),
            plan = esc(plan),
            since = when(subscription.updated_at),
        );
    }
    if subscriptions.is_empty() {
        body.push_str(r#"<tr><td colspan="6" class="muted">No subscriptions yet.</td></tr>"#);
    }
    body.push_str("</tbody></table></div>");
    page(Some(&session), StatusCode::OK, "Subscriptions", None, body)
}

async fn decide(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match require_change(&state, &headers, Role::Editor, &form.csrf).await {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let result = match action.as_str() {
        "approve" => state.data.decide_subscription(&id, true).await,
        "reject" => state.data.decide_subscription(&id, false).await,
        "cancel" => state.data.cancel_subscription(&id).await,
        _ => {
            return failure(
                &session,
                &StoreError::NotFound(format!("no action `{action}`")),
            )
        }
    };
    match result {
        Ok(subscription) => {
            record(
                &state,
                &session,
                &format!("subscription.{action}"),
                &format!("subscription:{id}"),
                json!({"consumer_id": subscription.consumer_id, "plan_id": subscription.plan_id}),
            )
            .await;
            redirect("/dashboard/subscriptions")
        }
        Err(err) => failure(&session, &err),
    }
}

async fn products(State(state): State<DashboardState>, headers: HeaderMap) -> Response {
    let session = match require(&state, &headers, Role::Viewer).await {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let loaded =
        async { Ok::<_, StoreError>((state.data.products().await?, state.data.plans().await?)) };
    let (products, plans) = match loaded.await {
        Ok(loaded) => loaded,
        Err(err) => return failure(&session, &err),
    };
    let editor = session.user.role >= Role::Editor;
    let mut body = String::from("<h1>Products and plans</h1>");
    let snapshot = state.config.snapshot();
    let routes = snapshot.product_routes();
    let services: Vec<String> = snapshot.services.keys().cloned().collect();
    if editor {
        let _ = write!(
            body,
            r#"<details class="card" id="new-product"><summary>New product</summary><form method="post" action="/dashboard/products">{csrf}{id}{fields}<button type="submit">Create product</button></form></details>"#,
            csrf = csrf_field(&session.csrf),
            id = field(
                "product-id",
                "Id (letters, digits, - _ .)",
                "text",
                "",
                r#"required maxlength="64""#
            )
            .replace(r#"name="product-id""#, r#"name="id""#),
            fields = product_fields("new", None, &routes, &services),
        );
    }
    for product in &products {
        let _ = write!(
            body,
            r#"<section class="card"><h2 style="margin-top:0">{name} <span class="tag">{visibility}</span></h2><p class="muted">Routes: {routes}</p>"#,
            name = esc(&product.name),
            visibility = if product.visibility == gatehouse_store::catalog::Visibility::Public {
                "public"
            } else {
                "private"
            },
            routes = esc(&product.routes.join(", ")),
        );
        if editor {
            let _ = write!(
                body,
                r#"<details><summary>Edit {name}</summary><form method="post" action="/dashboard/products/{id}">{csrf}{fields}<button type="submit">Save {name}</button></form></details><details><summary>New plan of {name}</summary><form method="post" action="/dashboard/products/{id}/plans">{csrf}{plan}<button type="submit">Create plan</button></form></details>"#,
                id = esc(&product.id),
                name = esc(&product.name),
                csrf = csrf_field(&session.csrf),
                fields = product_fields(&product.id, Some(product), &routes, &services),
                plan = new_plan_fields(&product.id),
            );
        }
        for plan in plans.iter().filter(|p| p.product_id == product.id) {
            let _ = write!(
                body,
                r#"<h3 id="plan-{id}">{name}</h3>"#,
                id = esc(&plan.id),
                name = esc(&plan.name)
            );
            if !editor {
                let limits: Vec<String> = plan
                    .terms
                    .limits
                    .iter()
                    .map(|l| format!("{} per {} s", l.requests, l.per_seconds))
                    .collect();
                let _ = write!(
                    body,
                    "<p>Limits: {}; fee {}</p>",
                    esc(&limits.join(", ")),
                    money(
                        plan.terms.pricing.monthly_fee_cents,
                        &plan.terms.pricing.currency
                    )
                );
                continue;
            }
            let mut rows = String::new();
            let blank = PlanLimit {
                requests: 0,
                per_seconds: 0,
                burst: None,
            };
            for (index, limit) in plan
                .terms
                .limits
                .iter()
                .chain(std::iter::once(&blank))
                .enumerate()
            {
                let value = |n: u64| if n == 0 { String::new() } else { n.to_string() };
                let _ = write!(
                    rows,
                    r#"<tr><td><label class="muted" for="{id}-requests-{index}" style="margin:0">Requests</label><input id="{id}-requests-{index}" name="requests_{index}" type="number" min="0" value="{requests}"></td><td><label class="muted" for="{id}-per-{index}" style="margin:0">per seconds</label><input id="{id}-per-{index}" name="per_seconds_{index}" type="number" min="0" value="{per}"></td></tr>"#,
                    id = esc(&plan.id),
                    requests = value(limit.requests),
                    per = value(limit.per_seconds),
                );
            }
            let quota = plan.terms.quota.as_ref();
            let _ = write!(
                body,
                r#"<form method="post" action="/dashboard/plans/{id}">{csrf}<table aria-label="Rate limits of {name}"><tbody>{rows}</tbody></table><p class="muted">Leave a row empty to remove it.</p>{quota}{fee}<label><input type="checkbox" name="requires_approval" value="1" style="width:auto"{checked}> Subscriptions need approval</label><button type="submit">Save {name}</button></form>"#,
                id = esc(&plan.id),
                name = esc(&plan.name),
                csrf = csrf_field(&session.csrf),
                quota = field(
                    &format!("{}-quota", plan.id),
                    "Requests per month (empty: no quota)",
                    "number",
                    &quota
                        .map(|q| q.requests_per_month.to_string())
                        .unwrap_or_default(),
                    r#"min="0""#
                )
                .replace(&format!("name=\"{}-quota\"", plan.id), "name=\"quota\""),
                fee = field(
                    &format!("{}-fee", plan.id),
                    &format!("Monthly fee in cents ({})", plan.terms.pricing.currency),
                    "number",
                    &plan.terms.pricing.monthly_fee_cents.to_string(),
                    r#"min="0""#
                )
                .replace(
                    &format!("name=\"{}-fee\"", plan.id),
                    "name=\"monthly_fee_cents\""
                ),
                checked = if plan.requires_approval {
                    " checked"
                } else {
                    ""
                },
            );
        }
        body.push_str("</section>");
    }
    if products.is_empty() {
        body.push_str(r#"<p class="muted">No products yet: create them with the admin API (<code>POST /admin/products</code>).</p>"#);
    }
    page(Some(&session), StatusCode::OK, "Products", None, body)
}

/// The fields of a product's form (`prefix` keeps ids unique on the page).
fn product_fields(
    prefix: &str,
    product: Option<&gatehouse_store::catalog::Product>,
    routes: &[String],
    services: &[String],
) -> String {
    let text = |name: &str, label: &str, value: &str, extra: &str| {
        field(&format!("{prefix}-{name}"), label, "text", value, extra).replace(
            &format!(r#"name="{prefix}-{name}""#),
            &format!(r#"name="{name}""#),
        )
    };
    let mut out = text(
        "name",
        "Name",
        product.map_or("", |p| p.name.as_str()),
        "required",
    );
    out.push_str(&text(
        "version",
        "Version",
        product.map_or("v1", |p| p.version.as_str()),
        "",
    ));
    let _ = write!(
        out,
        r#"<label for="{prefix}-description">Description</label><textarea id="{prefix}-description" name="description" rows="2">{}</textarea>"#,
        esc(product.map_or("", |p| p.description.as_str()))
    );
    let public =
        product.is_none_or(|p| p.visibility == gatehouse_store::catalog::Visibility::Public);
    let _ = write!(
        out,
        r#"<label for="{prefix}-visibility">Visibility</label><select id="{prefix}-visibility" name="visibility"><option value="public"{}>public: listed in the portal</option><option value="private"{}>private: admins subscribe applications</option></select>"#,
        if public { " selected" } else { "" },
        if public { "" } else { " selected" },
    );
    let _ = write!(
        out,
        r#"<fieldset><legend>Routes (those with <code>auth</code>)</legend>"#
    );
    for route in routes {
        let checked = product.is_some_and(|p| p.routes.contains(route));
        let _ = write!(
            out,
            r#"<label style="font-weight:400"><input type="checkbox" name="route" value="{route}" style="width:auto"{checked}> {route}</label>"#,
            route = esc(route),
            checked = if checked { " checked" } else { "" },
        );
    }
    out.push_str("</fieldset>");
    let sandbox = product.and_then(|p| p.sandbox.as_ref());
    let mut options =
        String::from(r#"<option value="">the mock, from the OpenAPI document</option>"#);
    for service in services {
        let selected = sandbox.and_then(|s| s.service.as_deref()) == Some(service.as_str());
        let _ = write!(
            options,
            r#"<option value="{service}"{}>the service {service}</option>"#,
            if selected { " selected" } else { "" },
            service = esc(service),
        );
    }
    let _ = write!(
        out,
        r#"<label style="font-weight:400"><input type="checkbox" name="sandbox" value="1" style="width:auto"{checked}> A sandbox for sandbox keys</label><label for="{prefix}-sandbox-service">The sandbox answers from</label><select id="{prefix}-sandbox-service" name="sandbox_service">{options}</select><label for="{prefix}-openapi">OpenAPI document (JSON)</label><textarea id="{prefix}-openapi" name="openapi" rows="4">{openapi}</textarea>"#,
        checked = if sandbox.is_some() { " checked" } else { "" },
        openapi = esc(&product
            .and_then(|p| p.openapi.as_ref())
            .map(|d| serde_json::to_string_pretty(d).unwrap_or_default())
            .unwrap_or_default()),
    );
    out
}

fn new_plan_fields(product: &str) -> String {
    let input = |name: &str, label: &str, kind: &str, extra: &str| {
        field(&format!("{product}-plan-{name}"), label, kind, "", extra).replace(
            &format!(r#"name="{product}-plan-{name}""#),
            &format!(r#"name="{name}""#),
        )
    };
    [
        input("id", "Id (letters, digits, - _ .)", "text", r#"required maxlength="64""#),
        input("name", "Name", "text", "required"),
        input("description", "Description", "text", ""),
        input("monthly_fee_cents", "Monthly fee in cents (USD)", "number", r#"min="0" value="0""#),
        input("requests", "Rate limit: requests", "number", r#"min="1""#),
        input("per_seconds", "per seconds", "number", r#"min="1""#),
        input("quota", "Requests per month (empty: no quota)", "number", r#"min="1""#),
        r#"<label style="font-weight:400"><input type="checkbox" name="requires_approval" value="1" style="width:auto"> Subscriptions need approval</label>"#.to_owned(),
    ]
    .concat()
}

/// A product from its form's fields; `id` from the path when editing.
fn product_from_form(
    id: &str,
    fields: &[(String, String)],
) -> Result<gatehouse_store::catalog::Product, String> {
    let one = |name: &str| {
        fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.trim().to_owned())
            .unwrap_or_default()
    };
    let openapi = match one("openapi") {
        text if text.is_empty() => None,
        text => Some(
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| format!("the OpenAPI document is not JSON: {e}"))?,
        ),
    };
    let sandbox = (one("sandbox") == "1").then(|| gatehouse_store::catalog::Sandbox {
        service: Some(one("sandbox_service")).filter(|s| !s.is_empty()),
        limits: Vec::new(),
    });
    Ok(gatehouse_store::catalog::Product {
        id: id.to_owned(),
        name: one("name"),
        description: one("description"),
        openapi,
        routes: fields
            .iter()
            .filter(|(key, _)| key == "route")
            .map(|(_, value)| value.clone())
            .collect(),
        version: one("version"),
        visibility: if one("visibility") == "private" {
            gatehouse_store::catalog::Visibility::Private
        } else {
            gatehouse_store::catalog::Visibility::Public
        },
        sandbox,
        created_at: 0,
        updated_at: 0,
    })
}

fn form_value(fields: &[(String, String)], name: &str) -> String {
    fields
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.clone())
        .unwrap_or_default()
}

async fn create_product(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let session =
        match require_change(&state, &headers, Role::Editor, &form_value(&fields, "csrf")).await {
            Ok(session) => session,
            Err(response) => return *response,
        };
    let product = match product_from_form(form_value(&fields, "id").trim(), &fields) {
        Ok(product) => product,
        Err(message) => return failure(&session, &StoreError::Invalid(message)),
    };
    let problems = state.config.snapshot().product_problems(
        &product.routes,
        product.sandbox.as_ref().and_then(|s| s.service.as_deref()),
    );
    if !problems.is_empty() {
        return failure(&session, &StoreError::Invalid(problems.join("; ")));
    }
    match state.data.create_product(&product).await {
        Ok(created) => {
            record(&state, &session, "product.create", &format!("product:{}", created.id), json!({"name": created.name, "routes": created.routes, "visibility": created.visibility})).await;
            redirect("/dashboard/products")
        }
        Err(err) => failure(&session, &err),
    }
}

async fn update_product(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let session =
        match require_change(&state, &headers, Role::Editor, &form_value(&fields, "csrf")).await {
            Ok(session) => session,
            Err(response) => return *response,
        };
    let product = match product_from_form(&id, &fields) {
        Ok(product) => product,
        Err(message) => return failure(&session, &StoreError::Invalid(message)),
    };
    let problems = state.config.snapshot().product_problems(
        &product.routes,
        product.sandbox.as_ref().and_then(|s| s.service.as_deref()),
    );
    if !problems.is_empty() {
        return failure(&session, &StoreError::Invalid(problems.join("; ")));
    }
    let change = gatehouse_store::catalog::ProductChange {
        name: Some(product.name),
        description: Some(product.description),
        openapi: product.openapi,
        routes: Some(product.routes),
        version: Some(product.version),
        visibility: Some(product.visibility),
        sandbox: product.sandbox,
    };
    match state.data.update_product(&id, &change).await {
        Ok(updated) => {
            record(&state, &session, "product.update", &format!("product:{id}"), json!({"name": updated.name, "routes": updated.routes, "visibility": updated.visibility, "sandbox": updated.sandbox})).await;
            redirect("/dashboard/products")
        }
        Err(err) => failure(&session, &err),
    }
}

async fn create_plan(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Path(product): Path<String>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let session =
        match require_change(&state, &headers, Role::Editor, &form_value(&fields, "csrf")).await {
            Ok(session) => session,
            Err(response) => return *response,
        };
    let number = |name: &str| -> Result<Option<u64>, String> {
        match form_value(&fields, name).trim() {
            "" => Ok(None),
            text => text
                .parse()
                .map(Some)
                .map_err(|_| format!("`{text}` is not a whole number")),
        }
    };
    let terms = (|| -> Result<gatehouse_store::catalog::PlanTerms, String> {
        let mut terms = gatehouse_store::catalog::PlanTerms::default();
        match (number("requests")?, number("per_seconds")?) {
            (Some(requests), Some(per_seconds)) => terms.limits.push(PlanLimit {
                requests,
                per_seconds,
                burst: None,
            }),
            (None, None) => {}
            _ => return Err("give the rate limit's requests and seconds, or neither".to_owned()),
        }
        terms.quota = number("quota")?.map(|requests_per_month| PlanQuota {
            requests_per_month,
            overage_cents_per_1000: None,
        });
        terms.pricing.monthly_fee_cents = number("monthly_fee_cents")?.unwrap_or(0);
        Ok(terms)
    })();
    let terms = match terms {
        Ok(terms) => terms,
        Err(message) => return failure(&session, &StoreError::Invalid(message)),
    };
    let plan = gatehouse_store::catalog::Plan {
        id: form_value(&fields, "id").trim().to_owned(),
        product_id: product.clone(),
        name: form_value(&fields, "name").trim().to_owned(),
        description: form_value(&fields, "description").trim().to_owned(),
        terms,
        requires_approval: form_value(&fields, "requires_approval") == "1",
        created_at: 0,
        updated_at: 0,
    };
    match state.data.create_plan(&product, &plan).await {
        Ok(created) => {
            record(&state, &session, "plan.create", &format!("plan:{}", created.id), json!({"product_id": product, "terms": created.terms, "requires_approval": created.requires_approval})).await;
            redirect(&format!("/dashboard/products#plan-{}", created.id))
        }
        Err(err) => failure(&session, &err),
    }
}

async fn update_plan(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let csrf = form.get("csrf").cloned().unwrap_or_default();
    let session = match require_change(&state, &headers, Role::Editor, &csrf).await {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let plan = match state.data.plan(&id).await {
        Ok(plan) => plan,
        Err(err) => return failure(&session, &err),
    };
    let number = |name: &str| -> Result<Option<u64>, String> {
        match form.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| format!("`{text}` is not a whole number")),
        }
    };
    let parsed = (|| -> Result<PlanChange, String> {
        let mut terms = plan.terms.clone();
        terms.limits.clear();
        for index in 0..=plan.terms.limits.len() {
            let requests = number(&format!("requests_{index}"))?;
            let per_seconds = number(&format!("per_seconds_{index}"))?;
            match (requests, per_seconds) {
                (Some(requests), Some(per_seconds)) => terms.limits.push(PlanLimit {
                    requests,
                    per_seconds,
                    burst: plan.terms.limits.get(index).and_then(|l| l.burst),
                }),
                (None, None) => {}
                _ => {
                    return Err(format!(
                        "limit {}: give both requests and seconds, or neither",
                        index + 1
                    ))
                }
            }
        }
        terms.quota = number("quota")?.map(|requests_per_month| PlanQuota {
            requests_per_month,
            overage_cents_per_1000: plan
                .terms
                .quota
                .as_ref()
                .and_then(|q| q.overage_cents_per_1000),
        });
        if let Some(fee) = number("monthly_fee_cents")? {
            terms.pricing.monthly_fee_cents = fee;
        }
        Ok(PlanChange {
            terms: Some(terms),
            requires_approval: Some(form.contains_key("requires_approval")),
            ..PlanChange::default()
        })
    })();
    let change = match parsed {
        Ok(change) => change,
        Err(message) => return failure(&session, &StoreError::Invalid(message)),
    };
    match state.data.update_plan(&id, &change).await {
        Ok(updated) => {
            record(&state, &session, "plan.update", &format!("plan:{id}"), json!({"before": plan.terms, "after": updated.terms, "requires_approval": updated.requires_approval})).await;
            redirect(&format!("/dashboard/products#plan-{id}"))
        }
        Err(err) => failure(&session, &err),
    }
}

async fn developers(State(state): State<DashboardState>, headers: HeaderMap) -> Response {
    let session = match require(&state, &headers, Role::Viewer).await {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let developers = match state.data.developers().await {
        Ok(developers) => developers,
        Err(err) => return failure(&session, &err),
    };
    let admin = session.user.role >= Role::Admin;
    let mut body = String::from(
        r#"<h1>Developers</h1><div class="table"><table><thead><tr><th scope="col">Name</th><th scope="col">Email</th><th scope="col">Confirmed</th><th scope="col">Signed up</th><th scope="col">State</th><th scope="col"></th></tr></thead><tbody>"#,
    );
    for developer in &developers {
        let (state_tag, action, label) = match developer.disabled_at {
            Some(_) => ("revoked", "enable", "Enable"),
            None => ("active", "disable", "Disable"),
        };
        let actions = if admin {
            button_form(
                &format!("/dashboard/developers/{}/{action}", developer.id),
                &session.csrf,
                label,
                if action == "disable" { "danger" } else { "" },
                &[],
            )
        } else {
            String::new()
        };
        let _ = write!(
            body,
            r#"<tr><td>{name}</td><td>{email}</td><td>{confirmed}</td><td>{since}</td><td><span class="tag {state_tag}">{shown}</span></td><td>{actions}</td></tr>"#,
            name = esc(&developer.name),
            email = esc(&developer.email),
            confirmed = if developer.email_verified_at.is_some() {
                "yes"
            } else {
                "no"
            },
            since = when(developer.created_at),
            shown = if developer.disabled_at.is_some() {
                "disabled"
            } else {
                "active"
            },
        );
    }
    if developers.is_empty() {
        body.push_str(r#"<tr><td colspan="6" class="muted">No developers yet.</td></tr>"#);
    }
    body.push_str("</tbody></table></div>");
    page(Some(&session), StatusCode::OK, "Developers", None, body)
}

async fn set_developer(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match require_change(&state, &headers, Role::Admin, &form.csrf).await {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let disable = match action.as_str() {
        "disable" => true,
        "enable" => false,
        _ => {
            return failure(
                &session,
                &StoreError::NotFound(format!("no action `{action}`")),
            )
        }
    };
    match state.data.set_developer_disabled(&id, disable).await {
        Ok(developer) => {
            record(
                &state,
                &session,
                &format!("developer.{action}"),
                &format!("developer:{id}"),
                json!({"email": developer.email}),
            )
            .await;
            redirect("/dashboard/developers")
        }
        Err(err) => failure(&session, &err),
    }
}

async fn applications(State(state): State<DashboardState>, headers: HeaderMap) -> Response {
    let session = match require(&state, &headers, Role::Viewer).await {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let contents = match state.data.contents().await {
        Ok(contents) => contents,
        Err(err) => return failure(&session, &err),
    };
    let editor = session.user.role >= Role::Editor;
    let at = now();
    let mut body = String::from(r#"<h1>Applications and keys</h1>"#);
    for consumer in &contents.consumers {
        let _ = write!(
            body,
            r#"<section class="card"><h2 style="margin-top:0">{name} <code>{id}</code></h2><p class="muted">{description}</p><div class="table"><table><thead><tr><th scope="col">Key id</th><th scope="col">Created</th><th scope="col">State</th><th scope="col"></th></tr></thead><tbody>"#,
            name = esc(&consumer.name),
            id = esc(&consumer.id),
            description = esc(&consumer.description),
        );
        for key in contents
            .keys
            .iter()
            .filter(|k| k.consumer_id == consumer.id)
        {
            let live = key.revoked_at.is_none() && key.expires_at.is_none_or(|until| until > at);
            let shown = match (key.revoked_at, key.expires_at) {
                (Some(_), _) => "revoked".to_owned(),
                (None, Some(until)) if until <= at => "expired".to_owned(),
                (None, Some(until)) => format!("active until {}", when(until)),
                (None, None) => "active".to_owned(),
            };
            let revoke = if editor && live {
                button_form(
                    &format!("/dashboard/keys/{}/revoke", key.public_id),
                    &session.csrf,
                    "Revoke",
                    "danger",
                    &[],
                )
            } else {
                String::new()
            };
            let _ = write!(
                body,
                r#"<tr><td><code>{id}</code></td><td>{created}</td><td>{shown}</td><td>{revoke}</td></tr>"#,
                id = esc(&key.public_id),
                created = when(key.created_at),
                shown = esc(&shown),
            );
        }
        body.push_str("</tbody></table></div></section>");
    }
    if contents.consumers.is_empty() {
        body.push_str(r#"<p class="muted">No applications yet.</p>"#);
    }
    page(Some(&session), StatusCode::OK, "Applications", None, body)
}

async fn revoke_key(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Path(public_id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match require_change(&state, &headers, Role::Editor, &form.csrf).await {
        Ok(session) => session,
        Err(response) => return *response,
    };
    match state.data.revoke_key(&public_id).await {
        Ok(key) => {
            record(
                &state,
                &session,
                "key.revoke",
                &format!("key:{public_id}"),
                json!({"consumer_id": key.consumer_id}),
            )
            .await;
            redirect("/dashboard/applications")
        }
        Err(err) => failure(&session, &err),
    }
}

async fn audit(State(state): State<DashboardState>, headers: HeaderMap) -> Response {
    let session = match require(&state, &headers, Role::Viewer).await {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let entries = match state.data.audit_log(500).await {
        Ok(entries) => entries,
        Err(err) => return failure(&session, &err),
    };
    let mut body = String::from(
        r#"<h1>Audit log</h1><p class="muted">The newest 500 admin actions, from the dashboard, the admin API and the command line.</p><div class="table"><table><thead><tr><th scope="col">When</th><th scope="col">Who</th><th scope="col">Action</th><th scope="col">Target</th><th scope="col">Details</th></tr></thead><tbody>"#,
    );
    for entry in &entries {
        let _ = write!(
            body,
            r#"<tr class="audit-entry"><td>{when}</td><td>{actor}</td><td><code>{action}</code></td><td><code>{target}</code></td><td><code>{details}</code></td></tr>"#,
            when = when(entry.at),
            actor = esc(&entry.actor),
            action = esc(&entry.action),
            target = esc(&entry.target),
            details = esc(&entry.details.to_string()),
        );
    }
    if entries.is_empty() {
        body.push_str(r#"<tr><td colspan="5" class="muted">Nothing yet.</td></tr>"#);
    }
    body.push_str("</tbody></table></div>");
    page(Some(&session), StatusCode::OK, "Audit log", None, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_bucket_bounds() {
        let buckets = [50, 40, 5, 4, 1, 0];
        assert_eq!(percentile(&buckets, 100, 50), "≤ 10 ms");
        assert_eq!(percentile(&buckets, 100, 95), "≤ 100 ms");
        assert_eq!(percentile(&buckets, 100, 99), "≤ 250 ms");
        assert_eq!(percentile(&[0; 6], 0, 50), "–");
        let row = UsageRow {
            route: "books".into(),
            consumer_id: "app".into(),
            requests: 10,
            client_errors: 1,
            latency_buckets: [10, 0, 0, 0, 0, 0],
            ..UsageRow::default()
        };
        let table = breakdown(&[row], |r| r.route.clone(), "Route");
        assert!(
            table.contains("<td>books</td><td>10</td><td>10.0 %</td>"),
            "{table}"
        );
    }
}
