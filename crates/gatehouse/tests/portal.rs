//! The developer portal: its pages over plain HTTP (security properties a browser does not
//! show), and the developer's whole journey in real headless Chromium
//! (`tests/browser/journey.mjs`, driven by playwright-core; `scripts/test.sh` installs
//! Chromium and the npm package).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{admin_block, client, echo, Gateway, ADMIN_TOKEN};
use serde_json::{json, Value};

const KEY_SECRET: &str = "test-api-key-secret-0123456789abcdef";

fn config(store: &Path, outbox: &Path, upstream: SocketAddr) -> String {
    format!(
        r#"{admin}listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: books
    endpoints: [{{ address: "{upstream}" }}]
store:
  url: "sqlite:{store}"
  poll_interval: 200ms
  usage_flush_interval: 200ms
portal:
  listen: 127.0.0.1:0
  title: Example APIs
  rotation_overlaps: [4s, 24h]
  mailer:
    outbox_dir: "{outbox}"
    from: "Example APIs <no-reply@example.com>"
authentication:
  api_key_secret: "{KEY_SECRET}"
  methods:
    keys:
      api_key: {{ header: x-api-key }}
routes:
  - name: books
    match: {{ path: {{ prefix: /books }} }}
    service: books
    auth: {{ methods: [keys] }}
"#,
        admin = admin_block(),
        store = store.display(),
        outbox = outbox.display(),
    )
}

async fn admin_post(gateway: &Gateway, path: &str, body: Value) {
    let response = client()
        .post(gateway.admin_url(path))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        201,
        "{path}: {}",
        response.text().await.unwrap()
    );
}

/// The Books product with its reference and a Starter plan: 5 requests per 2 seconds,
/// 19.00 a month, the first 1,000 requests free and 1.00 per 1,000 after.
async fn publish_books(gateway: &Gateway) {
    let openapi = json!({
        "openapi": "3.0.3",
        "info": {"title": "Books", "version": "1.0", "description": "Every book we know."},
        "paths": {"/books/{id}": {"get": {
            "operationId": "getBook", "summary": "One book",
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "The book", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Book"},
                "example": {"id": 1, "title": "Dune"}}}}}}}},
        "components": {"schemas": {"Book": {"type": "object", "required": ["id", "title"],
            "properties": {"id": {"type": "integer"}, "title": {"type": "string"}}}}}
    });
    admin_post(
        gateway,
        "/admin/products",
        json!({"id": "books", "name": "Books API", "version": "v1", "routes": ["books"],
               "description": "Search and read every book we know.", "openapi": openapi,
               "sandbox": {}}),
    )
    .await;
    admin_post(
        gateway,
        "/admin/products/books/plans",
        json!({"id": "starter", "name": "Starter", "description": "For trying things out.",
               "terms": {"limits": [{"requests": 5, "per_seconds": 2}],
                         "pricing": {"monthly_fee_cents": 1900,
                                     "tiers": [{"up_to": 1000, "cents_per_1000": 0}, {"cents_per_1000": 100}]}}}),
    )
    .await;
}

/// Where the journey's screenshots are kept (an artifact of the test run).
fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("portal-screenshots")
}

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

#[tokio::test]
async fn a_developer_walks_the_whole_journey_in_chromium() {
    let chromium =
        std::env::var("GATEHOUSE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: scripts/test.sh installs Debian's chromium package"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is missing: scripts/test.sh runs npm ci in {}",
        browser_dir().display()
    );
    let backend = echo("books").await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let gateway = Gateway::start(&config(&dir.path().join("store.db"), &outbox, backend));
    publish_books(&gateway).await;

    let output = tokio::task::spawn_blocking({
        let portal = gateway.portal_url("");
        let api = gateway.url("");
        move || {
            Command::new("node")
                .arg(browser_dir().join("journey.mjs"))
                .env("PORTAL_URL", portal)
                .env("GATEWAY_URL", api)
                .env("OUTBOX", &outbox)
                .env("SCREENSHOTS", screenshots())
                .env("CHROMIUM", chromium)
                .output()
                .expect("node (scripts/test.sh installs it)")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the journey failed:\n{stdout}\n{stderr}\n(screenshots in {})",
        screenshots().display()
    );
    assert!(stdout.contains("journey: done"), "{stdout}");
    for page in [
        "catalog",
        "reference",
        "signup",
        "key",
        "application",
        "revoked",
    ] {
        assert!(
            screenshots().join(format!("{page}.png")).exists(),
            "no screenshot of {page}"
        );
    }
}

/// What a browser does not show: cookies' flags, CSRF refusals, no account enumeration,
/// sign-in rate limits, pages that need a session.
#[tokio::test]
async fn portal_forms_are_protected_and_say_nothing_about_accounts() {
    let backend = echo("books").await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let gateway = Gateway::start(&config(&dir.path().join("store.db"), &outbox, backend));
    publish_books(&gateway).await;
    let http = client();

    // The form page hands out the double-submit token as an HttpOnly, SameSite cookie.
    let form = http
        .get(gateway.portal_url("/signup"))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200);
    let csp = form.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert_eq!(form.headers()["x-content-type-options"], "nosniff");
    assert_eq!(form.headers()["referrer-policy"], "same-origin");
    assert_eq!(form.headers()["cache-control"], "no-store");
    let cookie = form.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain http: no Secure flag");
    let token = cookie
        .split(';')
        .next()
        .and_then(|pair| pair.split_once('='))
        .map(|(_, value)| value.to_owned())
        .unwrap();
    let cookie_header = format!("gh_portal_csrf={token}");

    // Without the token (a cross-site form): refused, nothing created.
    let forged = http
        .post(gateway.portal_url("/signup"))
        .form(&[
            ("email", "eve@example.com"),
            ("name", "Eve"),
            ("password", "long enough password"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let signup = |email: &'static str| {
        http.post(gateway.portal_url("/signup"))
            .header("cookie", &cookie_header)
            .form(&[
                ("csrf", token.as_str()),
                ("email", email),
                ("name", "Ann"),
                ("password", "long enough password"),
            ])
            .send()
    };
    let first = signup("ann@example.com").await.unwrap();
    assert_eq!(first.status(), 200);
    let first = first.text().await.unwrap();
    // The same address again: the same answer (the mail tells the owner instead).
    let again = signup("ann@example.com").await.unwrap();
    assert_eq!(again.status(), 200);
    let again = again.text().await.unwrap();
    assert_eq!(
        first, again,
        "sign-up must not reveal that the address has an account"
    );
    let mails: Vec<String> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(mails.len(), 2);
    assert!(mails.iter().any(|m| m.contains("/verify?token=")));
    assert!(mails.iter().any(|m| m.contains("already has one")));
    // Sign-ups from one address: 10 in 5 minutes (2 above), then 429 whatever the email.
    let mut statuses = Vec::new();
    for n in 0..9 {
        let email = format!("visitor{n}@example.com");
        let response = http
            .post(gateway.portal_url("/signup"))
            .header("cookie", &cookie_header)
            .form(&[
                ("csrf", token.as_str()),
                ("email", email.as_str()),
                ("name", "Visitor"),
                ("password", "long enough password"),
            ])
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 200, 429]);
    assert_eq!(
        std::fs::read_dir(&outbox).unwrap().count(),
        10,
        "the refused sign-up sent nothing"
    );

    // Reset: the same answer for a known and an unknown address.
    let reset = |email: &'static str| {
        http.post(gateway.portal_url("/reset"))
            .header("cookie", &cookie_header)
            .form(&[("csrf", token.as_str()), ("email", email)])
            .send()
    };
    let known = reset("ann@example.com")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let unknown = reset("nobody@example.com")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(known, unknown);

    // Sign-in: a wrong password and an unknown email read the same; then rate limited.
    let login = |email: &'static str, password: &'static str| {
        http.post(gateway.portal_url("/login"))
            .header("cookie", &cookie_header)
            .form(&[
                ("csrf", token.as_str()),
                ("email", email),
                ("password", password),
            ])
            .send()
    };
    let wrong = login("ann@example.com", "not the password").await.unwrap();
    assert_eq!(wrong.status(), 401);
    let wrong = wrong
        .text()
        .await
        .unwrap()
        .replace("ann@example.com", "EMAIL");
    let unknown = login("zed@example.com", "not the password").await.unwrap();
    assert_eq!(unknown.status(), 401);
    // The same page but for the address typed in, which the form keeps.
    assert_eq!(
        wrong,
        unknown
            .text()
            .await
            .unwrap()
            .replace("zed@example.com", "EMAIL")
    );
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            login("ann@example.com", "still not it")
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(
        statuses.last(),
        Some(&429),
        "sign-in attempts per email are limited: {statuses:?}"
    );

    // Pages of applications need a session.
    let apps = http.get(gateway.portal_url("/apps")).send().await.unwrap();
    assert_eq!(apps.status(), 303);
    assert_eq!(apps.headers()["location"], "/login");
    let post = http
        .post(gateway.portal_url("/apps/app_0000/keys"))
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 303);
    // The catalog and the reference are public; a private product is not listed.
    let catalog = http
        .get(gateway.portal_url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(catalog.contains("Books API"));
    let missing = http
        .get(gateway.portal_url("/apis/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// `gatehouse users add` with the password on stdin.
fn add_dashboard_user(gateway: &Gateway, email: &str, role: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(common::binary())
        .args(["users", "add", "-c"])
        .arg(&gateway.config_path)
        .args(["--email", email, "--name", "Grace Hopper", "--role", role])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "users add: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A consumer with a key and a pending subscription to the Gold plan (limit 100 a minute,
/// approval required); its key and the subscription id.
async fn pending_gold_subscription(gateway: &Gateway) -> (String, String) {
    admin_post(
        gateway,
        "/admin/products/books/plans",
        json!({"id": "gold", "name": "Gold", "requires_approval": true,
               "terms": {"limits": [{"requests": 100, "per_seconds": 60}],
                         "pricing": {"monthly_fee_cents": 9900}}}),
    )
    .await;
    admin_post(gateway, "/admin/consumers", json!({"id": "partner"})).await;
    let issued: Value = client()
        .post(gateway.admin_url("/admin/consumers/partner/keys"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let subscription: Value = client()
        .post(gateway.admin_url("/admin/subscriptions"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"consumer_id": "partner", "plan_id": "gold"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(subscription["status"], "pending");
    (
        issued["key"].as_str().unwrap().to_owned(),
        subscription["id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn an_admin_approves_changes_a_plan_and_reads_the_audit_log_in_chromium() {
    let chromium =
        std::env::var("GATEHOUSE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(Path::new(&chromium).exists(), "{chromium} is missing");
    let backend = echo("books").await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let gateway = Gateway::start(&config(&dir.path().join("store.db"), &outbox, backend));
    publish_books(&gateway).await;
    let (key, subscription) = pending_gold_subscription(&gateway).await;
    add_dashboard_user(
        &gateway,
        "grace@example.com",
        "editor",
        "a long admin password",
    );

    let output = tokio::task::spawn_blocking({
        let dashboard = gateway.admin_url("");
        let api = gateway.url("");
        let portal = gateway.portal_url("");
        move || {
            Command::new("node")
                .arg(browser_dir().join("admin.mjs"))
                .env("DASHBOARD_URL", dashboard)
                .env("PORTAL_URL", portal)
                .env("GATEWAY_URL", api)
                .env("KEY", key)
                .env("SUBSCRIPTION_ID", subscription)
                .env("ADMIN_EMAIL", "grace@example.com")
                .env("ADMIN_PASSWORD", "a long admin password")
                .env("SCREENSHOTS", screenshots())
                .env("CHROMIUM", chromium)
                .output()
                .expect("node")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("admin: done"),
        "the admin journey failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The same entries through the admin API: who did what.
    let entries = gateway.admin_json("/admin/audit").await;
    let by_grace: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "admin:grace@example.com")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "session.sign_in",
        "subscription.approve",
        "plan.update",
        "product.create",
        "plan.create",
    ] {
        assert!(by_grace.contains(&action), "{action} not in {by_grace:?}");
    }
    assert!(entries
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["actor"] == "cli" && e["action"] == "admin_user.upsert"));
}

/// Signs in to the dashboard over plain HTTP: the session cookie, and the page's CSRF token.
async fn dashboard_session(gateway: &Gateway, email: &str, password: &str) -> (String, String) {
    let http = client();
    let (csrf_cookie, csrf) = common::form_csrf(&gateway.admin_url("/dashboard/login")).await;
    let signed_in = http
        .post(gateway.admin_url("/dashboard/login"))
        .header("cookie", &csrf_cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("email", email),
            ("password", password),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303, "sign-in as {email}");
    let session = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    let session = session.split(';').next().unwrap().to_owned();
    let page = http
        .get(gateway.admin_url("/dashboard/subscriptions"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = page
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    (session, token)
}

#[tokio::test]
async fn dashboard_roles_sessions_and_csrf_are_enforced() {
    let backend = echo("books").await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let gateway = Gateway::start(&config(&dir.path().join("store.db"), &outbox, backend));
    publish_books(&gateway).await;
    let (_, subscription) = pending_gold_subscription(&gateway).await;
    add_dashboard_user(
        &gateway,
        "viewer@example.com",
        "viewer",
        "a long viewer password",
    );
    add_dashboard_user(
        &gateway,
        "editor@example.com",
        "editor",
        "a long editor password",
    );
    let http = client();

    // No session: every page sends to sign-in; the admin token does not open it.
    let anonymous = http
        .get(gateway.admin_url("/dashboard/subscriptions"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 303);
    // A weak password is refused by the command line.
    let weak = Command::new(common::binary())
        .args(["users", "add", "-c"])
        .arg(&gateway.config_path)
        .args(["--email", "weak@example.com", "--role", "admin"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!weak.status.success());

    // A viewer reads but cannot approve.
    let (viewer, viewer_csrf) =
        dashboard_session(&gateway, "viewer@example.com", "a long viewer password").await;
    let page = http
        .get(gateway.admin_url("/dashboard/subscriptions"))
        .header("cookie", &viewer)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&subscription) && !page.contains(">Approve<"));
    let approve = format!("/dashboard/subscriptions/{subscription}/approve");
    let refused = http
        .post(gateway.admin_url(&approve))
        .header("cookie", &viewer)
        .form(&[("csrf", viewer_csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    // An editor's approval without the session's CSRF token is refused; with it, done.
    let (editor, editor_csrf) =
        dashboard_session(&gateway, "editor@example.com", "a long editor password").await;
    let forged = http
        .post(gateway.admin_url(&approve))
        .header("cookie", &editor)
        .form(&[("csrf", viewer_csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let approved = http
        .post(gateway.admin_url(&approve))
        .header("cookie", &editor)
        .form(&[("csrf", editor_csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 303);
    let listed = gateway
        .admin_json("/admin/subscriptions?status=approved")
        .await;
    assert_eq!(listed[0]["id"], subscription.as_str());
    // Developers are an admin's: an editor may not disable one.
    let developers = http
        .post(gateway.admin_url("/dashboard/developers/dev_0/disable"))
        .header("cookie", &editor)
        .form(&[("csrf", editor_csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(developers.status(), 403);
    // A wrong password signs nobody in.
    let (cookie, token) = common::form_csrf(&gateway.admin_url("/dashboard/login")).await;
    let wrong = http
        .post(gateway.admin_url("/dashboard/login"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", token.as_str()),
            ("email", "editor@example.com"),
            ("password", "not the password"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // Dashboard sign-in is limited like the portal's: 5 attempts per email in 5 minutes.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let attempt = http
            .post(gateway.admin_url("/dashboard/login"))
            .header("cookie", &cookie)
            .form(&[
                ("csrf", token.as_str()),
                ("email", "editor@example.com"),
                ("password", "a long editor password"),
            ])
            .send()
            .await
            .unwrap();
        statuses.push(attempt.status().as_u16());
    }
    // One sign-in and the wrong password above: 3 more pass, then even the right password
    // waits.
    assert_eq!(statuses, [303, 303, 303, 429, 429]);
}

/// A plain SMTP server that takes every message: what it received, by `RCPT TO`.
async fn smtp_sink() -> (
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 sink ESMTP\r\n").await;
                let mut recipient = String::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    let command = line.to_ascii_uppercase();
                    let reply: &[u8] = if command.starts_with("EHLO") || command.starts_with("HELO")
                    {
                        b"250 sink\r\n"
                    } else if command.starts_with("RCPT TO:") {
                        recipient = line[8..].trim().trim_matches(['<', '>']).to_owned();
                        b"250 OK\r\n"
                    } else if command == "DATA" {
                        let _ = write.write_all(b"354 go ahead\r\n").await;
                        let mut message = String::new();
                        while let Ok(Some(line)) = lines.next_line().await {
                            if line == "." {
                                break;
                            }
                            message.push_str(&line);
                            message.push('\n');
                        }
                        log.lock().unwrap().push((recipient.clone(), message));
                        b"250 queued\r\n"
                    } else if command == "QUIT" {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        break;
                    } else {
                        b"250 OK\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, received)
}

#[tokio::test]
async fn the_smtp_mailer_sends_the_confirmation_through_the_server() {
    let backend = echo("books").await;
    let (smtp, received) = smtp_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let yaml = config(&dir.path().join("store.db"), &outbox, backend).replace(
        "    outbox_dir:",
        &format!(
            "    kind: smtp\n    smtp: {{ host: 127.0.0.1, port: {}, security: none, timeout: 5s }}\n    outbox_dir:",
            smtp.port()
        ),
    );
    let gateway = Gateway::start(&yaml);
    let http = client();
    let (cookie, token) = common::form_csrf(&gateway.portal_url("/signup")).await;
    let signup = http
        .post(gateway.portal_url("/signup"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", token.as_str()),
            ("email", "lin@example.com"),
            ("name", "Lin"),
            ("password", "a long enough password"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), 200);
    let mails = received.lock().unwrap().clone();
    assert_eq!(mails.len(), 1, "{mails:?}");
    let (to, message) = &mails[0];
    assert_eq!(to, "lin@example.com");
    assert!(
        message.contains("From: \"Example APIs\" <no-reply@example.com>")
            || message.contains("From: Example APIs <no-reply@example.com>"),
        "{message}"
    );
    assert!(
        message.contains("Subject: Confirm your email for Example APIs"),
        "{message}"
    );
    let link = message
        .split_whitespace()
        .find(|word| word.contains("/verify?token="))
        .expect("a confirmation link");
    let confirmed = http.get(link).send().await.unwrap();
    assert_eq!(confirmed.status(), 200);
    assert!(confirmed
        .text()
        .await
        .unwrap()
        .contains("Your email is confirmed"));
    assert!(
        !outbox.exists() || std::fs::read_dir(&outbox).unwrap().next().is_none(),
        "nothing went to the outbox"
    );
}

/// The first `/verify` or `/reset/confirm` link in the newest outbox mail to `to`.
fn outbox_link(outbox: &Path, to: &str, path: &str) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    files
        .iter()
        .rev()
        .map(|file| std::fs::read_to_string(file).unwrap())
        .filter(|mail| mail.contains(&format!("\r\nTo: {to}\r\n")))
        .find_map(|mail| {
            mail.split_whitespace()
                .find(|word| word.contains(&format!("{path}?token=")))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no {path} link for {to}"))
}

#[tokio::test]
async fn a_password_reset_sets_a_new_password_ends_sessions_and_works_once() {
    let backend = echo("books").await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let gateway = Gateway::start(&config(&dir.path().join("store.db"), &outbox, backend));
    let http = client();
    let (cookie, csrf) = common::form_csrf(&gateway.portal_url("/signup")).await;
    let post = |path: &'static str, fields: Vec<(&'static str, String)>| {
        let mut fields = fields;
        fields.push(("csrf", csrf.clone()));
        http.post(gateway.portal_url(path))
            .header("cookie", &cookie)
            .form(&fields)
            .send()
    };
    let email = "kay@example.com";
    post(
        "/signup",
        vec![
            ("email", email.into()),
            ("name", "Kay".into()),
            ("password", "the first password".into()),
        ],
    )
    .await
    .unwrap();
    let verify = outbox_link(&outbox, email, "/verify");
    assert_eq!(http.get(&verify).send().await.unwrap().status(), 200);
    let signed_in = post(
        "/login",
        vec![
            ("email", email.into()),
            ("password", "the first password".into()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(signed_in.status(), 303);
    let session = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let apps = |session: String| {
        http.get(gateway.portal_url("/apps"))
            .header("cookie", session)
            .send()
    };
    assert_eq!(apps(session.clone()).await.unwrap().status(), 200);

    post("/reset", vec![("email", email.into())]).await.unwrap();
    let link = outbox_link(&outbox, email, "/reset/confirm");
    let token = link.split("token=").nth(1).unwrap().to_owned();
    let page = http.get(&link).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(&token), "the form carries the token");
    let weak = post(
        "/reset/confirm",
        vec![("token", token.clone()), ("password", "short".into())],
    )
    .await
    .unwrap();
    assert_eq!(weak.status(), 422);
    let changed = post(
        "/reset/confirm",
        vec![
            ("token", token.clone()),
            ("password", "the second password".into()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(changed.status(), 200);
    // The old session ended; the old password no longer works; the new one does.
    assert_eq!(apps(session).await.unwrap().status(), 303);
    let old = post(
        "/login",
        vec![
            ("email", email.into()),
            ("password", "the first password".into()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(old.status(), 401);
    let new = post(
        "/login",
        vec![
            ("email", email.into()),
            ("password", "the second password".into()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(new.status(), 303);
    // The link works once.
    let again = post(
        "/reset/confirm",
        vec![("token", token), ("password", "a third password".into())],
    )
    .await
    .unwrap();
    assert_eq!(again.status(), 400);
}
