//! Cost of a local rate-limit decision (issue target: well under a microsecond): key from
//! the consumer, GCRA on a sharded map, RateLimit headers built. Two cases: one limit, and
//! a policy of two limits (10/s and 5000/h).
//! Run: `cargo bench -p gatehouse-policy --bench rate_limit`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, Criterion};
use gatehouse_policy::{LimitRequest, RateLimits};
use http::HeaderMap;

/// Local decisions never wait: one poll completes them.
fn run_ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a local decision must not wait"),
    }
}

fn bench(c: &mut Criterion) {
    let yaml = r#"rate_limits:
  one:
    limits:
      - { requests: 1000000000, per: 1s }
  two:
    limits:
      - { requests: 1000000000, per: 1s }
      - { requests: 1000000000, per: 1h, algorithm: sliding_window }
"#;
    let config = gatehouse_config::parse_str(yaml, "bench").expect("valid bench config");
    let limits = RateLimits::compile(&config, None).expect("limits");
    let headers = HeaderMap::new();
    for name in ["one", "two"] {
        let limiter = limits.get(name).expect("policy");
        let request = LimitRequest {
            identity: None,
            client_ip: [203, 0, 113, 7].into(),
            route: "orders",
            headers: &headers,
        };
        assert!(run_ready(limiter.check(&request)).is_ok());
        c.bench_function(&format!("rate_limit/local_{name}"), |b| {
            b.iter(|| run_ready(black_box(&limiter).check(black_box(&request))).is_ok())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
