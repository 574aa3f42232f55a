//! The sidecar's data plane is the gateway's: this module turns the sidecar's listeners and
//! the control plane's snapshot into a gateway configuration (listeners, services, routes in
//! the one vocabulary), which the usual validation, compilation and hot swap then serve.
//!
//! - `inbound`: mesh mTLS, the service's authorization, forwarded to the local application.
//! - `outbound-<service>`: plain HTTP from the application, to one mesh service.
//! - `http-proxy`: plain HTTP, the mesh service chosen by `Host`.
//!
//! Each mesh service becomes a gateway service with `mesh:` (endpoints from the registry,
//! mTLS checked for the service's SPIFFE ID), one more per subset a canary route names.
//! Opaque TCP ports are not HTTP and are served by [`tcp`] instead.

pub mod tcp;

use gatehouse_config::{MeshMembership, MeshProtocol, PortProtocol, SidecarConfig};
use gatehouse_mesh::proto;
use serde_json::{json, Map, Value};

pub const INBOUND_LISTENER: &str = "inbound";
pub const HTTP_PROXY_LISTENER: &str = "http-proxy";
pub const LOCAL_SERVICE: &str = "local";

/// Keys of the user's file that are not the generated configuration's business.
const ROLE_KEYS: [&str; 6] = [
    "mesh",
    "sidecar",
    "control",
    "listeners",
    "services",
    "routes",
];

/// The gateway configuration (JSON text, which YAML parsing reads) for this sidecar under
/// `snapshot`. `base` is the user's file as a value: its admin, metrics, access log and
/// tracing settings are kept.
pub fn gateway_config(
    base: &Value,
    sidecar: &SidecarConfig,
    membership: &MeshMembership,
    snapshot: &proto::Snapshot,
) -> String {
    let mut config: Map<String, Value> = base
        .as_object()
        .map(|object| {
            object
                .iter()
                .filter(|(key, _)| !ROLE_KEYS.contains(&key.as_str()))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        })
        .unwrap_or_default();
    let namespace = &membership.namespace;
    let http_destinations: Vec<&proto::Destination> = snapshot
        .destinations
        .iter()
        .filter(|d| d.protocol != "tcp")
        .collect();

    let (mut listeners, mut services, mut routes) = (Vec::new(), Vec::new(), Vec::new());
    if sidecar.inbound.protocol != MeshProtocol::Tcp {
        listeners.push(json!({
            "name": INBOUND_LISTENER,
            "listen": sidecar.inbound.listen.value,
            "mesh": true,
        }));
        services.push(json!({
            "name": LOCAL_SERVICE,
            "endpoints": [{ "address": sidecar.inbound.application.value }],
            "protocol": if sidecar.inbound.protocol == MeshProtocol::Http2 { "http2" } else { "http1" },
            // The caller's sidecar retries (within its budget); retrying here too would
            // multiply attempts.
            "retries": { "attempts": 0 },
        }));
        routes.push(json!({
            "name": INBOUND_LISTENER,
            "match": { "listeners": [INBOUND_LISTENER], "path": { "prefix": "/" } },
            "service": LOCAL_SERVICE,
            "authorization": authorization(snapshot.authorization.as_ref()),
        }));
    }

    for destination in &http_destinations {
        services.extend(destination_services(destination));
    }
    for outbound in sidecar
        .outbound
        .iter()
        .filter(|o| o.protocol == PortProtocol::Http)
    {
        let listener = format!("outbound-{}", outbound.service.value);
        listeners.push(json!({ "name": listener, "listen": outbound.listen.value }));
        // The sidecar's namespace, unless written as `service.namespace`.
        let (name, ns) = match outbound.service.value.split_once('.') {
            Some((name, ns)) => (name, ns),
            None => (outbound.service.value.as_str(), namespace.as_str()),
        };
        match http_destinations
            .iter()
            .find(|d| d.name == name && d.namespace == ns)
        {
            Some(destination) => routes.extend(destination_routes(destination, &listener, None)),
            // Not (yet) in the registry: a clear 503 rather than a 404.
            None => routes.push(json!({
                "name": listener,
                "match": { "listeners": [listener], "path": { "prefix": "/" } },
                "respond": {
                    "status": 503,
                    "content_type": "application/problem+json",
                    "body": format!("{{\"type\":\"about:blank\",\"title\":\"Service Unavailable\",\"status\":503,\"code\":\"mesh_service_unknown\",\"detail\":\"mesh service `{ns}/{name}` has no instances\"}}"),
                },
            })),
        }
    }
    if let Some(proxy) = &sidecar.http_proxy {
        listeners.push(json!({ "name": HTTP_PROXY_LISTENER, "listen": proxy.listen.value }));
        for destination in &http_destinations {
            let mut hosts = vec![format!("{}.{}", destination.name, destination.namespace)];
            if destination.namespace == *namespace {
                hosts.push(destination.name.clone());
            }
            routes.extend(destination_routes(
                destination,
                HTTP_PROXY_LISTENER,
                Some(hosts),
            ));
        }
    }
    config.insert("listeners".into(), Value::Array(listeners));
    config.insert("services".into(), Value::Array(services));
    config.insert("routes".into(), Value::Array(routes));
    serde_json::to_string_pretty(&Value::Object(config)).unwrap_or_default()
}

fn service_name(destination: &proto::Destination, subset: Option<&str>) -> String {
    match subset {
        Some(subset) => format!("{}.{}~{subset}", destination.name, destination.namespace),
        None => format!("{}.{}", destination.name, destination.namespace),
    }
}

/// The destination's service, and one per subset its routes use.
fn destination_services(destination: &proto::Destination) -> Vec<Value> {
    let policy = destination.policy.clone().unwrap_or_default();
    let service = |subset: Option<&str>| {
        let labels = subset
            .and_then(|name| destination.subsets.get(name))
            .map(|labels| labels.labels.clone())
            .unwrap_or_default();
        let mut service = json!({
            "name": service_name(destination, subset),
            "mesh": {
                "service": destination.name,
                "namespace": destination.namespace,
                "labels": labels,
            },
            "protocol": if destination.protocol == "http2" { "http2" } else { "http1" },
            "load_balancing": "least_request",
            "timeouts": { "request": format!("{}ms", policy.timeout_ms.max(1)) },
            "retries": {
                "attempts": policy.retry_attempts,
                "on_status": policy.retry_on_status,
                "budget_ratio": policy.retry_budget_ratio,
                "budget_min_per_second": policy.retry_budget_min_per_second,
                "backoff": format!("{}ms", policy.retry_backoff_ms),
            },
        });
        if policy.outlier_consecutive_failures > 0 {
            service["outlier_detection"] = json!({
                "consecutive_failures": policy.outlier_consecutive_failures,
                "base_ejection_time": format!("{}ms", policy.outlier_base_ejection_ms.max(1)),
                "max_ejection_time": format!("{}ms", policy.outlier_max_ejection_ms.max(1)),
                "max_ejection_percent": policy.outlier_max_ejection_percent,
            });
        }
        service
    };
    let mut subsets: Vec<&str> = destination
        .routes
        .iter()
        .flat_map(|route| route.backends.iter().map(|b| b.subset.as_str()))
        .collect();
    subsets.sort_unstable();
    subsets.dedup();
    std::iter::once(service(None))
        .chain(subsets.into_iter().map(|subset| service(Some(subset))))
        .collect()
}

/// The destination's routes on one listener, in the control plane's order (by priority),
/// then everything else to all of its instances.
fn destination_routes(
    destination: &proto::Destination,
    listener: &str,
    hosts: Option<Vec<String>>,
) -> Vec<Value> {
    let count = destination.routes.len() as i64;
    let matches = |headers: Vec<Value>, prefix: &str| {
        let mut matches = json!({
            "listeners": [listener],
            "path": { "prefix": if prefix.is_empty() { "/" } else { prefix } },
        });
        if let Some(hosts) = &hosts {
            matches["hosts"] = json!(hosts);
        }
        if !headers.is_empty() {
            matches["headers"] = Value::Array(headers);
        }
        matches
    };
    let mut routes: Vec<Value> = destination
        .routes
        .iter()
        .enumerate()
        .map(|(index, route)| {
            let headers = route
                .headers
                .iter()
                .map(|header| {
                    let mut value = json!({ "name": header.name });
                    if !header.exact.is_empty() {
                        value["exact"] = json!(header.exact);
                    } else if !header.regex.is_empty() {
                        value["regex"] = json!(header.regex);
                    } else {
                        value["present"] = json!(true);
                    }
                    value
                })
                .collect();
            json!({
                "name": format!("{listener}/{}/{index}", service_name(destination, None)),
                "match": matches(headers, &route.path_prefix),
                "priority": count - index as i64,
                "backends": route.backends.iter().map(|backend| json!({
                    "service": service_name(destination, Some(&backend.subset)),
                    "weight": backend.weight,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let catch_all = destination
        .routes
        .iter()
        .any(|route| route.headers.is_empty() && route.path_prefix.is_empty());
    if !catch_all {
        routes.push(json!({
            "name": format!("{listener}/{}", service_name(destination, None)),
            "match": matches(Vec::new(), "/"),
            "priority": 0,
            "service": service_name(destination, None),
        }));
    }
    routes
}

fn authorization(policy: Option<&proto::Authorization>) -> Value {
    let Some(policy) = policy else {
        return json!({ "default": "authenticated" });
    };
    let rules: Vec<Value> = policy
        .rules
        .iter()
        .map(|rule| {
            let mut value = Map::new();
            for (key, list) in [
                ("sources", &rule.sources),
                ("methods", &rule.methods),
                ("paths", &rule.paths),
            ] {
                if !list.is_empty() {
                    value.insert(key.into(), json!(list));
                }
            }
            Value::Object(value)
        })
        .collect();
    json!({
        "default": if policy.default_policy.is_empty() { "authenticated" } else { policy.default_policy.as_str() },
        "audit": policy.audit,
        "rules": rules,
    })
}
