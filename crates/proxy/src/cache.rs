//! The response cache (RFC 9111, as a shared cache): which requests may be answered from
//! it, the key, freshness from the upstream's `Cache-Control`/`Expires` (or the route's
//! `ttl`), `Vary`, `Age`, validators and revalidation, request coalescing, and the
//! `Cache-Status` header (RFC 9211). Entries live in memory under a byte bound
//! (quick_cache: weighted, eviction by recency and frequency).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use gatehouse_config::{CacheConfig, RouteCacheConfig};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use quick_cache::sync::{Cache, DefaultLifecycle, PlaceholderGuard};
use quick_cache::{DefaultHashBuilder, Weighter};

use crate::body::{self, ProxyBody};

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
}

impl ResponseCache {
    pub fn new(config: &CacheConfig) -> Arc<Self> {
        let max_size = config.max_size.0.max(1);
        Arc::new(Self {
            // quick_cache sizes its tables from an item estimate: one per 4 KiB.
            store: Cache::with_weighter((max_size / 4096).max(16) as usize, max_size, EntryWeight),
            max_object: config.max_object_size.0,
            config: config.clone(),
        })
    }

    pub fn same_config(&self, config: &CacheConfig) -> bool {
        self.config.max_size == config.max_size
            && self.config.max_object_size == config.max_object_size
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
}

/// One route's view of the cache.
pub struct RouteCache {
    cache: Arc<ResponseCache>,
    config: RouteCacheConfig,
    key_headers: Vec<HeaderName>,
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
                    _ => {}
                }
            }
        }
        directives
    }
}

impl RouteCache {
    pub fn new(cache: Arc<ResponseCache>, config: &RouteCacheConfig) -> Self {
        Self {
            cache,
            key_headers: config
                .key_headers
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .collect(),
            config: config.clone(),
        }
    }

    /// The lookup for a request, or `None` when it must not use the cache.
    pub fn lookup(
        &self,
        method: &Method,
        host: &str,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        consumer: Option<&str>,
    ) -> Option<Lookup> {
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
        let mut key = String::with_capacity(64 + path.len());
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
                Err(guard) => return Found::Miss(Some(guard)),
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
        response: Response<ProxyBody>,
    ) -> (Response<ProxyBody>, Outcome) {
        let revalidating = stale.is_some();
        // 304 to our conditional request: the stored response is still good.
        if let (Some(stored), StatusCode::NOT_MODIFIED) = (&stale, response.status()) {
            let refreshed = Arc::new(refresh(
                stored,
                response.headers(),
                self.config.ttl.map(|t| t.0),
            ));
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
        let weight = bytes.len() as u64
            + headers
                .iter()
                .map(|(n, v)| (n.as_str().len() + v.len() + 32) as u64)
                .sum::<u64>();
        let stored = Arc::new(Stored {
            status: parts.status,
            headers,
            body: body_bytes,
            received: Instant::now(),
            initial_age,
            fresh_for,
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
            self.cache.store.insert(lookup.key.clone(), entry);
        }
        let outcome = fetched(&lookup, revalidating, true);
        // Answered like a hit: HEAD, the client's If-None-Match and Age handled alike.
        (self.serve(&stored, &lookup, outcome), outcome)
    }

    /// Put `entry` under `key`, through the guard when this request holds it (waking
    /// whoever waits on the key).
    fn fill(&self, key: &str, guard: Option<Guard<'_>>, entry: Arc<Entry>) {
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

/// The stored response with the headers of a `304` merged in and its freshness renewed.
fn refresh(stored: &Stored, update: &HeaderMap, ttl: Option<Duration>) -> Stored {
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
            .or(ttl)
            .unwrap_or(stored.fresh_for)
    };
    Stored {
        status: stored.status,
        headers,
        body: stored.body.clone(),
        received: Instant::now(),
        initial_age: Duration::ZERO,
        fresh_for,
        weight: stored.weight,
    }
}

fn with_status(mut response: Response<ProxyBody>, outcome: Outcome) -> Response<ProxyBody> {
    response
        .headers_mut()
        .insert(CACHE_STATUS.clone(), outcome.header());
    response
}

/// Mark a response to a key known to be uncacheable.
pub fn passed(response: Response<ProxyBody>) -> Response<ProxyBody> {
    with_status(response, Outcome::Miss { stored: false })
}

/// Mark a response that bypassed the cache.
pub fn bypassed(response: Response<ProxyBody>) -> Response<ProxyBody> {
    with_status(response, Outcome::Bypass)
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
        let parsed = CacheControl::parse(&headers);
        assert_eq!(parsed.max_age, Some(60));
        assert_eq!(parsed.s_maxage, Some(120));
        assert!(parsed.public && parsed.no_cache && !parsed.no_store && !parsed.private);
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
