//! The response cache against an upstream that counts its requests: hits and misses, the
//! Cache-Control directives of both sides, Expires, Vary, Age, per-consumer isolation,
//! revalidation with 304, coalescing of concurrent misses, the byte bound,
//! stale-while-revalidate, stale-if-error (upstream answering 503, and upstream gone),
//! every purge form of the admin API, and explain's view of the cache.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{admin_block, client, Gateway, ADMIN_TOKEN};
use futures_util::future::join_all;

const SECRET: &str = "test-api-key-secret-0123456789abcdef";

#[derive(Clone, Default)]
struct Counts(Arc<Mutex<HashMap<String, usize>>>);

impl Counts {
    fn bump(&self, key: &str) -> usize {
        let mut counts = self.0.lock().unwrap();
        let count = counts.entry(key.to_owned()).or_default();
        *count += 1;
        *count
    }
    fn get(&self, key: &str) -> usize {
        self.0.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

/// `/{case}`: each case answers with the caching headers it is named after; the body
/// says how many times the upstream was asked.
async fn origin(
    State(counts): State<Counts>,
    Path(case): Path<String>,
    headers: HeaderMap,
) -> Response {
    let n = counts.bump(&case);
    let body = format!("{case} #{n}");
    let with = |cache_control: &'static str| {
        let mut response = body.clone().into_response();
        response
            .headers_mut()
            .insert("cache-control", HeaderValue::from_static(cache_control));
        response
    };
    match case.as_str() {
        "max-age" => with("max-age=60"),
        "s-maxage" => with("max-age=0, s-maxage=60"),
        "no-store" => with("no-store, max-age=60"),
        "private" => with("private, max-age=60"),
        "plain" => body.into_response(),
        "expires" => {
            let mut response = body.into_response();
            let date = std::time::SystemTime::now();
            let headers = response.headers_mut();
            headers.insert("date", httpdate(date).parse().unwrap());
            headers.insert(
                "expires",
                httpdate(date + Duration::from_secs(60)).parse().unwrap(),
            );
            response
        }
        "expired" => {
            let mut response = body.into_response();
            response
                .headers_mut()
                .insert("expires", HeaderValue::from_static("0"));
            response
        }
        "vary" => {
            let language = headers
                .get("accept-language")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            let mut response = with("max-age=60");
            *response.body_mut() = format!("{body} {language}").into();
            response
                .headers_mut()
                .insert("vary", HeaderValue::from_static("Accept-Language"));
            response
        }
        "whoami" => {
            let consumer = headers
                .get("x-consumer-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("anonymous")
                .to_owned();
            let mut response = with("max-age=60");
            *response.body_mut() = format!("{body} {consumer}").into();
            response
        }
        "set-cookie" => {
            let mut response = with("max-age=60");
            response
                .headers_mut()
                .insert("set-cookie", HeaderValue::from_static("session=1"));
            response
        }
        "vary-star" => {
            let mut response = with("max-age=60");
            response
                .headers_mut()
                .insert("vary", HeaderValue::from_static("*"));
            response
        }
        "huge" => {
            let mut response = with("max-age=60");
            *response.body_mut() = vec![b'h'; 32 << 10].into();
            response
        }
        "lastmod" => {
            // Revalidated by date: 304 when the client's copy is from that date.
            const MODIFIED: &str = "Sun, 29 Nov 2026 10:00:00 GMT";
            if headers
                .get("if-modified-since")
                .is_some_and(|v| v == MODIFIED)
            {
                counts.bump("lastmod-304");
                return StatusCode::NOT_MODIFIED.into_response();
            }
            let mut response = with("no-cache");
            response
                .headers_mut()
                .insert("last-modified", HeaderValue::from_static(MODIFIED));
            response
        }
        "etag" => {
            // Always revalidated (no-cache) and answered 304 when the tag matches.
            if headers.get("if-none-match").is_some_and(|v| v == "\"e1\"") {
                counts.bump("etag-304");
                let mut response = StatusCode::NOT_MODIFIED.into_response();
                response
                    .headers_mut()
                    .insert("etag", HeaderValue::from_static("\"e1\""));
                response
                    .headers_mut()
                    .insert("cache-control", HeaderValue::from_static("no-cache"));
                return response;
            }
            let mut response = with("no-cache");
            response
                .headers_mut()
                .insert("etag", HeaderValue::from_static("\"e1\""));
            response
        }
        "swr" => with("max-age=1, stale-while-revalidate=60"),
        "short" => with("max-age=1"),
        "public" => with("public, max-age=60"),
        "flaky" | "strict" if counts.get("fail") > 0 => {
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
        "flaky" => with("max-age=1, stale-if-error=60"),
        "strict" => with("max-age=1, stale-if-error=60, must-revalidate"),
        "tagged-a" | "tagged-b" => {
            let mut response = with("max-age=60");
            let tags = if case == "tagged-a" {
                "product-1 list"
            } else {
                "product-2, list"
            };
            response
                .headers_mut()
                .insert("surrogate-key", HeaderValue::from_static(tags));
            response
        }
        "slow" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            with("max-age=60")
        }
        big if big.starts_with("big") => {
            let mut response = with("max-age=600");
            *response.body_mut() = vec![b'x'; 8 << 10].into();
            response
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn httpdate(time: std::time::SystemTime) -> String {
    // RFC 9110 IMF-fixdate, formatted by hand to keep the test free of a date crate.
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let days = secs / 86_400;
    let (h, m, s) = ((secs % 86_400) / 3600, (secs % 3600) / 60, secs % 60);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {h:02}:{m:02}:{s:02} GMT",
        months[(month - 1) as usize]
    )
}

struct Fixture {
    gateway: Gateway,
    counts: Counts,
    alice_key: String,
    bob_key: String,
    /// Stops the `fragile` upstream: its port refuses connections afterwards.
    stop_fragile: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The origin on its own port, closing each connection after its response (nothing stays
/// pooled), until `stop` fires.
async fn stoppable_origin(
    counts: Counts,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let router = axum::Router::new()
        .route("/{case}", axum::routing::get(origin))
        .with_state(counts)
        .layer(axum::middleware::map_response(
            |mut response: Response| async move {
                response
                    .headers_mut()
                    .insert("connection", HeaderValue::from_static("close"));
                response
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (addr, stop)
}

/// The gateway in front of the counting origin: `/private-api/*` needs an API key,
/// `/defaulted/*` stores header-less responses for 30 s, everything else is cached by the
/// upstream's headers with only `page` of the query in the key.
async fn start(cache: &str) -> Fixture {
    let counts = Counts::default();
    let router = axum::Router::new()
        .route("/{case}", axum::routing::get(origin))
        .with_state(counts.clone());
    let upstream = common::upstream(router).await;
    let (fragile, stop_fragile) = stoppable_origin(counts.clone()).await;
    let (alice_key, alice) = common::generate_api_key(SECRET, &[]);
    let (bob_key, bob) = common::generate_api_key(SECRET, &[]);
    let yaml = format!(
        r#"{admin}listeners:
  - name: public
    listen: 127.0.0.1:0
services:
  - name: origin
    endpoints: [{{ address: "{upstream}" }}]
  - name: fragile
    endpoints: [{{ address: "{fragile}" }}]
authentication:
  api_key_secret: "{SECRET}"
  methods:
    keys: {{ api_key: {{ header: x-api-key }} }}
consumers:
  - id: alice
    api_keys:
{alice}  - id: bob
    api_keys:
{bob}{cache}routes:
  - name: private-api
    match: {{ path: {{ prefix: /private-api }} }}
    service: origin
    rewrite: {{ strip_prefix: true }}
    auth: {{ methods: [keys] }}
    cache: {{}}
  - name: defaulted
    match: {{ path: {{ prefix: /defaulted }} }}
    service: origin
    rewrite: {{ strip_prefix: true }}
    cache: {{ ttl: 30s }}
  - name: windows
    match: {{ path: {{ prefix: /windows }} }}
    service: origin
    rewrite: {{ strip_prefix: true }}
    cache: {{ ttl: 1s, stale_while_revalidate: 30s, stale_if_error: 30s }}
  - name: shared
    match: {{ path: {{ prefix: /shared }} }}
    service: origin
    rewrite: {{ strip_prefix: true }}
    cache: {{ shared: true }}
  - name: fragile
    match: {{ path: {{ prefix: /fragile }} }}
    service: fragile
    rewrite: {{ strip_prefix: true }}
    cache: {{ stale_if_error: 60s }}
  - name: cached
    match: {{ path: {{ prefix: / }} }}
    service: origin
    cache: {{ key_query: [page] }}
"#,
        admin = admin_block()
    );
    Fixture {
        gateway: Gateway::start(&yaml),
        counts,
        alice_key,
        bob_key,
        stop_fragile: Some(stop_fragile),
    }
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn get(gateway: &Gateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = client().get(gateway.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

#[tokio::test]
async fn freshness_comes_from_the_upstream_headers_or_the_route_ttl() {
    let f = start("").await;
    let g = &f.gateway;
    // max-age: the second request is a hit, with the same body and an Age.
    let first = get(g, "/max-age", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, "max-age #1");
    assert_eq!(first.cache_status(), "gatehouse; fwd=miss; stored");
    let second = get(g, "/max-age", &[]).await;
    assert_eq!(second.body, "max-age #1");
    assert_eq!(second.cache_status(), "gatehouse; hit");
    assert!(second.headers.contains_key("age"));
    assert_eq!(f.counts.get("max-age"), 1);
    // HEAD is answered from the stored GET.
    let head = client().head(g.url("/max-age")).send().await.unwrap();
    assert_eq!(head.headers()["cache-status"], "gatehouse; hit");
    assert_eq!(f.counts.get("max-age"), 1);

    // s-maxage wins over max-age=0 in a shared cache; Expires counts when there is no
    // Cache-Control freshness.
    for case in ["s-maxage", "expires"] {
        get(g, &format!("/{case}"), &[]).await;
        let again = get(g, &format!("/{case}"), &[]).await;
        assert_eq!(again.body, format!("{case} #1"), "{case}");
        assert_eq!(f.counts.get(case), 1, "{case}");
    }
    // Never stored: no-store, private, an invalid Expires, and no headers on a route
    // without ttl.
    for case in ["no-store", "private", "expired", "plain"] {
        get(g, &format!("/{case}"), &[]).await;
        // Past the one-second hit-for-pass window: each request goes upstream.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let again = get(g, &format!("/{case}"), &[]).await;
        assert_eq!(again.body, format!("{case} #2"), "{case}");
        assert_eq!(again.cache_status(), "gatehouse; fwd=miss", "{case}");
    }
    // The route's ttl stores a header-less response.
    get(g, "/defaulted/plain", &[]).await;
    let defaulted = get(g, "/defaulted/plain", &[]).await;
    assert_eq!(defaulted.cache_status(), "gatehouse; hit");
    assert_eq!(f.counts.get("plain"), 3);
}

#[tokio::test]
async fn client_directives_and_key_choices() {
    let f = start("").await;
    let g = &f.gateway;
    get(g, "/max-age?page=1&tracking=a", &[]).await;
    // Only `page` is in the key: another tracking value is a hit, another page a miss.
    let same = get(g, "/max-age?tracking=b&page=1", &[]).await;
    assert_eq!(same.cache_status(), "gatehouse; hit");
    let other = get(g, "/max-age?page=2", &[]).await;
    assert_eq!(other.cache_status(), "gatehouse; fwd=miss; stored");
    assert_eq!(f.counts.get("max-age"), 2);
    // Client no-cache: fetched anew and stored; no-store: not touched at all.
    let refreshed = get(g, "/max-age?page=1", &[("cache-control", "no-cache")]).await;
    assert_eq!(refreshed.cache_status(), "gatehouse; fwd=request");
    assert_eq!(refreshed.body, "max-age #3");
    let after = get(g, "/max-age?page=1", &[]).await;
    assert_eq!(after.body, "max-age #3", "the refreshed answer was stored");
    let bypass = get(g, "/max-age?page=1", &[("cache-control", "no-store")]).await;
    assert_eq!(bypass.cache_status(), "gatehouse; fwd=bypass");
    assert_eq!(f.counts.get("max-age"), 4);
    // A HEAD miss is fetched as a GET and stored: the GET after it is a hit.
    let head = client()
        .head(g.url("/max-age?page=9"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.headers()["cache-status"],
        "gatehouse; fwd=miss; stored"
    );
    let after_head = get(g, "/max-age?page=9", &[]).await;
    assert_eq!(after_head.cache_status(), "gatehouse; hit");
    assert_eq!(after_head.body, "max-age #5");
    // Other methods pass by the cache.
    let post = client().post(g.url("/max-age")).send().await.unwrap();
    assert_eq!(post.headers()["cache-status"], "gatehouse; fwd=bypass");
}

#[tokio::test]
async fn vary_keeps_one_entry_per_header_value() {
    let f = start("").await;
    let g = &f.gateway;
    let en = get(g, "/vary", &[("accept-language", "en")]).await;
    let fr = get(g, "/vary", &[("accept-language", "fr")]).await;
    assert_eq!(en.body, "vary #1 en");
    assert_eq!(fr.body, "vary #2 fr");
    let en_again = get(g, "/vary", &[("accept-language", "en")]).await;
    let fr_again = get(g, "/vary", &[("accept-language", "fr")]).await;
    assert_eq!(en_again.body, "vary #1 en");
    assert_eq!(fr_again.body, "vary #2 fr");
    assert_eq!(en_again.cache_status(), "gatehouse; hit");
    assert_eq!(f.counts.get("vary"), 2);
}

#[tokio::test]
async fn consumers_never_see_each_others_entries() {
    let f = start("").await;
    let g = &f.gateway;
    let alice = get(g, "/private-api/whoami", &[("x-api-key", &f.alice_key)]).await;
    let bob = get(g, "/private-api/whoami", &[("x-api-key", &f.bob_key)]).await;
    assert_eq!(alice.body, "whoami #1 alice");
    assert_eq!(bob.body, "whoami #2 bob");
    let alice_again = get(g, "/private-api/whoami", &[("x-api-key", &f.alice_key)]).await;
    let bob_again = get(g, "/private-api/whoami", &[("x-api-key", &f.bob_key)]).await;
    assert_eq!(alice_again.body, "whoami #1 alice");
    assert_eq!(bob_again.body, "whoami #2 bob");
    assert_eq!(alice_again.cache_status(), "gatehouse; hit");
    // Authentication still runs before the cache: no key, no answer.
    let anonymous = get(g, "/private-api/whoami", &[]).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(f.counts.get("whoami"), 2);
}

#[tokio::test]
async fn revalidation_with_304_and_client_conditionals() {
    let f = start("").await;
    let g = &f.gateway;
    let first = get(g, "/etag", &[]).await;
    assert_eq!(first.body, "etag #1");
    assert_eq!(first.cache_status(), "gatehouse; fwd=miss; stored");
    // no-cache with an ETag: stored, revalidated each time; the upstream's 304 lets the
    // stored body be served.
    let second = get(g, "/etag", &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body, "etag #1");
    assert_eq!(
        second.cache_status(),
        "gatehouse; fwd=stale; fwd-status=304"
    );
    assert_eq!(f.counts.get("etag-304"), 1);
    // The client's own If-None-Match gets a 304 from the gateway.
    let conditional = get(g, "/etag", &[("if-none-match", "\"e1\"")]).await;
    assert_eq!(conditional.status, 304);
    assert_eq!(conditional.body, "");
    let fresh_conditional = get(g, "/max-age", &[]).await;
    assert_eq!(fresh_conditional.status, 200);
}

#[tokio::test]
async fn concurrent_misses_make_one_upstream_request() {
    let f = start("").await;
    let g = &f.gateway;
    let url = g.url("/slow");
    let client = client();
    let requests = (0..100).map(|_| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.text().await.unwrap()
        }
    });
    let bodies = join_all(requests).await;
    assert!(bodies.iter().all(|b| b == "slow #1"), "{bodies:?}");
    assert_eq!(
        f.counts.get("slow"),
        1,
        "100 concurrent misses, one upstream request"
    );
}

#[tokio::test]
async fn the_byte_bound_is_respected_and_reported() {
    // 64 KiB of cache, 8 KiB bodies: at most about seven fit.
    let f = start("cache:\n  max_size: 64KiB\n  max_object_size: 16KiB\n").await;
    let g = &f.gateway;
    for n in 0..40 {
        let answer = get(g, &format!("/big{n}"), &[]).await;
        assert_eq!(answer.body.len(), 8 << 10);
    }
    let metrics = g.metrics().await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    let bytes = value("gatehouse_cache_bytes");
    assert!(bytes > 0.0 && bytes <= 65536.0, "cache holds {bytes} bytes");
    let entries = value("gatehouse_cache_entries");
    assert!((1.0..=8.0).contains(&entries), "{entries} entries");
    assert_eq!(
        value(r#"gatehouse_cache_lookups_total{route="cached",result="miss"}"#),
        40.0
    );
}

#[tokio::test]
async fn what_is_never_stored_and_what_bypasses() {
    let f = start("cache:\n  max_object_size: 16KiB\n").await;
    let g = &f.gateway;
    // Set-Cookie, Vary: *, and a body above max_object_size (passed through whole).
    for case in ["set-cookie", "vary-star", "huge"] {
        let first = get(g, &format!("/{case}"), &[]).await;
        assert_eq!(first.cache_status(), "gatehouse; fwd=miss", "{case}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        get(g, &format!("/{case}"), &[]).await;
        assert_eq!(f.counts.get(case), 2, "{case}");
    }
    assert_eq!(get(g, "/huge", &[]).await.body.len(), 32 << 10);
    // Pragma: no-cache from an HTTP/1.0 client asks for a fresh answer; Range bypasses.
    get(g, "/max-age", &[]).await;
    let pragma = get(g, "/max-age", &[("pragma", "no-cache")]).await;
    assert_eq!(pragma.cache_status(), "gatehouse; fwd=request");
    let range = get(g, "/max-age", &[("range", "bytes=0-3")]).await;
    assert_eq!(range.cache_status(), "gatehouse; fwd=bypass");
    assert_eq!(f.counts.get("max-age"), 3);
}

#[tokio::test]
async fn revalidation_by_last_modified_and_entries_survive_a_reload() {
    let f = start("").await;
    let g = &f.gateway;
    get(g, "/lastmod", &[]).await;
    let revalidated = get(g, "/lastmod", &[]).await;
    assert_eq!(revalidated.body, "lastmod #1");
    assert_eq!(
        revalidated.cache_status(),
        "gatehouse; fwd=stale; fwd-status=304"
    );
    assert_eq!(f.counts.get("lastmod-304"), 1);

    get(g, "/max-age", &[]).await;
    // SIGHUP recompiles the configuration; the cache's memory is kept while `cache` is
    // unchanged.
    g.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let config = g.admin_json("/admin/config").await;
    assert_eq!(config["version"], 2, "SIGHUP applied a new version");
    let after_reload = get(g, "/max-age", &[]).await;
    assert_eq!(after_reload.cache_status(), "gatehouse; hit");
    assert_eq!(f.counts.get("max-age"), 1);
}

/// Ask for `path` until the background revalidation has stored `body` (bounded: 2 s).
async fn until_stored(gateway: &Gateway, path: &str, body: &str) -> Answer {
    for _ in 0..100 {
        let answer = get(gateway, path, &[]).await;
        if answer.body == body {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{path} never answered {body:?}");
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_in_the_background() {
    let f = start("").await;
    let g = &f.gateway;
    assert_eq!(get(g, "/swr", &[]).await.body, "swr #1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Stale within the window: the stored answer at once, one background revalidation
    // however many requests see it stale.
    // (Requests arriving after the background answer came back are plain hits on it.)
    let answers = join_all((0..10).map(|_| get(g, "/swr", &[]))).await;
    let mut served_stale = 0;
    for answer in &answers {
        assert_eq!(answer.status, 200);
        match answer.cache_status() {
            "gatehouse; hit; detail=stale-while-revalidate" => {
                assert_eq!(answer.body, "swr #1");
                served_stale += 1;
            }
            "gatehouse; hit" => assert_eq!(answer.body, "swr #2"),
            other => panic!("unexpected Cache-Status {other}"),
        }
    }
    assert!(served_stale >= 1, "the first request found the entry stale");
    let refreshed = until_stored(g, "/swr", "swr #2").await;
    assert_eq!(refreshed.cache_status(), "gatehouse; hit");
    assert_eq!(f.counts.get("swr"), 2, "one background revalidation");

    // The route's own window for an upstream that sends no caching headers.
    assert_eq!(get(g, "/windows/plain", &[]).await.body, "plain #1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = get(g, "/windows/plain", &[]).await;
    assert_eq!(stale.body, "plain #1");
    assert_eq!(
        stale.cache_status(),
        "gatehouse; hit; detail=stale-while-revalidate"
    );
    until_stored(g, "/windows/plain", "plain #2").await;
    assert_eq!(f.counts.get("plain"), 2);
}

#[tokio::test]
async fn stale_if_error_covers_a_failing_or_vanished_upstream() {
    let mut f = start("").await;
    let g = &f.gateway;
    assert_eq!(get(g, "/flaky", &[]).await.body, "flaky #1");
    assert_eq!(get(g, "/strict", &[]).await.body, "strict #1");
    f.counts.bump("fail");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The upstream answers 503: the stale entry is served instead, and kept.
    for _ in 0..2 {
        let answer = get(g, "/flaky", &[]).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "flaky #1");
        assert_eq!(
            answer.cache_status(),
            "gatehouse; fwd=stale; fwd-status=503; detail=stale-if-error"
        );
    }
    // Each stale request asked the upstream: the first fetch, then two tries (the default
    // retry policy resends a 503 once) for each of the two requests.
    assert_eq!(f.counts.get("flaky"), 5);
    // must-revalidate forbids serving stale: the client sees the 503.
    let strict = get(g, "/strict", &[]).await;
    assert_eq!(strict.status, 503);

    // The upstream goes away entirely (connections refused); the route's own window
    // covers a response that names none.
    assert_eq!(get(g, "/fragile/short", &[]).await.body, "short #1");
    f.stop_fragile.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let down = get(g, "/fragile/short", &[]).await;
    assert_eq!(down.status, 200);
    assert_eq!(down.body, "short #1");
    assert_eq!(
        down.cache_status(),
        "gatehouse; fwd=stale; detail=stale-if-error"
    );
    // Nothing stored for this one: the client sees the failure.
    let missing = get(g, "/fragile/max-age", &[]).await;
    assert!(missing.status >= 502, "got {}", missing.status);
}

async fn purge(gateway: &Gateway, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response = client()
        .post(gateway.admin_url("/admin/cache/purge"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn purge_by_url_route_prefix_tag_and_all() {
    let f = start("").await;
    let g = &f.gateway;
    let hit = |answer: &Answer| answer.cache_status() == "gatehouse; hit";
    // By URL: the query as the route keys it (`page` only), every Vary variant.
    get(g, "/max-age?page=2&utm=x", &[]).await;
    assert!(hit(&get(g, "/max-age?page=2", &[]).await));
    let url = g.url("/max-age?utm=y&page=2");
    assert_eq!(
        purge(g, serde_json::json!({ "url": url })).await,
        (200, serde_json::json!({ "purged": 1 }))
    );
    assert!(!hit(&get(g, "/max-age?page=2", &[]).await));
    assert_eq!(f.counts.get("max-age"), 2);
    get(g, "/vary", &[("accept-language", "fr")]).await;
    get(g, "/vary", &[("accept-language", "de")]).await;
    let (status, purged) = purge(g, serde_json::json!({ "url": g.url("/vary") })).await;
    assert_eq!(
        (status, purged["purged"].as_u64()),
        (200, Some(3)),
        "marker and two variants"
    );
    assert!(!hit(&get(g, "/vary", &[("accept-language", "fr")]).await));

    // By route: only that route's entries go.
    get(g, "/defaulted/plain", &[]).await;
    assert!(hit(&get(g, "/defaulted/plain", &[]).await));
    let (status, _) = purge(g, serde_json::json!({ "route": "defaulted" })).await;
    assert_eq!(status, 200);
    assert!(!hit(&get(g, "/defaulted/plain", &[]).await));
    assert!(hit(&get(g, "/max-age?page=2", &[]).await));

    // By prefix, on one host or any.
    get(g, "/big1", &[]).await;
    get(g, "/big2", &[]).await;
    let (_, other_host) = purge(
        g,
        serde_json::json!({ "prefix": "/big", "host": "example.com" }),
    )
    .await;
    assert_eq!(other_host["purged"], 0);
    let (_, purged) = purge(
        g,
        serde_json::json!({ "prefix": "/big", "host": "127.0.0.1" }),
    )
    .await;
    assert_eq!(purged["purged"], 2);
    assert!(!hit(&get(g, "/big1", &[]).await));

    // By tag: the upstream's Surrogate-Key, which clients never see.
    let a = get(g, "/tagged-a", &[]).await;
    assert!(!a.headers.contains_key("surrogate-key"));
    get(g, "/tagged-b", &[]).await;
    let (_, purged) = purge(g, serde_json::json!({ "tag": "product-1" })).await;
    assert_eq!(purged["purged"], 1);
    assert!(!hit(&get(g, "/tagged-a", &[]).await));
    assert!(hit(&get(g, "/tagged-b", &[]).await));
    let (_, purged) = purge(g, serde_json::json!({ "tag": "list" })).await;
    assert_eq!(purged["purged"], 2);
    assert_eq!(f.counts.get("tagged-a"), 2);
    get(g, "/tagged-b", &[]).await;
    assert_eq!(f.counts.get("tagged-b"), 2);

    // Everything.
    let (_, purged) = purge(g, serde_json::json!({ "all": true })).await;
    assert!(purged["purged"].as_u64().unwrap() >= 5, "{purged}");
    assert!(!hit(&get(g, "/max-age?page=2", &[]).await));

    // Bad requests are refused, and the token is required.
    let (status, problem) = purge(g, serde_json::json!({ "route": "cached", "tag": "x" })).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, _) = purge(g, serde_json::json!({ "route": "nope" })).await;
    assert_eq!(status, 404);
    let (status, _) = purge(g, serde_json::json!({ "prefix": "big" })).await;
    assert_eq!(status, 400);
    let (status, _) = purge(g, serde_json::json!({ "host": "127.0.0.1" })).await;
    assert_eq!(status, 400);
    let anonymous = client()
        .post(g.admin_url("/admin/cache/purge"))
        .json(&serde_json::json!({ "all": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn explain_reports_what_the_cache_holds() {
    let f = start("").await;
    let g = &f.gateway;
    let explain = || async {
        let report: serde_json::Value = client()
            .post(g.admin_url("/admin/explain"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({ "url": g.url("/max-age?page=3&x=1") }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let cache = report["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["policy"] == "cache")
            .cloned()
            .unwrap_or_else(|| panic!("no cache step in {report}"));
        (cache, report["outcome"].as_str().unwrap().to_owned())
    };
    let (before, outcome) = explain().await;
    assert_eq!(before["state"], "absent");
    assert_eq!(before["key"], "cached\n127.0.0.1/max-age&page=3");
    assert_eq!(outcome, "the action runs");
    get(g, "/max-age?page=3", &[]).await;
    let (after, outcome) = explain().await;
    assert_eq!(after["state"], "fresh");
    assert!(outcome.starts_with("answered from the cache"), "{outcome}");
    assert_eq!(f.counts.get("max-age"), 1, "explain sent nothing upstream");
    // A method the cache does not take.
    let report: serde_json::Value = client()
        .post(g.admin_url("/admin/explain"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "method": "POST", "url": g.url("/max-age") }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let step = report["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == "cache")
        .unwrap();
    assert!(step["decision"].as_str().unwrap().starts_with("bypass"));
}

#[tokio::test]
async fn a_shared_route_stores_answers_to_authorized_requests_only_when_the_upstream_allows() {
    let f = start("").await;
    let g = &f.gateway;
    let bearer = [("authorization", "Bearer opaque-token")];
    // RFC 9111 section 3.5: `max-age` alone does not let a shared cache store an answer
    // to a request with Authorization the gateway did not turn into a consumer key.
    for _ in 0..2 {
        let answer = get(g, "/shared/max-age", &bearer).await;
        assert_eq!(answer.cache_status(), "gatehouse; fwd=miss");
    }
    assert_eq!(f.counts.get("max-age"), 2);
    // `public` does.
    get(g, "/shared/public", &bearer).await;
    let again = get(g, "/shared/public", &bearer).await;
    assert_eq!(again.cache_status(), "gatehouse; hit");
    assert_eq!(f.counts.get("public"), 1);
}
