//! API versioning with response shaping, on the worked example `examples/versioning.yaml`:
//! a backend that speaks only the newest version (2025-01-01) and refuses anything else,
//! clients pinned to each of the three versions (by path, header, query, `Accept`
//! parameter, or their consumer's pinned version) getting exactly their version's shapes,
//! checked field by field; deprecation and sunset headers; failing steps as problem+json.

mod common;

use std::net::SocketAddr;

use axum::extract::{Path, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::{client, Gateway};
use serde_json::{json, Value};

const SECRET: &str = "versioning-test-api-key-secret-0123456789";

fn user_2025(id: u64) -> Value {
    match id {
        7 => json!({ "id": 7, "first_name": "Ada", "last_name": "Lovelace",
                     "address": { "city": "London", "country": "UK" } }),
        9 => json!({ "id": 9, "first_name": "Grace", "last_name": "Brewster Hopper",
                     "address": { "city": "New York", "country": "US" } }),
        _ => Value::Null,
    }
}

/// What the backend saw, returned in headers so the tests can check it.
fn seen(mut response: Response, headers: &HeaderMap, uri: &str) -> Response {
    let version = headers
        .get("api-version")
        .cloned()
        .unwrap_or(HeaderValue::from_static("none"));
    response.headers_mut().insert("x-seen-version", version);
    response
        .headers_mut()
        .insert("x-seen-uri", HeaderValue::from_str(uri).unwrap());
    response
}

/// The backend: 2025-01-01 only.
async fn backend() -> SocketAddr {
    async fn get_user(Path(id): Path<u64>, request: Request) -> Response {
        let uri = request.uri().to_string();
        let body = match id {
            999 => Json(json!({ "users": "not a list" })).into_response(),
            id if !user_2025(id).is_null() => Json(user_2025(id)).into_response(),
            _ => (
                StatusCode::NOT_FOUND,
                Json(json!({ "error": "no such user" })),
            )
                .into_response(),
        };
        seen(body, request.headers(), &uri)
    }
    async fn list(request: Request) -> Response {
        let uri = request.uri().to_string();
        let body = Json(json!({ "users": [user_2025(7), user_2025(9)] })).into_response();
        seen(body, request.headers(), &uri)
    }
    async fn create(headers: HeaderMap, Json(body): Json<Value>) -> Response {
        // Exactly the 2025-01-01 shape, nothing older.
        let fields: Vec<&str> = body
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let valid = fields == ["address", "first_name", "last_name"]
            && body["first_name"].is_string()
            && body["last_name"].is_string()
            && body["address"]["city"].is_string()
            && body["address"]["country"].is_string();
        if !valid {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "error": "not a 2025-01-01 user", "got": body })),
            )
                .into_response();
        }
        let mut created = body;
        created["id"] = json!(10);
        seen(
            (StatusCode::CREATED, Json(created)).into_response(),
            &headers,
            "/users",
        )
    }
    let router = axum::Router::new()
        .route("/users", axum::routing::get(list).post(create))
        .route("/users/{id}", axum::routing::get(get_user));
    common::upstream(router).await
}

struct Fixture {
    gateway: Gateway,
    legacy_key: String,
}

/// The example file, with the test backend, a free port, and a key for the legacy partner.
async fn start() -> Fixture {
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/versioning.yaml"),
    )
    .unwrap();
    let (legacy_key, entry) = common::generate_api_key(SECRET, &[]);
    let yaml = example
        .replace("127.0.0.1:3000", &backend().await.to_string())
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("dev-only-api-key-secret-change-me-0123", SECRET)
        .replace("    api_keys: []\n", &format!("    api_keys:\n{entry}"));
    Fixture {
        gateway: Gateway::start(&yaml),
        legacy_key,
    }
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.json().await.unwrap_or(Value::Null),
    }
}

/// One user in each version's shape.
fn ada(version: &str) -> Value {
    match version {
        "2023-01-01" => {
            json!({ "id": 7, "fullname": "Ada Lovelace", "city": "London", "country": "UK" })
        }
        "2024-06-01" => json!({ "id": 7, "name": "Ada Lovelace",
                                "address": { "city": "London", "country": "UK" } }),
        _ => user_2025(7),
    }
}

fn grace(version: &str) -> Value {
    match version {
        "2023-01-01" => {
            json!({ "id": 9, "fullname": "Grace Brewster Hopper", "city": "New York", "country": "US" })
        }
        "2024-06-01" => json!({ "id": 9, "name": "Grace Brewster Hopper",
                                "address": { "city": "New York", "country": "US" } }),
        _ => user_2025(9),
    }
}

/// Alan as a client of `version` creates him, and as the answer comes back (id 10).
fn alan(version: &str, id: bool) -> Value {
    let mut value = match version {
        "2023-01-01" => {
            json!({ "fullname": "Alan Mathison Turing", "city": "Wilmslow", "country": "UK" })
        }
        "2024-06-01" => json!({ "name": "Alan Mathison Turing",
                                "address": { "city": "Wilmslow", "country": "UK" } }),
        _ => json!({ "first_name": "Alan", "last_name": "Mathison Turing",
                     "address": { "city": "Wilmslow", "country": "UK" } }),
    };
    if id {
        value["id"] = json!(10);
    }
    value
}

const VERSIONS: [&str; 3] = ["2023-01-01", "2024-06-01", "2025-01-01"];

#[tokio::test]
async fn each_pinned_version_gets_exactly_its_shapes() {
    let f = start().await;
    let g = &f.gateway;
    for version in VERSIONS {
        let one = send(
            client()
                .get(g.url("/users/7"))
                .header("api-version", version),
        )
        .await;
        assert_eq!(one.status, 200, "{version}: {}", one.body);
        assert_eq!(one.body, ada(version), "{version}");
        assert_eq!(one.headers["api-version"], version);
        assert_eq!(
            one.headers["x-seen-version"], "2025-01-01",
            "the backend's version"
        );
        assert_eq!(
            one.headers["content-length"].to_str().unwrap(),
            one.body.to_string().len().to_string()
        );

        let list = send(client().get(g.url("/users")).header("api-version", version)).await;
        assert_eq!(
            list.body,
            json!({ "users": [ada(version), grace(version)] }),
            "{version}"
        );

        // A create in the client's shape reaches the backend in 2025-01-01's (it refuses
        // anything else with 422) and comes back in the client's.
        let created = send(
            client()
                .post(g.url("/users"))
                .header("api-version", version)
                .json(&alan(version, false)),
        )
        .await;
        assert_eq!(created.status, 201, "{version}: {}", created.body);
        assert_eq!(created.body, alan(version, true), "{version}");
    }
}

#[tokio::test]
async fn the_version_is_chosen_by_path_query_accept_or_the_consumer() {
    let f = start().await;
    let g = &f.gateway;
    // Path: the segment is removed before forwarding.
    let by_path = send(client().get(g.url("/2024-06-01/users/7"))).await;
    assert_eq!(by_path.body, ada("2024-06-01"));
    assert_eq!(by_path.headers["x-seen-uri"], "/users/7");
    // Query: the parameter is removed before forwarding.
    let by_query = send(client().get(g.url("/users/7?version=2023-01-01&fields=all"))).await;
    assert_eq!(by_query.body, ada("2023-01-01"));
    assert_eq!(by_query.headers["x-seen-uri"], "/users/7?fields=all");
    // A parameter of the Accept media type.
    let by_accept = send(
        client()
            .get(g.url("/users/7"))
            .header("accept", "application/json; version=2024-06-01"),
    )
    .await;
    assert_eq!(by_accept.body, ada("2024-06-01"));
    let vary: Vec<&str> = by_accept
        .headers
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        vary.contains(&"api-version") && vary.contains(&"accept"),
        "{vary:?}"
    );
    // Nothing named: the consumer's pinned version, overridable per request; anonymous
    // clients get the newest.
    let pinned = send(
        client()
            .get(g.url("/users/7"))
            .header("x-api-key", &f.legacy_key),
    )
    .await;
    assert_eq!(pinned.body, ada("2023-01-01"));
    let overridden = send(
        client()
            .get(g.url("/users/7"))
            .header("x-api-key", &f.legacy_key)
            .header("api-version", "2025-01-01"),
    )
    .await;
    assert_eq!(overridden.body, ada("2025-01-01"));
    let anonymous = send(client().get(g.url("/users/7"))).await;
    assert_eq!(anonymous.body, ada("2025-01-01"));
    assert_eq!(anonymous.headers["api-version"], "2025-01-01");

    // The oldest version is deprecated and has a sunset date, with the changelog linked.
    assert_eq!(pinned.headers["deprecation"], "@1717200000");
    assert_eq!(pinned.headers["sunset"], "Fri, 01 Jan 2027 00:00:00 GMT");
    let links: Vec<&str> = pinned
        .headers
        .get_all("link")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        links,
        [
            "<https://developer.example.com/changelog#2024-06-01>; rel=\"deprecation\"; type=\"text/html\"",
            "<https://developer.example.com/changelog#2024-06-01>; rel=\"sunset\"",
        ]
    );
    assert!(!anonymous.headers.contains_key("deprecation"));
    assert!(!anonymous.headers.contains_key("sunset"));

    // An unknown version is refused, listing the known ones; nothing is forwarded.
    let unknown = send(
        client()
            .get(g.url("/users/7"))
            .header("api-version", "2022-01-01"),
    )
    .await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.body["code"], "unknown_api_version");
    assert_eq!(unknown.body["versions"], json!(VERSIONS));
    // Errors from the backend pass through unshaped, with the version's headers.
    let missing = send(
        client()
            .get(g.url("/users/8"))
            .header("api-version", "2023-01-01"),
    )
    .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body, json!({ "error": "no such user" }));
    assert_eq!(missing.headers["api-version"], "2023-01-01");
}

#[tokio::test]
async fn a_failing_step_is_a_problem_naming_the_step() {
    let f = start().await;
    let g = &f.gateway;
    // `fullname` is not a string: the 2024 → 2025 step cannot split it.
    let bad_request = send(
        client()
            .post(g.url("/users"))
            .header("api-version", "2023-01-01")
            .json(&json!({ "fullname": 42, "city": "Paris", "country": "FR" })),
    )
    .await;
    assert_eq!(bad_request.status, 400, "{}", bad_request.body);
    assert_eq!(bad_request.body["code"], "transform_failed");
    assert_eq!(
        bad_request.body["step"],
        "2024-06-01 → 2025-01-01 (request)"
    );
    // The backend answers something the 2025 → 2024 step cannot downgrade.
    let bad_response = send(
        client()
            .get(g.url("/users/999"))
            .header("api-version", "2023-01-01"),
    )
    .await;
    assert_eq!(bad_response.status, 502);
    assert_eq!(bad_response.body["code"], "transform_failed");
    assert_eq!(
        bad_response.body["step"],
        "2025-01-01 → 2024-06-01 (response)"
    );
    // The newest version needs no step: the same answer passes through.
    let newest = send(
        client()
            .get(g.url("/users/999"))
            .header("api-version", "2025-01-01"),
    )
    .await;
    assert_eq!(newest.status, 200);
    assert_eq!(newest.body, json!({ "users": "not a list" }));
}

#[tokio::test]
async fn a_version_past_its_sunset_is_gone_and_versions_may_have_their_own_backend() {
    let newest = backend().await;
    let legacy = common::echo("legacy-v1").await;
    let yaml = format!(
        r#"{admin}listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: users
    endpoints: [{{ address: "{newest}" }}]
  - name: users-v1
    endpoints: [{{ address: "{legacy}" }}]
apis:
  users:
    default: v2
    versions:
      - name: v0
        sunset: "2020-01-01T00:00:00Z"
        link: https://developer.example.com/changelog#v1
      - name: v1
        service: users-v1
      - name: v2
routes:
  - name: users
    match: {{ path: {{ prefix: / }} }}
    service: users
    api: users
"#,
        admin = common::admin_block()
    );
    let gateway = Gateway::start(&yaml);
    let gone = send(
        client()
            .get(gateway.url("/users/7"))
            .header("api-version", "v0"),
    )
    .await;
    assert_eq!(gone.status, 410);
    assert_eq!(gone.body["code"], "api_version_sunset");
    assert_eq!(
        gone.headers["link"],
        "<https://developer.example.com/changelog#v1>; rel=\"sunset\""
    );
    // v1 has a backend of its own (the echo service); v2 goes to the route's service.
    let v1 = send(
        client()
            .get(gateway.url("/users/7"))
            .header("api-version", "v1"),
    )
    .await;
    assert_eq!(v1.body["instance"], "legacy-v1");
    assert_eq!(v1.body["headers"]["api-version"], "v1");
    let v2 = send(client().get(gateway.url("/users/7"))).await;
    assert_eq!(v2.body, user_2025(7));
    // Metrics name the service that answered.
    let line = |service: &str| {
        format!(
            r#"gatehouse_requests_total{{route="users",service="{service}",method="GET",status_class="2xx"}} 1"#
        )
    };
    let metrics = gateway
        .metrics_with(&[&line("users-v1"), &line("users")])
        .await;
    for service in ["users-v1", "users"] {
        let line = line(service);
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn explain_shows_the_version_a_request_gets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("versioning.yaml");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/versioning.yaml"),
        &path,
    )
    .unwrap();
    let output = std::process::Command::new(common::binary())
        .args(["explain", "-c"])
        .arg(&path)
        .args([
            "--json",
            "-H",
            "api-version: 2023-01-01",
            "http://api.example.com/users/7",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let step = report["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == "version")
        .unwrap_or_else(|| panic!("no version step in {report}"));
    assert_eq!(step["version"], "2023-01-01");
    assert_eq!(step["backend_version"], "2025-01-01");
}

#[test]
fn check_refuses_inconsistent_versions_with_their_location() {
    let (code, text) = common::check_text(
        r#"listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: users
    endpoints: [{ address: "127.0.0.1:9" }]
apis:
  users:
    default: v9
    versions:
      - name: v1
        changes: { response: . }
      - name: v2
        service: userz
        sunset: next tuesday
consumers:
  - id: legacy
    api_versions: { users: v0, orders: v1 }
routes:
  - name: users
    match: { path: { prefix: / } }
    service: users
    api: userss
"#,
    );
    assert_eq!(code, Some(1), "{text}");
    for expected in [
        ":9:14: api `users`: default version `v9` is not one of its versions",
        ":11:15: api `users`: the first version `v1` has no previous version",
        ":14:18: api `users` version `v2` uses undefined service `userz`, did you mean `users`?",
        ":13:15: api `users` version `v2`: `sunset` `next tuesday` is not an RFC 3339 time",
        "consumer `legacy`: api `users` has no version `v0`",
        "consumer `legacy`: `api_versions` names undefined api `orders`",
        ":23:10: route `users` serves undefined api `userss`, did you mean `users`?",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in\n{text}");
    }

    // A version's program that does not compile, at its own location.
    let (code, text) = common::check_text(
        r#"listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: users
    endpoints: [{ address: "127.0.0.1:9" }]
apis:
  users:
    versions:
      - name: v1
      - name: v2
        changes: { request: '{a: .b', response: . }
routes:
  - name: users
    match: { path: { prefix: / } }
    service: users
    api: users
"#,
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(":12:29: api `users` version `v2`: `changes.request`: expected"),
        "{text}"
    );
}
