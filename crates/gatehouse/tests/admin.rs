//! The admin API: authentication, readiness, redacted config dump, reload errors with
//! locations, versions and rollback.

mod common;

use common::{admin_block, client, Gateway, ADMIN_TOKEN};
use serde_json::Value;

fn config(body: &str) -> String {
    format!(
        "{}listeners:\n  - name: public\n    listen: 127.0.0.1:0\nroutes:\n  - match: {{ path: {{ exact: /version }} }}\n    respond: {{ body: {body} }}\n",
        admin_block()
    )
}

#[tokio::test]
async fn health_and_ready_need_no_token_everything_else_does() {
    let gateway = Gateway::start(&config("one"));
    let client = client();
    assert_eq!(
        client
            .get(gateway.admin_url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(gateway.admin_url("/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let response = client
        .get(gateway.admin_url("/admin/config"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = client
        .get(gateway.admin_url("/admin/config"))
        .bearer_auth("wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let response = client
        .get(gateway.admin_url("/admin/config"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        !text.contains(ADMIN_TOKEN),
        "the dump must not reveal the token: {text}"
    );
    let dump: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dump["config"]["admin"]["token"], "<redacted>");
    assert_eq!(dump["version"], 1);
}

#[tokio::test]
async fn protected_endpoints_are_closed_without_a_configured_token() {
    let gateway = Gateway::start(
        "admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: public\n    listen: 127.0.0.1:0\n",
    );
    let response = client()
        .get(gateway.admin_url("/admin/config"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "admin_token_not_configured");
}

#[tokio::test]
async fn reload_through_the_api_with_versions_and_rollback() {
    let gateway = Gateway::start(&config("one"));
    let client = client();
    let post = |text: String| {
        client
            .post(gateway.admin_url("/admin/config"))
            .bearer_auth(ADMIN_TOKEN)
            .body(text)
            .send()
    };
    let version = |client: reqwest::Client, url: String| async move {
        client.get(url).send().await.unwrap().text().await.unwrap()
    };
    let url = gateway.url("/version");

    let response = post(config("two")).await.unwrap();
    assert_eq!(response.status(), 200);
    let applied: Value = response.json().await.unwrap();
    assert_eq!(applied["version"], 2);
    assert_eq!(version(client.clone(), url.clone()).await, "two");

    // An invalid configuration is refused with its location; the running one stays.
    let broken = config("three").replace("respond:", "respnd:");
    let response = post(broken).await.unwrap();
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "invalid_configuration");
    let first = problem["errors"][0].as_str().unwrap();
    assert!(
        first.starts_with("request:9:5: unknown field `respnd`, did you mean `respond`?"),
        "{first}"
    );
    assert_eq!(version(client.clone(), url.clone()).await, "two");

    let versions: Value = gateway.admin_json("/admin/config/versions").await;
    assert_eq!(versions["active"], 2);
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2);

    let response = client
        .post(gateway.admin_url("/admin/config/rollback/1"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let rolled: Value = response.json().await.unwrap();
    assert_eq!(rolled["version"], 3);
    assert_eq!(version(client.clone(), url.clone()).await, "one");

    let response = client
        .post(gateway.admin_url("/admin/config/rollback/99"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    let routes: Value = gateway.admin_json("/admin/routes").await;
    assert_eq!(routes["version"], 3);
    assert_eq!(routes["routes"][0]["match"]["path"]["exact"], "/version");
    assert_eq!(routes["routes"][0]["auth"], Value::Null);
}

#[test]
fn admin_refuses_non_loopback_addresses_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("remote-admin.yaml");
    std::fs::write(&path, "admin:\n  listen: 0.0.0.0:9901\n").unwrap();
    let output = std::process::Command::new(common::binary())
        .args(["check", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(":2:11: admin listener `0.0.0.0:9901` is not a loopback address"),
        "{stdout}"
    );
}

/// Check `body` against the schema the OpenAPI document gives for this answer.
fn assert_documented(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let responses = &doc["paths"][path][method]["responses"];
    let response = &responses[status.to_string()];
    assert!(
        response.is_object(),
        "{method} {path} answered {status}, which the document does not list: {responses}"
    );
    let Some(content) = response["content"].as_object() else {
        assert!(
            body.is_null(),
            "{method} {path} {status} is documented without a body but sent {body}"
        );
        return;
    };
    let (_, media) = content.iter().next().unwrap();
    let mut schema = media["schema"].clone();
    schema["components"] = doc["components"].clone();
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{method} {path} {status}: bad schema: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status} does not match its documented schema: {errors:?}\n{body}"
    );
}

#[tokio::test]
async fn openapi_document_describes_every_endpoint_and_the_answers_match_it() {
    let upstream = common::echo("openapi").await;
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path().join("store.db");
    let yaml = format!(
        r#"{admin}store:
  url: "sqlite:{store}"
listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: echo
    endpoints: [{{ address: "{upstream}", weight: 3 }}]
    load_balancing: least_request
authentication:
  api_key_secret: "test-api-key-secret-0123456789abcdef"
  methods:
    keys: {{ api_key: {{ header: x-api-key }} }}
consumers:
  - id: guest
routes:
  - name: orders
    match: {{ hosts: [api.example.com], path: {{ template: "/orders/{{id}}" }}, methods: [GET] }}
    service: echo
    auth: {{ methods: [keys], anonymous: guest }}
  - name: old
    match: {{ path: {{ prefix: /old }} }}
    redirect: {{ path: /new, status: 301 }}
  - name: version
    match: {{ path: {{ exact: /version }} }}
    respond: {{ status: 200, body: one }}
"#,
        admin = admin_block(),
        store = store.display(),
    );
    let gateway = Gateway::start(&yaml);
    let client = client();
    let response = client
        .get(gateway.admin_url("/admin/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "the document needs the token too");
    let doc = gateway.admin_json("/admin/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["adminToken"]["scheme"],
        "bearer"
    );
    assert_eq!(
        doc["paths"]["/health"]["get"]["security"],
        serde_json::json!([])
    );

    let mut exercised = std::collections::BTreeSet::new();
    let mut call = |method: &'static str,
                    path: &'static str,
                    concrete: String,
                    body: Option<(&'static str, String)>| {
        exercised.insert((method, path));
        let mut request = match method {
            "get" => client.get(gateway.admin_url(&concrete)),
            "patch" => client.patch(gateway.admin_url(&concrete)),
            "delete" => client.delete(gateway.admin_url(&concrete)),
            _ => client.post(gateway.admin_url(&concrete)),
        }
        .bearer_auth(ADMIN_TOKEN);
        if let Some((content_type, body)) = body {
            request = request.header("content-type", content_type).body(body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            (status, text)
        }
    };
    let json = |text: &str| -> Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };

    let (status, text) = call("get", "/admin/config", "/admin/config".into(), None).await;
    assert_eq!(status, 200);
    assert_documented(&doc, "get", "/admin/config", status, &json(&text));
    let (status, text) = call("get", "/admin/routes", "/admin/routes".into(), None).await;
    assert_eq!(status, 200);
    let routes = json(&text);
    assert_eq!(routes["routes"][0]["action"]["service"], "echo");
    assert_eq!(routes["routes"][0]["auth"]["anonymous"], "guest");
    assert_eq!(routes["routes"][1]["action"]["redirect"]["status"], 301);
    assert_eq!(routes["routes"][2]["action"]["respond"], 200);
    assert_documented(&doc, "get", "/admin/routes", status, &routes);
    let (status, text) = call("get", "/admin/services", "/admin/services".into(), None).await;
    assert_eq!(status, 200);
    let services = json(&text);
    assert_eq!(services["services"][0]["endpoints"][0]["weight"], 3);
    assert_documented(&doc, "get", "/admin/services", status, &services);

    let explain = serde_json::json!({ "url": "http://api.example.com/orders/42", "headers": { "x-trace": "1" } });
    let (status, text) = call(
        "post",
        "/admin/explain",
        "/admin/explain".into(),
        Some(("application/json", explain.to_string())),
    )
    .await;
    assert_eq!(status, 200);
    let report = json(&text);
    assert_eq!(report["route"]["name"], "orders");
    assert_documented(&doc, "post", "/admin/explain", status, &report);
    let nowhere = serde_json::json!({ "url": "http://other.example.com/nothing" });
    let (status, text) = call(
        "post",
        "/admin/explain",
        "/admin/explain".into(),
        Some(("application/json", nowhere.to_string())),
    )
    .await;
    assert_eq!(status, 200);
    assert_documented(&doc, "post", "/admin/explain", status, &json(&text));
    let (status, text) = call(
        "post",
        "/admin/explain",
        "/admin/explain".into(),
        Some(("application/json", "{}".into())),
    )
    .await;
    assert_eq!(status, 400);
    assert_documented(&doc, "post", "/admin/explain", status, &json(&text));

    for (body, expected) in [
        (serde_json::json!({ "all": true }), 200),
        (
            serde_json::json!({ "url": "http://api.example.com/orders/42" }),
            200,
        ),
        (serde_json::json!({ "tag": "a", "all": true }), 400),
        (serde_json::json!({ "route": "orders" }), 404),
    ] {
        let (status, text) = call(
            "post",
            "/admin/cache/purge",
            "/admin/cache/purge".into(),
            Some(("application/json", body.to_string())),
        )
        .await;
        assert_eq!(status, expected, "{body}: {text}");
        assert_documented(&doc, "post", "/admin/cache/purge", status, &json(&text));
    }

    let (status, text) = call(
        "post",
        "/admin/config",
        "/admin/config".into(),
        Some(("application/yaml", "listeners: [{ nme: x }]\n".into())),
    )
    .await;
    assert_eq!(status, 400);
    let refused = json(&text);
    assert!(
        refused["errors"][0].as_str().unwrap().contains(":1:"),
        "{refused}"
    );
    assert_documented(&doc, "post", "/admin/config", status, &refused);
    let (status, text) = call(
        "post",
        "/admin/config",
        "/admin/config".into(),
        Some(("application/yaml", yaml.replace("body: one", "body: two"))),
    )
    .await;
    assert_eq!(status, 200);
    assert_documented(&doc, "post", "/admin/config", status, &json(&text));
    let (status, text) = call(
        "get",
        "/admin/config/versions",
        "/admin/config/versions".into(),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_documented(&doc, "get", "/admin/config/versions", status, &json(&text));
    let (status, text) = call(
        "post",
        "/admin/config/rollback/{version}",
        "/admin/config/rollback/1".into(),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_documented(
        &doc,
        "post",
        "/admin/config/rollback/{version}",
        status,
        &json(&text),
    );
    let (status, text) = call(
        "post",
        "/admin/config/rollback/{version}",
        "/admin/config/rollback/99".into(),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_documented(
        &doc,
        "post",
        "/admin/config/rollback/{version}",
        status,
        &json(&text),
    );
    let (status, text) = call("get", "/metrics", "/metrics".into(), None).await;
    assert_eq!(status, 200);
    assert!(text.contains("gatehouse_build_info"));
    let (status, _) = call(
        "get",
        "/admin/openapi.json",
        "/admin/openapi.json".into(),
        None,
    )
    .await;
    assert_eq!(status, 200);
    // The store's consumers and keys.
    let consumer = serde_json::json!({ "id": "acme", "groups": ["partners"] });
    for expected in [201, 409] {
        let (status, text) = call(
            "post",
            "/admin/consumers",
            "/admin/consumers".into(),
            Some(("application/json", consumer.to_string())),
        )
        .await;
        assert_eq!(status, expected, "{text}");
        assert_documented(&doc, "post", "/admin/consumers", status, &json(&text));
    }
    let (status, text) = call(
        "post",
        "/admin/consumers/{id}/keys",
        "/admin/consumers/acme/keys".into(),
        Some(("application/json", r#"{"prefix": "test"}"#.into())),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let issued = json(&text);
    assert!(issued["key"].as_str().unwrap().starts_with("test_"));
    assert_documented(&doc, "post", "/admin/consumers/{id}/keys", status, &issued);
    let (status, text) = call(
        "post",
        "/admin/consumers/{id}/keys",
        "/admin/consumers/nobody/keys".into(),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_documented(
        &doc,
        "post",
        "/admin/consumers/{id}/keys",
        status,
        &json(&text),
    );
    let (status, text) = call("get", "/admin/consumers", "/admin/consumers".into(), None).await;
    assert_eq!(status, 200);
    assert_documented(&doc, "get", "/admin/consumers", status, &json(&text));
    let (status, text) = call(
        "post",
        "/admin/keys/{public_id}/rotate",
        format!(
            "/admin/keys/{}/rotate",
            issued["public_id"].as_str().unwrap()
        ),
        Some(("application/json", r#"{"overlap": "1h"}"#.into())),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    assert_documented(
        &doc,
        "post",
        "/admin/keys/{public_id}/rotate",
        status,
        &json(&text),
    );
    let (status, text) = call(
        "post",
        "/admin/keys/{public_id}/rotate",
        "/admin/keys/nothing/rotate".into(),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_documented(
        &doc,
        "post",
        "/admin/keys/{public_id}/rotate",
        status,
        &json(&text),
    );
    for (public_id, expected) in [
        (issued["public_id"].as_str().unwrap(), 200),
        ("nothing", 404),
    ] {
        let (status, text) = call(
            "post",
            "/admin/keys/{public_id}/revoke",
            format!("/admin/keys/{public_id}/revoke"),
            None,
        )
        .await;
        assert_eq!(status, expected, "{text}");
        assert_documented(
            &doc,
            "post",
            "/admin/keys/{public_id}/revoke",
            status,
            &json(&text),
        );
    }

    // API products, plans and subscriptions.
    let check = |method: &'static str, path: &'static str, status: u16, text: &str| {
        let body = if text.is_empty() {
            Value::Null
        } else {
            json(text)
        };
        assert_documented(&doc, method, path, status, &body);
        body
    };
    let body = |text: &str| Some(("application/json", text.to_owned()));
    let (status, text) = call(
        "post",
        "/admin/products",
        "/admin/products".into(),
        body(r#"{"id": "orders", "name": "Orders", "routes": ["orders"]}"#),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    check("post", "/admin/products", status, &text);
    let (status, text) = call(
        "post",
        "/admin/products",
        "/admin/products".into(),
        body(r#"{"id": "old", "name": "Old", "routes": ["old"]}"#),
    )
    .await;
    assert_eq!(status, 400, "a route without auth: {text}");
    check("post", "/admin/products", status, &text);
    let (status, text) = call("get", "/admin/products", "/admin/products".into(), None).await;
    assert_eq!(status, 200);
    check("get", "/admin/products", status, &text);
    for (id, expected) in [("orders", 200), ("nothing", 404)] {
        let (status, text) = call(
            "get",
            "/admin/products/{id}",
            format!("/admin/products/{id}"),
            None,
        )
        .await;
        assert_eq!(status, expected, "{text}");
        check("get", "/admin/products/{id}", status, &text);
    }
    let (status, text) = call(
        "patch",
        "/admin/products/{id}",
        "/admin/products/orders".into(),
        body(r#"{"description": "Place and track orders."}"#),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        check("patch", "/admin/products/{id}", status, &text)["description"],
        "Place and track orders."
    );
    let (status, text) = call(
        "post",
        "/admin/products/{id}/plans",
        "/admin/products/orders/plans".into(),
        body(r#"{"id": "basic", "name": "Basic", "terms": {"limits": [{"requests": 10, "per_seconds": 1}]}}"#),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    check("post", "/admin/products/{id}/plans", status, &text);
    let (status, text) = call(
        "post",
        "/admin/products/{id}/plans",
        "/admin/products/orders/plans".into(),
        body(r#"{"id": "free", "name": "Free", "terms": {"quota": {"requests_per_month": 0}}}"#),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    check("post", "/admin/products/{id}/plans", status, &text);
    let (status, text) = call(
        "patch",
        "/admin/plans/{id}",
        "/admin/plans/basic".into(),
        body(r#"{"requires_approval": true}"#),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    check("patch", "/admin/plans/{id}", status, &text);
    let (status, text) = call(
        "post",
        "/admin/subscriptions",
        "/admin/subscriptions".into(),
        body(r#"{"consumer_id": "acme", "plan_id": "basic"}"#),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let subscription = check("post", "/admin/subscriptions", status, &text);
    assert_eq!(subscription["status"], "pending");
    let id = subscription["id"].as_str().unwrap().to_owned();
    let (status, text) = call(
        "get",
        "/admin/subscriptions",
        "/admin/subscriptions?status=pending".into(),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        check("get", "/admin/subscriptions", status, &text)[0]["id"],
        id.as_str()
    );
    let (status, text) = call(
        "post",
        "/admin/subscriptions/{id}/plan",
        format!("/admin/subscriptions/{id}/plan"),
        body(r#"{"plan_id": "basic"}"#),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    check("post", "/admin/subscriptions/{id}/plan", status, &text);
    for (action, expected) in [("approve", 200), ("reject", 409), ("cancel", 200)] {
        let path = match action {
            "approve" => "/admin/subscriptions/{id}/approve",
            "reject" => "/admin/subscriptions/{id}/reject",
            _ => "/admin/subscriptions/{id}/cancel",
        };
        let (status, text) = call(
            "post",
            path,
            format!("/admin/subscriptions/{id}/{action}"),
            None,
        )
        .await;
        assert_eq!(status, expected, "{action}: {text}");
        check("post", path, status, &text);
    }
    // Usage and invoices.
    for (concrete, expected) in [
        ("/admin/usage?consumer_id=acme", 200),
        ("/admin/usage?from=yesterday", 400),
    ] {
        let (status, text) = call("get", "/admin/usage", concrete.into(), None).await;
        assert_eq!(status, expected, "{text}");
        check("get", "/admin/usage", status, &text);
    }
    let (status, text) = call(
        "get",
        "/admin/usage/deliveries",
        "/admin/usage/deliveries".into(),
        None,
    )
    .await;
    assert_eq!(status, 200);
    check("get", "/admin/usage/deliveries", status, &text);
    for (concrete, expected) in [
        ("/admin/invoices", 200),
        ("/admin/invoices?month=2026-13", 400),
    ] {
        let (status, text) = call("get", "/admin/invoices", concrete.into(), None).await;
        assert_eq!(status, expected, "{text}");
        check("get", "/admin/invoices", status, &text);
    }
    let (status, text) = call(
        "get",
        "/admin/invoices/{consumer_id}",
        "/admin/invoices/acme".into(),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let invoice = check("get", "/admin/invoices/{consumer_id}", status, &text);
    // Basic has no fee and no usage: nothing to pay.
    assert_eq!(invoice["consumer_id"], "acme");
    assert!(
        invoice["totals"]
            .as_array()
            .unwrap()
            .iter()
            .all(|total| total["amount_cents"] == 0),
        "{invoice}"
    );

    // Developers and the audit log (every change above is in it).
    let (status, text) = call("get", "/admin/developers", "/admin/developers".into(), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        check("get", "/admin/developers", status, &text),
        serde_json::json!([])
    );
    for action in ["disable", "enable"] {
        let path = if action == "disable" {
            "/admin/developers/{id}/disable"
        } else {
            "/admin/developers/{id}/enable"
        };
        let (status, text) = call(
            "post",
            path,
            format!("/admin/developers/nobody/{action}"),
            None,
        )
        .await;
        assert_eq!(status, 404, "{text}");
        check("post", path, status, &text);
    }
    let (status, text) = call(
        "get",
        "/admin/audit",
        "/admin/audit?limit=1000".into(),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let entries = check("get", "/admin/audit", status, &text);
    let actions: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in [
        "config.apply",
        "config.rollback",
        "cache.purge",
        "consumer.create",
        "key.issue",
        "key.rotate",
        "key.revoke",
        "product.create",
        "product.update",
        "plan.create",
        "plan.update",
        "subscription.create",
        "subscription.change_plan",
        "subscription.approve",
        "subscription.cancel",
    ] {
        assert!(
            actions.contains(&expected),
            "no `{expected}` in {actions:?}"
        );
    }
    assert!(entries
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["actor"] == "api-token"));

    let (status, text) = call(
        "delete",
        "/admin/products/{id}",
        "/admin/products/orders".into(),
        None,
    )
    .await;
    assert_eq!(status, 204, "{text}");
    check("delete", "/admin/products/{id}", status, &text);

    for path in ["/health", "/ready"] {
        let response = client.get(gateway.admin_url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        exercised.insert(("get", path));
    }
    let unauthorized = client
        .get(gateway.admin_url("/admin/routes"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let body: Value = unauthorized.json().await.unwrap();
    assert_documented(&doc, "get", "/admin/routes", 401, &body);

    // Every operation in the document was called above.
    let documented: std::collections::BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let exercised: std::collections::BTreeSet<(String, String)> = exercised
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    assert_eq!(documented, exercised);
}
