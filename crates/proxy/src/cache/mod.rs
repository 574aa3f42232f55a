//! The response cache (RFC 9111, as a shared cache): which requests may be answered from
//! it, the key, freshness from the upstream's `Cache-Control`/`Expires` (or the route's
//! `ttl`), `Vary`, `Age`, validators and revalidation, request coalescing, serving stale
//! entries while revalidating or when the upstream fails (RFC 5861), purging, and the
//! `Cache-Status` header (RFC 9211). Entries live in memory under a byte bound
//! (quick_cache: weighted, eviction by recency and frequency).
//!
//! A key is `route \n host path [query] [\nv=api-version] [\nb=split-backend] [\n@consumer]
//! [\nheader:values]...`:
//! purging by route, URL or path prefix reads those parts back.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use gatehouse_config::{CacheConfig, HumanDuration, RouteCacheConfig};
use gatehouse_policy::redis::RedisLink;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use quick_cache::sync::{Cache, DefaultLifecycle, PlaceholderGuard};
use quick_cache::{DefaultHashBuilder, Weighter};

use crate::body::{self, ProxyBody};

mod fleet;
pub use fleet::{follow_purges, Fleet};

/// The `Cache-Status` header of RFC 9211.
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// How long a key whose response could not be stored is remembered, so requests that
/// waited on it (and those right behind) go upstream at once instead of one by one.
const PASS_FOR: Duration = Duration::from_secs(1);

/// Statuses a response may be stored with (RFC 9110 section 15.1: heuristically cacheable).
const CACHEABLE_STATUS: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// What a key holds.
pub enum Entry {
    /// Responses for this URL vary by these request headers; each variant is stored
    /// under the key extended with their values.
    Vary(Vec<HeaderName>),
    Response(Arc<Stored>),
    /// The last response could not be stored (hit-for-pass).
    Pass {
        until: Instant,
    },
}

/// A stored response.
pub struct Stored {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// When it was received, and the `Age` it arrived with.
    received: Instant,
    initial_age: Duration,
    /// How long it is fresh for (zero: revalidate every time).
    fresh_for: Duration,
    /// How long past `fresh_for` it may be served while a background request revalidates
    /// it, and how long when the upstream fails.
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    /// Tags from the upstream's tag header, for purging by tag.
    tags: Box<[String]>,
    /// A background revalidation is under way (one per entry at a time).
    revalidating: AtomicBool,
    /// Bytes it holds, for the cache's bound.
    weight: u64,
}

impl Stored {
    fn age(&self) -> Duration {
        self.initial_age + self.received.elapsed()
    }

    fn is_fresh(&self) -> bool {
        self.age() < self.fresh_for
    }

    /// Stale, but within its `stale-while-revalidate` window.
    pub fn may_serve_while_revalidating(&self) -> bool {
        self.age() < self.fresh_for + self.stale_while_revalidate
    }

    /// Stale, but within its `stale-if-error` window.
    pub fn may_serve_on_error(&self) -> bool {
        self.age() < self.fresh_for + self.stale_if_error
    }

    /// Claim the entry's background revalidation; false when one is already running.
    pub fn begin_revalidation(&self) -> bool {
        !self.revalidating.swap(true, Ordering::AcqRel)
    }

    /// Let a later request revalidate again (the last attempt failed).
    pub fn end_revalidation(&self) {
        self.revalidating.store(false, Ordering::Release);
    }

    fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(header::ETAG)
    }
}

/// Weighs entries by the bytes they hold.
#[derive(Clone)]
pub struct EntryWeight;

impl Weighter<String, Arc<Entry>> for EntryWeight {
    fn weight(&self, key: &String, entry: &Arc<Entry>) -> u64 {
        let value = match &**entry {
            Entry::Response(stored) => stored.weight,
            Entry::Vary(names) => names.len() as u64 * 32,
            Entry::Pass { .. } => 16,
        };
        key.len() as u64 + value + 64
    }
}

type Store = Cache<String, Arc<Entry>, EntryWeight>;
/// The right to fill a key that others may be waiting on (request coalescing).
pub type Guard<'a> = PlaceholderGuard<
    'a,
    String,
    Arc<Entry>,
    EntryWeight,
    DefaultHashBuilder,
    DefaultLifecycle<String, Arc<Entry>>,
>;

/// The cache's memory, shared by every caching route of a snapshot and kept across reloads
/// while `cache` is unchanged.
pub struct ResponseCache {
    store: Store,
    max_object: u64,
    config: CacheConfig,
    /// The entries shared with the fleet through Redis (`cache.redis`).
    fleet: Option<Arc<Fleet>>,
}

impl ResponseCache {
    /// `redis`: the fleet's Redis, used when `cache.redis` is on.
    pub fn new(config: &CacheConfig, redis: Option<&Arc<RedisLink>>) -> Arc<Self> {
        let max_size = config.max_size.0.max(1);
        Arc::new(Self {
            // quick_cache sizes its tables from an item estimate: one per 4 KiB.
            store: Cache::with_weighter((max_size / 4096).max(16) as usize, max_size, EntryWeight),
            max_object: config.max_object_size.0,
            config: config.clone(),
            fleet: redis
                .filter(|_| config.redis)
                .map(|link| Arc::new(Fleet::new(link.clone(), &config.redis_prefix))),
        })
    }

    /// Whether this cache's memory can serve a new configuration as it is.
    pub fn same_config(&self, config: &CacheConfig, redis: Option<&Arc<RedisLink>>) -> bool {
        let fleet_link = |link: Option<&Arc<RedisLink>>| {
            link.filter(|_| config.redis).map(|l| l.fingerprint.clone())
        };
        self.config.max_size == config.max_size
            && self.config.max_object_size == config.max_object_size
            && self.config.redis_prefix == config.redis_prefix
            && self.fleet.as_ref().map(|f| f.link_fingerprint()) == fleet_link(redis)
    }

    /// The fleet tier, when the cache is shared through Redis.
    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// Bytes held now.
    pub fn weight(&self) -> u64 {
        self.store.weight()
    }

    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.len() == 0
    }

    /// Remove the entries `purge` selects (the `Vary` markers and variants of a URL
    /// included); returns how many keys were removed. Visits every entry: an operator's
    /// action, not a request path.
    pub fn purge(&self, purge: &Purge) -> usize {
        let removed = Cell::new(0usize);
        self.store.retain(|key, entry| {
            let selected = match purge {
                Purge::Tag(tag) => match &**entry {
                    Entry::Response(stored) => stored.tags.iter().any(|t| t == tag),
                    _ => false,
                },
                by_key => by_key.selects_key(key),
            };
            if selected {
                removed.set(removed.get() + 1);
            }
            !selected
        });
        removed.get()
    }
}

/// Which entries to purge (sent to the fleet's other gateways as JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purge {
    All,
    /// Everything a route stored.
    Route(String),
    /// One URL: (route, the URL part of that route's key) for each caching route that
    /// could have stored it.
    Urls(Vec<(String, String)>),
    /// Paths starting with `prefix`, on one host or any.
    Prefix {
        host: Option<String>,
        prefix: String,
    },
    /// Responses tagged so by the upstream.
    Tag(String),
}

impl Purge {
    /// Whether a key is selected by the key's own parts (everything but `Tag`).
    fn selects_key(&self, key: &str) -> bool {
        let (route, url) = key_parts(key);
        match self {
            Purge::All => true,
            Purge::Route(name) => route == name,
            Purge::Urls(urls) => urls.iter().any(|(r, u)| r == route && u == url),
            Purge::Prefix { host, prefix } => {
                let (entry_host, path) = url.split_at(url.find('/').unwrap_or(url.len()));
                host.as_ref()
                    .is_none_or(|h| h.eq_ignore_ascii_case(entry_host))
                    && path.starts_with(prefix.as_str())
            }
            Purge::Tag(_) => false,
        }
    }
}

/// (route, URL part) of a key.
fn key_parts(key: &str) -> (&str, &str) {
    let (route, rest) = key.split_once('\n').unwrap_or((key, ""));
    let url = rest.split('\n').next().unwrap_or("");
    (route, url)
}

/// One route's view of the cache.
pub struct RouteCache {
    cache: Arc<ResponseCache>,
    config: RouteCacheConfig,
    /// Starts every key of this route.
    route: String,
    key_headers: Vec<HeaderName>,
    tag_header: Option<HeaderName>,
}

/// What the key of a request is made of.
#[derive(Clone, Copy)]
pub struct CacheRequest<'a> {
    pub method: &'a Method,
    pub host: &'a str,
    /// Normalized.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The authenticated consumer (unless the route's cache is `shared`).
    pub consumer: Option<&'a str>,
    /// The API version the backend speaks, on a versioned route.
    pub version: Option<&'a str>,
    /// The service a traffic split drew: each backend of a split keeps its own entries, so
    /// a canary's answers are not served to the stable share (nor the other way round).
    pub backend: Option<&'a str>,
}

/// A request the cache may answer, with its key.
pub struct Lookup {
    key: String,
    head: bool,
    /// `Cache-Control: no-cache` (or `Pragma: no-cache`) from the client: go upstream,
    /// store the answer.
    refresh: bool,
    if_none_match: Option<HeaderValue>,
    /// `key` already names a variant (a `Vary` marker was followed).
    variant: bool,
}

/// What `explain` reports the cache holds for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peeked {
    Fresh,
    StaleWhileRevalidate,
    Stale,
    /// Known uncacheable for now (hit-for-pass).
    Pass,
    Absent,
}

impl Peeked {
    pub fn label(self) -> &'static str {
        match self {
            Peeked::Fresh => "fresh",
            Peeked::StaleWhileRevalidate => "stale_while_revalidate",
            Peeked::Stale => "stale",
            Peeked::Pass => "pass",
            Peeked::Absent => "absent",
        }
    }
}

impl Lookup {
    /// The key looked up first (a `Vary` marker may extend it).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The client asked for a fresh answer.
    pub fn is_refresh(&self) -> bool {
        self.refresh
    }
}

/// What the cache holds for a request.
pub enum Found<'a> {
    Fresh(Arc<Stored>),
    /// Stale (or must be revalidated): ask the upstream, conditionally when it has a
    /// validator.
    Stale(Arc<Stored>),
    /// Nothing: go upstream; with a guard, others wait for this request's answer.
    Miss(Option<Guard<'a>>),
    /// Known uncacheable: go upstream, store nothing.
    Pass,
}

/// How the cache took part in an answer: the `Cache-Status` parameters and the metrics'
/// `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss {
        stored: bool,
    },
    /// A stale entry checked with the upstream: 304 (the entry served, refreshed), or a new
    /// response (stored or not).
    Revalidated {
        not_modified: bool,
        stored: bool,
    },
    /// The client asked for a fresh answer (`no-cache`).
    Refresh,
    /// A stale entry served at once while a background request revalidates it.
    StaleWhileRevalidate,
    /// A stale entry served because the upstream failed.
    StaleIfError,
    /// The request may not use the cache (method, `no-store`, range).
    Bypass,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss { .. } => "miss",
            Outcome::Revalidated { .. } => "revalidated",
            Outcome::Refresh => "refresh",
            Outcome::StaleWhileRevalidate => "stale_while_revalidate",
            Outcome::StaleIfError => "stale_if_error",
            Outcome::Bypass => "bypass",
        }
    }

    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Outcome::Hit => "gatehouse; hit",
            Outcome::Miss { stored: true } => "gatehouse; fwd=miss; stored",
            Outcome::Miss { stored: false } => "gatehouse; fwd=miss",
            Outcome::Revalidated {
                not_modified: true, ..
            } => "gatehouse; fwd=stale; fwd-status=304",
            Outcome::Revalidated { stored: true, .. } => "gatehouse; fwd=stale; stored",
            Outcome::Revalidated { stored: false, .. } => "gatehouse; fwd=stale",
            Outcome::Refresh => "gatehouse; fwd=request",
            Outcome::StaleWhileRevalidate => "gatehouse; hit; detail=stale-while-revalidate",
            Outcome::StaleIfError => "gatehouse; fwd=stale; detail=stale-if-error",
            Outcome::Bypass => "gatehouse; fwd=bypass",
        })
    }
}

/// The directives of a `Cache-Control` header that matter here.
#[derive(Debug, Default, PartialEq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut directives = Self::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for directive in text.split(',') {
                let (name, argument) = match directive.split_once('=') {
                    Some((name, argument)) => {
                        (name.trim(), Some(argument.trim().trim_matches('"')))
                    }
                    None => (directive.trim(), None),
                };
                let seconds = || argument.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => directives.no_store = true,
                    // `no-cache="field"` only restricts those fields; treated as a whole.
                    "no-cache" => directives.no_cache = true,
                    "private" => directives.private = true,
                    "public" => directives.public = true,
                    "must-revalidate" | "proxy-revalidate" => directives.must_revalidate = true,
                    "max-age" => directives.max_age = seconds().or(Some(0)),
                    "s-maxage" => directives.s_maxage = seconds().or(Some(0)),
                    "stale-while-revalidate" => directives.stale_while_revalidate = seconds(),
                    "stale-if-error" => directives.stale_if_error = seconds(),
                    _ => {}
                }
            }
        }
        directives
    }
}

impl RouteCache {
    /// `route` names the route (its entries are purged by it); `tag_header` is the
    /// configured `cache.tag_header`.
    pub fn new(
        cache: Arc<ResponseCache>,
        config: &RouteCacheConfig,
        route: &str,
        tag_header: &str,
    ) -> Self {
        Self {
            cache,
            key_headers: config
                .key_headers
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .collect(),
            route: route.to_owned(),
            tag_header: HeaderName::from_bytes(tag_header.as_bytes()).ok(),
            config: config.clone(),
        }
    }

    /// The route these entries belong to.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The URL part of this route's keys: host, path, and the query (whole, or the
    /// configured parameters in their order).
    pub fn url_key(&self, host: &str, path: &str, query: Option<&str>) -> String {
        let mut key = String::with_capacity(16 + host.len() + path.len());
        self.push_url(&mut key, host, path, query);
        key
    }

    fn push_url(&self, key: &mut String, host: &str, path: &str, query: Option<&str>) {
        key.push_str(host);
        key.push_str(path);
        match (&self.config.key_query, query) {
            (None, Some(query)) => {
                key.push('?');
                key.push_str(query);
            }
            (Some(names), Some(query)) => {
                for name in names {
                    for (found, value) in form_urlencoded::parse(query.as_bytes()) {
                        if found == name.as_str() {
                            key.push('&');
                            key.push_str(name);
                            key.push('=');
                            key.push_str(&value);
                        }
                    }
                }
            }
            (_, None) => {}
        }
    }

    /// The lookup for a request, or `None` when it must not use the cache.
    pub fn lookup(&self, request: &CacheRequest<'_>) -> Option<Lookup> {
        let CacheRequest {
            method,
            host,
            path,
            query,
            headers,
            consumer,
            version,
            backend,
        } = *request;
        let head = *method == Method::HEAD;
        if !(head || *method == Method::GET)
            || headers.contains_key(header::RANGE)
            || headers.contains_key(header::UPGRADE)
        {
            return None;
        }
        let directives = CacheControl::parse(headers);
        if directives.no_store {
            return None;
        }
        let pragma_no_cache = headers
            .get(header::PRAGMA)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"));
        let mut key = String::with_capacity(64 + self.route.len() + path.len());
        key.push_str(&self.route);
        key.push('\n');
        self.push_url(&mut key, host, path, query);
        if let Some(version) = version {
            key.push_str("\nv=");
            key.push_str(version);
        }
        if let Some(backend) = backend {
            key.push_str("\nb=");
            key.push_str(backend);
        }
        if let (false, Some(consumer)) = (self.config.shared, consumer) {
            key.push_str("\n@");
            key.push_str(consumer);
        }
        for name in &self.key_headers {
            push_header(&mut key, headers, name);
        }
        Some(Lookup {
            key,
            head,
            refresh: directives.no_cache || directives.max_age == Some(0) || pragma_no_cache,
            if_none_match: headers.get(header::IF_NONE_MATCH).cloned(),
            variant: false,
        })
    }

    /// What the cache holds for `lookup`; a miss may come with the guard of the key.
    pub async fn find(&self, lookup: &mut Lookup, headers: &HeaderMap) -> Found<'_> {
        if lookup.refresh {
            return Found::Miss(None);
        }
        // At most two steps: a `Vary` marker, then the variant.
        for _ in 0..2 {
            let entry = match self.cache.store.get_value_or_guard_async(&lookup.key).await {
                Ok(entry) => entry,
                Err(guard) => {
                    // Not in memory: another gateway of the fleet may have it. Whoever waits
                    // on the key is served from what is found.
                    let shared = match &self.cache.fleet {
                        Some(fleet) => fleet.get(&lookup.key).await,
                        None => None,
                    };
                    match shared {
                        Some(entry) => {
                            let _ = guard.insert(entry.clone());
                            entry
                        }
                        None => return Found::Miss(Some(guard)),
                    }
                }
            };
            match &*entry {
                Entry::Vary(names) => {
                    let mut key = std::mem::take(&mut lookup.key);
                    for name in names {
                        push_header(&mut key, headers, name);
                    }
                    lookup.key = key;
                    lookup.variant = true;
                }
                Entry::Response(stored) if stored.is_fresh() => {
                    return Found::Fresh(stored.clone())
                }
                Entry::Response(stored) => return Found::Stale(stored.clone()),
                Entry::Pass { until } if Instant::now() < *until => return Found::Pass,
                Entry::Pass { .. } => {
                    self.cache.store.remove(&lookup.key);
                    return Found::Miss(None);
                }
            }
        }
        Found::Miss(None)
    }

    /// The answer from a stored entry: `304` when the client's `If-None-Match` matches.
    pub fn serve(&self, stored: &Stored, lookup: &Lookup, outcome: Outcome) -> Response<ProxyBody> {
        let not_modified = lookup
            .if_none_match
            .as_ref()
            .zip(stored.etag())
            .is_some_and(|(wanted, etag)| etag_matches(wanted, etag));
        let body = if lookup.head || not_modified {
            body::empty()
        } else {
            body::full(stored.body.clone())
        };
        let mut response = Response::new(body);
        *response.status_mut() = if not_modified {
            StatusCode::NOT_MODIFIED
        } else {
            stored.status
        };
        *response.headers_mut() = stored.headers.clone();
        if not_modified {
            response.headers_mut().remove(header::CONTENT_LENGTH);
        }
        response
            .headers_mut()
            .insert(header::AGE, HeaderValue::from(stored.age().as_secs()));
        response
            .headers_mut()
            .insert(CACHE_STATUS.clone(), outcome.header());
        response
    }

    /// Headers to revalidate a stale entry with.
    pub fn conditional_headers(stored: &Stored, headers: &mut HeaderMap) {
        if let Some(etag) = stored.etag() {
            headers.insert(header::IF_NONE_MATCH, etag.clone());
        } else if let Some(modified) = stored.headers.get(header::LAST_MODIFIED) {
            headers.insert(header::IF_MODIFIED_SINCE, modified.clone());
        }
    }

    /// Take the upstream's answer to a miss or a revalidation: store it when it may be,
    /// wake whoever waited on the key, and answer the client.
    pub async fn complete(
        &self,
        mut lookup: Lookup,
        guard: Option<Guard<'_>>,
        stale: Option<Arc<Stored>>,
        request_headers: &HeaderMap,
        mut response: Response<ProxyBody>,
    ) -> (Response<ProxyBody>, Outcome) {
        let revalidating = stale.is_some();
        let tags = self.take_tags(response.headers_mut());
        // 304 to our conditional request: the stored response is still good.
        if let (Some(stored), StatusCode::NOT_MODIFIED) = (&stale, response.status()) {
            let refreshed = Arc::new(self.refresh(stored, response.headers()));
            let outcome = Outcome::Revalidated {
                not_modified: true,
                stored: true,
            };
            self.fill(
                &lookup.key,
                guard,
                Arc::new(Entry::Response(refreshed.clone())),
            );
            return (self.serve(&refreshed, &lookup, outcome), outcome);
        }
        let Some(fresh_for) = self.storable(request_headers, &response) else {
            self.pass(&lookup, guard);
            let outcome = fetched(&lookup, revalidating, false);
            return (with_status(response, outcome), outcome);
        };
        let (parts, body) = response.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.cache.max_object) {
            self.pass(&lookup, guard);
            let outcome = fetched(&lookup, revalidating, false);
            return (
                with_status(Response::from_parts(parts, body), outcome),
                outcome,
            );
        }
        let (bytes, rest) = body::read_prefix(body, self.cache.max_object as usize).await;
        let body_bytes = bytes.clone();
        if let Some(rest) = rest {
            // Too large (or broken) to store: the client gets what was read, then the rest.
            self.pass(&lookup, guard);
            let outcome = fetched(&lookup, revalidating, false);
            let response = Response::from_parts(parts, body::prefixed(bytes, rest));
            return (with_status(response, outcome), outcome);
        }
        let vary = vary_names(&parts.headers);
        if vary.iter().any(|name| name == "*") {
            self.pass(&lookup, guard);
            let outcome = fetched(&lookup, revalidating, false);
            return (
                with_status(Response::from_parts(parts, body::full(bytes)), outcome),
                outcome,
            );
        }
        let initial_age = parts
            .headers
            .get(header::AGE)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .map_or(Duration::ZERO, Duration::from_secs);
        let mut headers = parts.headers.clone();
        headers.remove(header::AGE);
        let weight = weigh(bytes.len(), &tags, &headers);
        let (stale_while_revalidate, stale_if_error) =
            self.stale_windows(&CacheControl::parse(&headers));
        let stored = Arc::new(Stored {
            status: parts.status,
            headers,
            body: body_bytes,
            received: Instant::now(),
            initial_age,
            fresh_for,
            stale_while_revalidate,
            stale_if_error,
            tags,
            revalidating: AtomicBool::new(false),
            weight,
        });
        let entry = Arc::new(Entry::Response(stored.clone()));
        let names: Vec<HeaderName> = vary
            .iter()
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        if names.is_empty() || lookup.variant {
            self.fill(&lookup.key, guard, entry);
        } else {
            // The key so far names the URL: it gets the Vary marker, the variant its own key.
            self.fill(&lookup.key, guard, Arc::new(Entry::Vary(names.clone())));
            for name in &names {
                push_header(&mut lookup.key, request_headers, name);
            }
            if let Some(fleet) = &self.cache.fleet {
                fleet.put(&lookup.key, &entry);
            }
            self.cache.store.insert(lookup.key.clone(), entry);
        }
        let outcome = fetched(&lookup, revalidating, true);
        // Answered like a hit: HEAD, the client's If-None-Match and Age handled alike.
        (self.serve(&stored, &lookup, outcome), outcome)
    }

    /// The tags of a response (its tag header, split on spaces and commas); the header is
    /// not passed on to the client.
    fn take_tags(&self, headers: &mut HeaderMap) -> Box<[String]> {
        let Some(name) = &self.tag_header else {
            return Box::default();
        };
        let mut tags = Vec::new();
        for value in headers.get_all(name) {
            if let Ok(text) = value.to_str() {
                tags.extend(
                    text.split([' ', ','])
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned),
                );
            }
        }
        headers.remove(name);
        tags.into_boxed_slice()
    }

    /// A response to a key known to be uncacheable.
    pub fn passed(&self, mut response: Response<ProxyBody>) -> Response<ProxyBody> {
        self.take_tags(response.headers_mut());
        with_status(response, Outcome::Miss { stored: false })
    }

    /// A response that bypassed the cache.
    pub fn bypassed(&self, mut response: Response<ProxyBody>) -> Response<ProxyBody> {
        self.take_tags(response.headers_mut());
        with_status(response, Outcome::Bypass)
    }

    /// A stale entry served because the upstream failed (`fwd-status` when it answered).
    pub fn serve_on_error(
        &self,
        stored: &Stored,
        lookup: &Lookup,
        upstream_status: Option<StatusCode>,
    ) -> Response<ProxyBody> {
        let mut response = self.serve(stored, lookup, Outcome::StaleIfError);
        if let Some(status) = upstream_status {
            let value = format!(
                "gatehouse; fwd=stale; fwd-status={}; detail=stale-if-error",
                status.as_u16()
            );
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(CACHE_STATUS.clone(), value);
            }
        }
        response
    }

    /// How long past freshness an entry with these directives may be served while
    /// revalidating and on error: the upstream's directives, else the route's settings.
    /// `must-revalidate` and `no-cache` allow neither (RFC 9111 section 4.2.4).
    fn stale_windows(&self, directives: &CacheControl) -> (Duration, Duration) {
        if directives.must_revalidate || directives.no_cache {
            return (Duration::ZERO, Duration::ZERO);
        }
        let window = |directive: Option<u64>, configured: Option<HumanDuration>| {
            directive
                .map(Duration::from_secs)
                .or(configured.map(|d| d.0))
                .unwrap_or(Duration::ZERO)
        };
        (
            window(
                directives.stale_while_revalidate,
                self.config.stale_while_revalidate,
            ),
            window(directives.stale_if_error, self.config.stale_if_error),
        )
    }

    /// The stored response with the headers of a `304` merged in and its freshness renewed.
    fn refresh(&self, stored: &Stored, update: &HeaderMap) -> Stored {
        let mut headers = stored.headers.clone();
        for name in update.keys() {
            if name == header::CONTENT_LENGTH || name == header::AGE {
                continue;
            }
            headers.remove(name);
            for value in update.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let directives = CacheControl::parse(&headers);
        let fresh_for = if directives.no_cache {
            Duration::ZERO
        } else {
            directives
                .s_maxage
                .or(directives.max_age)
                .map(Duration::from_secs)
                .or(self.config.ttl.map(|t| t.0))
                .unwrap_or(stored.fresh_for)
        };
        let (stale_while_revalidate, stale_if_error) = self.stale_windows(&directives);
        Stored {
            status: stored.status,
            headers,
            body: stored.body.clone(),
            received: Instant::now(),
            initial_age: Duration::ZERO,
            fresh_for,
            stale_while_revalidate,
            stale_if_error,
            tags: stored.tags.clone(),
            revalidating: AtomicBool::new(false),
            weight: stored.weight,
        }
    }

    /// What the cache holds for a request, without touching it (for `explain`): the
    /// state, the key looked up, and the entry's age.
    pub fn peek(&self, lookup: &Lookup, headers: &HeaderMap) -> (Peeked, String, Option<Duration>) {
        let mut key = lookup.key.clone();
        for _ in 0..2 {
            let Some(entry) = self.cache.store.peek(&key) else {
                return (Peeked::Absent, key, None);
            };
            match &*entry {
                Entry::Vary(names) => {
                    for name in names {
                        push_header(&mut key, headers, name);
                    }
                }
                Entry::Response(stored) => {
                    let state = if stored.is_fresh() {
                        Peeked::Fresh
                    } else if stored.may_serve_while_revalidating() {
                        Peeked::StaleWhileRevalidate
                    } else {
                        Peeked::Stale
                    };
                    return (state, key, Some(stored.age()));
                }
                Entry::Pass { until } if Instant::now() < *until => {
                    return (Peeked::Pass, key, None)
                }
                Entry::Pass { .. } => return (Peeked::Absent, key, None),
            }
        }
        (Peeked::Absent, key, None)
    }

    /// Put `entry` under `key`, through the guard when this request holds it (waking
    /// whoever waits on the key).
    fn fill(&self, key: &str, guard: Option<Guard<'_>>, entry: Arc<Entry>) {
        if let Some(fleet) = &self.cache.fleet {
            fleet.put(key, &entry);
        }
        match guard {
            Some(guard) => {
                // Err only if the guard's key was filled meanwhile: nothing to do.
                let _ = guard.insert(entry);
            }
            None => self.cache.store.insert(key.to_owned(), entry),
        }
    }

    /// Remember that this key's answer could not be stored, waking waiters. A client's
    /// refresh does not mark the key: the stored entry, if any, stays.
    fn pass(&self, lookup: &Lookup, guard: Option<Guard<'_>>) {
        if guard.is_none() && lookup.refresh {
            return;
        }
        let pass = Arc::new(Entry::Pass {
            until: Instant::now() + PASS_FOR,
        });
        self.fill(&lookup.key, guard, pass);
    }

    /// How long the response may be served from the cache, or `None` when it may not be
    /// stored.
    fn storable(
        &self,
        request_headers: &HeaderMap,
        response: &Response<ProxyBody>,
    ) -> Option<Duration> {
        if !CACHEABLE_STATUS.contains(&response.status().as_u16()) {
            return None;
        }
        let headers = response.headers();
        let directives = CacheControl::parse(headers);
        if directives.no_store || directives.private || headers.contains_key(header::SET_COOKIE) {
            return None;
        }
        // A request with credentials the gateway did not turn into a consumer key may only
        // be shared when the upstream says so (RFC 9111 section 3.5).
        if request_headers.contains_key(header::AUTHORIZATION)
            && self.config.shared
            && !(directives.public || directives.s_maxage.is_some() || directives.must_revalidate)
        {
            return None;
        }
        if directives.no_cache {
            return has_validator(headers).then_some(Duration::ZERO);
        }
        let lifetime = self.lifetime(&directives, headers)?;
        // Already stale and nothing to revalidate with: storing it would serve nothing.
        (!lifetime.is_zero() || has_validator(headers)).then_some(lifetime)
    }

    /// Freshness lifetime: `s-maxage`, `max-age`, `Expires` − `Date`, then the route's ttl.
    fn lifetime(&self, directives: &CacheControl, headers: &HeaderMap) -> Option<Duration> {
        if let Some(seconds) = directives.s_maxage.or(directives.max_age) {
            return Some(Duration::from_secs(seconds));
        }
        if let Some(expires) = headers.get(header::EXPIRES) {
            // An invalid date (`0`, `-1`) means already expired.
            let expires = expires
                .to_str()
                .ok()
                .and_then(|v| httpdate::parse_http_date(v).ok());
            let date = headers
                .get(header::DATE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok())
                .unwrap_or_else(SystemTime::now);
            return Some(
                expires
                    .and_then(|e| e.duration_since(date).ok())
                    .unwrap_or(Duration::ZERO),
            );
        }
        self.config.ttl.map(|ttl| ttl.0)
    }
}

/// Bytes an entry holds, for the cache's bound (header and tag overheads estimated).
fn weigh(body: usize, tags: &[String], headers: &HeaderMap) -> u64 {
    body as u64
        + tags.iter().map(|t| t.len() as u64 + 24).sum::<u64>()
        + headers
            .iter()
            .map(|(n, v)| (n.as_str().len() + v.len() + 32) as u64)
            .sum::<u64>()
}

fn with_status(mut response: Response<ProxyBody>, outcome: Outcome) -> Response<ProxyBody> {
    response
        .headers_mut()
        .insert(CACHE_STATUS.clone(), outcome.header());
    response
}

/// How a request the upstream answered took part in the cache.
fn fetched(lookup: &Lookup, revalidating: bool, stored: bool) -> Outcome {
    if lookup.refresh {
        Outcome::Refresh
    } else if revalidating {
        Outcome::Revalidated {
            not_modified: false,
            stored,
        }
    } else {
        Outcome::Miss { stored }
    }
}

fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED)
}

fn vary_names(headers: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn push_header(key: &mut String, headers: &HeaderMap, name: &HeaderName) {
    key.push('\n');
    key.push_str(name.as_str());
    key.push(':');
    for value in headers.get_all(name) {
        key.push_str(&String::from_utf8_lossy(value.as_bytes()));
        key.push(',');
    }
}

/// Weak comparison (RFC 9110 section 13.1.2): `If-None-Match` lists tags or `*`.
fn etag_matches(wanted: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(wanted) = wanted.to_str() else {
        return false;
    };
    let strip = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    let etag = strip(etag);
    wanted.trim() == "*" || wanted.split(',').any(|tag| strip(tag) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_directives() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60"),
        );
        headers.append(
            header::CACHE_CONTROL,
            HeaderValue::from_static("S-MAXAGE=\"120\", no-cache"),
        );
        headers.append(
            header::CACHE_CONTROL,
            HeaderValue::from_static("stale-while-revalidate=30,stale-if-error=600"),
        );
        let parsed = CacheControl::parse(&headers);
        assert_eq!(parsed.stale_while_revalidate, Some(30));
        assert_eq!(parsed.stale_if_error, Some(600));
        assert_eq!(parsed.max_age, Some(60));
        assert_eq!(parsed.s_maxage, Some(120));
        assert!(parsed.public && parsed.no_cache && !parsed.no_store && !parsed.private);
    }

    #[test]
    fn key_parts_split_route_and_url() {
        assert_eq!(
            key_parts("products\napi.example.com/p/1?x=1\n@alice\naccept:fr,"),
            ("products", "api.example.com/p/1?x=1")
        );
        assert_eq!(key_parts("r\nhost/"), ("r", "host/"));
    }

    #[test]
    fn weak_etag_comparison() {
        let etag = HeaderValue::from_static("\"v1\"");
        assert!(etag_matches(&HeaderValue::from_static("W/\"v1\""), &etag));
        assert!(etag_matches(
            &HeaderValue::from_static("\"v0\", \"v1\""),
            &etag
        ));
        assert!(etag_matches(&HeaderValue::from_static("*"), &etag));
        assert!(!etag_matches(&HeaderValue::from_static("\"v2\""), &etag));
    }
}
