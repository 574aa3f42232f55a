//! Bodies stream through the gateway in both directions: a 1 GiB upload and a 1 GiB download
//! pass while the gateway's memory stays flat.

mod common;

use std::time::Instant;

use common::{client, echo, Gateway};
use futures_util::StreamExt;

const GIB: u64 = 1 << 30;
const CHUNK: usize = 256 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gibibyte_each_way_with_flat_memory() {
    let upstream = echo("echo-1").await;
    let gateway = Gateway::start(&format!(
        "listeners:\n  - name: public\n    listen: 127.0.0.1:0\n    limits: {{ max_request_body: 0 }}\nservices:\n  - name: echo\n    endpoints: [{{ address: \"{upstream}\" }}]\nroutes:\n  - service: echo\n"
    ));
    let client = client();
    // Warm up pools and allocator so the baseline includes steady-state buffers.
    let warm = client
        .get(gateway.url("/bytes/1048576"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(warm.len(), 1 << 20);
    let baseline_kib = gateway.rss_kib();

    let started = Instant::now();
    let chunk = bytes::Bytes::from(vec![7u8; CHUNK]);
    let chunks = (GIB as usize) / CHUNK;
    let upload = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let response = client
        .post(gateway.url("/sink"))
        .body(reqwest::Body::wrap_stream(upload))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        GIB.to_string(),
        "the upstream received every byte"
    );
    let upload_time = started.elapsed();

    let started = Instant::now();
    let response = client
        .get(gateway.url(&format!("/bytes/{GIB}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut received: u64 = 0;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        received += chunk.unwrap().len() as u64;
    }
    assert_eq!(received, GIB);
    let download_time = started.elapsed();

    let peak_kib = gateway.peak_rss_kib();
    eprintln!(
        "baseline RSS {baseline_kib} KiB, peak {peak_kib} KiB; upload {upload_time:?}, download {download_time:?}"
    );
    // 2 GiB went through; buffering even a small fraction of it would show here.
    assert!(
        peak_kib < baseline_kib + 32 * 1024,
        "gateway memory grew from {baseline_kib} KiB to a peak of {peak_kib} KiB"
    );
}
