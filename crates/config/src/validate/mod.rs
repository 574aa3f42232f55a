//! Semantic checks that YAML parsing cannot express: references, uniqueness, syntax of
//! addresses, patterns and templates, and routes that would shadow each other.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use serde_saphyr::{Location, Spanned};

use crate::model::*;
use crate::problem::Problem;

mod auth;
mod authorization;
mod mesh;
mod telemetry;
mod traffic;
mod versioning;
pub use auth::{parse_cidr, parse_rfc3339, JWT_ALGORITHMS};

/// The closest candidate to `word`, if it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Names captured by a path template: `/users/{id}/files/{*rest}` gives `id`, `rest`.
pub fn template_captures(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        names.push(
            rest[start + 1..start + end]
                .trim_start_matches('*')
                .to_owned(),
        );
        rest = &rest[start + end + 1..];
    }
    names
}

pub(crate) fn validate(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Some(admin) = &config.admin {
        validate_admin(admin, &mut problems);
    }
    validate_listeners(&config.listeners, &mut problems);
    let services = validate_services(&config.services, &mut problems);
    let auth_names = auth::validate_security(config, &mut problems);
    traffic::validate_traffic(config, &mut problems);
    telemetry::validate_telemetry(config, &mut problems);
    versioning::validate_apis(config, &mut problems);
    validate_protos(config, &mut problems);
    validate_store(config, &mut problems);
    validate_routes(config, &services, &auth_names, &mut problems);
    mesh::validate_mesh(config, &mut problems);
    problems.sort_by_key(|p| (p.line, p.column));
    problems
}

fn validate_admin(admin: &AdminConfig, problems: &mut Vec<Problem>) {
    match admin.listen.value.parse::<SocketAddr>() {
        Ok(addr) if !addr.ip().is_loopback() && !admin.allow_remote => problems.push(Problem::at(
            &admin.listen.referenced,
            format!(
                "admin listener `{addr}` is not a loopback address; set `allow_remote: true` to expose it"
            ),
        )),
        Ok(_) => {}
        Err(_) => problems.push(Problem::at(
            &admin.listen.referenced,
            format!("`{}` is not a socket address like 127.0.0.1:9901", admin.listen.value),
        )),
    }
}

fn validate_listeners(listeners: &[ListenerConfig], problems: &mut Vec<Problem>) {
    let mut names: HashMap<&str, &Location> = HashMap::new();
    let mut addresses: HashMap<SocketAddr, &Location> = HashMap::new();
    for listener in listeners {
        if listener.mesh && listener.tls.is_some() {
            problems.push(Problem::at(
                &listener.name.referenced,
                format!(
                    "listener `{}` has both `mesh` and `tls`: mesh mTLS is its TLS",
                    listener.name.value
                ),
            ));
        }
        if let Some(first) = names.insert(&listener.name.value, &listener.name.referenced) {
            problems.push(Problem::at(
                &listener.name.referenced,
                format!(
                    "listener name `{}` is already used at line {}",
                    listener.name.value,
                    first.line()
                ),
            ));
        }
        match listener.listen.value.parse::<SocketAddr>() {
            // Port 0 asks the kernel for a free port: never a clash.
            Ok(addr) if addr.port() == 0 => {}
            Ok(addr) => {
                if let Some(first) = addresses.insert(addr, &listener.listen.referenced) {
                    problems.push(Problem::at(
                        &listener.listen.referenced,
                        format!(
                            "address `{addr}` is already bound by the listener at line {}",
                            first.line()
                        ),
                    ));
                }
            }
            Err(_) => problems.push(Problem::at(
                &listener.listen.referenced,
                format!(
                    "`{}` is not a socket address like 0.0.0.0:8080",
                    listener.listen.value
                ),
            )),
        }
        if let Some(tls) = &listener.tls {
            if tls.certificates.is_empty() {
                problems.push(Problem::at(
                    &listener.name.referenced,
                    "`tls.certificates` needs at least one certificate",
                ));
            }
        }
        if let Some(redirect) = &listener.redirect_to_https {
            if !matches!(redirect.status, 301 | 302 | 307 | 308) {
                problems.push(Problem::at(
                    &listener.name.referenced,
                    format!(
                        "redirect status {} is not one of 301, 302, 307, 308",
                        redirect.status
                    ),
                ));
            }
        }
        for cidr in &listener.trusted_proxies {
            let value = cidr.value.as_str();
            if value.parse::<ipnet::IpNet>().is_err() && value.parse::<IpAddr>().is_err() {
                problems.push(Problem::at(
                    &cidr.referenced,
                    format!("`{value}` is not an IP address or CIDR like 10.0.0.0/8"),
                ));
            }
        }
        if listener.limits.max_connections == 0 {
            problems.push(Problem::at(
                &listener.name.referenced,
                "`limits.max_connections` must be at least 1",
            ));
        }
    }
}

fn validate_services<'a>(
    services: &'a [ServiceConfig],
    problems: &mut Vec<Problem>,
) -> HashMap<&'a str, &'a ServiceConfig> {
    let mut by_name: HashMap<&str, &ServiceConfig> = HashMap::new();
    for service in services {
        let name = &service.name;
        if name.value.is_empty() {
            problems.push(Problem::at(
                &name.referenced,
                "service name cannot be empty",
            ));
        }
        if let Some(first) = by_name.insert(&name.value, service) {
            problems.push(Problem::at(
                &name.referenced,
                format!(
                    "service `{}` is already defined at line {}",
                    name.value,
                    first.name.referenced.line()
                ),
            ));
        }
        match (&service.mesh, service.endpoints.value.is_empty()) {
            (None, true) => problems.push(Problem::at(
                // An absent `endpoints` has no location of its own.
                if service.endpoints.referenced.line() == 0 {
                    &name.referenced
                } else {
                    &service.endpoints.referenced
                },
                format!("service `{}` needs at least one endpoint", name.value),
            )),
            (Some(_), false) => problems.push(Problem::at(
                &service.endpoints.referenced,
                format!(
                    "service `{}` is a mesh service: its endpoints come from the registry",
                    name.value
                ),
            )),
            (Some(_), true) if service.tls.is_some() => problems.push(Problem::at(
                &name.referenced,
                format!(
                    "service `{}` is a mesh service: it speaks mesh mTLS, not `tls`",
                    name.value
                ),
            )),
            _ => {}
        }
        for endpoint in &service.endpoints.value {
            if let Err(message) = check_host_port(&endpoint.address.value) {
                problems.push(Problem::at(&endpoint.address.referenced, message));
            }
            if !(1..=1000).contains(&endpoint.weight) {
                problems.push(Problem::at(
                    &endpoint.address.referenced,
                    format!("weight {} is outside 1..=1000", endpoint.weight),
                ));
            }
        }
        let retries = &service.retries;
        if !(0.0..=1.0).contains(&retries.budget_ratio) {
            problems.push(Problem::at(
                &name.referenced,
                format!(
                    "`retries.budget_ratio` {} must be between 0 and 1",
                    retries.budget_ratio
                ),
            ));
        }
        for status in &retries.on_status {
            if !(100..=599).contains(status) {
                problems.push(Problem::at(
                    &name.referenced,
                    format!("`retries.on_status` has {status}, which is not an HTTP status"),
                ));
            }
        }
        let mut durations = vec![
            ("timeouts.connect", service.timeouts.connect),
            ("timeouts.request", service.timeouts.request),
            ("dns_refresh", service.dns_refresh),
        ];
        if let Some(check) = &service.health_check {
            durations.push(("health_check.interval", check.interval));
            durations.push(("health_check.timeout", check.timeout));
        }
        for (field, duration) in durations {
            if duration.0.is_zero() {
                problems.push(Problem::at(
                    &name.referenced,
                    format!(
                        "`{field}` of service `{}` must be greater than 0",
                        name.value
                    ),
                ));
            }
        }
        if let Some(check) = &service.health_check {
            if check.grpc.is_some() && service.protocol != UpstreamProtocol::Http2 {
                problems.push(Problem::at(
                    &name.referenced,
                    format!(
                        "service `{}`: a gRPC health check needs `protocol: http2`",
                        name.value
                    ),
                ));
            }
            if !check.path.starts_with('/') {
                problems.push(Problem::at(
                    &name.referenced,
                    format!("health check path `{}` must start with `/`", check.path),
                ));
            }
            if check.healthy_threshold == 0 || check.unhealthy_threshold == 0 {
                problems.push(Problem::at(
                    &name.referenced,
                    "health check thresholds must be at least 1",
                ));
            }
        }
        if service.max_in_flight == Some(0) {
            problems.push(Problem::at(
                &name.referenced,
                format!(
                    "service `{}`: `max_in_flight` must be at least 1",
                    name.value
                ),
            ));
        }
        if let Some(outlier) = &service.outlier_detection {
            if outlier.consecutive_failures == 0 || outlier.max_ejection_percent > 100 {
                problems.push(Problem::at(
                    &name.referenced,
                    "`outlier_detection` needs consecutive_failures >= 1 and max_ejection_percent <= 100",
                ));
            }
        }
    }
    by_name
}

fn check_host_port(address: &str) -> Result<(), String> {
    if address.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let invalid =
        || format!("`{address}` is not an endpoint like 10.0.0.5:8080 or api.internal:8080");
    let (host, port) = address.rsplit_once(':').ok_or_else(invalid)?;
    port.parse::<u16>().map_err(|_| invalid())?;
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if host_ok {
        Ok(())
    } else {
        Err(invalid())
    }
}

fn validate_routes(
    config: &Config,
    services: &HashMap<&str, &ServiceConfig>,
    auth_names: &auth::AuthNames<'_>,
    problems: &mut Vec<Problem>,
) {
    let routes = &config.routes;
    let service_names: Vec<&str> = services.keys().copied().collect();
    let spec_names: Vec<&str> = config.openapi.keys().map(String::as_str).collect();
    let listener_names: Vec<&str> = config
        .listeners
        .iter()
        .map(|l| l.name.value.as_str())
        .collect();
    // Routes by everything they match but listeners, with their line and listener set.
    let mut seen: HashMap<String, Vec<(u64, BTreeSet<&str>)>> = HashMap::new();
    let mut template_router = matchit::Router::new();
    let mut templates_seen = BTreeSet::new();
    for (index, route) in routes.iter().enumerate() {
        let at = &route.matches.referenced;
        let label = route
            .name
            .clone()
            .unwrap_or_else(|| format!("routes[{index}]"));
        let actions = [
            route.service.is_some(),
            route.backends.is_some(),
            route.redirect.is_some(),
            route.respond.is_some(),
        ];
        match actions.iter().filter(|a| **a).count() {
            1 => {}
            0 => problems.push(Problem::at(
                at,
                format!(
                    "route `{label}` needs one of `service`, `backends`, `redirect` or `respond`"
                ),
            )),
            _ => problems.push(Problem::at(
                at,
                format!(
                    "route `{label}` has more than one of `service`, `backends`, `redirect`, `respond`"
                ),
            )),
        }
        if let Some(backends) = &route.backends {
            check_backends(backends, &label, services, problems);
        }
        for listener in &route.matches.value.listeners {
            if !listener_names.contains(&listener.value.as_str()) {
                let mut message = format!(
                    "route `{label}` is bound to undefined listener `{}`",
                    listener.value
                );
                if let Some(best) = did_you_mean(&listener.value, listener_names.iter().copied()) {
                    message.push_str(&format!(", did you mean `{best}`?"));
                }
                problems.push(Problem::at(&listener.referenced, message));
            }
        }
        if let Some(transcode) = &route.grpc_transcode {
            check_transcode(config, route, transcode, &label, services, problems);
        }
        if let Some(service) = &route.service {
            if !services.contains_key(service.value.as_str()) {
                let mut message = format!(
                    "route `{label}` references undefined service `{}`",
                    service.value
                );
                if let Some(best) = did_you_mean(&service.value, services.keys().copied()) {
                    message.push_str(&format!(", did you mean `{best}`?"));
                }
                problems.push(Problem::at(&service.referenced, message));
            }
        }
        let matches = &route.matches.value;
        for host in &matches.hosts {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            let valid = !bare.is_empty()
                && bare.split('.').all(|label| {
                    !label.is_empty()
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !valid {
                problems.push(Problem::at(
                    at,
                    format!("host `{host}` is not a host name or a wildcard like *.example.com"),
                ));
            }
        }
        for method in &matches.methods {
            if method.is_empty() || !method.chars().all(|c| c.is_ascii_uppercase()) {
                problems.push(Problem::at(
                    at,
                    format!("method `{method}` must be an uppercase token like GET"),
                ));
            }
        }
        for value_match in matches.headers.iter().chain(&matches.query) {
            if value_match.exact.is_some() && value_match.regex.is_some() {
                problems.push(Problem::at(
                    at,
                    format!(
                        "`{}`: use either `exact` or `regex`, not both",
                        value_match.name
                    ),
                ));
            }
            if let Some(pattern) = &value_match.regex {
                if let Err(err) = regex::Regex::new(&format!("^(?:{pattern})$")) {
                    problems.push(Problem::at(at, regex_problem(pattern, &err)));
                }
            }
        }
        let mut captures: Vec<String> = Vec::new();
        match &matches.path {
            Some(PathMatch::Exact(path) | PathMatch::Prefix(path)) if !path.starts_with('/') => {
                problems.push(Problem::at(
                    at,
                    format!("path `{path}` must start with `/`"),
                ))
            }
            Some(PathMatch::Template(template)) => {
                captures = template_captures(template);
                if !template.starts_with('/') {
                    problems.push(Problem::at(
                        at,
                        format!("template `{template}` must start with `/`"),
                    ));
                } else if templates_seen.insert(template.clone()) {
                    if let Err(err) = template_router.insert(template.as_str(), ()) {
                        problems.push(Problem::at(at, format!("template `{template}`: {err}")));
                    }
                }
            }
            Some(PathMatch::Regex(pattern)) => match regex::Regex::new(&format!("^(?:{pattern})$"))
            {
                Ok(re) => captures = re.capture_names().flatten().map(str::to_owned).collect(),
                Err(err) => problems.push(Problem::at(at, regex_problem(pattern, &err))),
            },
            _ => {}
        }
        auth::validate_route_access(route, &label, &captures, auth_names, problems);
        authorization::validate_route_authorization(route, &label, problems);
        traffic::validate_route_traffic(
            route,
            &label,
            &config.rate_limits,
            &config.quotas,
            &service_names,
            &spec_names,
            problems,
        );
        let is_prefix = matches!(matches.path, Some(PathMatch::Prefix(_)));
        if let Some(rewrite) = &route.rewrite {
            let kinds = [
                rewrite.strip_prefix,
                rewrite.replace_prefix.is_some(),
                rewrite.path.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                problems.push(Problem::at(
                    at,
                    "`rewrite` takes exactly one of `strip_prefix`, `replace_prefix`, `path`",
                ));
            }
            if (rewrite.strip_prefix || rewrite.replace_prefix.is_some()) && !is_prefix {
                problems.push(Problem::at(
                    at,
                    "`strip_prefix` and `replace_prefix` need a `prefix` path match",
                ));
            }
            if let Some(path) = &rewrite.path {
                check_template_uses(path, &captures, at, problems);
            }
        }
        if let Some(redirect) = &route.redirect {
            if !matches!(redirect.status, 301 | 302 | 303 | 307 | 308) {
                problems.push(Problem::at(
                    at,
                    format!(
                        "redirect status {} is not one of 301, 302, 303, 307, 308",
                        redirect.status
                    ),
                ));
            }
            if let Some(path) = &redirect.path {
                check_template_uses(path, &captures, at, problems);
            }
        }
        if let Some(respond) = &route.respond {
            if !(200..=599).contains(&respond.status) {
                problems.push(Problem::at(
                    at,
                    format!("response status {} is outside 200..=599", respond.status),
                ));
            }
        }
        // An earlier route with the same match takes every request of this one when it
        // is on all of this route's listeners (no `listeners`: on every listener).
        let bound: BTreeSet<&str> = matches.listeners.iter().map(|l| l.value.as_str()).collect();
        let earlier = seen
            .entry(conflict_key(matches, route.priority))
            .or_default();
        let shadowing = earlier.iter().find(|(_, theirs)| {
            theirs.is_empty() || (!bound.is_empty() && bound.is_subset(theirs))
        });
        if let Some((first_line, _)) = shadowing {
            problems.push(Problem::at(
                at,
                format!(
                    "route `{label}` has the same match and priority as the route at line {first_line}; it could never be chosen"
                ),
            ));
        }
        earlier.push((at.line(), bound));
    }
}

/// A traffic split: known, distinct services with weights in 0..=1000, some above 0.
fn check_backends(
    backends: &Spanned<Vec<WeightedBackend>>,
    label: &str,
    services: &HashMap<&str, &ServiceConfig>,
    problems: &mut Vec<Problem>,
) {
    if backends.value.is_empty() {
        problems.push(Problem::at(
            &backends.referenced,
            format!("route `{label}`: `backends` needs at least one service"),
        ));
        return;
    }
    let mut listed = BTreeSet::new();
    for backend in &backends.value {
        let name = &backend.service;
        if !services.contains_key(name.value.as_str()) {
            let mut message = format!(
                "route `{label}` references undefined service `{}`",
                name.value
            );
            if let Some(best) = did_you_mean(&name.value, services.keys().copied()) {
                message.push_str(&format!(", did you mean `{best}`?"));
            }
            problems.push(Problem::at(&name.referenced, message));
        }
        if !listed.insert(name.value.as_str()) {
            problems.push(Problem::at(
                &name.referenced,
                format!(
                    "route `{label}`: service `{}` is listed twice in `backends`",
                    name.value
                ),
            ));
        }
        if backend.weight > 1000 {
            problems.push(Problem::at(
                &name.referenced,
                format!(
                    "route `{label}`: weight {} of backend `{}` is outside 0..=1000",
                    backend.weight, name.value
                ),
            ));
        }
    }
    if backends.value.iter().all(|b| b.weight == 0) {
        problems.push(Problem::at(
            &backends.referenced,
            format!("route `{label}`: at least one backend needs a weight above 0"),
        ));
    }
}

/// One line: the regex crate's own message spans several lines with a caret diagram.
/// A transcoding route names loaded descriptors, forwards to an HTTP/2 service, and
/// stands alone: the JSON it answers is made here, so the body-changing features of a
/// route (transform, versions, cache, OpenAPI validation) do not combine with it.
fn check_transcode(
    config: &Config,
    route: &RouteConfig,
    transcode: &crate::grpc::GrpcTranscodeConfig,
    label: &str,
    services: &HashMap<&str, &ServiceConfig>,
    problems: &mut Vec<Problem>,
) {
    let at = &transcode.protos.referenced;
    if !config.protos.contains_key(&transcode.protos.value) {
        let mut message = format!(
            "route `{label}` transcodes with undefined protos `{}`",
            transcode.protos.value
        );
        if let Some(best) = did_you_mean(
            &transcode.protos.value,
            config.protos.keys().map(String::as_str),
        ) {
            message.push_str(&format!(", did you mean `{best}`?"));
        }
        problems.push(Problem::at(at, message));
    }
    let split = route
        .backends
        .iter()
        .flat_map(|b| &b.value)
        .map(|b| &b.service);
    // An undefined service is reported on its own.
    let called = route
        .service
        .iter()
        .chain(split)
        .filter_map(|s| services.get(s.value.as_str()));
    for service in called {
        if service.protocol != UpstreamProtocol::Http2 {
            problems.push(Problem::at(
                at,
                format!(
                    "route `{label}`: `grpc_transcode` needs service `{}` to use `protocol: http2`",
                    service.name.value
                ),
            ));
        }
    }
    if !route.forwards() {
        problems.push(Problem::at(
            at,
            format!("route `{label}`: `grpc_transcode` needs a `service` to call"),
        ));
    }
    let combined = [
        ("transform", route.transform.is_some()),
        ("api", route.api.is_some()),
        ("cache", route.cache.is_some()),
        ("openapi", route.openapi.is_some()),
    ];
    for (option, present) in combined {
        if present {
            problems.push(Problem::at(
                at,
                format!("route `{label}`: `grpc_transcode` cannot be combined with `{option}`"),
            ));
        }
    }
    if transcode.max_body.0 == 0 {
        problems.push(Problem::at(
            at,
            format!("route `{label}`: `grpc_transcode.max_body` must be above zero"),
        ));
    }
}

fn validate_store(config: &Config, problems: &mut Vec<Problem>) {
    let Some(store) = &config.store else {
        return;
    };
    let url = &store.url.value.0;
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://"))
    {
        problems.push(Problem::at(
            &store.url.referenced,
            "`store.url` must start with `sqlite:` or `postgres://`",
        ));
    }
    if store.poll_interval.0.is_zero() {
        problems.push(Problem::at(
            &store.url.referenced,
            "`store.poll_interval` must be greater than 0",
        ));
    }
}

fn validate_protos(config: &Config, problems: &mut Vec<Problem>) {
    for (name, source) in &config.protos {
        match (&source.descriptor_set, source.files.is_empty()) {
            (Some(set), false) => problems.push(Problem::at(
                &set.referenced,
                format!("protos `{name}`: give `files` or `descriptor_set`, not both"),
            )),
            (None, true) => problems.push(Problem::at(
                &Location::UNKNOWN,
                format!("protos `{name}`: needs `files` or `descriptor_set`"),
            )),
            _ => {}
        }
    }
}

fn regex_problem(pattern: &str, err: &regex::Error) -> String {
    let text = err.to_string();
    let reason = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid");
    format!(
        "invalid regex `{pattern}`: {}",
        reason.trim_start_matches("error: ")
    )
}

fn check_template_uses(
    template: &str,
    captures: &[String],
    at: &Location,
    problems: &mut Vec<Problem>,
) {
    for name in template_captures(template) {
        if !captures.contains(&name) {
            problems.push(Problem::at(
                at,
                format!("`{{{name}}}` is not captured by this route's path match"),
            ));
        }
    }
}

/// Two routes with equal keys match exactly the same requests at the same priority.
fn conflict_key(matches: &RouteMatch, priority: i32) -> String {
    let mut hosts: Vec<String> = matches
        .hosts
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    hosts.sort();
    let mut methods = matches.methods.clone();
    methods.sort();
    let mut headers: Vec<String> = matches.headers.iter().map(|h| format!("{h:?}")).collect();
    headers.sort();
    let mut query: Vec<String> = matches.query.iter().map(|q| format!("{q:?}")).collect();
    query.sort();
    format!(
        "{hosts:?}|{:?}|{methods:?}|{headers:?}|{query:?}|{priority}",
        matches.path
    )
}
