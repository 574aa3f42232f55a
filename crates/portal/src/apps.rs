//! A signed-in developer's applications: create them, subscribe them to plans, get, rotate
//! and revoke their keys (shown once), and see their usage and current invoice. Every
//! action checks that the application belongs to the developer and carries the session's
//! CSRF token.

use std::collections::HashMap;
use std::fmt::Write;

use axum::extract::{Form, Path, Query, State};
use axum::response::{IntoResponse, Response};
use gatehouse_policy::auth::api_key::{generate, KeyHasher};
use gatehouse_store::accounts::Session;
use gatehouse_store::billing::Month;
use gatehouse_store::catalog::{generated_id, SubscriptionStatus, Visibility};
use gatehouse_store::{StoreError, StoredConsumer};
use http::header::LOCATION;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::accounts::now;
use crate::charts::usage_chart;
use crate::html::{button_form, csrf_field, esc, field, money, when, Flash, Page};
use crate::session::{self, csrf_matches};
use crate::PortalState;

#[derive(Deserialize)]
pub(crate) struct NewApp {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
pub(crate) struct Action {
    #[serde(default)]
    csrf: String,
    /// Rotation: seconds the old key keeps working.
    #[serde(default)]
    overlap: Option<u64>,
    /// Subscription: the plan.
    #[serde(default)]
    plan_id: Option<String>,
    /// New key: `sandbox` for a sandbox key.
    #[serde(default)]
    environment: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct Done {
    done: Option<String>,
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, to.to_owned())]).into_response()
}

/// The signed-in developer, or a redirect to sign in.
async fn signed_in(state: &PortalState, headers: &HeaderMap) -> Result<Session, Box<Response>> {
    session::current(state, headers)
        .await
        .ok_or_else(|| Box::new(redirect("/login")))
}

fn page(
    state: &PortalState,
    session: &Session,
    status: StatusCode,
    title: &str,
    flash: Option<Flash>,
    body: String,
) -> Response {
    let settings = state.settings();
    Page {
        site: &settings.title,
        title,
        nav: None,
        signed_in: Some((&session.developer.name, &session.csrf)),
        flash,
        body,
    }
    .respond(status)
}

fn failure(state: &PortalState, session: &Session, err: &StoreError) -> Response {
    let (status, message) = match err {
        StoreError::NotFound(_) => (StatusCode::NOT_FOUND, "Not found.".to_owned()),
        StoreError::Conflict(detail) | StoreError::Invalid(detail) => {
            (StatusCode::CONFLICT, detail.clone())
        }
        other => {
            tracing::error!(error = %other, "portal request failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "The portal cannot reach its store right now. Nothing was changed; try again shortly.".to_owned(),
            )
        }
    };
    page(
        state,
        session,
        status,
        "Something went wrong",
        Some(Flash::Error(message)),
        String::new(),
    )
}

/// The application, when it belongs to the signed-in developer.
async fn owned(
    state: &PortalState,
    session: &Session,
    id: &str,
) -> Result<StoredConsumer, Box<Response>> {
    match state.data.consumer(id).await {
        Ok(app) if app.developer_id.as_deref() == Some(session.developer.id.as_str()) => Ok(app),
        Ok(_) | Err(StoreError::NotFound(_)) => Err(Box::new(failure(
            state,
            session,
            &StoreError::NotFound(String::new()),
        ))),
        Err(err) => Err(Box::new(failure(state, session, &err))),
    }
}

fn csrf_refused(state: &PortalState, session: &Session) -> Response {
    page(
        state,
        session,
        StatusCode::FORBIDDEN,
        "Form expired",
        Some(Flash::Error(
            "This form expired or did not come from this site. Reload the page and try again."
                .to_owned(),
        )),
        String::new(),
    )
}

pub(crate) async fn list(State(state): State<PortalState>, headers: HeaderMap) -> Response {
    let session = match signed_in(&state, &headers).await {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let apps = match state.data.applications_of(&session.developer.id).await {
        Ok(apps) => apps,
        Err(err) => return failure(&state, &session, &err),
    };
    let mut body = String::from("<h1>Your applications</h1>");
    if apps.is_empty() {
        body.push_str(r#"<p class="muted">No applications yet. An application holds your keys and subscriptions.</p>"#);
    } else {
        body.push_str(r#"<div class="grid">"#);
        for app in &apps {
            let _ = write!(
                body,
                r#"<section class="card"><h2 style="margin-top:0"><a href="/apps/{id}">{name}</a></h2><p class="muted">{description}</p></section>"#,
                id = esc(&app.id),
                name = esc(&app.name),
                description = esc(&app.description),
            );
        }
        body.push_str("</div>");
    }
    let _ = write!(
        body,
        r#"<h2>New application</h2><div class="card"><form method="post" action="/apps">{csrf}{name}<label for="description">Description</label><textarea id="description" name="description" rows="2" maxlength="500"></textarea><button type="submit">Create application</button></form></div>"#,
        csrf = csrf_field(&session.csrf),
        name = field("name", "Name", "text", "", r#"required maxlength="100""#),
    );
    page(&state, &session, StatusCode::OK, "Applications", None, body)
}

pub(crate) async fn create(
    State(state): State<PortalState>,
    headers: HeaderMap,
    Form(form): Form<NewApp>,
) -> Response {
    let session = match signed_in(&state, &headers).await {
        Ok(session) => session,
        Err(response) => return *response,
    };
    if !csrf_matches(&session.csrf, &form.csrf) {
        return csrf_refused(&state, &session);
    }
    let name = form.name.trim();
    if name.is_empty() || name.chars().count() > 100 || form.description.chars().count() > 500 {
        return page(
            &state,
            &session,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Applications",
            Some(Flash::Error("Give the application a name (up to 100 characters) and a description of up to 500.".to_owned())),
            String::new(),
        );
    }
    let app = StoredConsumer {
        id: generated_id("app"),
        name: name.to_owned(),
        groups: vec!["developers".to_owned()],
        metadata: [("developer".to_owned(), session.developer.email.clone())].into(),
        description: form.description.trim().to_owned(),
        developer_id: Some(session.developer.id.clone()),
        created_at: 0,
    };
    match state.data.create_consumer(&app).await {
        Ok(created) => redirect(&format!("/apps/{}?done=created", created.id)),
        Err(err) => failure(&state, &session, &err),
    }
}

fn done_message(done: Option<&str>) -> Option<Flash> {
    let text = match done? {
        "created" => "Application created. Subscribe it to a plan and get a key.",
        "revoked" => "Key revoked: the gateway refuses it within a second.",
        "subscribed" => "Subscribed: the key works on the product within a second.",
        "pending" => "Subscription requested: it works once an admin approves it.",
        "cancelled" => "Subscription cancelled.",
        _ => return None,
    };
    Some(Flash::Info(text.to_owned()))
}

fn overlap_label(seconds: u64) -> String {
    match seconds {
        s if s % 86_400 == 0 => format!("{} day{}", s / 86_400, if s == 86_400 { "" } else { "s" }),
        s if s % 3600 == 0 => format!("{} hour{}", s / 3600, if s == 3600 { "" } else { "s" }),
        s if s % 60 == 0 => format!("{} minute{}", s / 60, if s == 60 { "" } else { "s" }),
        s => format!("{s} seconds"),
    }
}

pub(crate) async fn show(
    State(state): State<PortalState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(done): Query<Done>,
) -> Response {
    let session = match signed_in(&state, &headers).await {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let app = match owned(&state, &session, &id).await {
        Ok(app) => app,
        Err(response) => return *response,
    };
    let today = now().div_euclid(86_400);
    let loaded = async {
        Ok::<_, StoreError>((
            state.data.keys_of(&app.id).await?,
            state.data.subscriptions_of(&app.id).await?,
            state.data.products().await?,
            state.data.plans().await?,
            state.data.usage(Some(&app.id), today - 29, today).await?,
            state
                .data
                .invoice(&app.id, Month::containing(now()))
                .await?,
        ))
    };
    let (keys, subscriptions, products, plans, usage, invoice) = match loaded.await {
        Ok(loaded) => loaded,
        Err(err) => return failure(&state, &session, &err),
    };
    let settings = state.settings();
    let csrf = &session.csrf;
    let base = format!("/apps/{}", app.id);
    let product_names: HashMap<&str, &str> = products
        .iter()
        .map(|p| (p.id.as_str(), p.name.as_str()))
        .collect();
    let plan_names: HashMap<&str, &str> = plans
        .iter()
        .map(|p| (p.id.as_str(), p.name.as_str()))
        .collect();

    let mut body = format!(
        r#"<h1>{name}</h1><p class="muted">{description}</p><p>Call the APIs at <code>{gateway}</code> with your key in the <code>x-api-key</code> header.</p>"#,
        name = esc(&app.name),
        description = esc(&app.description),
        gateway = esc(&settings.gateway_url),
    );

    // Keys.
    body.push_str(r#"<h2 id="keys">Keys</h2><div class="table"><table><thead><tr><th scope="col">Key id</th><th scope="col">For</th><th scope="col">Created</th><th scope="col">State</th><th scope="col">Actions</th></tr></thead><tbody>"#);
    let at = now();
    let overlaps: String = settings
        .rotation_overlaps
        .iter()
        .map(|d| {
            format!(
                r#"<option value="{}">{}</option>"#,
                d.as_secs(),
                esc(&overlap_label(d.as_secs()))
            )
        })
        .collect();
    for key in &keys {
        let (state_tag, live) = match (key.revoked_at, key.expires_at) {
            (Some(_), _) => ("revoked".to_owned(), false),
            (None, Some(until)) if until <= at => ("expired".to_owned(), false),
            (None, Some(until)) => (format!("active until {}", when(until)), true),
            (None, None) => ("active".to_owned(), true),
        };
        let class = state_tag.split(' ').next().unwrap_or_default().to_owned();
        let actions = if live {
            format!(
                r#"<form class="inline" method="post" action="{base}/keys/{public_id}/rotate">{csrf_field}<label class="muted" for="overlap-{public_id}" style="display:inline;font-weight:400">old key works for</label> <select id="overlap-{public_id}" name="overlap" style="width:auto">{overlaps}</select> <button type="submit" class="secondary">Rotate</button></form> {revoke}"#,
                base = esc(&base),
                public_id = esc(&key.public_id),
                csrf_field = csrf_field(csrf),
                revoke = button_form(
                    &format!("{base}/keys/{}/revoke", key.public_id),
                    csrf,
                    "Revoke",
                    "danger",
                    &[]
                ),
            )
        } else {
            String::new()
        };
        let _ = write!(
            body,
            r#"<tr data-key="{public_id}"><td><code>{public_id}</code></td><td>{environment}</td><td>{created}</td><td><span class="tag {class}">{state_tag}</span></td><td>{actions}</td></tr>"#,
            public_id = esc(&key.public_id),
            environment = if key.sandbox { "sandbox" } else { "live APIs" },
            created = when(key.created_at),
            class = esc(&class),
            state_tag = esc(&state_tag),
        );
    }
    if keys.is_empty() {
        body.push_str(r#"<tr><td colspan="5" class="muted">No keys yet.</td></tr>"#);
    }
    body.push_str("</tbody></table></div>");
    body.push_str(&button_form(
        &format!("{base}/keys"),
        csrf,
        "Create a key",
        "",
        &[],
    ));
    body.push_str(&button_form(
        &format!("{base}/keys"),
        csrf,
        "Create a sandbox key",
        "secondary",
        &[("environment", "sandbox")],
    ));

    // Subscriptions.
    body.push_str(r#"<h2 id="subscriptions">Subscriptions</h2><div class="table"><table><thead><tr><th scope="col">API</th><th scope="col">Plan</th><th scope="col">State</th><th scope="col"></th></tr></thead><tbody>"#);
    for subscription in &subscriptions {
        let status = match subscription.status {
            SubscriptionStatus::Pending => "pending",
            SubscriptionStatus::Approved => "approved",
            SubscriptionStatus::Rejected => "rejected",
            SubscriptionStatus::Cancelled => "cancelled",
        };
        let cancel = if subscription.status.is_open() {
            button_form(
                &format!("{base}/subscriptions/{}/cancel", subscription.id),
                csrf,
                "Cancel",
                "secondary",
                &[],
            )
        } else {
            String::new()
        };
        let _ = write!(
            body,
            r#"<tr><td>{product}</td><td>{plan}</td><td><span class="tag {status}">{status}</span></td><td>{cancel}</td></tr>"#,
            product = esc(product_names
                .get(subscription.product_id.as_str())
                .copied()
                .unwrap_or(&subscription.product_id)),
            plan = esc(plan_names
                .get(subscription.plan_id.as_str())
                .copied()
                .unwrap_or(&subscription.plan_id)),
        );
    }
    if subscriptions.is_empty() {
        body.push_str(r#"<tr><td colspan="4" class="muted">No subscriptions yet.</td></tr>"#);
    }
    body.push_str("</tbody></table></div>");
    let held: Vec<&str> = subscriptions
        .iter()
        .filter(|s| s.status.is_open())
        .map(|s| s.product_id.as_str())
        .collect();
    let mut options = String::new();
    for product in products
        .iter()
        .filter(|p| p.visibility == Visibility::Public && !held.contains(&p.id.as_str()))
    {
        for plan in plans.iter().filter(|p| p.product_id == product.id) {
            let _ = write!(
                options,
                r#"<option value="{id}">{product} — {plan}: {fee} a month{approval}</option>"#,
                id = esc(&plan.id),
                product = esc(&product.name),
                plan = esc(&plan.name),
                fee = money(
                    plan.terms.pricing.monthly_fee_cents,
                    &plan.terms.pricing.currency
                ),
                approval = if plan.requires_approval {
                    " (needs approval)"
                } else {
                    ""
                },
            );
        }
    }
    if !options.is_empty() {
        let _ = write!(
            body,
            r#"<form method="post" action="{base}/subscriptions">{csrf_field}<label for="plan_id">Subscribe to</label><select id="plan_id" name="plan_id">{options}</select><button type="submit">Subscribe</button></form>"#,
            base = esc(&base),
            csrf_field = csrf_field(csrf),
        );
    }

    // Usage and invoice.
    body.push_str(r#"<h2 id="usage">Usage, last 30 days</h2>"#);
    body.push_str(&usage_chart(&usage, today - 29, today, false));
    if usage.iter().any(|row| row.sandbox) {
        body.push_str(&usage_chart(&usage, today - 29, today, true));
    }
    let _ = write!(
        body,
        r#"<h2 id="invoice">Invoice for {month}, to date</h2><div class="table"><table><thead><tr><th scope="col">Item</th><th scope="col">Quantity</th><th scope="col">Amount</th></tr></thead><tbody>"#,
        month = esc(&invoice.month),
    );
    for line in &invoice.lines {
        let quantity = match line.kind {
            gatehouse_store::billing::LineKind::Fee => {
                format!("{:.2} days", line.quantity as f64 / 86_400.0)
            }
            _ => format!("{} requests", line.quantity),
        };
        let _ = write!(
            body,
            r#"<tr class="invoice-line"><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(&line.description),
            esc(&quantity),
            money(line.amount_cents, &line.currency),
        );
    }
    if invoice.lines.is_empty() {
        body.push_str(r#"<tr><td colspan="3" class="muted">Nothing yet this month.</td></tr>"#);
    }
    for total in &invoice.totals {
        let _ = write!(
            body,
            r#"<tr><th scope="row" colspan="2">Total</th><td><strong>{}</strong></td></tr>"#,
            money(total.amount_cents, &total.currency)
        );
    }
    body.push_str("</tbody></table></div>");
    page(
        &state,
        &session,
        StatusCode::OK,
        &app.name,
        done_message(done.done.as_deref()),
        body,
    )
}

/// A page that shows a key once.
fn key_page(
    state: &PortalState,
    session: &Session,
    app: &StoredConsumer,
    key: &str,
    note: &str,
) -> Response {
    let body = format!(
        r#"<h1>Your new key</h1><div class="card"><p><strong>Copy it now:</strong> it is shown only this once; we keep only a keyed hash of it.</p><code class="key" id="new-key">{key}</code><p>{note}</p><p><a class="button" href="/apps/{id}">Back to {name}</a></p></div>"#,
        key = esc(key),
        note = esc(note),
        id = esc(&app.id),
        name = esc(&app.name),
    );
    page(
        state,
        session,
        StatusCode::CREATED,
        "Your new key",
        None,
        body,
    )
}

fn hasher(state: &PortalState) -> Option<KeyHasher> {
    KeyHasher::from_config(&state.config.snapshot().config.authentication)
}

/// Checks the session, the CSRF token and the ownership of the application.
async fn authorize(
    state: &PortalState,
    headers: &HeaderMap,
    id: &str,
    csrf: &str,
) -> Result<(Session, StoredConsumer), Box<Response>> {
    let session = signed_in(state, headers).await?;
    if !csrf_matches(&session.csrf, csrf) {
        return Err(Box::new(csrf_refused(state, &session)));
    }
    let app = owned(state, &session, id).await?;
    Ok((session, app))
}

pub(crate) async fn issue_key(
    State(state): State<PortalState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<Action>,
) -> Response {
    let (session, app) = match authorize(&state, &headers, &id, &form.csrf).await {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let sandbox = form.environment.as_deref() == Some("sandbox");
    let prefix = if sandbox { "sandbox" } else { "live" };
    let Some(generated) = hasher(&state).and_then(|h| generate(&h, prefix).ok()) else {
        return failure(
            &state,
            &session,
            &StoreError::Malformed("keys cannot be generated".to_owned()),
        );
    };
    match state
        .data
        .add_key(
            &app.id,
            &generated.public_id,
            &generated.hash,
            None,
            sandbox,
        )
        .await
    {
        Ok(_) => key_page(
            &state,
            &session,
            &app,
            &generated.key,
            if sandbox {
                "It works within a second on the sandbox of every API that has one, without a subscription; sandbox calls are limited and never billed."
            } else {
                "It works at the gateway within a second, on every API the application is subscribed to."
            },
        ),
        Err(err) => failure(&state, &session, &err),
    }
}

/// Whether the key is one of the application's.
async fn owns_key(
    state: &PortalState,
    app: &StoredConsumer,
    public_id: &str,
) -> Result<bool, StoreError> {
    Ok(state
        .data
        .keys_of(&app.id)
        .await?
        .iter()
        .any(|key| key.public_id == public_id))
}

pub(crate) async fn rotate_key(
    State(state): State<PortalState>,
    headers: HeaderMap,
    Path((id, public_id)): Path<(String, String)>,
    Form(form): Form<Action>,
) -> Response {
    let (session, app) = match authorize(&state, &headers, &id, &form.csrf).await {
        Ok(found) => found,
        Err(response) => return *response,
    };
    match owns_key(&state, &app, &public_id).await {
        Ok(true) => {}
        Ok(false) => return failure(&state, &session, &StoreError::NotFound(String::new())),
        Err(err) => return failure(&state, &session, &err),
    }
    let settings = state.settings();
    let overlap = form.overlap.unwrap_or(0);
    if !settings
        .rotation_overlaps
        .iter()
        .any(|d| d.as_secs() == overlap)
    {
        return failure(
            &state,
            &session,
            &StoreError::Invalid("Choose one of the offered overlaps.".to_owned()),
        );
    }
    let prefix = match state.data.key(&public_id).await {
        Ok(key) if key.sandbox => "sandbox",
        Ok(_) => "live",
        Err(err) => return failure(&state, &session, &err),
    };
    let Some(generated) = hasher(&state).and_then(|h| generate(&h, prefix).ok()) else {
        return failure(
            &state,
            &session,
            &StoreError::Malformed("keys cannot be generated".to_owned()),
        );
    };
    match state
        .data
        .rotate_key(
            &public_id,
            &generated.public_id,
            &generated.hash,
            overlap as i64,
        )
        .await
    {
        Ok((previous, _)) => {
            let until = previous.expires_at.map(when).unwrap_or_default();
            key_page(
                &state,
                &session,
                &app,
                &generated.key,
                &format!("It works at once. The old key {public_id} keeps working until {until}: switch your clients before then."),
            )
        }
        Err(err) => failure(&state, &session, &err),
    }
}

pub(crate) async fn revoke_key(
    State(state): State<PortalState>,
    headers: HeaderMap,
    Path((id, public_id)): Path<(String, String)>,
    Form(form): Form<Action>,
) -> Response {
    let (session, app) = match authorize(&state, &headers, &id, &form.csrf).await {
        Ok(found) => found,
        Err(response) => return *response,
    };
    match owns_key(&state, &app, &public_id).await {
        Ok(true) => {}
        Ok(false) => return failure(&state, &session, &StoreError::NotFound(String::new())),
        Err(err) => return failure(&state, &session, &err),
    }
    match state.data.revoke_key(&public_id).await {
        Ok(_) => redirect(&format!("/apps/{}?done=revoked#keys", app.id)),
        Err(err) => failure(&state, &session, &err),
    }
}

pub(crate) async fn subscribe(
    State(state): State<PortalState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<Action>,
) -> Response {
    let (session, app) = match authorize(&state, &headers, &id, &form.csrf).await {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let plan_id = form.plan_id.unwrap_or_default();
    // Developers subscribe only to public products.
    let public = async {
        let plan = state.data.plan(&plan_id).await?;
        let product = state.data.product(&plan.product_id).await?;
        Ok::<_, StoreError>(product.visibility == Visibility::Public)
    };
    match public.await {
        Ok(true) => {}
        Ok(false) => return failure(&state, &session, &StoreError::NotFound(String::new())),
        Err(err) => return failure(&state, &session, &err),
    }
    match state.data.subscribe(&app.id, &plan_id).await {
        Ok(subscription) => {
            let done = if subscription.status == SubscriptionStatus::Pending {
                "pending"
            } else {
                "subscribed"
            };
            redirect(&format!("/apps/{}?done={done}#subscriptions", app.id))
        }
        Err(err) => failure(&state, &session, &err),
    }
}

pub(crate) async fn cancel_subscription(
    State(state): State<PortalState>,
    headers: HeaderMap,
    Path((id, subscription)): Path<(String, String)>,
    Form(form): Form<Action>,
) -> Response {
    let (session, app) = match authorize(&state, &headers, &id, &form.csrf).await {
        Ok(found) => found,
        Err(response) => return *response,
    };
    match state.data.subscription(&subscription).await {
        Ok(found) if found.consumer_id == app.id => {}
        Ok(_) => return failure(&state, &session, &StoreError::NotFound(String::new())),
        Err(err) => return failure(&state, &session, &err),
    }
    match state.data.cancel_subscription(&subscription).await {
        Ok(_) => redirect(&format!("/apps/{}?done=cancelled#subscriptions", app.id)),
        Err(err) => failure(&state, &session, &err),
    }
}
