//! What the mesh adds to a call: a control plane and two sidecars (the caller's outbound port,
//! mTLS, the callee's inbound listener) in front of a minimal HTTP server, against calling
//! that server directly, at a fixed request rate (open loop: latency counts from when a
//! request was due, so a stall is not hidden by sending less). Also the callee sidecar's
//! memory, idle and after the load.
//!
//! When `haproxy` is on the PATH (`../shared/bench/setup.sh` installs it), a third path
//! gives the bar on the same machine in the same run: two single-threaded HAProxy processes
//! doing the same job (HTTP in on the caller's side, mutual TLS between them with
//! certificates from the same kind of CA, HTTP out to the same server).
//!
//! `cargo bench -p gatehouse --bench mesh_latency` (release build of the real binary).
//! Settings: MESH_BENCH_RATE (requests/s, default 2000), MESH_BENCH_SECONDS (per run,
//! default 5), MESH_BENCH_ROUNDS (default 3), MESH_BENCH_CONNECTIONS (default 16),
//! MESH_BENCH_PEER (`haproxy`, the default when it is installed, or `none`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The binary under test: `MESH_BENCH_GATEHOUSE` when set, else the one `cargo bench` built.
/// `cargo bench` builds it with the dev-dependencies' features, so its symbols are not those
/// `crates/gatehouse/code-order.txt` names; pass a copy of `cargo build --release`'s binary to
/// measure memory as users run it.
fn gatehouse_binary() -> std::ffi::OsString {
    std::env::var_os("MESH_BENCH_GATEHOUSE")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_gatehouse").into())
}

struct Process {
    child: Child,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// `gatehouse <args>`, waiting for its ready line.
fn start(args: &[&str], yaml: Option<&str>, env: &[(&str, String)]) -> Process {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(gatehouse_binary());
    command.args(args);
    if let Some(yaml) = yaml {
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).expect("config");
        command.arg("-c").arg(path);
    }
    let mut child = command
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("GATEHOUSE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start gatehouse");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("gatehouse: ready") => break,
            Some(Ok(_)) => {}
            _ => panic!("gatehouse {args:?} exited before it was ready"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Process {
        child,
        _dir: Some(dir),
    }
}

/// Two HAProxy processes (one thread each, as the sidecars run) standing in for the two
/// sidecars: the caller's plain HTTP in on `outbound`, mutual TLS to the callee's process,
/// which verifies the client certificate against the same CA and forwards to `application`.
/// Returns the processes and the caller's address, or `None` when HAProxy is not installed.
fn haproxy_pair(application: SocketAddr) -> Option<(Vec<Process>, SocketAddr)> {
    let peer = std::env::var("MESH_BENCH_PEER").unwrap_or_else(|_| "haproxy".to_owned());
    if peer == "none" {
        return None;
    }
    assert_eq!(peer, "haproxy", "MESH_BENCH_PEER is `haproxy` or `none`");
    if Command::new("haproxy").arg("-v").output().is_err() {
        println!("mesh_latency: haproxy not found; run ../shared/bench/setup.sh for the peer pair");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (authority, ca_pem, _) =
        gatehouse_mesh::ca::Authority::generate("bench.local").expect("CA");
    let write_identity = |service: &str| {
        let id = gatehouse_mesh::SpiffeId::new("bench.local", "default", service);
        let (issued, key) = authority
            .issue_server(
                &id,
                &[format!("{service}.bench.local")],
                Duration::from_secs(3600),
            )
            .expect("certificate");
        let mut pem: String = issued
            .chain
            .iter()
            .map(|der| gatehouse_mesh::ca::pem_certificate(der))
            .collect();
        pem.push_str(&key.serialize_pem());
        let path = dir.path().join(format!("{service}.pem"));
        std::fs::write(&path, pem).expect("certificate file");
        path
    };
    let (client_pem, server_pem) = (write_identity("client"), write_identity("server"));
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).expect("CA file");
    let (outbound, inbound) = (free_port(), free_port());
    // As the peer benchmark's HAProxy: idle connections to the next hop are reused by any
    // request, as the sidecars' pools do.
    let common = "global\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  timeout http-keep-alive 300s\n  http-reuse always\n";
    let client_config = format!(
        "{common}frontend outbound\n  bind 127.0.0.1:{outbound}\n  default_backend server\nbackend server\n  server server 127.0.0.1:{inbound} ssl verify required ca-file {} crt {} sni str(server.bench.local) verifyhost server.bench.local\n",
        ca.display(),
        client_pem.display()
    );
    let server_config = format!(
        "{common}frontend inbound\n  bind 127.0.0.1:{inbound} ssl crt {} ca-file {} verify required\n  default_backend application\nbackend application\n  server application {application}\n",
        server_pem.display(),
        ca.display()
    );
    let mut processes = Vec::new();
    for (name, config) in [("server", server_config), ("client", client_config)] {
        let path = dir.path().join(format!("haproxy-{name}.cfg"));
        std::fs::write(&path, config).expect("haproxy config");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start haproxy");
        processes.push(Process { child, _dir: None });
    }
    processes[0]._dir = Some(dir);
    Some((processes, SocketAddr::from(([127, 0, 0, 1], outbound))))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A 100-byte answer to everything, as the peer benchmark's backend gives.
async fn backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(&[b'x'; 100]),
                    )))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// Open-loop load at `rate` over `connections` keep-alive connections for `seconds`:
/// latencies in microseconds, each from the moment its request was due (which includes
/// the timer's lateness, up to a millisecond, alike for both paths), and from the moment it
/// was sent.
async fn measure(
    target: SocketAddr,
    rate: u64,
    connections: u64,
    seconds: u64,
) -> (Vec<u64>, Vec<u64>) {
    let interval = Duration::from_secs_f64(connections as f64 / rate as f64);
    let per_connection = rate * seconds / connections;
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for index in 0..connections {
        // Connections take turns: together they send one request every 1/rate seconds.
        let offset = Duration::from_secs_f64(index as f64 / rate as f64);
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(target)
                .await
                .expect("connect");
            let _ = tcp.set_nodelay(true);
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .expect("handshake");
            tokio::spawn(connection);
            let mut latencies = Vec::with_capacity(per_connection as usize);
            let mut service_times = Vec::with_capacity(per_connection as usize);
            for n in 0..per_connection {
                let due = start + offset + interval * n as u32;
                tokio::time::sleep_until(due.into()).await;
                let request = hyper::Request::get("/")
                    .header("host", "backend")
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                let sent = Instant::now();
                let response = sender.send_request(request).await.expect("response");
                assert!(response.status().is_success(), "{}", response.status());
                response.into_body().collect().await.expect("body");
                latencies.push(due.elapsed().as_micros() as u64);
                service_times.push(sent.elapsed().as_micros() as u64);
            }
            (latencies, service_times)
        }));
    }
    let (mut all, mut service) = (Vec::new(), Vec::new());
    for task in tasks {
        let (latencies, service_times) = task.await.expect("load task");
        all.extend(latencies);
        service.extend(service_times);
    }
    all.sort_unstable();
    service.sort_unstable();
    (all, service)
}

async fn status_of(target: SocketAddr) -> Option<u16> {
    let tcp = tokio::net::TcpStream::connect(target).await.ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(connection);
    let request = hyper::Request::get("/")
        .header("host", "backend")
        .body(Empty::<Bytes>::new())
        .ok()?;
    Some(sender.send_request(request).await.ok()?.status().as_u16())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rate = setting("MESH_BENCH_RATE", 2000);
    let seconds = setting("MESH_BENCH_SECONDS", 5);
    let rounds = setting("MESH_BENCH_ROUNDS", 3);
    let connections = setting("MESH_BENCH_CONNECTIONS", 16);
    let backend = backend().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let control_port = free_port();
    let anchors = dir.path().join("ca.pem");
    let store = dir.path().join("control.db");
    let control_yaml = format!(
        "store:\n  url: sqlite:{}\ncontrol:\n  listen: 127.0.0.1:{control_port}\n  trust_anchors_out: {}\n",
        store.display(),
        anchors.display()
    );
    let control = start(&["control"], Some(&control_yaml), &[]);
    let control_config = dir.path().join("control.yaml");
    std::fs::write(&control_config, &control_yaml).expect("control config");
    let token = |service: &str| {
        let output = Command::new(gatehouse_binary())
            .args(["control", "-c"])
            .arg(&control_config)
            .args(["token", "--service", service])
            .output()
            .expect("token");
        String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    };
    let sidecar = |service: &str, inbound: u16, application: SocketAddr, outbound: Option<u16>| {
        let mut yaml = format!(
            "mesh:\n  control: 127.0.0.1:{control_port}\n  trust_anchors: {}\n  service: {service}\n  join_token: ${{JOIN_TOKEN}}\nsidecar:\n  inbound:\n    listen: 127.0.0.1:{inbound}\n    application: {application}\n",
            anchors.display()
        );
        if let Some(port) = outbound {
            yaml.push_str(&format!(
                "  outbound:\n    - {{ listen: 127.0.0.1:{port}, service: server }}\n"
            ));
        }
        start(
            &["sidecar", "--threads", "1"],
            Some(&yaml),
            &[("JOIN_TOKEN", token(service))],
        )
    };
    let server = sidecar("server", free_port(), backend, None);
    let outbound = free_port();
    let client = sidecar("client", free_port(), backend, Some(outbound));
    let via_mesh = SocketAddr::from(([127, 0, 0, 1], outbound));
    // The registration reaches the client's sidecar with the next snapshot.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_of(via_mesh).await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the mesh path never answered 200"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peer = haproxy_pair(backend);
    let mut paths = vec![("direct", backend), ("two sidecars", via_mesh)];
    if let Some((_, address)) = &peer {
        let deadline = Instant::now() + Duration::from_secs(10);
        while status_of(*address).await != Some(200) {
            assert!(
                Instant::now() < deadline,
                "the HAProxy pair never answered 200"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        paths.push(("two HAProxy (mTLS)", *address));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = server.status_kib("VmRSS:");

    println!(
        "mesh_latency: {rate} req/s, {connections} connections, {seconds} s per run, {rounds} rounds (interleaved)"
    );
    println!(
        "| round | path | p50 µs | p99 µs | p99.9 µs | max µs | sent→answered p50 µs | p99 µs |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    // Per path: (p50, p99) from due, and from sent.
    let mut runs: Vec<Vec<[u64; 4]>> = vec![Vec::new(); paths.len()];
    for round in 1..=rounds {
        for (index, (name, target)) in paths.iter().enumerate() {
            let (latencies, service) = measure(*target, rate, connections, seconds).await;
            let row = [
                percentile(&latencies, 0.50),
                percentile(&latencies, 0.99),
                percentile(&service, 0.50),
                percentile(&service, 0.99),
            ];
            println!(
                "| {round} | {name} | {} | {} | {} | {} | {} | {} |",
                row[0],
                row[1],
                percentile(&latencies, 0.999),
                latencies.last().copied().unwrap_or(0),
                row[2],
                row[3]
            );
            runs[index].push(row);
        }
    }
    // The median over rounds of (path − direct) in the same round.
    let added = |path: usize, column: usize| {
        let mut differences: Vec<i64> = runs[0]
            .iter()
            .zip(&runs[path])
            .map(|(direct, proxied)| proxied[column] as i64 - direct[column] as i64)
            .collect();
        differences.sort_unstable();
        differences[differences.len() / 2]
    };
    for (index, (name, _)) in paths.iter().enumerate().skip(1) {
        println!(
            "added by {name} (median of per-round differences): from due p50 {} µs, p99 {} µs; from sent p50 {} µs, p99 {} µs",
            added(index, 0),
            added(index, 1),
            added(index, 2),
            added(index, 3)
        );
    }
    println!(
        "server sidecar RSS: idle {} KiB, after load {} KiB, peak {} KiB; client sidecar peak {} KiB",
        idle_rss,
        server.status_kib("VmRSS:"),
        server.status_kib("VmHWM:"),
        client.status_kib("VmHWM:"),
    );
    if let Some((processes, _)) = &peer {
        println!(
            "HAProxy pair peak RSS: server side {} KiB, client side {} KiB",
            processes[0].status_kib("VmHWM:"),
            processes[1].status_kib("VmHWM:")
        );
    }
    drop((client, server, control, peer));
}
