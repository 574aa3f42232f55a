//! Route matching cost with 10,000 routes (issue target: under 1 µs per match).
//! Run: `cargo bench -p gatehouse-proxy --bench route_match`.

use criterion::{criterion_group, criterion_main, Criterion};
use gatehouse_proxy::router::{RequestView, Router};
use http::{HeaderMap, Method};
use std::hint::black_box;

fn config(routes: usize, kind: &str) -> gatehouse_config::Config {
    let mut yaml = String::from("routes:\n");
    for i in 0..routes {
        let path = match kind {
            "template" => format!("{{ template: \"/api/v1/resource{i}/{{id}}/items/{{item}}\" }}"),
            _ => format!("{{ prefix: /svc{i}/api }}"),
        };
        yaml.push_str(&format!(
            "  - match: {{ path: {path} }}\n    respond: {{ body: r{i} }}\n"
        ));
    }
    gatehouse_config::parse_str(&yaml, "bench").expect("valid bench config")
}

fn bench(c: &mut Criterion) {
    let headers = HeaderMap::new();
    for kind in ["template", "prefix"] {
        let config = config(10_000, kind);
        let router: Router<usize> =
            Router::compile(&config.routes, |index, _| Ok(index)).expect("router");
        let path = match kind {
            "template" => "/api/v1/resource7777/42/items/abc",
            _ => "/svc7777/api/users/42/orders",
        };
        let view = RequestView {
            host: "api.example.com",
            method: &Method::GET,
            path,
            query: None,
            headers: &headers,
            listener: Some("public"),
        };
        assert_eq!(router.find(&view).map(|m| m.route.payload), Some(7777));
        c.bench_function(&format!("match 10k {kind} routes"), |b| {
            b.iter(|| black_box(router.find(black_box(&view))).map(|m| m.route.payload))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
