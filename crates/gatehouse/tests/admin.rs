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
