//! The public pages: the API catalog (public products and their plans) and each product's
//! reference, rendered from its OpenAPI document: operations, parameters, request and
//! response bodies with their schemas and examples, and the document's schemas.

use std::fmt::Write;

use axum::extract::{Path, State};
use axum::response::Response;
use gatehouse_store::catalog::{Plan, Product, Visibility};
use http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::html::{esc, money, Flash, Page};
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

pub(crate) async fn product(
    State(state): State<PortalState>,
    headers: HeaderMap,
    Path(id): Path<String>,
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
    match &product.openapi {
        Some(document) => body.push_str(&reference(document)),
        None => body.push_str(
            r#"<h2>Reference</h2><p class="muted">This API has no reference document yet.</p>"#,
        ),
    }
    page(&state, &headers, StatusCode::OK, &product.name, None, body).await
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
