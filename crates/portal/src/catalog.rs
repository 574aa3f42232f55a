//! The public pages: the API catalog (public products and their plans) and each product's
//! reference, rendered from its OpenAPI document: operations, parameters, request and
//! response bodies with their schemas and examples, and the document's schemas.

use std::fmt::Write;

use axum::extract::{Form, Path, State};
use axum::response::Response;
use gatehouse_store::catalog::{Plan, Product, Visibility};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::html::{csrf_field, esc, field, money, Flash, Page};
use crate::session;
use crate::PortalState;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn page(
    state: &PortalState,
    headers: &HeaderMap,
    status: StatusCode,
    title: &str,
    flash: Option<Flash>,
    body: String,
) -> Response {
    let settings = state.settings();
    let current = session::current(state, headers).await;
    Page {
        site: &settings.title,
        title,
        nav: None,
        signed_in: current
            .as_ref()
            .map(|s| (s.developer.name.as_str(), s.csrf.as_str())),
        flash,
        body,
    }
    .respond(status)
}

fn unavailable(err: &dyn std::fmt::Display) -> (StatusCode, Option<Flash>) {
    tracing::error!(error = %err, "portal request failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Some(Flash::Error(
            "The portal cannot reach its store right now; try again shortly.".to_owned(),
        )),
    )
}

/// A plan's terms in words.
fn plan_terms(plan: &Plan) -> String {
    let mut parts = Vec::new();
    for limit in &plan.terms.limits {
        parts.push(format!(
            "{} requests per {}",
            limit.requests,
            match limit.per_seconds {
                1 => "second".to_owned(),
                60 => "minute".to_owned(),
                3600 => "hour".to_owned(),
                86_400 => "day".to_owned(),
                s => format!("{s} seconds"),
            }
        ));
    }
    if let Some(quota) = &plan.terms.quota {
        parts.push(match quota.overage_cents_per_1000 {
            Some(price) => format!(
                "{} requests a month included, then {} per 1,000",
                quota.requests_per_month,
                money(price, &plan.terms.pricing.currency)
            ),
            None => format!("{} requests a month", quota.requests_per_month),
        });
    }
    let pricing = &plan.terms.pricing;
    let mut below = 0;
    for tier in &pricing.tiers {
        parts.push(match tier.up_to {
            Some(up_to) => format!(
                "requests {} to {}: {} per 1,000",
                below + 1,
                up_to,
                money(tier.cents_per_1000, &pricing.currency)
            ),
            None => format!(
                "requests beyond {below}: {} per 1,000",
                money(tier.cents_per_1000, &pricing.currency)
            ),
        });
        below = tier.up_to.unwrap_or(below);
    }
    if plan.requires_approval {
        parts.push("subscriptions are approved by the API team".to_owned());
    }
    parts.join("; ")
}

fn plans_table(plans: &[&Plan]) -> String {
    let mut out = String::from(
        r#"<div class="table"><table><thead><tr><th scope="col">Plan</th><th scope="col">Price</th><th scope="col">Terms</th></tr></thead><tbody>"#,
    );
    for plan in plans {
        let _ = write!(
            out,
            r#"<tr><td><strong>{name}</strong><br><span class="muted">{description}</span></td><td>{fee} a month</td><td>{terms}</td></tr>"#,
            name = esc(&plan.name),
            description = esc(&plan.description),
            fee = money(
                plan.terms.pricing.monthly_fee_cents,
                &plan.terms.pricing.currency
            ),
            terms = esc(&plan_terms(plan)),
        );
    }
    if plans.is_empty() {
        out.push_str(r#"<tr><td colspan="3" class="muted">No plans yet.</td></tr>"#);
    }
    out.push_str("</tbody></table></div>");
    out
}

pub(crate) async fn index(State(state): State<PortalState>, headers: HeaderMap) -> Response {
    let loaded = async {
        Ok::<_, gatehouse_store::StoreError>((
            state.data.products().await?,
            state.data.plans().await?,
        ))
    };
    let (products, plans) = match loaded.await {
        Ok(loaded) => loaded,
        Err(err) => {
            let (status, flash) = unavailable(&err);
            return page(&state, &headers, status, "APIs", flash, String::new()).await;
        }
    };
    let settings = state.settings();
    let mut body = format!(
        r#"<h1>APIs</h1><p>Browse the APIs of {}, read their reference, and <a href="/signup">sign up</a> to get a key.</p><div class="grid">"#,
        esc(&settings.title)
    );
    let public: Vec<&Product> = products
        .iter()
        .filter(|p| p.visibility == Visibility::Public)
        .collect();
    for product in &public {
        let count = plans.iter().filter(|p| p.product_id == product.id).count();
        let _ = write!(
            body,
            r#"<section class="card product"><h2 style="margin-top:0"><a href="/apis/{id}">{name}</a> <span class="tag">{version}</span></h2><p>{description}</p><p class="muted">{count} plan{s}</p></section>"#,
            id = esc(&product.id),
            name = esc(&product.name),
            version = esc(&product.version),
            description = esc(&product.description),
            s = if count == 1 { "" } else { "s" },
        );
    }
    body.push_str("</div>");
    if public.is_empty() {
        body.push_str(r#"<p class="muted">No APIs are published yet.</p>"#);
    }
    page(&state, &headers, StatusCode::OK, "APIs", None, body).await
}

/// The try-it console's form, and the answer it got.
#[derive(Deserialize, Default)]
pub(crate) struct TryForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    method: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    body: String,
}

pub(crate) async fn product(
    State(state): State<PortalState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    product_page(state, headers, id, None).await
}

/// Sends the console's request to the product's sandbox through the gateway and shows
/// the answer on the product page.
pub(crate) async fn try_it(
    State(state): State<PortalState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<TryForm>,
) -> Response {
    if !session::anonymous_csrf_ok(&headers, &form.csrf) {
        return product_page(
            state,
            headers,
            id,
            Some((
                form,
                Err("This form expired; reload the page and try again.".to_owned()),
            )),
        )
        .await;
    }
    let method = match form.method.as_str() {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" => form.method.clone(),
        _ => String::new(),
    };
    let problem = if method.is_empty() {
        Some("Choose an operation.")
    } else if !form.path.starts_with('/')
        || form.path.starts_with("//")
        || form.path.contains(char::is_whitespace)
    {
        Some("The path must start with a single / and have no spaces.")
    } else if !form.key.starts_with("sandbox_") {
        Some("The console calls sandboxes: use one of your application's sandbox keys.")
    } else {
        None
    };
    if let Some(problem) = problem {
        return product_page(state, headers, id, Some((form, Err(problem.to_owned())))).await;
    }
    let settings = state.settings();
    let url = format!("{}{}", settings.gateway_url, form.path);
    let answer = async {
        let fetcher =
            gatehouse_policy::fetch::HttpFetcher::new(None, std::time::Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
        let body = (!form.body.trim().is_empty()).then(|| ("application/json", form.body.clone()));
        let method = http::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        fetcher
            .request(method, &url, &[("x-api-key", form.key.clone())], body)
            .await
            .map_err(|e| e.to_string())
    };
    let result = answer.await.map(|response| {
        let mut shown = format!("{}\n", response.status);
        for (name, value) in &response.headers {
            let _ = writeln!(shown, "{}: {}", name, value.to_str().unwrap_or("<binary>"));
        }
        shown.push('\n');
        let text = String::from_utf8_lossy(&response.body);
        match serde_json::from_str::<Value>(&text) {
            Ok(json) => shown.push_str(&serde_json::to_string_pretty(&json).unwrap_or_default()),
            Err(_) => shown.push_str(&text),
        }
        shown
    });
    product_page(state, headers, id, Some((form, result))).await
}

async fn product_page(
    state: PortalState,
    headers: HeaderMap,
    id: String,
    tried: Option<(TryForm, Result<String, String>)>,
) -> Response {
    let loaded = async {
        Ok::<_, gatehouse_store::StoreError>((
            state.data.product(&id).await?,
            state.data.plans().await?,
        ))
    };
    let (product, plans) = match loaded.await {
        Ok((product, plans)) if product.visibility == Visibility::Public => (product, plans),
        Ok(_) | Err(gatehouse_store::StoreError::NotFound(_)) => {
            return not_found(State(state), headers).await
        }
        Err(err) => {
            let (status, flash) = unavailable(&err);
            return page(&state, &headers, status, "API", flash, String::new()).await;
        }
    };
    let settings = state.settings();
    let plans: Vec<&Plan> = plans
        .iter()
        .filter(|p| p.product_id == product.id)
        .collect();
    let mut body = format!(
        r#"<h1>{name} <span class="tag">{version}</span></h1><p>{description}</p><p>Base URL: <code>{gateway}</code>. Authenticate with your application's key in the <code>x-api-key</code> header.</p><h2>Plans</h2>{plans}<p><a class="button" href="/apps">Subscribe an application</a></p>"#,
        name = esc(&product.name),
        version = esc(&product.version),
        description = esc(&product.description),
        gateway = esc(&settings.gateway_url),
        plans = plans_table(&plans),
    );
    let mut set_cookie = None;
    if let (Some(_), Some(document)) = (&product.sandbox, &product.openapi) {
        let (csrf, cookie) = session::anonymous_csrf(settings.secure_cookies(), &headers);
        set_cookie = cookie;
        body.push_str(&console(&product.id, document, &csrf, tried.as_ref()));
    }
    match &product.openapi {
        Some(document) => body.push_str(&reference(document)),
        None => body.push_str(
            r#"<h2>Reference</h2><p class="muted">This API has no reference document yet.</p>"#,
        ),
    }
    let mut response = page(&state, &headers, StatusCode::OK, &product.name, None, body).await;
    if let Some((name, value)) = set_cookie {
        response.headers_mut().append(name, value);
    }
    response
}

pub(crate) async fn not_found(State(state): State<PortalState>, headers: HeaderMap) -> Response {
    page(
        &state,
        &headers,
        StatusCode::NOT_FOUND,
        "Not found",
        None,
        r#"<h1>Not found</h1><p>There is no such page. <a href="/">See the APIs</a>.</p>"#
            .to_owned(),
    )
    .await
}

/// The try-it console: an operation of the document, a path, a sandbox key and a body.
fn console(
    product: &str,
    document: &Value,
    csrf: &str,
    tried: Option<&(TryForm, Result<String, String>)>,
) -> String {
    let mut options = String::new();
    if let Some(paths) = document.get("paths").and_then(Value::as_object) {
        for (path, item) in paths {
            for method in METHODS {
                if item.get(method).is_some() {
                    let upper = method.to_uppercase();
                    let selected = tried.is_some_and(|(form, _)| form.method == upper);
                    let _ = write!(
                        options,
                        r#"<option value="{upper}"{selected}>{upper} {path}</option>"#,
                        selected = if selected { " selected" } else { "" },
                        path = esc(path),
                    );
                }
            }
        }
    }
    let first_path = document
        .get("paths")
        .and_then(Value::as_object)
        .and_then(|p| p.keys().next())
        .cloned()
        .unwrap_or_else(|| "/".to_owned());
    let (path, key, request_body) = match tried {
        Some((form, _)) => (form.path.clone(), form.key.clone(), form.body.clone()),
        None => (first_path, String::new(), String::new()),
    };
    let result = match tried.map(|(_, result)| result) {
        Some(Ok(answer)) => format!(
            r#"<h3>Answer</h3><pre id="try-result" aria-live="polite">{}</pre>"#,
            esc(answer)
        ),
        Some(Err(problem)) => format!(
            r#"<div class="flash error" role="alert" id="try-result">{}</div>"#,
            esc(problem)
        ),
        None => String::new(),
    };
    format!(
        r#"<h2 id="try">Try it in the sandbox</h2><div class="card"><p>Calls go to the sandbox with one of your application's <strong>sandbox keys</strong>: no subscription needed, limited, never billed.</p><form method="post" action="/apis/{product}/try#try">{csrf}<label for="try-method">Operation</label><select id="try-method" name="method">{options}</select>{path}{key}<label for="try-body">JSON body (optional)</label><textarea id="try-body" name="body" rows="3">{request_body}</textarea><button type="submit">Send</button></form>{result}</div>"#,
        product = esc(product),
        csrf = csrf_field(csrf),
        path = field(
            "try-path",
            "Path (fill in the parameters)",
            "text",
            &path,
            "required"
        )
        .replace(r#"name="try-path""#, r#"name="path""#),
        key = field(
            "try-key",
            "Sandbox key",
            "password",
            &key,
            r#"required autocomplete="off""#
        )
        .replace(r#"name="try-key""#, r#"name="key""#),
        request_body = esc(&request_body),
    )
}

/// `#/components/schemas/Book` → `Book`.
fn ref_name(value: &Value) -> Option<&str> {
    value
        .get("$ref")?
        .as_str()?
        .strip_prefix("#/components/schemas/")
}

/// A schema in one line: its type, with links to named schemas.
fn schema_summary(schema: &Value) -> String {
    if let Some(name) = ref_name(schema) {
        return format!(
            r##"<a href="#schema-{id}">{name}</a>"##,
            id = esc(name),
            name = esc(name)
        );
    }
    let kind = schema.get("type").and_then(Value::as_str).unwrap_or("any");
    match kind {
        "array" => format!(
            "array of {}",
            schema
                .get("items")
                .map(schema_summary)
                .unwrap_or_else(|| "any".to_owned())
        ),
        other => {
            let mut out = esc(other).into_owned();
            if let Some(format) = schema.get("format").and_then(Value::as_str) {
                let _ = write!(out, " ({})", esc(format));
            }
            if let Some(values) = schema.get("enum").and_then(Value::as_array) {
                let list: Vec<String> = values
                    .iter()
                    .map(|v| esc(&v.to_string()).into_owned())
                    .collect();
                let _ = write!(out, ": one of {}", list.join(", "));
            }
            out
        }
    }
}

/// An object schema's properties as a table.
fn properties_table(schema: &Value) -> String {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return format!("<p>{}</p>", schema_summary(schema));
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = String::from(
        r#"<div class="table"><table><thead><tr><th scope="col">Field</th><th scope="col">Type</th><th scope="col">Required</th><th scope="col">Description</th></tr></thead><tbody>"#,
    );
    for (name, property) in properties {
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            schema_summary(property),
            if required.contains(&name.as_str()) {
                "yes"
            } else {
                "no"
            },
            esc(property
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")),
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

/// The example of a media type: `example`, else the first of `examples`.
fn example_of(media: &Value) -> Option<&Value> {
    media.get("example").or_else(|| {
        media
            .get("examples")?
            .as_object()?
            .values()
            .next()?
            .get("value")
    })
}

fn pretty(value: &Value) -> String {
    format!(
        "<pre>{}</pre>",
        esc(&serde_json::to_string_pretty(value).unwrap_or_default())
    )
}

/// The reference of an OpenAPI 3 document.
pub(crate) fn reference(document: &Value) -> String {
    let mut out = String::from(r#"<h2 id="reference">Reference</h2>"#);
    if let Some(info) = document.get("info") {
        if let Some(description) = info.get("description").and_then(Value::as_str) {
            let _ = write!(out, "<p>{}</p>", esc(description));
        }
    }
    let Some(paths) = document.get("paths").and_then(Value::as_object) else {
        out.push_str(r#"<p class="muted">The document lists no operations.</p>"#);
        return out;
    };
    for (path, item) in paths {
        for method in METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let anchor = operation
                .get("operationId")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{method}-{path}").replace(['/', '{', '}'], "-"));
            let _ = write!(
                out,
                r#"<section class="card operation" id="op-{anchor}"><h3><span class="method">{method}</span> <code>{path}</code></h3>"#,
                anchor = esc(&anchor),
                method = esc(&method.to_uppercase()),
                path = esc(path),
            );
            for key in ["summary", "description"] {
                if let Some(text) = operation.get(key).and_then(Value::as_str) {
                    let _ = write!(out, "<p>{}</p>", esc(text));
                }
            }
            let parameters: Vec<&Value> = item
                .get("parameters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .chain(
                    operation
                        .get("parameters")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten(),
                )
                .collect();
            if !parameters.is_empty() {
                out.push_str(r#"<h4>Parameters</h4><div class="table"><table><thead><tr><th scope="col">Name</th><th scope="col">In</th><th scope="col">Type</th><th scope="col">Required</th><th scope="col">Description</th></tr></thead><tbody>"#);
                for parameter in parameters {
                    let _ = write!(
                        out,
                        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(parameter.get("name").and_then(Value::as_str).unwrap_or("")),
                        esc(parameter.get("in").and_then(Value::as_str).unwrap_or("")),
                        parameter.get("schema").map(schema_summary).unwrap_or_default(),
                        if parameter.get("required").and_then(Value::as_bool).unwrap_or(false) { "yes" } else { "no" },
                        esc(parameter.get("description").and_then(Value::as_str).unwrap_or("")),
                    );
                }
                out.push_str("</tbody></table></div>");
            }
            if let Some(content) = operation
                .get("requestBody")
                .and_then(|b| b.get("content"))
                .and_then(Value::as_object)
            {
                out.push_str("<h4>Request body</h4>");
                for (media_type, media) in content {
                    let _ = write!(out, "<p><code>{}</code></p>", esc(media_type));
                    if let Some(schema) = media.get("schema") {
                        out.push_str(&properties_table(schema));
                    }
                    if let Some(example) = example_of(media) {
                        out.push_str(&pretty(example));
                    }
                }
            }
            if let Some(responses) = operation.get("responses").and_then(Value::as_object) {
                out.push_str(r#"<h4>Responses</h4>"#);
                for (status, response) in responses {
                    let _ = write!(
                        out,
                        "<p><strong>{}</strong> {}</p>",
                        esc(status),
                        esc(response
                            .get("description")
                            .and_then(Value::as_str)
                            .unwrap_or(""))
                    );
                    if let Some(content) = response.get("content").and_then(Value::as_object) {
                        for (media_type, media) in content {
                            let schema =
                                media.get("schema").map(schema_summary).unwrap_or_default();
                            let _ = write!(out, "<p><code>{}</code> {schema}</p>", esc(media_type));
                            if let Some(example) = example_of(media) {
                                out.push_str(&pretty(example));
                            }
                        }
                    }
                }
            }
            out.push_str("</section>");
        }
    }
    if let Some(schemas) = document
        .get("components")
        .and_then(|c| c.get("schemas"))
        .and_then(Value::as_object)
    {
        out.push_str("<h2>Schemas</h2>");
        for (name, schema) in schemas {
            let _ = write!(
                out,
                r#"<section class="card" id="schema-{id}"><h3>{name}</h3>{description}{table}</section>"#,
                id = esc(name),
                name = esc(name),
                description = schema
                    .get("description")
                    .and_then(Value::as_str)
                    .map(|d| format!("<p>{}</p>", esc(d)))
                    .unwrap_or_default(),
                table = properties_table(schema),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_reference_shows_operations_parameters_schemas_and_examples() {
        let document = json!({
            "openapi": "3.0.3",
            "info": {"title": "Books", "version": "1", "description": "All <the> books."},
            "paths": {"/books/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                "get": {"operationId": "getBook", "summary": "One book",
                        "responses": {"200": {"description": "The book",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Book"},
                                                              "example": {"id": 1, "title": "Dune"}}}}}}}},
            "components": {"schemas": {"Book": {"type": "object", "required": ["id"],
                "properties": {"id": {"type": "integer"}, "title": {"type": "string", "description": "The title"}}}}}
        });
        let html = reference(&document);
        assert!(html.contains("All &lt;the&gt; books."));
        assert!(html.contains(r#"id="op-getBook""#));
        assert!(html.contains("<span class=\"method\">GET</span> <code>/books/{id}</code>"));
        assert!(html.contains("<td><code>id</code></td><td>path</td><td>integer</td><td>yes</td>"));
        assert!(html.contains(r##"<a href="#schema-Book">Book</a>"##));
        assert!(html.contains("&quot;title&quot;: &quot;Dune&quot;"));
        assert!(html.contains(r#"id="schema-Book""#));
        assert!(html
            .contains("<td><code>title</code></td><td>string</td><td>no</td><td>The title</td>"));
    }
}
