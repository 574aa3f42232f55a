//! Hot reload under traffic and graceful shutdown.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{admin_block, client, echo, write, Gateway, ADMIN_TOKEN};

fn config(echo_addr: std::net::SocketAddr, generation: usize) -> String {
    format!(
        r#"{admin}listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: echo
    endpoints: [{{ address: "{echo_addr}" }}]
routes:
  - name: version
    match: {{ path: {{ exact: /version }} }}
    respond: {{ body: "v{generation}" }}
  - name: generation-{generation}
    match: {{ path: {{ prefix: /gen/{generation} }} }}
    respond: {{ body: "route of generation {generation}" }}
  - name: stable
    match: {{ path: {{ prefix: /stable }} }}
    rewrite: {{ strip_prefix: true }}
    service: echo
"#,
        admin = admin_block()
    )
}

/// Clients keep sending (keep-alive and fresh connections) while the configuration is
/// reloaded 24 times through the file watcher, SIGHUP and the admin API, a quarter of
/// them invalid. No request may fail, and the routes in force must be the last valid ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_traffic_lose_no_requests() {
    let upstream = echo("echo-1").await;
    let gateway = Gateway::start(&config(upstream, 0));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for fresh_connections in [false, true] {
        let stop = stop.clone();
        let sent = sent.clone();
        let failures = failures.clone();
        let url = gateway.url("/stable/ping");
        load.push(tokio::spawn(async move {
            let keep_alive = client();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let request = if fresh_connections {
                    client().get(&url).header("connection", "close")
                } else {
                    keep_alive.get(&url)
                };
                match request.send().await {
                    Ok(response) if response.status() == 200 => {
                        if response.text().await.is_err() {
                            failures.lock().unwrap().push("body cut short".into());
                        }
                    }
                    Ok(response) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", response.status())),
                    Err(err) => failures.lock().unwrap().push(format!("error {err}")),
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let http = client();
    let mut last_valid = 0;
    for generation in 1..=24 {
        let invalid = generation % 4 == 3;
        let mut text = config(upstream, generation);
        if invalid {
            text = text.replace("service: echo", "service: ecoh");
        }
        match generation % 3 {
            0 => write(&gateway.config_path, &text),
            1 => {
                write(&gateway.config_path, &text);
                gateway.signal("HUP");
            }
            _ => {
                let response = http
                    .post(gateway.admin_url("/admin/config"))
                    .bearer_auth(ADMIN_TOKEN)
                    .body(text)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    response.status(),
                    if invalid { 400 } else { 200 },
                    "generation {generation}"
                );
            }
        }
        if !invalid {
            last_valid = generation;
        }
        let expected = format!("v{last_valid}");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let body = http
                .get(gateway.url("/version"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if body == expected
                && (!invalid || Instant::now() > deadline - Duration::from_millis(4500))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "generation {generation}: serving {body}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let total = sent.load(Ordering::Relaxed);
    assert!(
        total > 100,
        "the clients should have sent plenty of requests, sent {total}"
    );
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );

    // Routes in force are exactly those of the last valid configuration.
    let response = http
        .get(gateway.url(&format!("/gen/{last_valid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = http
        .get(gateway.url(&format!("/gen/{}", last_valid - 1)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(
        gateway.stderr().contains("ecoh"),
        "rejected reloads are logged with the problem"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let upstream = echo("echo-1").await;
    let mut gateway = Gateway::start(
        &config(upstream, 0).replace("routes:", "shutdown:\n  drain_timeout: 10s\nroutes:"),
    );
    let url = gateway.url("/stable/delay/1500");
    let addr = gateway.addr();
    let in_flight = tokio::spawn(async move {
        let started = Instant::now();
        let response = client().get(url).send().await;
        (response.map(|r| r.status().as_u16()), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Not accepting any more.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener should be closed after SIGTERM"
    );
    let (status, elapsed) = in_flight.await.unwrap();
    assert_eq!(status.unwrap(), 200, "the in-flight request must complete");
    assert!(elapsed >= Duration::from_millis(1500));
    let exit = gateway
        .wait_exit(Duration::from_secs(5))
        .expect("gateway exits after draining");
    assert!(exit.success(), "{exit:?}");
}
