//! Routing precedence, end to end: one gateway, many overlapping routes, a table of requests.

mod common;

use common::{client, Gateway};

const CONFIG: &str = r#"
listeners:
  - name: public
    listen: 127.0.0.1:0
routes:
  - name: exact-users-me
    match: { path: { exact: /users/me } }
    respond: { body: exact-users-me }
  - name: post-user
    match: { path: { template: "/users/{id}" }, methods: [POST] }
    respond: { body: post-user }
  - name: template-user
    match: { path: { template: "/users/{id}" } }
    respond: { body: template-user }
  - name: prefix-users
    match: { path: { prefix: /users } }
    respond: { body: prefix-users }
  - name: prefix-users-admin
    match: { path: { prefix: /users/admin/ } }
    respond: { body: prefix-users-admin }
  - name: regex-orders
    match: { path: { regex: "/orders/[0-9]+" } }
    respond: { body: regex-orders }
  - name: png-files
    match: { path: { regex: "/files/.*[.]png" } }
    respond: { body: png-files }
  - name: public-files
    match: { path: { prefix: /files/public } }
    respond: { body: public-files }
  - name: catch-all
    respond: { body: catch-all }
  - name: host-exact
    match: { hosts: [api.example.com], path: { prefix: /users } }
    respond: { body: host-exact }
  - name: host-wildcard
    match: { hosts: ["*.example.com"], path: { prefix: /users } }
    respond: { body: host-wildcard }
  - name: beta-header
    match: { path: { prefix: /beta }, headers: [{ name: x-beta, exact: "1" }] }
    respond: { body: beta-header }
  - name: beta-mobile
    match: { path: { prefix: /beta }, headers: [{ name: user-agent, regex: ".*(Android|iPhone).*" }] }
    respond: { body: beta-mobile }
  - name: beta-traced
    match: { path: { prefix: /beta }, headers: [{ name: x-trace }], query: [{ name: nocache, present: false }] }
    respond: { body: beta-traced }
  - name: beta-default
    match: { path: { prefix: /beta } }
    respond: { body: beta-default }
  - name: search-debug
    match: { path: { exact: /search }, query: [{ name: debug, exact: "true" }] }
    respond: { body: search-debug }
  - name: search
    match: { path: { exact: /search } }
    respond: { body: search }
  - name: promo-exact
    match: { path: { exact: /promo/x } }
    respond: { body: promo-exact }
  - name: promo-priority
    priority: 10
    match: { path: { regex: "/promo/.*" } }
    respond: { body: promo-priority }
"#;

/// (method, host, path and query, extra header, expected route)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
    &'static str,
);

#[tokio::test]
async fn precedence_table() {
    let gateway = Gateway::start(CONFIG);
    let client = client();
    let table: &[Case] = &[
        ("GET", "localhost", "/users/me", None, "exact-users-me"),
        ("GET", "localhost", "/users/42", None, "template-user"),
        ("POST", "localhost", "/users/42", None, "post-user"),
        ("GET", "localhost", "/users/42/orders", None, "prefix-users"),
        ("GET", "localhost", "/users", None, "prefix-users"),
        (
            "GET",
            "localhost",
            "/users/admin/settings",
            None,
            "prefix-users-admin",
        ),
        ("GET", "localhost", "/usersx", None, "catch-all"),
        ("GET", "localhost", "/orders/17", None, "regex-orders"),
        ("GET", "localhost", "/orders/abc", None, "catch-all"),
        ("GET", "localhost", "/files/x.png", None, "png-files"),
        (
            "GET",
            "localhost",
            "/files/public/x.png",
            None,
            "public-files",
        ),
        ("GET", "api.example.com", "/users/me", None, "host-exact"),
        (
            "GET",
            "API.Example.com:8080",
            "/users/me",
            None,
            "host-exact",
        ),
        ("GET", "www.example.com", "/users/me", None, "host-wildcard"),
        ("GET", "a.b.example.com", "/users/me", None, "host-wildcard"),
        ("GET", "example.com", "/users/me", None, "exact-users-me"),
        ("GET", "api.example.com", "/other", None, "catch-all"),
        (
            "GET",
            "localhost",
            "/beta/x",
            Some(("x-beta", "1")),
            "beta-header",
        ),
        (
            "GET",
            "localhost",
            "/beta/x",
            Some(("x-beta", "2")),
            "beta-default",
        ),
        ("GET", "localhost", "/beta/x", None, "beta-default"),
        (
            "GET",
            "localhost",
            "/beta/x",
            Some(("user-agent", "Mozilla (iPhone)")),
            "beta-mobile",
        ),
        (
            "GET",
            "localhost",
            "/beta/x",
            Some(("user-agent", "curl/8")),
            "beta-default",
        ),
        (
            "GET",
            "localhost",
            "/beta/x",
            Some(("x-trace", "")),
            "beta-traced",
        ),
        (
            "GET",
            "localhost",
            "/beta/x?nocache=1",
            Some(("x-trace", "1")),
            "beta-default",
        ),
        (
            "GET",
            "localhost",
            "/search?debug=true",
            None,
            "search-debug",
        ),
        (
            "GET",
            "localhost",
            "/search?q=1&debug=true",
            None,
            "search-debug",
        ),
        ("GET", "localhost", "/search?debug=false", None, "search"),
        ("GET", "localhost", "/promo/x", None, "promo-priority"),
        (
            "GET",
            "localhost",
            "/users/./me/../me",
            None,
            "exact-users-me",
        ),
    ];
    let mut failures = Vec::new();
    for (method, host, path, header, expected) in table {
        let mut request = client
            .request(method.parse().unwrap(), gateway.url(path))
            .header("host", *host);
        if let Some((name, value)) = header {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let body = response.text().await.unwrap();
        if !status.is_success() || body != *expected {
            failures.push(format!(
                "{method} {host}{path} {header:?}: expected {expected}, got {status} {body}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "routing mismatches:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn no_route_is_a_problem_json_404() {
    let gateway = Gateway::start(
        "listeners:\n  - name: public\n    listen: 127.0.0.1:0\nroutes:\n  - match: { path: { exact: /only } }\n    respond: { body: x }\n",
    );
    let response = client()
        .get(gateway.url("/elsewhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "route_not_found");
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["request_id"], request_id.as_str());
}
