//! Traffic control end to end: rate limits (GCRA and sliding window, local and shared through
//! Redis by several gateway processes), their response headers and keys, behaviour while
//! Redis is down and after it comes back, and concurrency limits (load shedding).
//!
//! Cluster tests use the Redis on 127.0.0.1:6379 with policy names and key values unique to
//! the run; the outage test runs its own `redis-server` on a free port.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{client, echo, Gateway};
use futures_util::stream::{self, StreamExt};
use serde_json::Value;

/// A suffix no other run (of this test or any other) shares: Redis keys stay apart.
fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// One finished request.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
    elapsed: Duration,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The problem `code` of a gateway refusal (`None` for other bodies).
    fn code(&self) -> Option<String> {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_owned))
    }

    /// `"200"`, or the status and the problem code: `"429 rate_limited"`.
    fn outcome(&self) -> String {
        match (self.status, self.code()) {
            (200..=299, _) | (_, None) => self.status.to_string(),
            (status, Some(code)) => format!("{status} {code}"),
        }
    }
}

/// A numeric parameter of a structured-field item: `param("\"a\";r=3;t=9", "t") == 9`.
fn param(field: &str, name: &str) -> u64 {
    field
        .split(';')
        .find_map(|p| p.trim().strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no `{name}` in {field:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("`{name}` of {field:?} is not a number"))
}

async fn get(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Answer {
    let started = Instant::now();
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.expect("body");
    Answer {
        status,
        headers,
        body,
        elapsed: started.elapsed(),
    }
}

/// Send GET `urls` with `concurrency` requests in flight; count the outcomes.
async fn fire(
    client: &reqwest::Client,
    urls: Vec<String>,
    concurrency: usize,
) -> BTreeMap<String, usize> {
    let answers = stream::iter(urls)
        .map(|url| async move { get(client, &url, &[]).await.outcome() })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>();
    let answers = tokio::time::timeout(Duration::from_secs(25), answers)
        .await
        .expect("the requests finish in time");
    let mut tally = BTreeMap::new();
    for outcome in answers {
        *tally.entry(outcome).or_insert(0) += 1;
    }
    tally
}

/// `tally(&[("200", 3)])` for comparison with [`fire`]'s result.
fn tally(entries: &[(&str, usize)]) -> BTreeMap<String, usize> {
    entries
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| (k.to_string(), *n))
        .collect()
}

/// Assert a 429 from the rate limiter, with its problem body and `Retry-After`.
fn assert_rate_limited(answer: &Answer) -> u64 {
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(answer.code().as_deref(), Some("rate_limited"));
    let retry: u64 = answer
        .header("retry-after")
        .expect("Retry-After on a 429")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry >= 1, "Retry-After {retry}");
    retry
}

fn listener() -> &'static str {
    "listeners:\n  - name: public\n    listen: 127.0.0.1:0\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_limits_are_exact_under_concurrency() {
    let upstream = echo("traffic").await;
    let gateway = Gateway::start(&format!(
        r#"{listener}
rate_limits:
  gcra:
    limits: [{{ requests: 200, per: 1h, burst: 200 }}]
  window:
    limits: [{{ requests: 150, per: 1h, algorithm: sliding_window }}]
  bursty:
    limits: [{{ requests: 100, per: 1h, burst: 250 }}]
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
routes:
  - match: {{ path: {{ prefix: /gcra }} }}
    service: echo
    rate_limits: [gcra]
  - match: {{ path: {{ prefix: /window }} }}
    service: echo
    rate_limits: [window]
  - match: {{ path: {{ prefix: /bursty }} }}
    service: echo
    rate_limits: [bursty]
"#,
        listener = listener()
    ));
    let client = client();

    let urls = (0..600).map(|_| gateway.url("/gcra")).collect();
    let gcra = fire(&client, urls, 32).await;
    assert_eq!(gcra, tally(&[("200", 200), ("429 rate_limited", 400)]));

    let urls = (0..600).map(|_| gateway.url("/window")).collect();
    let window = fire(&client, urls, 32).await;
    assert_eq!(window, tally(&[("200", 150), ("429 rate_limited", 450)]));

    // A burst larger than the rate: the burst passes at once, not the rate.
    let urls = (0..400).map(|_| gateway.url("/bursty")).collect();
    let bursty = fire(&client, urls, 32).await;
    assert_eq!(bursty, tally(&[("200", 250), ("429 rate_limited", 150)]));
}

#[tokio::test]
async fn rate_limit_headers_retry_after_and_gcra_refill() {
    let upstream = echo("traffic").await;
    let gateway = Gateway::start(&format!(
        r#"{listener}
rate_limits:
  per-client:
    limits:
      - {{ name: burst, requests: 5, per: 1m }}
      - {{ requests: 5000, per: 1h }}
  legacy:
    headers: false
    legacy_headers: true
    limits: [{{ requests: 3, per: 1m }}]
  silent:
    headers: false
    limits: [{{ requests: 1, per: 1m }}]
  refill:
    limits: [{{ requests: 5, per: 1s, burst: 5 }}]
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
routes:
  - match: {{ path: {{ prefix: /limited }} }}
    service: echo
    rate_limits: [per-client]
  - match: {{ path: {{ prefix: /legacy }} }}
    service: echo
    rate_limits: [legacy]
  - match: {{ path: {{ prefix: /silent }} }}
    service: echo
    rate_limits: [silent]
  - match: {{ path: {{ prefix: /refill }} }}
    service: echo
    rate_limits: [refill]
"#,
        listener = listener()
    ));
    let client = client();
    let policy = r#""burst";q=5;w=60, "per-client-1";q=5000;w=3600"#;

    // Admitted: the policy, and the limit closest to refusing with a falling `r`. GCRA 5/min:
    // each request pushes the full-again time 12 s further.
    for n in 1..=5u64 {
        let answer = get(&client, &gateway.url("/limited"), &[]).await;
        assert_eq!(answer.status, 200, "request {n}: {}", answer.body);
        assert_eq!(answer.header("ratelimit-policy"), Some(policy));
        assert_eq!(
            answer.header("ratelimit"),
            Some(format!("\"burst\";r={};t={}", 5 - n, 12 * n).as_str()),
            "request {n}"
        );
        assert!(answer.header("x-ratelimit-limit").is_none());
        assert!(answer.header("retry-after").is_none());
    }
    // Refused: problem+json, Retry-After (the next slot, ≤ 12 s away) and the fields.
    let refused = get(&client, &gateway.url("/limited"), &[]).await;
    let retry = assert_rate_limited(&refused);
    assert!(retry <= 12, "Retry-After {retry}");
    assert_eq!(refused.header("ratelimit-policy"), Some(policy));
    let field = refused.header("ratelimit").expect("RateLimit on a 429");
    assert!(field.starts_with("\"burst\";r=0;"), "{field}");
    assert!((59..=60).contains(&param(field, "t")), "{field}");

    // Legacy trio only.
    for n in 1..=3u64 {
        let answer = get(&client, &gateway.url("/legacy"), &[]).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-ratelimit-limit"), Some("3"));
        let remaining = (3 - n).to_string();
        assert_eq!(
            answer.header("x-ratelimit-remaining"),
            Some(remaining.as_str())
        );
        let reset = (20 * n).to_string();
        assert_eq!(answer.header("x-ratelimit-reset"), Some(reset.as_str()));
        assert!(answer.header("ratelimit").is_none());
        assert!(answer.header("ratelimit-policy").is_none());
    }
    let refused = get(&client, &gateway.url("/legacy"), &[]).await;
    assert_rate_limited(&refused);
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    assert!(refused.header("ratelimit").is_none());

    // No headers at all, but a refusal still says when to come back.
    let answer = get(&client, &gateway.url("/silent"), &[]).await;
    assert_eq!(answer.status, 200);
    for name in ["ratelimit", "ratelimit-policy", "x-ratelimit-limit"] {
        assert!(answer.header(name).is_none(), "{name}");
    }
    let refused = get(&client, &gateway.url("/silent"), &[]).await;
    assert_rate_limited(&refused);
    assert!(refused.header("ratelimit").is_none());

    // GCRA refill: 5 at once, then one per 200 ms; after 1.1 s the burst is whole again.
    // (A sixth may slip in if sending takes longer than a refill interval.)
    async fn admitted_until_refused(client: &reqwest::Client, url: &str) -> usize {
        for n in 0..20 {
            let answer = get(client, url, &[]).await;
            if answer.status != 200 {
                assert_rate_limited(&answer);
                return n;
            }
        }
        panic!("20 requests in a row admitted by a 5/s limit");
    }
    let url = gateway.url("/refill");
    let first = admitted_until_refused(&client, &url).await;
    assert!((5..=6).contains(&first), "burst admitted {first}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = admitted_until_refused(&client, &url).await;
    assert!((5..=6).contains(&again), "after refill admitted {again}");
}

/// Two limits with different keys: `hourly` (5/h per client IP, checked first) and `minute`
/// (3/min per tenant). Tenant one spends 3, then is refused 7 times by `minute`: if those
/// refusals consumed `hourly`, tenant two would find it empty. All or nothing leaves tenant
/// two exactly 2.
async fn assert_all_or_nothing(gateway: &Gateway, run: &str) {
    let client = client();
    let url = gateway.url("/both");
    let one = format!("one-{run}");
    let two = format!("two-{run}");
    let mut outcomes = Vec::new();
    for n in 0..10 {
        let answer = get(&client, &url, &[("x-tenant", &one)]).await;
        if n == 2 {
            // `minute` has 0 left, `hourly` 2: `minute` speaks.
            let field = answer.header("ratelimit").unwrap();
            assert!(field.starts_with("\"minute\";r=0;"), "{field}");
        }
        if n >= 3 {
            assert_rate_limited(&answer);
            let field = answer.header("ratelimit").unwrap();
            assert!(field.starts_with("\"minute\";r=0;"), "{field}");
        }
        outcomes.push(answer.status);
    }
    assert_eq!(outcomes, [200, 200, 200, 429, 429, 429, 429, 429, 429, 429]);

    let mut outcomes = Vec::new();
    for n in 0..5 {
        let answer = get(&client, &url, &[("x-tenant", &two)]).await;
        if n < 2 {
            // `hourly` (1 then 0 left) is now closer to refusing than `minute` (2, then 1).
            assert_eq!(answer.status, 200, "{}", answer.body);
            let field = answer.header("ratelimit").unwrap();
            assert!(
                field.starts_with(&format!("\"hourly\";r={};", 1 - n)),
                "tenant two, request {n}: {field} (refused requests consumed `hourly`?)"
            );
        } else {
            assert_rate_limited(&answer);
            let field = answer.header("ratelimit").unwrap();
            assert!(field.starts_with("\"hourly\";r=0;"), "{field}");
        }
        outcomes.push(answer.status);
    }
    assert_eq!(outcomes, [200, 200, 429, 429, 429]);
}

const KEY_SECRET: &str = "traffic-test-key-secret-0123456789abcdef";

fn generate_key() -> (String, String) {
    common::generate_api_key(KEY_SECRET, &[])
}

fn keys_config(upstream: SocketAddr, run: &str, mode: &str) -> String {
    format!(
        r#"{listener}
redis:
  url: redis://127.0.0.1:6379
  timeout: 200ms
rate_limits:
  tenant-{run}:
    mode: {mode}
    on_redis_failure: closed
    limits: [{{ requests: 3, per: 1m, key: ["header:x-tenant"] }}]
  both-{run}:
    mode: {mode}
    on_redis_failure: closed
    limits:
      - {{ name: hourly, requests: 5, per: 1h, key: [client_ip] }}
      - {{ name: minute, requests: 3, per: 1m, algorithm: sliding_window, key: ["header:x-tenant"] }}
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
routes:
  - match: {{ path: {{ prefix: /tenant }} }}
    service: echo
    rate_limits: [tenant-{run}]
  - match: {{ path: {{ prefix: /both }} }}
    service: echo
    rate_limits: [both-{run}]
"#,
        listener = listener()
    )
}

#[tokio::test]
async fn keys_count_apart_and_a_refusal_consumes_no_other_limit() {
    let upstream = echo("traffic").await;
    let run = unique();
    let gateway = Gateway::start(&keys_config(upstream, &run, "local"));
    let client = client();

    // `header:x-tenant`: each tenant has its own 3 per minute.
    let url = gateway.url("/tenant");
    let (acme, globex) = (format!("acme-{run}"), format!("globex-{run}"));
    for tenant in [&acme, &globex] {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(get(&client, &url, &[("x-tenant", tenant)]).await.status);
        }
        assert_eq!(statuses, [200, 200, 200, 429, 429], "tenant {tenant}");
    }
    let again = get(&client, &url, &[("x-tenant", &acme)]).await;
    assert_rate_limited(&again);

    assert_all_or_nothing(&gateway, &run).await;
}

#[tokio::test]
async fn the_default_key_is_the_consumer_else_the_client_ip() {
    let upstream = echo("traffic").await;
    let (alice, alice_entry) = generate_key();
    let (bob, bob_entry) = generate_key();
    let gateway = Gateway::start(&format!(
        r#"{listener}
authentication:
  api_key_secret: "{KEY_SECRET}"
  methods:
    keys:
      api_key: {{ header: x-api-key }}
consumers:
  - id: alice
    api_keys:
{alice_entry}  - id: bob
    api_keys:
{bob_entry}rate_limits:
  per-consumer:
    limits: [{{ requests: 2, per: 1m }}]
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
routes:
  - match: {{ path: {{ prefix: /keyed }} }}
    service: echo
    auth: {{ methods: [keys] }}
    rate_limits: [per-consumer]
  - match: {{ path: {{ prefix: /anonymous }} }}
    service: echo
    rate_limits: [per-consumer]
"#,
        listener = listener()
    ));
    let client = client();

    // Same client IP, different consumers: separate allowances.
    for (who, key) in [("alice", &alice), ("bob", &bob)] {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let answer = get(&client, &gateway.url("/keyed"), &[("x-api-key", key)]).await;
            statuses.push(answer.status);
        }
        assert_eq!(statuses, [200, 200, 429], "{who}");
    }
    // Without a consumer the client IP is the key: its own two, untouched by alice and bob.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get(&client, &gateway.url("/anonymous"), &[]).await.status);
    }
    assert_eq!(statuses, [200, 200, 429], "anonymous");
    // A bad key is refused by authentication before the limiter counts it.
    let answer = get(&client, &gateway.url("/keyed"), &[("x-api-key", "nope")]).await;
    assert_eq!(answer.status, 401);
}

#[tokio::test]
async fn cluster_limits_are_all_or_nothing_in_redis() {
    let upstream = echo("traffic").await;
    let run = unique();
    let gateway = Gateway::start(&keys_config(upstream, &run, "cluster"));
    let client = client();
    // Separate tenants through Redis too.
    let url = gateway.url("/tenant");
    let (acme, globex) = (format!("acme-{run}"), format!("globex-{run}"));
    for tenant in [&acme, &globex] {
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(get(&client, &url, &[("x-tenant", tenant)]).await.status);
        }
        assert_eq!(statuses, [200, 200, 200, 429], "tenant {tenant}");
    }
    assert_all_or_nothing(&gateway, &run).await;
}

fn reload_config(upstream: SocketAddr, version: &str) -> String {
    format!(
        r#"{listener}
rate_limits:
  steady:
    limits: [{{ requests: 3, per: 1m }}]
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
routes:
  - match: {{ path: {{ exact: /version }} }}
    respond: {{ body: "{version}" }}
  - match: {{ path: {{ prefix: /steady }} }}
    service: echo
    rate_limits: [steady]
"#,
        listener = listener()
    )
}

#[tokio::test]
async fn a_reload_keeps_the_counters_of_unchanged_limits() {
    let upstream = echo("traffic").await;
    let gateway = Gateway::start(&reload_config(upstream, "v1"));
    let client = client();
    for _ in 0..2 {
        assert_eq!(get(&client, &gateway.url("/steady"), &[]).await.status, 200);
    }

    common::write(&gateway.config_path, &reload_config(upstream, "v2"));
    gateway.signal("HUP");
    let started = Instant::now();
    for _ in 0..250 {
        if get(&client, &gateway.url("/version"), &[]).await.body == "v2"
            || started.elapsed() > Duration::from_secs(5)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&client, &gateway.url("/version"), &[]).await.body, "v2");

    // One left of the three, not a fresh allowance.
    let answer = get(&client, &gateway.url("/steady"), &[]).await;
    assert_eq!(answer.status, 200);
    let field = answer.header("ratelimit").unwrap();
    assert!(field.starts_with("\"steady-0\";r=0;"), "{field}");
    assert_rate_limited(&get(&client, &gateway.url("/steady"), &[]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_share_one_cluster_limit() {
    let upstream = echo("traffic").await;
    let run = unique();
    let yaml = format!(
        r#"{listener}
redis:
  url: redis://127.0.0.1:6379
  timeout: 500ms
rate_limits:
  gcra-{run}:
    mode: cluster
    on_redis_failure: closed
    limits: [{{ requests: 500, per: 1h, burst: 500 }}]
  window-{run}:
    mode: cluster
    on_redis_failure: closed
    limits: [{{ requests: 300, per: 1h, algorithm: sliding_window }}]
  local-{run}:
    mode: local
    limits: [{{ requests: 500, per: 1h, burst: 500 }}]
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
routes:
  - match: {{ path: {{ prefix: /gcra }} }}
    service: echo
    rate_limits: [gcra-{run}]
  - match: {{ path: {{ prefix: /window }} }}
    service: echo
    rate_limits: [window-{run}]
  - match: {{ path: {{ prefix: /local }} }}
    service: echo
    rate_limits: [local-{run}]
"#,
        listener = listener()
    );
    let gateways: Vec<Gateway> = (0..3).map(|_| Gateway::start(&yaml)).collect();
    let client = client();
    let spread = |path: &str, count: usize| -> Vec<String> {
        (0..count).map(|i| gateways[i % 3].url(path)).collect()
    };

    // GCRA 500/h through Redis: 1500 requests round-robin over three processes.
    let gcra = fire(&client, spread("/gcra", 1500), 48).await;
    eprintln!("cluster GCRA 500/h over 3 gateways: {gcra:?}");
    let admitted = gcra.get("200").copied().unwrap_or(0);
    assert!(
        (495..=505).contains(&admitted),
        "cluster GCRA admitted {admitted}, want 500: {gcra:?}"
    );
    assert_eq!(admitted + gcra.get("429 rate_limited").unwrap_or(&0), 1500);

    // Sliding window 300/h through Redis.
    let window = fire(&client, spread("/window", 900), 48).await;
    eprintln!("cluster sliding window 300/h over 3 gateways: {window:?}");
    let admitted = window.get("200").copied().unwrap_or(0);
    assert!(
        (297..=303).contains(&admitted),
        "cluster window admitted {admitted}, want 300: {window:?}"
    );
    assert_eq!(admitted + window.get("429 rate_limited").unwrap_or(&0), 900);

    // The same limit kept per process: each gateway admits its own 500.
    let local = fire(&client, spread("/local", 1650), 48).await;
    eprintln!("local GCRA 500/h over 3 gateways: {local:?}");
    assert_eq!(local, tally(&[("200", 1500), ("429 rate_limited", 150)]));
}

/// A `redis-server` of this test alone, on a fixed port so it can come back where it was.
struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> RedisServer {
        let mut server = RedisServer {
            port: common::free_port(),
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        server.run();
        server
    }

    fn run(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (is it on PATH?)");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redis-server on port {} exited: {status}", self.port);
            }
            let pong = Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "ping"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
                .unwrap_or(false);
            if pong {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer",
                self.port
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        self.child = Some(child);
    }

    /// `kill -SIGNAL` the server (`STOP` freezes it with its connections open).
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// A crash: SIGKILL, connections reset.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Traffic during a Redis failure, on both gateways, for `duration` (longer than
/// `retry_after_failure`, so Redis is asked again and fails again). `open` passes on the
/// local fallback, `closed` is 503 `rate_limit_unavailable`; the latencies.
async fn during_outage(
    client: &reqwest::Client,
    gateways: &[Gateway],
    duration: Duration,
) -> Vec<Duration> {
    let started = Instant::now();
    let mut latencies = Vec::new();
    for _ in 0..60 {
        if started.elapsed() >= duration {
            break;
        }
        for gateway in gateways {
            let answer = get(client, &gateway.url("/open"), &[]).await;
            assert_eq!(
                answer.status, 200,
                "open during the outage: {}",
                answer.body
            );
            assert!(
                answer.header("ratelimit").is_some(),
                "the local fallback limit reports itself"
            );
            latencies.push(answer.elapsed);

            let answer = get(client, &gateway.url("/closed"), &[]).await;
            assert!(
                answer.status != 401 && answer.status != 403,
                "a Redis failure blamed the client: {}",
                answer.status
            );
            assert_eq!(answer.outcome(), "503 rate_limit_unavailable");
            assert_eq!(
                answer.header("content-type"),
                Some("application/problem+json")
            );
            assert_eq!(answer.header("retry-after"), Some("1"));
            latencies.push(answer.elapsed);
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    latencies
}

/// Poll until the `closed` route passes on every gateway (Redis answers them again), at
/// most 10 s; how long it took.
async fn wait_until_redis_answers(client: &reqwest::Client, gateways: &[Gateway]) -> Duration {
    let back = Instant::now();
    let mut recovered = vec![false; gateways.len()];
    for _ in 0..100 {
        for (gateway, done) in gateways.iter().zip(&mut recovered) {
            if !*done {
                *done = get(client, &gateway.url("/closed"), &[]).await.status == 200;
            }
        }
        if recovered.iter().all(|r| *r) || back.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered.iter().all(|r| *r),
        "cluster limits did not resume within 10 s: {recovered:?}"
    );
    back.elapsed()
}

/// A 5/h limit on a fresh key admits 5 over both gateways together, not 5 each (which is what
/// the local fallback would do).
async fn assert_shared_again(client: &reqwest::Client, gateways: &[Gateway], key: &str) {
    let mut statuses = Vec::new();
    for n in 0..10 {
        let gateway = &gateways[n % 2];
        let answer = get(client, &gateway.url("/tight"), &[("x-run", key)]).await;
        statuses.push(answer.status);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429, 429, 429, 429],
        "requests alternate between the two gateways"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_open_or_closed_fast_and_cluster_limits_resume() {
    let mut redis = RedisServer::start();
    let upstream = echo("traffic").await;
    let run = unique();
    let yaml = format!(
        r#"{listener}
redis:
  url: redis://127.0.0.1:{port}
  timeout: 50ms
  retry_after_failure: 1s
rate_limits:
  open:
    mode: cluster
    on_redis_failure: open
    limits: [{{ requests: 100000, per: 1h }}]
  closed:
    mode: cluster
    on_redis_failure: closed
    limits: [{{ requests: 100000, per: 1h }}]
  tight:
    mode: cluster
    on_redis_failure: open
    limits: [{{ requests: 5, per: 1h, key: ["header:x-run"] }}]
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
routes:
  - match: {{ path: {{ prefix: /open }} }}
    service: echo
    rate_limits: [open]
  - match: {{ path: {{ prefix: /closed }} }}
    service: echo
    rate_limits: [closed]
  - match: {{ path: {{ prefix: /tight }} }}
    service: echo
    rate_limits: [tight]
"#,
        listener = listener(),
        port = redis.port
    );
    let gateways = [Gateway::start(&yaml), Gateway::start(&yaml)];
    let client = client();

    // Redis up: both routes pass on both gateways, and the gateways share counters.
    for gateway in &gateways {
        for path in ["/open", "/closed"] {
            let answer = get(&client, &gateway.url(path), &[]).await;
            assert_eq!(answer.status, 200, "{path}: {}", answer.body);
            assert!(answer.header("ratelimit").is_some());
        }
    }
    assert_shared_again(&client, &gateways, &format!("before-{run}")).await;

    // Redis crashes: connections reset, connects refused.
    redis.kill();
    let mut latencies = during_outage(&client, &gateways, Duration::from_millis(1600)).await;
    // `open` falls back to a limit, not to no limit: 5 per gateway on a fresh key.
    let during = format!("during-{run}");
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let answer = get(&client, &gateways[0].url("/tight"), &[("x-run", &during)]).await;
        latencies.push(answer.elapsed);
        statuses.push(answer.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    let max = latencies.iter().max().unwrap();
    eprintln!(
        "Redis killed: {} requests, max latency {max:?}",
        latencies.len()
    );
    assert!(
        *max < Duration::from_millis(500),
        "a request waited {max:?} while Redis was down"
    );
    assert!(
        gateways[0].stderr().contains("Redis call failed"),
        "the outage is logged"
    );

    // Back on the same port: within 10 s both gateways share counters again.
    redis.run();
    let took = wait_until_redis_answers(&client, &gateways).await;
    eprintln!("Redis restarted: used again after {took:?}");
    assert_shared_again(&client, &gateways, &format!("after-{run}")).await;

    // Redis hangs (stopped, connections open, no answers): every call runs into the 50 ms
    // timeout instead of failing at once; requests still must not wait long.
    redis.signal("STOP");
    let latencies = during_outage(&client, &gateways, Duration::from_millis(1600)).await;
    let max = latencies.iter().max().unwrap();
    eprintln!(
        "Redis hung: {} requests, max latency {max:?}",
        latencies.len()
    );
    assert!(
        *max < Duration::from_millis(500),
        "a request waited {max:?} while Redis hung"
    );
    redis.signal("CONT");
    let took = wait_until_redis_answers(&client, &gateways).await;
    eprintln!("Redis resumed: used again after {took:?}");
    assert_shared_again(&client, &gateways, &format!("resumed-{run}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_shed_load_and_release_slots() {
    let upstream = echo("traffic").await;
    let gateway = Gateway::start(&format!(
        r#"{listener}
services:
  - name: echo
    endpoints: [{{ address: "{upstream}" }}]
  - name: shared
    endpoints: [{{ address: "{upstream}" }}]
    max_in_flight: 4
  - name: dead
    endpoints: [{{ address: "{dead}" }}]
    max_in_flight: 1
routes:
  - match: {{ path: {{ prefix: /route }} }}
    rewrite: {{ strip_prefix: true }}
    service: echo
    max_in_flight: 3
  - match: {{ path: {{ prefix: /svc-a }} }}
    rewrite: {{ strip_prefix: true }}
    service: shared
  - match: {{ path: {{ prefix: /svc-b }} }}
    rewrite: {{ strip_prefix: true }}
    service: shared
  - match: {{ path: {{ prefix: /dead }} }}
    service: dead
"#,
        listener = listener(),
        dead = common::closed_port(),
    ));
    let client = client();

    /// Send all `paths` at once; the outcomes, each 503 checked for `Retry-After: 1`.
    async fn all_at_once(
        client: &reqwest::Client,
        gateway: &Gateway,
        paths: &[&str],
    ) -> BTreeMap<String, usize> {
        let requests = paths.iter().map(|path| {
            let url = gateway.url(path);
            async move { get(client, &url, &[]).await }
        });
        let answers = tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::future::join_all(requests),
        )
        .await
        .expect("the requests finish in time");
        let mut outcomes = BTreeMap::new();
        for answer in answers {
            if answer.status == 503 {
                assert_eq!(answer.header("retry-after"), Some("1"));
                assert_eq!(
                    answer.header("content-type"),
                    Some("application/problem+json")
                );
            }
            *outcomes.entry(answer.outcome()).or_insert(0) += 1;
        }
        outcomes
    }

    // Route limit: 3 of 10 reach the slow upstream, 7 are shed at once.
    let outcomes = all_at_once(&client, &gateway, &["/route/delay/600"; 10]).await;
    assert_eq!(outcomes, tally(&[("200", 3), ("503 overloaded", 7)]));
    // All three slots came back, and there are still only three.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let outcomes = all_at_once(&client, &gateway, &["/route/delay/300"; 4]).await;
    assert_eq!(outcomes, tally(&[("200", 3), ("503 overloaded", 1)]));

    // Service limit shared by two routes: 4 of 10 over both.
    let mut paths = vec!["/svc-a/delay/600"; 5];
    paths.extend(["/svc-b/delay/600"; 5]);
    let outcomes = all_at_once(&client, &gateway, &paths).await;
    assert_eq!(outcomes, tally(&[("200", 4), ("503 overloaded", 6)]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let paths = [
        "/svc-a/delay/300",
        "/svc-b/delay/300",
        "/svc-a/delay/300",
        "/svc-b/delay/300",
        "/svc-a/delay/300",
    ];
    let outcomes = all_at_once(&client, &gateway, &paths).await;
    assert_eq!(outcomes, tally(&[("200", 4), ("503 overloaded", 1)]));

    // A failed upstream call gives its slot back: the one-slot service keeps answering with
    // the upstream failure, never `overloaded`.
    for n in 0..3 {
        let answer = get(&client, &gateway.url("/dead"), &[]).await;
        assert_eq!(answer.status, 503, "{}", answer.body);
        let code = answer.code().unwrap();
        assert!(
            code == "upstream_unavailable" || code == "no_healthy_upstream",
            "request {n}: {code}"
        );
    }

    // Clients that give up while the upstream is still working: their slots come back (at
    // the latest when the upstream answers), so the route is not blocked for good.
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let aborted = futures_util::future::join_all(
        (0..3).map(|_| impatient.get(gateway.url("/route/delay/1500")).send()),
    )
    .await;
    assert!(aborted
        .iter()
        .all(|r| r.as_ref().is_err_and(|e| e.is_timeout())));
    let gave_up = Instant::now();
    let mut passed = false;
    for _ in 0..50 {
        if get(&client, &gateway.url("/route/delay/1"), &[])
            .await
            .status
            == 200
        {
            passed = true;
            break;
        }
        if gave_up.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(passed, "slots of aborted requests not released within 5 s");
    eprintln!(
        "slots of aborted requests free again {:?} after the clients gave up",
        gave_up.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let outcomes = all_at_once(&client, &gateway, &["/route/delay/300"; 4]).await;
    assert_eq!(outcomes, tally(&[("200", 3), ("503 overloaded", 1)]));
}
