//! Test harness: runs the real `gatehouse` binary against real upstreams on loopback.
#![allow(dead_code)]

pub mod pki;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A running gateway process; killed when dropped.
pub struct Gateway {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// Listener name → bound address.
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin: Option<SocketAddr>,
    pub portal: Option<SocketAddr>,
    pub stderr_log: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_gatehouse")
}

impl Gateway {
    /// Write `yaml` to a temporary file and start `gatehouse gateway -c` on it; waits until ready.
    pub fn start(yaml: &str) -> Gateway {
        Self::start_with_args(yaml, &[])
    }

    pub fn start_with_args(yaml: &str, extra: &[&str]) -> Gateway {
        Self::start_role("gateway", yaml, extra, &[])
    }

    /// Start `gatehouse <role> -c` (gateway, sidecar, control) with extra arguments and
    /// environment; waits until it says it is ready.
    pub fn start_role(role: &str, yaml: &str, extra: &[&str], env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("gatehouse.yaml");
        std::fs::write(&config_path, yaml).expect("write config");
        let stderr_log = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_log).expect("stderr log");
        let mut child = Command::new(binary())
            .arg(role)
            .arg("-c")
            .arg(&config_path)
            .args(extra)
            .envs(env.iter().copied())
            .env(
                "GATEHOUSE_LOG",
                std::env::var("GATEHOUSE_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start gatehouse");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut listeners = Vec::new();
        let mut admin = None;
        let mut portal = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "gateway did not become ready");
            let Some(Ok(line)) = lines.next() else {
                let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
                panic!("gateway exited before it was ready:\n{log}");
            };
            if let Some(rest) = line.strip_prefix("gatehouse: listener ") {
                let (name, addr) = rest.split_once(" on ").expect("listener line");
                listeners.push((name.to_owned(), addr.parse().expect("listener addr")));
            } else if let Some(addr) = line.strip_prefix("gatehouse: admin on ") {
                admin = Some(addr.parse().expect("admin addr"));
            } else if let Some(addr) = line.strip_prefix("gatehouse: portal on ") {
                portal = Some(addr.parse().expect("portal addr"));
            } else if line.starts_with("gatehouse: ready") {
                break;
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Gateway {
            child,
            dir,
            config_path,
            listeners,
            admin,
            portal,
            stderr_log,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listeners[0].1
    }

    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .expect("listener by name")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    pub fn portal_url(&self, path: &str) -> String {
        format!("http://{}{}", self.portal.expect("portal listener"), path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin.expect("admin listener"), path)
    }

    /// GET an admin endpoint with the test token; the JSON body.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        bearer_json(&self.admin_url(path), ADMIN_TOKEN).await
    }

    /// The Prometheus text of `/metrics`, with the test token.
    pub async fn metrics(&self) -> String {
        bearer_get(&self.admin_url("/metrics"), ADMIN_TOKEN)
            .await
            .text()
            .await
            .expect("metrics text")
    }

    /// The Prometheus text of `/metrics` once it holds every one of `expected`: the log
    /// phase runs when a response body is done, which can be after its client has read it.
    /// After five seconds, the text as it is, for the caller's assertion to show.
    pub async fn metrics_with(&self, expected: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = self.metrics().await;
            if expected.iter().all(|line| text.contains(line)) || Instant::now() > deadline {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Peak resident memory of the gateway process in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failing test shows what the gateway logged.
            eprintln!("---- gateway stderr ----\n{}", self.stderr());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A client that never uses a proxy from the environment and does not follow redirects.
pub fn client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// GET `url` with a bearer token; the answer must be a success.
pub async fn bearer_get(url: &str, token: &str) -> reqwest::Response {
    let response = client()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("admin request");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    response
}

/// GET `url` with a bearer token; the answer must be a success with a JSON body.
pub async fn bearer_json(url: &str, token: &str) -> serde_json::Value {
    bearer_get(url, token)
        .await
        .json()
        .await
        .expect("admin JSON")
}

/// Start the demo echo service on a free port; `name` shows in `x-demo-instance`.
pub async fn echo(name: &'static str) -> SocketAddr {
    gatehouse_demo::spawn(
        gatehouse_demo::echo_router(name),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("echo upstream")
}

/// Start any axum router on a free port.
pub async fn upstream(router: axum::Router) -> SocketAddr {
    gatehouse_demo::spawn(router, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("upstream")
}

/// The double-submit CSRF cookie a portal or dashboard form page hands out: the `Cookie`
/// header value to send back, and the token the form must echo.
pub async fn form_csrf(url: &str) -> (String, String) {
    let form = client().get(url).send().await.expect("form page");
    let cookie = form.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("cookie pair")
        .to_owned();
    let token = cookie.split_once('=').expect("name=value").1.to_owned();
    (cookie, token)
}

/// A loopback port free now, for a server the test starts on it (another process may
/// take it meanwhile; use only when the server must be told its port).
pub fn free_port() -> u16 {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

/// A loopback port with nothing listening, for good: the port stays bound (without
/// listening, so connections are refused) for the whole test process, so no listener of
/// a parallel test (or the gateway itself) can be given it.
pub fn closed_port() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    std::mem::forget(socket);
    addr
}

pub fn admin_block() -> String {
    format!("admin:\n  listen: 127.0.0.1:0\n  token: {ADMIN_TOKEN}\n")
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write file");
}

/// Send `count` GET requests and count responses per `x-demo-instance`.
pub async fn distribution(
    client: &reqwest::Client,
    url: &str,
    count: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..count {
        let response = client.get(url).send().await.expect("request");
        let instance = response
            .headers()
            .get("x-demo-instance")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_else(|| format!("status-{}", response.status().as_u16()));
        *seen.entry(instance).or_insert(0) += 1;
    }
    seen
}

/// reqwest is built without a default crypto provider; use the one the gateway uses.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// An API key made by `gatehouse keys generate` under `secret` (`extra`: more flags such as
/// `--expires`): the key, and its YAML entry indented to sit under a consumer's `api_keys:`.
pub fn generate_api_key(secret: &str, extra: &[&str]) -> (String, String) {
    let output = Command::new(binary())
        .args(["keys", "generate", "--secret-env", "GH_TEST_KEY_SECRET"])
        .args(extra)
        .env("GH_TEST_KEY_SECRET", secret)
        .output()
        .expect("run keys generate");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let mut lines = stdout.lines();
    let key = lines.next().expect("the key").to_owned();
    let entry = lines
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("      {l}\n"))
        .collect();
    (key, entry)
}

/// Run `gatehouse check` on `yaml` written to `bad.yaml` in a temporary directory: the
/// exit code and stdout and stderr together.
pub fn check_text(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let output = Command::new(binary())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

/// A database of its own on the test PostgreSQL (dropped at the end).
pub struct TestDatabase {
    admin_url: String,
    name: String,
}

impl TestDatabase {
    pub fn create(tag: &str) -> Self {
        let admin_url = std::env::var("GATEHOUSE_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let name = format!("gatehouse_{tag}_{}", std::process::id());
        psql(&admin_url, &format!("DROP DATABASE IF EXISTS {name}"));
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        Self { admin_url, name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of the database through `host:port`.
    pub fn url_via(&self, addr: &str) -> String {
        let base = self
            .admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&self.admin_url);
        let base = base.replace("127.0.0.1:5432", addr);
        format!("{base}/{}", self.name)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([
                &self.admin_url,
                "-qc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

fn psql(url: &str, statement: &str) {
    let output = std::process::Command::new("psql")
        .args([url, "-qc", statement])
        .output()
        .expect("psql (scripts/test.sh makes sure PostgreSQL is there)");
    assert!(
        output.status.success(),
        "psql {statement}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A TCP relay to the test PostgreSQL that a test can cut (a store outage) and restart on
/// the same address.
pub struct PgRelay {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl PgRelay {
    pub async fn start(addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { addr, task }
    }

    /// Closes the listener and every relayed connection; returns once they are closed, so
    /// the address can be bound again.
    pub async fn cut(self) -> SocketAddr {
        self.task.abort();
        let _ = self.task.await;
        self.addr
    }
}
