//! Upstream behaviour end to end: load-balancing distributions, active health checks,
//! outlier ejection, retries and the retry budget, and timeouts.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use common::{client, distribution, upstream, Gateway};

/// An upstream that tags responses with `x-demo-instance`, answers `/health` according to
/// `healthy`, answers everything else with `status` after `delay`, and counts requests.
struct Instance {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
}

async fn instance(name: &'static str, status: u16, delay: Duration) -> Instance {
    let healthy = Arc::new(AtomicBool::new(true));
    let requests = Arc::new(AtomicUsize::new(0));
    let router = {
        let healthy = healthy.clone();
        let requests = requests.clone();
        Router::new()
            .route(
                "/health",
                axum::routing::get(move || {
                    let healthy = healthy.load(Ordering::SeqCst);
                    async move {
                        if healthy {
                            StatusCode::OK
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        }
                    }
                }),
            )
            .fallback(move || {
                requests.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(delay).await;
                    (
                        StatusCode::from_u16(status).unwrap(),
                        [("x-demo-instance", name)],
                        name,
                    )
                        .into_response()
                }
            })
    };
    Instance {
        addr: upstream(router).await,
        healthy,
        requests,
    }
}

fn gateway_config(service_body: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    listen: 127.0.0.1:0\nservices:\n  - name: up\n{service_body}\nroutes:\n  - service: up\n"
    )
}

fn endpoints(list: &[(SocketAddr, u32)]) -> String {
    let mut out = String::from("    endpoints:\n");
    for (addr, weight) in list {
        out.push_str(&format!(
            "      - {{ address: \"{addr}\", weight: {weight} }}\n"
        ));
    }
    out
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test]
async fn weighted_round_robin_follows_weights_exactly() {
    let a = instance("a", 200, Duration::ZERO).await;
    let b = instance("b", 200, Duration::ZERO).await;
    let config = gateway_config(&format!(
        "{}    load_balancing: round_robin",
        endpoints(&[(a.addr, 3), (b.addr, 1)])
    ));
    let gateway = Gateway::start(&config);
    let seen = distribution(&client(), &gateway.url("/"), 40).await;
    assert_eq!(seen, counts(&[("a", 30), ("b", 10)]));
}

#[tokio::test]
async fn least_request_prefers_the_fast_endpoint() {
    let fast = instance("fast", 200, Duration::ZERO).await;
    let slow = instance("slow", 200, Duration::from_millis(150)).await;
    let config = gateway_config(&format!(
        "{}    load_balancing: least_request",
        endpoints(&[(fast.addr, 1), (slow.addr, 1)])
    ));
    let gateway = Gateway::start(&config);
    let client = client();
    let url = gateway.url("/");
    // 8 concurrent clients, 15 requests each.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move { distribution(&client, &url, 15).await })
        })
        .collect();
    let mut total: BTreeMap<String, usize> = BTreeMap::new();
    for task in tasks {
        for (k, v) in task.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    let fast_share = total.get("fast").copied().unwrap_or(0);
    assert_eq!(total.values().sum::<usize>(), 120, "{total:?}");
    assert!(
        fast_share >= 96,
        "least request should send most traffic to the fast endpoint: {total:?}"
    );
    assert!(
        total.get("slow").copied().unwrap_or(0) >= 1,
        "the slow endpoint still gets probed: {total:?}"
    );
}

#[tokio::test]
async fn consistent_hash_keeps_each_key_on_one_endpoint() {
    let a = instance("a", 200, Duration::ZERO).await;
    let b = instance("b", 200, Duration::ZERO).await;
    let c = instance("c", 200, Duration::ZERO).await;
    let config = gateway_config(&format!(
        "{}    load_balancing: {{ consistent_hash: {{ header: x-user }} }}",
        endpoints(&[(a.addr, 1), (b.addr, 1), (c.addr, 1)])
    ));
    let gateway = Gateway::start(&config);
    let client = client();
    assert_sticky(30, 4, 3, |user| {
        client
            .get(gateway.url("/"))
            .header("x-user", format!("user-{user}"))
    })
    .await;
}

/// Send `rounds` requests for each of `keys` keys; every key must stay on one endpoint, and
/// all keys together must reach every one of `endpoints` endpoints.
async fn assert_sticky<F>(keys: usize, rounds: usize, endpoints: usize, request: F)
where
    F: Fn(usize) -> reqwest::RequestBuilder,
{
    let mut used = std::collections::BTreeSet::new();
    for key in 0..keys {
        let mut instances = std::collections::BTreeSet::new();
        for _ in 0..rounds {
            let response = request(key).send().await.unwrap();
            instances.insert(
                response.headers()["x-demo-instance"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        assert_eq!(
            instances.len(),
            1,
            "key {key} moved between endpoints: {instances:?}"
        );
        used.extend(instances);
    }
    assert_eq!(
        used.len(),
        endpoints,
        "{keys} keys should reach every endpoint: {used:?}"
    );
}

#[tokio::test]
async fn health_checks_eject_and_restore_endpoints() {
    let a = instance("a", 200, Duration::ZERO).await;
    let b = instance("b", 200, Duration::ZERO).await;
    let config = gateway_config(&format!(
        "{}    health_check: {{ path: /health, interval: 100ms, timeout: 100ms, healthy_threshold: 2, unhealthy_threshold: 2 }}",
        endpoints(&[(a.addr, 1), (b.addr, 1)])
    ));
    let gateway = Gateway::start(&config);
    let client = client();
    assert_eq!(
        distribution(&client, &gateway.url("/"), 10).await,
        counts(&[("a", 5), ("b", 5)])
    );

    b.healthy.store(false, Ordering::SeqCst);
    wait_until(Duration::from_secs(5), || async {
        distribution(&client, &gateway.url("/"), 4).await == counts(&[("a", 4)])
    })
    .await;
    assert_eq!(
        distribution(&client, &gateway.url("/"), 10).await,
        counts(&[("a", 10)])
    );

    b.healthy.store(true, Ordering::SeqCst);
    wait_until(Duration::from_secs(5), || async {
        distribution(&client, &gateway.url("/"), 4)
            .await
            .contains_key("b")
    })
    .await;

    // With every endpoint unhealthy the gateway answers 503 itself.
    a.healthy.store(false, Ordering::SeqCst);
    b.healthy.store(false, Ordering::SeqCst);
    wait_until(Duration::from_secs(5), || async {
        client.get(gateway.url("/")).send().await.unwrap().status() == 503
    })
    .await;
    let problem: serde_json::Value = client
        .get(gateway.url("/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(problem["code"], "no_healthy_upstream");
}

async fn wait_until<F, Fut>(limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "condition not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_endpoint_and_lets_it_back() {
    let good = instance("good", 200, Duration::ZERO).await;
    let bad = instance("bad", 500, Duration::ZERO).await;
    let config = gateway_config(&format!(
        "{}    retries: {{ attempts: 0 }}\n    outlier_detection: {{ consecutive_failures: 3, base_ejection_time: 1s, max_ejection_time: 10s, max_ejection_percent: 50 }}",
        endpoints(&[(good.addr, 1), (bad.addr, 1)])
    ));
    let gateway = Gateway::start(&config);
    let client = client();
    // Round robin: the bad endpoint fails 3 times in the first 6 requests and is ejected.
    let first = distribution(&client, &gateway.url("/"), 6).await;
    assert_eq!(first, counts(&[("bad", 3), ("good", 3)]));
    let ejected_at = Instant::now();
    let during = distribution(&client, &gateway.url("/"), 10).await;
    assert_eq!(during, counts(&[("good", 10)]));
    assert_eq!(bad.requests.load(Ordering::SeqCst), 3);
    // After the ejection time it gets traffic again (and, still failing, is ejected for longer).
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(ejected_at.elapsed())).await;
    let after = distribution(&client, &gateway.url("/"), 6).await;
    assert!(
        after.contains_key("bad"),
        "ejection should have expired: {after:?}"
    );
}

#[tokio::test]
async fn idempotent_requests_are_retried_on_another_endpoint() {
    let good = instance("good", 200, Duration::ZERO).await;
    let bad = instance("bad", 503, Duration::ZERO).await;
    let config = gateway_config(&format!(
        "{}    retries: {{ attempts: 1, backoff: 1ms }}",
        endpoints(&[(good.addr, 1), (bad.addr, 1)])
    ));
    let gateway = Gateway::start(&config);
    let client = client();
    assert_eq!(
        distribution(&client, &gateway.url("/"), 20).await,
        counts(&[("good", 20)])
    );
    assert_eq!(
        bad.requests.load(Ordering::SeqCst),
        10,
        "every other first attempt hit the bad endpoint"
    );

    // POST is not idempotent: its 503 comes back to the client.
    let mut statuses = BTreeMap::new();
    for _ in 0..10 {
        let status = client
            .post(gateway.url("/"))
            .body("x")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert_eq!(statuses, BTreeMap::from([(200, 5), (503, 5)]));
}

#[tokio::test]
async fn connect_failures_are_retried_even_for_post() {
    let good = instance("good", 200, Duration::ZERO).await;
    let dead = common::closed_port();
    let config = gateway_config(&format!(
        "{}    retries: {{ attempts: 1, backoff: 1ms }}",
        endpoints(&[(good.addr, 1), (dead, 1)])
    ));
    let gateway = Gateway::start(&config);
    let client = client();
    for _ in 0..10 {
        let response = client
            .post(gateway.url("/"))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(good.requests.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn retry_budget_stops_retries_when_spent() {
    let good = instance("good", 200, Duration::ZERO).await;
    let bad = instance("bad", 503, Duration::ZERO).await;
    let config = gateway_config(&format!(
        "{}    retries: {{ attempts: 1, backoff: 1ms, budget_ratio: 0.0, budget_min_per_second: 0 }}",
        endpoints(&[(good.addr, 1), (bad.addr, 1)])
    ));
    let gateway = Gateway::start(&config);
    let seen = distribution(&client(), &gateway.url("/"), 20).await;
    assert_eq!(
        seen,
        counts(&[("good", 10), ("bad", 10)]),
        "no budget: no retries"
    );
}

#[tokio::test]
async fn request_timeout_answers_504() {
    let slow = instance("slow", 200, Duration::from_secs(3)).await;
    let config = gateway_config(&format!(
        "{}    retries: {{ attempts: 0 }}\n    timeouts: {{ request: 300ms }}",
        endpoints(&[(slow.addr, 1)])
    ));
    let gateway = Gateway::start(&config);
    let started = Instant::now();
    let response = client().get(gateway.url("/")).send().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 504);
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "upstream_timeout");
}

#[tokio::test]
async fn connect_timeout_and_refused_connections_answer_503() {
    // A listener whose accept queue is full: further connection attempts hang in SYN.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(0).unwrap();
    let full_addr = full.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(full_addr),
        )
        .await
        {
            fillers.push(stream);
        }
    }
    let config = format!(
        "listeners:\n  - name: public\n    listen: 127.0.0.1:0\nservices:\n  - name: hangs\n{}    retries: {{ attempts: 0 }}\n    timeouts: {{ connect: 300ms }}\n  - name: refused\n{}    retries: {{ attempts: 0 }}\nroutes:\n  - match: {{ path: {{ prefix: /hangs }} }}\n    service: hangs\n  - service: refused\n",
        endpoints(&[(full_addr, 1)]),
        endpoints(&[(common::closed_port(), 1)])
    );
    let gateway = Gateway::start(&config);
    let client = client();
    let started = Instant::now();
    let response = client.get(gateway.url("/hangs")).send().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "upstream_unavailable");

    let response = client.get(gateway.url("/refused")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    drop(fillers);
}

/// A streamed body goes with the first attempt; when that attempt cannot connect, the request
/// fails rather than being retried without its body.
#[tokio::test]
async fn streamed_bodies_are_never_replayed_empty() {
    let upstream = common::echo("echo-1").await;
    let dead = common::closed_port();
    let config = gateway_config(&format!(
        "{}    retries: {{ attempts: 1, backoff: 1ms }}",
        endpoints(&[(dead, 1), (upstream, 1)])
    ));
    let gateway = Gateway::start(&config);
    let mut statuses = BTreeMap::new();
    for _ in 0..6 {
        let chunks = futures_util::stream::iter(
            ["stream", "ed-", "body"].map(|c| Ok::<_, std::io::Error>(c.as_bytes().to_vec())),
        );
        // A fresh connection each time: the gateway closes a connection whose request body it
        // could not read, and a pooled client might otherwise pick that one up.
        let sent = common::client()
            .post(gateway.url("/echo"))
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await;
        // The 503 comes while the client may still be sending the body the failed attempt
        // dropped; the client can then see the connection close before the answer.
        let outcome = match sent {
            Ok(response) if response.status() == 200 => {
                let seen: serde_json::Value = response.json().await.unwrap();
                assert_eq!(seen["body"], "streamed-body", "a retry lost the body");
                "200"
            }
            Ok(response) if response.status() == 503 => "503 or closed",
            Ok(response) => panic!("unexpected status {}", response.status()),
            Err(_) => "503 or closed",
        };
        *statuses.entry(outcome).or_insert(0) += 1;
    }
    // Round robin alternates the dead and the live endpoint; nothing was retried.
    assert_eq!(statuses, BTreeMap::from([("200", 3), ("503 or closed", 3)]));
}

/// Cookie and path keys are sticky too; a request without the key is still served.
#[tokio::test]
async fn consistent_hash_on_cookie_and_path() {
    let a = instance("a", 200, Duration::ZERO).await;
    let b = instance("b", 200, Duration::ZERO).await;
    let c = instance("c", 200, Duration::ZERO).await;
    let all = endpoints(&[(a.addr, 1), (b.addr, 1), (c.addr, 1)]);
    let client = client();
    let by_cookie = Gateway::start(&gateway_config(&format!(
        "{all}    load_balancing: {{ consistent_hash: {{ cookie: session }} }}"
    )));
    assert_sticky(24, 3, 3, |key| {
        client
            .get(by_cookie.url("/"))
            .header("cookie", format!("theme=dark; session=s{key}"))
    })
    .await;
    let response = client.get(by_cookie.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200, "no cookie: round robin fallback");

    let by_path = Gateway::start(&gateway_config(&format!(
        "{all}    load_balancing: {{ consistent_hash: path }}"
    )));
    assert_sticky(24, 3, 3, |key| {
        client.get(by_path.url(&format!("/item/{key}")))
    })
    .await;
}

/// `on_status` decides which statuses are retried; `non_idempotent` extends retries to POST.
#[tokio::test]
async fn retry_statuses_and_non_idempotent_methods_follow_the_policy() {
    let good = instance("good", 200, Duration::ZERO).await;
    let teapot = instance("teapot", 418, Duration::ZERO).await;
    let config = gateway_config(&format!(
        "{}    retries: {{ attempts: 1, backoff: 1ms, on_status: [418], non_idempotent: true }}",
        endpoints(&[(good.addr, 1), (teapot.addr, 1)])
    ));
    let gateway = Gateway::start(&config);
    let client = client();
    for _ in 0..6 {
        let response = client
            .post(gateway.url("/"))
            .body("order")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "418 is retried, POST included");
    }
    assert_eq!(teapot.requests.load(Ordering::SeqCst), 3);
}

/// The client address (after trusted proxies) is a sticky key.
#[tokio::test]
async fn consistent_hash_on_client_ip_behind_a_trusted_proxy() {
    let a = instance("a", 200, Duration::ZERO).await;
    let b = instance("b", 200, Duration::ZERO).await;
    let c = instance("c", 200, Duration::ZERO).await;
    let config = gateway_config(&format!(
        "{}    load_balancing: {{ consistent_hash: client_ip }}",
        endpoints(&[(a.addr, 1), (b.addr, 1), (c.addr, 1)])
    ))
    .replace(
        "    listen: 127.0.0.1:0\n",
        "    listen: 127.0.0.1:0\n    trusted_proxies: [127.0.0.1]\n",
    );
    let gateway = Gateway::start(&config);
    let client = client();
    assert_sticky(24, 3, 3, |host| {
        client
            .get(gateway.url("/"))
            .header("x-forwarded-for", format!("198.51.100.{}", host + 1))
    })
    .await;
}
