//! Route matching, compiled once per snapshot.
//!
//! Precedence (documented in `docs/routing.md`):
//! 1. Host: exact host, then wildcard hosts (longest suffix first), then routes without hosts.
//!    If no route of a host group matches, the next group is tried.
//! 2. Within a host group, higher `priority` first.
//! 3. Within one priority: exact path, then template (static segments beat captures), then
//!    prefix (longest first), then regex (in file order), then routes without a path.
//! 4. Routes sharing a path are tried in file order; the first whose listener, method, header
//!    and query conditions hold wins.

use std::collections::HashMap;
use std::sync::Arc;

use gatehouse_config::{PathMatch, RouteConfig, ValueMatch};
use http::{HeaderMap, Method};
use regex::Regex;

/// What the router needs to know about a request.
pub struct RequestView<'a> {
    /// Lowercase host without port.
    pub host: &'a str,
    pub method: &'a Method,
    /// Normalized path (no query).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// Name of the listener the request arrived on; `None` when unknown (`gatehouse
    /// explain` without a listener), which fails every route bound to listeners.
    pub listener: Option<&'a str>,
}

/// A compiled route with its payload (what to do when it matches).
pub struct CompiledRoute<A> {
    pub name: String,
    pub index: usize,
    pub path: Option<PathMatch>,
    /// `match.listeners`; empty: every listener.
    listeners: Box<[Box<str>]>,
    methods: Vec<Method>,
    headers: Vec<CompiledValueMatch>,
    query: Vec<CompiledValueMatch>,
    pub payload: A,
}

struct CompiledValueMatch {
    name: String,
    header_name: Option<http::HeaderName>,
    test: ValueTest,
}

enum ValueTest {
    Present,
    Absent,
    Exact(String),
    Regex(Regex),
}

impl ValueTest {
    fn holds(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Self::Absent, value) => value.is_none(),
            (_, None) => false,
            (Self::Present, Some(_)) => true,
            (Self::Exact(expected), Some(v)) => v == expected,
            (Self::Regex(re), Some(v)) => re.is_match(v),
        }
    }
}

/// A successful match: the route and the path captures (template parameters or named regex groups).
pub struct Matched<'r, A> {
    pub route: &'r Arc<CompiledRoute<A>>,
    pub captures: Vec<(String, String)>,
}

#[derive(Default)]
struct PathTable {
    exact: HashMap<String, Vec<usize>>,
    /// Template to slot in `template_routes`; matchit yields the slot.
    templates: Option<matchit::Router<usize>>,
    template_slots: HashMap<String, usize>,
    template_routes: Vec<Vec<usize>>,
    /// Prefix without trailing slash (`/` stays `/`) to routes.
    prefixes: HashMap<String, Vec<usize>>,
    regexes: Vec<(Regex, usize)>,
    any_path: Vec<usize>,
}

/// Routes of one host group, by descending priority.
#[derive(Default)]
struct HostGroup {
    levels: Vec<(i32, PathTable)>,
}

pub struct Router<A> {
    routes: Vec<Arc<CompiledRoute<A>>>,
    exact_hosts: HashMap<String, HostGroup>,
    /// (".example.com", group), longest suffix first.
    wildcard_hosts: Vec<(String, HostGroup)>,
    any_host: HostGroup,
}

#[derive(Debug, thiserror::Error)]
#[error("route #{index}: {message}")]
pub struct RouterError {
    pub index: usize,
    pub message: String,
}

impl<A> Router<A> {
    /// Compile routes; `payload` builds each route's payload.
    pub fn compile(
        configs: &[RouteConfig],
        mut payload: impl FnMut(usize, &RouteConfig) -> Result<A, String>,
    ) -> Result<Self, RouterError> {
        let mut router = Router {
            routes: Vec::with_capacity(configs.len()),
            exact_hosts: HashMap::new(),
            wildcard_hosts: Vec::new(),
            any_host: HostGroup::default(),
        };
        for (index, config) in configs.iter().enumerate() {
            let error = |message: String| RouterError { index, message };
            let matches = &config.matches.value;
            let route = CompiledRoute {
                name: config.name_or_default(index),
                index,
                path: matches.path.clone(),
                listeners: matches
                    .listeners
                    .iter()
                    .map(|l| l.value.as_str().into())
                    .collect(),
                methods: matches
                    .methods
                    .iter()
                    .map(|m| Method::from_bytes(m.as_bytes()).map_err(|e| error(e.to_string())))
                    .collect::<Result<_, _>>()?,
                headers: compile_value_matches(&matches.headers, true).map_err(error)?,
                query: compile_value_matches(&matches.query, false).map_err(error)?,
                payload: payload(index, config).map_err(error)?,
            };
            router.routes.push(Arc::new(route));
            if matches.hosts.is_empty() {
                router.any_host.add(index, config).map_err(error)?;
            }
            for host in &matches.hosts {
                let host = host.to_ascii_lowercase();
                let group = match host.strip_prefix('*') {
                    Some(suffix) => {
                        match router.wildcard_hosts.iter().position(|(s, _)| s == suffix) {
                            Some(at) => &mut router.wildcard_hosts[at].1,
                            None => {
                                router
                                    .wildcard_hosts
                                    .push((suffix.to_owned(), HostGroup::default()));
                                &mut router.wildcard_hosts.last_mut().expect("just pushed").1
                            }
                        }
                    }
                    None => router.exact_hosts.entry(host).or_default(),
                };
                group.add(index, config).map_err(error)?;
            }
        }
        router
            .wildcard_hosts
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        Ok(router)
    }

    pub fn routes(&self) -> &[Arc<CompiledRoute<A>>] {
        &self.routes
    }

    /// Find the route for a request, following the documented precedence.
    pub fn find(&self, request: &RequestView<'_>) -> Option<Matched<'_, A>> {
        self.walk(request, &mut None)
    }

    /// Find the route and record every route tried on the way, with why it did not take the
    /// request (`gatehouse explain`).
    pub fn explain(&self, request: &RequestView<'_>) -> (Option<Matched<'_, A>>, Vec<Considered>) {
        let mut trail = Some(Trail::default());
        let found = self.walk(request, &mut trail);
        (found, trail.map(|t| t.considered).unwrap_or_default())
    }

    fn walk(&self, request: &RequestView<'_>, trail: &mut Option<Trail>) -> Option<Matched<'_, A>> {
        if let Some(group) = self.exact_hosts.get(request.host) {
            if let Some(found) = self.find_in(group, request, "exact host", trail) {
                return Some(found);
            }
        }
        for (suffix, group) in &self.wildcard_hosts {
            if request.host.len() > suffix.len() && request.host.ends_with(suffix.as_str()) {
                if let Some(found) = self.find_in(group, request, "wildcard host", trail) {
                    return Some(found);
                }
            }
        }
        self.find_in(&self.any_host, request, "any host", trail)
    }

    fn find_in(
        &self,
        group: &HostGroup,
        request: &RequestView<'_>,
        host_group: &'static str,
        trail: &mut Option<Trail>,
    ) -> Option<Matched<'_, A>> {
        for (priority, table) in &group.levels {
            if let Some(trail) = trail.as_mut() {
                trail.host_group = host_group;
                trail.priority = *priority;
            }
            if let Some(found) = self.find_in_table(table, request, trail) {
                return Some(found);
            }
        }
        None
    }

    fn find_in_table(
        &self,
        table: &PathTable,
        request: &RequestView<'_>,
        trail: &mut Option<Trail>,
    ) -> Option<Matched<'_, A>> {
        let path = request.path;
        if let Some(candidates) = table.exact.get(path) {
            if let Some(route) = self.first_passing(candidates, request, "exact", trail) {
                return Some(Matched {
                    route,
                    captures: Vec::new(),
                });
            }
        }
        if let Some(templates) = &table.templates {
            if let Ok(found) = templates.at(path) {
                if let Some(route) = self.first_passing(
                    &table.template_routes[*found.value],
                    request,
                    "template",
                    trail,
                ) {
                    let captures = found
                        .params
                        .iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect();
                    return Some(Matched { route, captures });
                }
            }
        }
        if !table.prefixes.is_empty() {
            // Walk segment boundaries from the longest: /a/b/c, /a/b, /a, /
            let mut end = path.len();
            loop {
                let candidate = if end == 0 { "/" } else { &path[..end] };
                if let Some(candidates) = table.prefixes.get(candidate) {
                    if let Some(route) = self.first_passing(candidates, request, "prefix", trail) {
                        return Some(Matched {
                            route,
                            captures: Vec::new(),
                        });
                    }
                }
                if end == 0 {
                    break;
                }
                end = path[..end].rfind('/').unwrap_or(0);
            }
        }
        for (regex, index) in &table.regexes {
            if let Some(caps) = regex.captures(path) {
                if let Some(route) =
                    self.first_passing(std::slice::from_ref(index), request, "regex", trail)
                {
                    let captures = regex
                        .capture_names()
                        .flatten()
                        .filter_map(|name| {
                            caps.name(name)
                                .map(|m| (name.to_owned(), m.as_str().to_owned()))
                        })
                        .collect();
                    return Some(Matched { route, captures });
                }
            }
        }
        self.first_passing(&table.any_path, request, "any path", trail)
            .map(|route| Matched {
                route,
                captures: Vec::new(),
            })
    }

    fn first_passing(
        &self,
        candidates: &[usize],
        request: &RequestView<'_>,
        path_kind: &'static str,
        trail: &mut Option<Trail>,
    ) -> Option<&Arc<CompiledRoute<A>>> {
        let Some(trail) = trail.as_mut() else {
            return candidates
                .iter()
                .map(|&i| &self.routes[i])
                .find(|route| route.conditions_hold(request));
        };
        for &index in candidates {
            let route = &self.routes[index];
            let mismatch = route.first_mismatch(request).map(|m| m.owned());
            let taken = mismatch.is_none();
            trail.considered.push(Considered {
                route: index,
                host_group: trail.host_group,
                priority: trail.priority,
                path_kind,
                mismatch,
            });
            if taken {
                return Some(route);
            }
        }
        None
    }
}

/// Why a route whose host and path fit did not take the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The route is bound to other listeners (`None`: the request's listener is unknown).
    Listener(Option<String>),
    Method,
    Header(String),
    Query(String),
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Listener(Some(name)) => {
                write!(f, "listener `{name}` is not among the route's listeners")
            }
            Self::Listener(None) => {
                f.write_str("the route is bound to listeners and the request's listener is unknown")
            }
            Self::Method => f.write_str("method not accepted"),
            Self::Header(name) => write!(f, "header condition on `{name}` does not hold"),
            Self::Query(name) => write!(f, "query condition on `{name}` does not hold"),
        }
    }
}

impl<A> CompiledRoute<A> {
    fn conditions_hold(&self, request: &RequestView<'_>) -> bool {
        self.first_mismatch(request).is_none()
    }

    /// The first listener, method, header or query condition that fails (`None`: all hold).
    fn first_mismatch<'v>(&self, request: &RequestView<'v>) -> Option<MismatchAt<'_, 'v>> {
        if !self.listeners.is_empty()
            && !request
                .listener
                .is_some_and(|name| self.listeners.iter().any(|l| **l == *name))
        {
            return Some(MismatchAt::Listener(request.listener));
        }
        if !self.methods.is_empty() && !self.methods.contains(request.method) {
            return Some(MismatchAt::Method);
        }
        let header = self.headers.iter().find(|m| {
            let value = m
                .header_name
                .as_ref()
                .and_then(|name| request.headers.get(name))
                .and_then(|v| v.to_str().ok());
            !m.test.holds(value)
        });
        if let Some(header) = header {
            return Some(MismatchAt::Header(&header.name));
        }
        self.query
            .iter()
            .find(|m| {
                let value = request.query.and_then(|q| query_value(q, &m.name));
                !m.test.holds(value.as_deref())
            })
            .map(|m| MismatchAt::Query(&m.name))
    }
}

/// [`Mismatch`] without allocating, for the request path.
enum MismatchAt<'r, 'v> {
    Listener(Option<&'v str>),
    Method,
    Header(&'r str),
    Query(&'r str),
}

impl MismatchAt<'_, '_> {
    fn owned(&self) -> Mismatch {
        match self {
            Self::Listener(name) => Mismatch::Listener(name.map(str::to_owned)),
            Self::Method => Mismatch::Method,
            Self::Header(name) => Mismatch::Header((*name).to_owned()),
            Self::Query(name) => Mismatch::Query((*name).to_owned()),
        }
    }
}

/// Where the walk is, and what it tried.
#[derive(Default)]
struct Trail {
    host_group: &'static str,
    priority: i32,
    considered: Vec<Considered>,
}

/// A route the router tried, in the order it tried them (`gatehouse explain`).
#[derive(Debug, Clone)]
pub struct Considered {
    pub route: usize,
    /// `exact host`, `wildcard host` or `any host`.
    pub host_group: &'static str,
    pub priority: i32,
    /// `exact`, `template`, `prefix`, `regex` or `any path`.
    pub path_kind: &'static str,
    /// `None`: this route took the request.
    pub mismatch: Option<Mismatch>,
}

/// The first value of a query parameter, percent-decoded.
pub fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_component(key) == name).then(|| decode_component(value))
    })
}

fn decode_component(text: &str) -> String {
    let plus_decoded = text.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_decoded)
        .decode_utf8_lossy()
        .into_owned()
}

impl HostGroup {
    fn add(&mut self, index: usize, config: &RouteConfig) -> Result<(), String> {
        let level = match self.levels.iter().position(|(p, _)| *p == config.priority) {
            Some(at) => at,
            None => {
                self.levels.push((config.priority, PathTable::default()));
                self.levels
                    .sort_by_key(|(priority, _)| std::cmp::Reverse(*priority));
                self.levels
                    .iter()
                    .position(|(p, _)| *p == config.priority)
                    .unwrap_or(0)
            }
        };
        let table = &mut self.levels[level].1;
        match &config.matches.value.path {
            None => table.any_path.push(index),
            Some(PathMatch::Exact(path)) => {
                table.exact.entry(path.clone()).or_default().push(index)
            }
            Some(PathMatch::Prefix(prefix)) => {
                let key = match prefix.trim_end_matches('/') {
                    "" => "/".to_owned(),
                    trimmed => trimmed.to_owned(),
                };
                table.prefixes.entry(key).or_default().push(index)
            }
            Some(PathMatch::Template(template)) => {
                if let Some(&slot) = table.template_slots.get(template) {
                    table.template_routes[slot].push(index);
                } else {
                    let slot = table.template_routes.len();
                    table
                        .templates
                        .get_or_insert_with(matchit::Router::new)
                        .insert(template.clone(), slot)
                        .map_err(|e| format!("template `{template}`: {e}"))?;
                    table.template_slots.insert(template.clone(), slot);
                    table.template_routes.push(vec![index]);
                }
            }
            Some(PathMatch::Regex(pattern)) => {
                let regex = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| e.to_string())?;
                table.regexes.push((regex, index))
            }
        }
        Ok(())
    }
}

fn compile_value_matches(
    matches: &[ValueMatch],
    is_header: bool,
) -> Result<Vec<CompiledValueMatch>, String> {
    matches
        .iter()
        .map(|m| {
            let test = match (&m.exact, &m.regex, m.present) {
                (_, _, false) => ValueTest::Absent,
                (Some(exact), _, true) => ValueTest::Exact(exact.clone()),
                (None, Some(pattern), true) => ValueTest::Regex(
                    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| e.to_string())?,
                ),
                (None, None, true) => ValueTest::Present,
            };
            let header_name = if is_header {
                Some(
                    http::HeaderName::from_bytes(m.name.as_bytes())
                        .map_err(|_| format!("`{}` is not a valid header name", m.name))?,
                )
            } else {
                None
            };
            Ok(CompiledValueMatch {
                name: m.name.clone(),
                header_name,
                test,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(yaml: &str) -> Router<usize> {
        let config = gatehouse_config::parse_str(yaml, "test.yaml").expect("valid config");
        Router::compile(&config.routes, |index, _| Ok(index)).expect("router")
    }

    fn view<'a>(headers: &'a HeaderMap, listener: Option<&'a str>) -> RequestView<'a> {
        RequestView {
            host: "api.test",
            method: &Method::GET,
            path: "/orders",
            query: None,
            headers,
            listener,
        }
    }

    #[test]
    fn routes_bound_to_listeners_take_only_their_listeners_requests() {
        let router = router(
            r#"
listeners:
  - { name: public, listen: "127.0.0.1:0" }
  - { name: internal, listen: "127.0.0.1:0" }
routes:
  - name: internal-orders
    match: { path: { prefix: /orders }, listeners: [internal] }
    respond: { body: internal }
  - name: orders
    match: { path: { prefix: /orders } }
    respond: { body: any }
"#,
        );
        let headers = HeaderMap::new();
        let taken = |listener| {
            router
                .find(&view(&headers, listener))
                .map(|m| m.route.name.clone())
        };
        assert_eq!(taken(Some("internal")).as_deref(), Some("internal-orders"));
        assert_eq!(taken(Some("public")).as_deref(), Some("orders"));
        assert_eq!(taken(None).as_deref(), Some("orders"));
        let (found, considered) = router.explain(&view(&headers, Some("public")));
        assert_eq!(found.map(|m| m.route.index), Some(1));
        assert_eq!(
            considered[0].mismatch,
            Some(Mismatch::Listener(Some("public".to_owned())))
        );
        assert_eq!(
            considered[0].mismatch.as_ref().map(ToString::to_string),
            Some("listener `public` is not among the route's listeners".to_owned())
        );
    }
}
