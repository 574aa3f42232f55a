//! `gatehouse explain`: what the gateway would do with a request, without sending anything
//! upstream. Which route takes it and why each route tried before it did not, the policy
//! chain with the decision each policy can take here, and the action.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::{json, Value};

use crate::pipeline::normalize_path;
use crate::router::RequestView;
use crate::snapshot::{Backends, RouteAction, Snapshot};
use crate::upstream::Service;
use gatehouse_policy::authorization::Decision;
use gatehouse_policy::{AccessOutcome, LimitRequest, RequestInfo};

/// The request to explain.
pub struct ExplainRequest {
    pub method: Method,
    /// Absolute URL: `https://api.example.com/orders/42?x=1`.
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// The client address policies see (default 127.0.0.1).
    pub client_ip: Option<IpAddr>,
    /// `snapshot` is the running gateway's: read its rate-limit and quota counters
    /// (without counting this request).
    pub live: bool,
}

/// Explain `request` against `snapshot`; the report is JSON (`render_text` for people).
/// The request arrives on the only listener, or on the one whose port is the URL's.
pub async fn explain(snapshot: &Snapshot, request: &ExplainRequest) -> Result<Value, String> {
    explain_on(snapshot, request, None).await
}

/// [`explain`] for a request that arrives on listener `listener` (by name; `None`: found
/// from the URL as [`explain`] does).
pub async fn explain_on(
    snapshot: &Snapshot,
    request: &ExplainRequest,
    listener: Option<&str>,
) -> Result<Value, String> {
    if let Some(name) = listener {
        if !snapshot
            .config
            .listeners
            .iter()
            .any(|l| l.name.value == name)
        {
            return Err(format!("no listener `{name}` in the configuration"));
        }
    }
    let uri: http::Uri = request
        .url
        .parse()
        .map_err(|_| format!("`{}` is not a URL", request.url))?;
    let authority = uri
        .authority()
        .ok_or("give an absolute URL, like http://api.example.com/path")?
        .clone();
    let host = authority.host().to_ascii_lowercase();
    let scheme = uri.scheme_str().unwrap_or("http").to_owned();
    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("invalid header name `{name}`"))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("invalid value for header `{name}`"))?;
        headers.append(name, value);
    }
    let path = normalize_path(uri.path()).ok_or("the path climbs above the root")?;
    let listener = listener.or_else(|| listener_for(snapshot, &uri));
    let view = RequestView {
        host: &host,
        method: &request.method,
        path: &path,
        query: uri.query(),
        headers: &headers,
        listener,
    };
    let (matched, considered) = snapshot.router.explain(&view);
    let routes = snapshot.router.routes();
    let config = &snapshot.config;
    let line_of = |index: usize| config.routes[index].matches.referenced.line();
    let trail: Vec<Value> = considered
        .iter()
        .map(|c| {
            json!({
                "route": routes[c.route].name,
                "index": c.route,
                "line": line_of(c.route),
                "host_group": c.host_group,
                "priority": c.priority,
                "path_match": c.path_kind,
                "result": match &c.mismatch {
                    None => "matched".to_owned(),
                    Some(mismatch) => mismatch.to_string(),
                },
            })
        })
        .collect();
    let mut report = json!({
        "request": {
            "method": request.method.as_str(),
            "scheme": scheme,
            "host": host,
            "path": path,
            "query": uri.query(),
            "listener": listener,
        },
        "considered": trail,
    });
    let Some(matched) = matched else {
        report["route"] = Value::Null;
        report["outcome"] = json!("404 route_not_found: no route takes this request");
        return Ok(report);
    };
    let route = &matched.route.payload;
    let route_config = &config.routes[matched.route.index];
    report["route"] = json!({
        "name": matched.route.name,
        "index": matched.route.index,
        "line": line_of(matched.route.index),
        "captures": matched.captures.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
    });

    let client_ip = request.client_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let mut policies = Vec::new();
    let mut outcome: Option<String> = None;
    if let Some(authorization) = &route.authorization {
        // Explain has no TLS connection: it decides as for a peer without a certificate.
        let decision = match authorization.decide(None, &request.method, &path) {
            Decision::Allow => "allowed (for a peer without a client certificate)".to_owned(),
            Decision::AuditDeny(denial) => {
                format!("would refuse ({denial}); audit mode lets it through")
            }
            Decision::Deny(denial) => {
                outcome.get_or_insert(format!("403 peer_not_authorized: {denial}"));
                format!("refused (for a peer without a client certificate): {denial}")
            }
        };
        policies.push(json!({ "policy": "authorization", "decision": decision }));
    }
    if let Some(filter) = &route.ip_filter {
        let decision = match filter.check(client_ip) {
            Ok(()) => format!("client {client_ip} allowed"),
            Err(rejection) => {
                outcome.get_or_insert(answer(&rejection));
                format!("refused: {}", rejection.detail)
            }
        };
        policies.push(json!({ "policy": "ip_filter", "decision": decision }));
    }
    if let Some(shaping) = &route.shaping {
        let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let decision = match shaping.check(&request.method, target, &headers) {
            Ok(()) => "accepted".to_owned(),
            Err(rejection) => {
                outcome.get_or_insert(answer(&rejection));
                format!("refused: {}", rejection.detail)
            }
        };
        policies.push(json!({ "policy": "request", "decision": decision }));
    }
    let mut identity = None;
    if let Some(access) = &route.access {
        let info = RequestInfo {
            method: &request.method,
            path: &path,
            query: uri.query(),
            headers: &headers,
            captures: &matched.captures,
            client_ip,
            client_certificate: None,
            scheme: &scheme,
            authority: authority.as_str(),
        };
        let methods: Vec<&str> = route_config
            .auth
            .iter()
            .flat_map(|a| a.methods.iter().map(|m| m.value.as_str()))
            .collect();
        let check =
            tokio::time::timeout(std::time::Duration::from_secs(5), access.check(&info)).await;
        let decision = match check {
            Ok(Ok(AccessOutcome::Granted(granted))) => {
                identity = Some(granted.identity.clone());
                format!(
                    "granted: consumer `{}` ({})",
                    granted.identity.consumer.id, granted.identity.credential
                )
            }
            Ok(Ok(AccessOutcome::Respond(response))) => {
                outcome.get_or_insert(format!(
                    "{} answered by the authentication method (login redirect or callback)",
                    response.status().as_u16()
                ));
                format!("answered by the method: {}", response.status().as_u16())
            }
            Ok(Err(rejection)) => {
                outcome.get_or_insert(answer(&rejection));
                format!(
                    "refused: {} {} ({})",
                    rejection.status.as_u16(),
                    rejection.code,
                    rejection.detail
                )
            }
            Err(_) => "undecided: the identity provider did not answer within 5 s".to_owned(),
        };
        policies.push(json!({ "policy": "auth", "methods": methods, "decision": decision }));
    }
    let limit_request = LimitRequest {
        identity: identity.as_deref(),
        client_ip,
        route: &matched.route.name,
        headers: &headers,
    };
    for (name, limiter) in route_config.rate_limits.iter().zip(&route.rate_limits) {
        let mode = config
            .rate_limits
            .get(&name.value)
            .map(|p| format!("{:?}", p.value.mode).to_lowercase())
            .unwrap_or_default();
        let mut entry = json!({ "policy": "rate_limit", "name": name.value, "mode": mode });
        let peeked = match request.live {
            true => Some(limiter.peek(&limit_request).await),
            false => None,
        };
        entry["decision"] = match peeked {
            None => json!("counts this request; counters live in the running gateway (or Redis): ask the admin API's explain for their state"),
            Some(Err(message)) => json!(format!("counts this request; its state could not be read: {message}")),
            Some(Ok(states)) => {
                let refusing = states.iter().find(|s| !s.allowed);
                let decision = match refusing {
                    Some(state) => {
                        outcome.get_or_insert(format!("429 rate_limited: limit `{}` is exhausted", state.name));
                        format!("would refuse: limit `{}` allows {} per {} s; retry in {} s", state.name, state.requests, state.per_seconds, state.retry_after_seconds)
                    }
                    None => {
                        let tightest = states.iter().min_by_key(|s| s.remaining);
                        match tightest {
                            Some(s) => format!("would pass: {} left on limit `{}` after it ({} per {} s)", s.remaining, s.name, s.requests, s.per_seconds),
                            None => "would pass".to_owned(),
                        }
                    }
                };
                entry["limits"] = json!(states);
                json!(decision)
            }
        };
        policies.push(entry);
    }
    for (name, quota) in route_config.quotas.iter().zip(&route.quotas) {
        let mut entry = json!({ "policy": "quota", "name": name.value });
        entry["decision"] = if !request.live {
            json!("counts this request; counters live in the running gateway: ask the admin API's explain for their state")
        } else {
            match quota.peek(&limit_request).await {
                Ok(state) => {
                    let decision = if state.remaining == 0 {
                        outcome.get_or_insert(format!(
                            "429 quota_exceeded: quota `{}` is used up",
                            name.value
                        ));
                        format!(
                            "would refuse: {} of {} used; the period ends in {} s",
                            state.used, state.allowance, state.reset_seconds
                        )
                    } else {
                        format!(
                            "would pass: {} of {} used this period",
                            state.used, state.allowance
                        )
                    };
                    entry["state"] = json!(state);
                    json!(decision)
                }
                Err(message) => json!(format!("unknown: {message}")),
            }
        };
        policies.push(entry);
    }
    if let Some(rules) = &route.openapi {
        let decision = match rules.check_request(&request.method, &path, uri.query(), &headers) {
            Ok(found) => format!(
                "parameters valid for operation `{}` (a body is checked when it arrives)",
                found.operation.id.as_deref().unwrap_or("-")
            ),
            Err(rejection) => {
                outcome.get_or_insert(answer(&rejection));
                let violations = rejection.extensions.clone().unwrap_or(Value::Null);
                format!(
                    "refused: {} {} {}",
                    rejection.status.as_u16(),
                    rejection.code,
                    violations
                )
            }
        };
        policies.push(json!({ "policy": "openapi", "decision": decision }));
    }
    if let Some(max) = route_config.max_in_flight {
        policies.push(json!({ "policy": "max_in_flight", "decision": format!("at most {max} requests of this route at once") }));
    }
    let mut backend_version = None;
    if let (Some(api), RouteAction::Forward { rewrite, .. }) = (&route.api, &route.action) {
        let forwarded = match rewrite {
            Some(rewrite) => rewrite.apply(&path, &matched.captures),
            None => path.to_string(),
        };
        let consumer = identity.as_ref().map(|i| &*i.consumer);
        let entry = match api.select(&forwarded, uri.query(), &headers, consumer) {
            Ok(selected) => {
                backend_version = Some(api.version_name(selected.target).to_owned());
                let client = api.version_name(selected.index);
                let backend = api.version_name(selected.target);
                let decision = if selected.index == selected.target {
                    format!("version `{client}`, spoken by the backend")
                } else {
                    format!("version `{client}`: the request is upgraded to `{backend}`, the answer downgraded back")
                };
                json!({ "policy": "version", "api": api.name, "version": client, "backend_version": backend, "decision": decision })
            }
            Err(err) => {
                let response_status = err.status().as_u16();
                let decision = format!("refused: {response_status} {} ({err})", err.code());
                outcome.get_or_insert(format!("{response_status} {}: {err}", err.code()));
                json!({ "policy": "version", "api": api.name, "decision": decision })
            }
        };
        policies.push(entry);
    }
    if let (Some(cache), RouteAction::Forward { .. }) = (&route.cache, &route.action) {
        let consumer = identity.as_ref().map(|i| i.consumer.id.as_str());
        let lookup = cache.lookup(&crate::cache::CacheRequest {
            method: &request.method,
            host: &host,
            path: &path,
            query: uri.query(),
            headers: &headers,
            consumer,
            version: backend_version.as_deref(),
            // A split draws its backend per request: this key is without it (a live request's
            // adds `b=<service>`), so on a split route the state shown is the generic key's.
            backend: None,
        });
        let entry = match lookup {
            None => {
                json!({ "policy": "cache", "decision": "bypass: only GET and HEAD without Range, Upgrade or `Cache-Control: no-store` use the cache" })
            }
            Some(lookup) if lookup.is_refresh() => json!({
                "policy": "cache",
                "key": lookup.key(),
                "decision": "refresh: the client asks for a fresh answer (no-cache); forwarded, and the answer stored if it may be",
            }),
            Some(lookup) if !request.live => json!({
                "policy": "cache",
                "key": lookup.key(),
                "decision": "looks this key up; entries live in the running gateway: ask the admin API's explain for their state",
            }),
            Some(lookup) => {
                use crate::cache::Peeked;
                let (state, key, age) = cache.peek(&lookup, &headers);
                let age = age.map(|a| a.as_secs());
                let decision = match state {
                    Peeked::Fresh => {
                        outcome.get_or_insert(format!(
                            "answered from the cache (fresh entry, age {} s); nothing is forwarded",
                            age.unwrap_or(0)
                        ));
                        "hit: a fresh entry answers".to_owned()
                    }
                    Peeked::StaleWhileRevalidate => {
                        outcome.get_or_insert(
                            "answered from the cache (stale entry within stale-while-revalidate); revalidated in the background".to_owned(),
                        );
                        "stale: served at once and revalidated in the background".to_owned()
                    }
                    Peeked::Stale => "stale: forwarded to revalidate the stored entry".to_owned(),
                    Peeked::Pass => {
                        "pass: the last answer for this key could not be stored; forwarded"
                            .to_owned()
                    }
                    Peeked::Absent => {
                        "miss: forwarded, and the answer stored if it may be".to_owned()
                    }
                };
                json!({
                    "policy": "cache",
                    "key": key,
                    "state": state.label(),
                    "age_seconds": age,
                    "decision": decision,
                })
            }
        };
        policies.push(entry);
    }
    report["policies"] = Value::Array(policies);

    report["action"] = match &route.action {
        RouteAction::Respond { status, .. } => json!({ "respond": status.as_u16() }),
        RouteAction::Redirect(redirect) => json!({ "redirect": redirect }),
        RouteAction::Forward {
            backends, rewrite, ..
        } => {
            let upstream_path = match rewrite {
                Some(rewrite) => rewrite.apply(&path, &matched.captures),
                None => path.to_string(),
            };
            let now = crate::upstream::endpoint::now_ms();
            let endpoints = |service: &Service| -> Vec<Value> {
                service
                    .endpoints()
                    .endpoints
                    .iter()
                    .map(|e| json!({ "address": e.addr.to_string(), "weight": e.weight, "available": e.is_available(now) }))
                    .collect()
            };
            let mut forward = json!({
                "upstream_path": upstream_path,
                "mirror": route_config.mirror.as_ref().map(|m| m.service.value.clone()),
            });
            match backends {
                Backends::One(service) => {
                    forward["service"] = json!(service.name);
                    forward["load_balancing"] = json!(service.config.load_balancing);
                    forward["endpoints"] = json!(endpoints(service));
                }
                split => {
                    forward["backends"] = split
                        .weighted()
                        .into_iter()
                        .map(|(service, weight)| {
                            json!({
                                "service": service.name,
                                "weight": weight,
                                "load_balancing": service.config.load_balancing,
                                "endpoints": endpoints(service),
                            })
                        })
                        .collect();
                }
            }
            json!({ "forward": forward })
        }
    };
    report["outcome"] = json!(outcome.unwrap_or_else(|| "the action runs".to_owned()));
    Ok(report)
}

/// The report as text for a person.
pub fn render_text(report: &Value) -> String {
    let mut out = String::new();
    let request = &report["request"];
    out.push_str(&format!(
        "{} {}://{}{}{}\n\n",
        request["method"].as_str().unwrap_or(""),
        request["scheme"].as_str().unwrap_or("http"),
        request["host"].as_str().unwrap_or(""),
        request["path"].as_str().unwrap_or(""),
        request["query"]
            .as_str()
            .map(|q| format!("?{q}"))
            .unwrap_or_default(),
    ));
    out.push_str("Routes tried, in order:\n");
    let considered = report["considered"].as_array().cloned().unwrap_or_default();
    if considered.is_empty() {
        out.push_str("  (none: no route's host and path fit)\n");
    }
    for step in &considered {
        out.push_str(&format!(
            "  {:<24} line {:<4} {} / priority {} / {} path: {}\n",
            step["route"].as_str().unwrap_or(""),
            step["line"],
            step["host_group"].as_str().unwrap_or(""),
            step["priority"],
            step["path_match"].as_str().unwrap_or(""),
            step["result"].as_str().unwrap_or(""),
        ));
    }
    match report["route"].as_object() {
        None => out.push_str("\nNo route matches.\n"),
        Some(route) => {
            out.push_str(&format!(
                "\nRoute: {} (line {})\n",
                route["name"].as_str().unwrap_or(""),
                route["line"]
            ));
            if let Some(captures) = route["captures"].as_object().filter(|c| !c.is_empty()) {
                let list: Vec<String> = captures
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect();
                out.push_str(&format!("  captures: {}\n", list.join(", ")));
            }
            let policies = report["policies"].as_array().cloned().unwrap_or_default();
            if !policies.is_empty() {
                out.push_str("\nPolicies, in order:\n");
            }
            for (step, policy) in policies.iter().enumerate() {
                let name = policy["name"]
                    .as_str()
                    .map(|n| format!(" `{n}`"))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "  {}. {}{}: {}\n",
                    step + 1,
                    policy["policy"].as_str().unwrap_or(""),
                    name,
                    policy["decision"].as_str().unwrap_or("")
                ));
            }
            out.push_str(&format!(
                "\nAction: {}\n",
                describe_action(&report["action"])
            ));
        }
    }
    out.push_str(&format!(
        "Outcome: {}\n",
        report["outcome"].as_str().unwrap_or("")
    ));
    out
}

fn describe_action(action: &Value) -> String {
    if let Some(forward) = action.get("forward") {
        let endpoints = |backend: &Value| -> String {
            let list: Vec<String> = backend["endpoints"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .map(|e| {
                            let state = if e["available"] == Value::Bool(true) {
                                "available"
                            } else {
                                "unavailable"
                            };
                            format!("{} ({state})", e["address"].as_str().unwrap_or(""))
                        })
                        .collect()
                })
                .unwrap_or_default();
            list.join(", ")
        };
        let mut text = match forward["backends"].as_array() {
            Some(backends) => {
                let split: Vec<String> = backends
                    .iter()
                    .map(|b| {
                        format!(
                            "`{}` weight {} ({}; endpoints: {})",
                            b["service"].as_str().unwrap_or(""),
                            b["weight"],
                            b["load_balancing"],
                            endpoints(b)
                        )
                    })
                    .collect();
                format!(
                    "forward as {} to one service drawn by weight: {}",
                    forward["upstream_path"].as_str().unwrap_or(""),
                    split.join("; ")
                )
            }
            None => format!(
                "forward to service `{}` ({}) as {}; endpoints: {}",
                forward["service"].as_str().unwrap_or(""),
                forward["load_balancing"],
                forward["upstream_path"].as_str().unwrap_or(""),
                endpoints(forward)
            ),
        };
        if let Some(mirror) = forward["mirror"].as_str() {
            text.push_str(&format!("; mirrored to `{mirror}`"));
        }
        return text;
    }
    if let Some(status) = action.get("respond") {
        return format!("respond {status}");
    }
    if let Some(redirect) = action.get("redirect") {
        return format!("redirect {redirect}");
    }
    action.to_string()
}

/// The listener a request for `uri` would arrive on: the only one, or the one whose port is
/// the URL's (`None` when that does not single one out).
fn listener_for<'s>(snapshot: &'s Snapshot, uri: &http::Uri) -> Option<&'s str> {
    let listeners = &snapshot.config.listeners;
    if let [only] = listeners.as_slice() {
        return Some(&only.name.value);
    }
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let mut on_port = listeners.iter().filter(|listener| {
        listener
            .listen
            .value
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|addr| addr.port() == port)
    });
    match (on_port.next(), on_port.next()) {
        (Some(listener), None) => Some(&listener.name.value),
        _ => None,
    }
}

/// What the client would get for a refusal: `401 credentials_missing: <detail>`.
fn answer(rejection: &gatehouse_policy::Rejection) -> String {
    format!(
        "{} {}: {}",
        rejection.status.as_u16(),
        rejection.code,
        rejection.detail
    )
}
