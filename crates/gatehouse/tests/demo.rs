//! `gatehouse demo`: the demo services behind the gateway, and the developer portal with
//! its sample API product (plans, sandbox), the dashboard with the printed credentials.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, ADMIN_TOKEN};
use serde_json::{json, Value};

struct Demo {
    child: std::process::Child,
    gateway: SocketAddr,
    admin: SocketAddr,
    portal: SocketAddr,
    password: String,
    token: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(format!("gatehouse-demo-{}", self.child.id())),
        );
    }
}

fn start() -> Demo {
    let mut child = Command::new(common::binary())
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--portal",
            "127.0.0.1:0",
        ])
        .env("GATEHOUSE_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut gateway, mut admin, mut portal, mut password, mut token) =
        (None, None, None, None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else {
            panic!("the demo exited before it was ready");
        };
        if let Some(rest) = line.split("(admin@example.com / ").nth(1) {
            password = rest.strip_suffix(')').map(str::to_owned);
        } else if let Some(rest) = line.split("(token: ").nth(1) {
            token = rest.strip_suffix(')').map(str::to_owned);
        } else if let Some(addr) = line.strip_prefix("gatehouse: listener public on ") {
            gateway = addr.parse().ok();
        } else if let Some(addr) = line.strip_prefix("gatehouse: admin on ") {
            admin = addr.parse().ok();
        } else if let Some(addr) = line.strip_prefix("gatehouse: portal on ") {
            portal = addr.parse().ok();
        } else if line.starts_with("gatehouse: ready") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Demo {
        child,
        gateway: gateway.expect("gateway address"),
        admin: admin.expect("admin address"),
        portal: portal.expect("portal address"),
        password: password.expect("dashboard password in the banner"),
        token: token.expect("admin token in the banner"),
    }
}

#[tokio::test]
async fn the_demo_serves_its_apis_the_portal_with_a_sample_product_and_the_dashboard() {
    let demo = start();
    assert_eq!(demo.token, ADMIN_TOKEN);
    let http = client();
    let books = http
        .get(format!("http://{}/api/books", demo.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(books.status(), 200);
    assert!(books.headers().contains_key("x-demo-instance"));

    // The portal lists the sample product, with its plans, reference and console.
    let catalog = http
        .get(format!("http://{}/", demo.portal))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(catalog.contains("Book Catalog API"), "{catalog}");
    let product = http
        .get(format!("http://{}/apis/catalog", demo.portal))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "Free",
        "Pro",
        "Try it in the sandbox",
        "op-getBook",
        "schema-Book",
    ] {
        assert!(
            product.contains(expected),
            "no {expected} on the product page"
        );
    }

    // The sample product's route: a key needs a subscription; a sandbox key gets the mock.
    let admin = |path: &str, body: Value| {
        http.post(format!("http://{}{path}", demo.admin))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    assert_eq!(
        admin("/admin/consumers", json!({"id": "visitor"}))
            .await
            .unwrap()
            .status(),
        201
    );
    let live: Value = admin("/admin/consumers/visitor/keys", json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sandbox: Value = admin("/admin/consumers/visitor/keys", json!({"sandbox": true}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let call = |key: &Value, path: &str| {
        http.get(format!("http://{}{path}", demo.gateway))
            .header("x-api-key", key["key"].as_str().unwrap())
            .send()
    };
    let started = Instant::now();
    loop {
        let status = call(&sandbox, "/partner/books/1").await.unwrap().status();
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "sandbox: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mocked = call(&sandbox, "/partner/books/1").await.unwrap();
    assert_eq!(mocked.headers()["x-gatehouse-sandbox"], "mock");
    assert_eq!(
        mocked.json::<Value>().await.unwrap()["book"]["title"],
        "Dune"
    );
    assert_eq!(call(&live, "/partner/books/1").await.unwrap().status(), 403);
    assert_eq!(
        admin(
            "/admin/subscriptions",
            json!({"consumer_id": "visitor", "plan_id": "free"})
        )
        .await
        .unwrap()
        .status(),
        201
    );
    let started = Instant::now();
    loop {
        let response = call(&live, "/partner/books/1").await.unwrap();
        if response.status() == 200 {
            assert!(
                response.headers().contains_key("x-demo-instance"),
                "the real catalog answered"
            );
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The dashboard takes the printed credentials.
    let (cookie, csrf) = common::form_csrf(&format!("http://{}/dashboard/login", demo.admin)).await;
    let signed_in = http
        .post(format!("http://{}/dashboard/login", demo.admin))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("email", "admin@example.com"),
            ("password", demo.password.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
}

/// `gatehouse demo --mesh`: the control plane, the edge gateway and five workloads with
/// sidecars; a product page crosses three mTLS hops, each with the caller's identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_demo_serves_a_page_across_the_mesh() {
    let gateway = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let mut child = Command::new(common::binary())
        .args(["demo", "--mesh", "--mesh-base-port", "7400"])
        .args([
            "--listen",
            &gateway.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the mesh demo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    // The control plane's admin command the demo prints: its token and address.
    let mut control_admin = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "the mesh demo did not become ready"
        );
        match lines.next() {
            Some(Ok(line)) if line == "gatehouse: ready" => break,
            Some(Ok(line)) if line.contains("/admin/mesh/data-planes") => {
                let token = line
                    .split("Bearer ")
                    .nth(1)
                    .and_then(|rest| rest.split('\'').next())
                    .expect("the admin token in the printed command")
                    .to_owned();
                let url = line
                    .split_whitespace()
                    .find(|word| word.starts_with("http://"))
                    .expect("the control plane's admin URL")
                    .to_owned();
                control_admin = Some((token, url));
            }
            Some(Ok(_)) => {}
            _ => panic!("the mesh demo exited before it was ready"),
        }
    }
    let (admin_token, data_planes_url) =
        control_admin.expect("the demo prints the control plane's admin command");
    std::thread::spawn(move || for _ in lines {});
    // Stops the demo (and so its child processes) however the test ends.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            let _ = self.0.wait();
        }
    }
    let _stop = Stop(child);

    let http = client();
    let page: Value = http
        .get(format!("http://{gateway}/products/7"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["caller"], "spiffe://mesh.local/ns/edge/sa/gateway",
        "{page}"
    );
    for dependency in ["catalog", "reviews"] {
        assert_eq!(page[dependency]["status"], 200, "{page}");
        assert_eq!(
            page[dependency]["seen_caller"], "spiffe://mesh.local/ns/shop/sa/storefront",
            "{page}"
        );
    }
    // Pages 20 at a time: both catalog instances serve (one by one, power of two choices
    // would rightly keep picking the faster one); the canary header reaches v2 only.
    let mut catalog_instances = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while catalog_instances.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "one catalog instance only: {catalog_instances:?}"
        );
        let pages = futures_util::future::join_all((0..20).map(|_| async {
            http.get(format!("http://{gateway}/products/7"))
                .header("x-canary", "1")
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }))
        .await;
        for page in pages {
            assert_eq!(page["reviews"]["instance"], "reviews-v2", "{page}");
            catalog_instances.insert(page["catalog"]["instance"].as_str().unwrap().to_owned());
        }
    }
    // The control plane sees the five sidecars and the gateway, each having applied the
    // version it was last sent (polled: registrations still settling push new versions).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let planes = common::bearer_json(&data_planes_url, &admin_token).await;
        let planes = planes.as_array().expect("a list of data planes");
        let settled = planes.len() == 6
            && planes.iter().all(|p| p["state"] == "in_sync")
            && planes
                .iter()
                .any(|p| p["identity"] == "spiffe://mesh.local/ns/edge/sa/gateway");
        if settled {
            break;
        }
        assert!(Instant::now() < deadline, "{planes:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
