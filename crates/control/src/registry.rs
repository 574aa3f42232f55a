//! The registry as data planes see it: live instances from the store (every control plane of
//! a pair reads the same rows) plus the declared static ones, and the snapshot each watcher
//! gets from it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_config::{
    AuthorizationDefault, MeshProtocol, MeshServiceConfig, RetryPolicy, RouteAuthorization,
};
use gatehouse_mesh::{proto, SpiffeId};
use gatehouse_store::mesh::{now_ms, Instance};
use prost::Message;

use crate::{hex, ControlError, Shared};

/// Instance ids of `static_instances` start with this.
pub(crate) const STATIC_PREFIX: &str = "static:";

/// Live instances, ordered (stable snapshots, stable versions).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Registry {
    pub instances: Vec<Instance>,
}

/// Reads the registry from the store and publishes it if it changed.
pub(crate) async fn refresh(shared: &Shared) -> Result<(), ControlError> {
    let mut instances = shared.store.live_instances(now_ms()).await?;
    for declared in &shared.config.static_instances {
        instances.push(Instance {
            id: format!("{STATIC_PREFIX}{}", declared.address),
            namespace: declared.namespace.clone(),
            service: declared.service.clone(),
            address: declared.address.clone(),
            labels: declared.labels.clone(),
            lease_expires_at_ms: i64::MAX,
        });
    }
    // Lease times change with every heartbeat and are not what a snapshot is about.
    for instance in &mut instances {
        instance.lease_expires_at_ms = 0;
    }
    instances.sort_by(|a, b| {
        (&a.namespace, &a.service, &a.address, &a.id).cmp(&(
            &b.namespace,
            &b.service,
            &b.address,
            &b.id,
        ))
    });
    let registry = Registry { instances };
    shared.registry.send_if_modified(|current| {
        if **current == registry {
            return false;
        }
        *current = Arc::new(registry);
        true
    });
    Ok(())
}

/// Re-reads the registry every half second: expiries, and registrations another control
/// plane of the pair took. A store outage keeps the last registry (data planes keep
/// working) and is reported.
pub(crate) async fn follow(shared: Arc<Shared>) {
    let mut failing = false;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match refresh(&shared).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("control plane: store reachable again");
            }
            Ok(()) => {}
            Err(err) if !failing => {
                failing = true;
                tracing::error!(error = %err, "control plane: cannot read the registry; serving the last one");
            }
            Err(_) => {}
        }
    }
}

fn policy(service: Option<&MeshServiceConfig>) -> proto::TrafficPolicy {
    let default_retries = RetryPolicy::default();
    let retries = service.map_or(&default_retries, |s| &s.retries);
    let outlier = match service {
        Some(service) => service.outlier_detection.clone(),
        None => gatehouse_config::mesh_outlier_detection(),
    };
    proto::TrafficPolicy {
        timeout_ms: service.map_or(10_000, |s| s.timeout.0.as_millis() as u64),
        retry_attempts: retries.attempts,
        retry_on_status: retries.on_status.iter().map(|s| u32::from(*s)).collect(),
        retry_budget_ratio: retries.budget_ratio,
        retry_budget_min_per_second: retries.budget_min_per_second,
        retry_backoff_ms: retries.backoff.0.as_millis() as u64,
        outlier_consecutive_failures: outlier.as_ref().map_or(0, |o| o.consecutive_failures),
        outlier_base_ejection_ms: outlier
            .as_ref()
            .map_or(0, |o| o.base_ejection_time.0.as_millis() as u64),
        outlier_max_ejection_ms: outlier
            .as_ref()
            .map_or(0, |o| o.max_ejection_time.0.as_millis() as u64),
        outlier_max_ejection_percent: outlier.as_ref().map_or(0, |o| o.max_ejection_percent),
    }
}

fn destination(
    trust_domain: &str,
    namespace: &str,
    name: &str,
    service: Option<&MeshServiceConfig>,
    registry: &Registry,
) -> proto::Destination {
    proto::Destination {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        spiffe_id: SpiffeId::new(trust_domain, namespace, name).to_string(),
        protocol: service
            .map_or(MeshProtocol::Http1, |s| s.protocol)
            .as_str()
            .to_owned(),
        endpoints: registry
            .instances
            .iter()
            .filter(|i| i.namespace == namespace && i.service == name)
            .map(|i| proto::Endpoint {
                address: i.address.clone(),
                labels: i.labels.clone().into_iter().collect(),
            })
            .collect(),
        routes: service.map_or_else(Vec::new, |s| {
            s.routes
                .iter()
                .map(|route| proto::Route {
                    headers: route
                        .headers
                        .iter()
                        .map(|h| proto::HeaderMatch {
                            name: h.name.clone(),
                            exact: h.exact.clone().unwrap_or_default(),
                            regex: h.regex.clone().unwrap_or_default(),
                            present: h.present,
                        })
                        .collect(),
                    path_prefix: route.path_prefix.clone().unwrap_or_default(),
                    backends: route
                        .backends
                        .iter()
                        .map(|b| proto::Backend {
                            subset: b.subset.value.clone(),
                            weight: b.weight,
                        })
                        .collect(),
                })
                .collect()
        }),
        policy: Some(policy(service)),
        subsets: service.map_or_else(Default::default, |s| {
            s.subsets
                .iter()
                .map(|(name, labels)| {
                    (
                        name.clone(),
                        proto::Labels {
                            labels: labels.clone().into_iter().collect(),
                        },
                    )
                })
                .collect()
        }),
    }
}

/// Who may call a service; without a policy, any workload of the mesh (the inbound
/// listener admits only mesh certificates anyway).
fn authorization(policy: Option<&RouteAuthorization>) -> proto::Authorization {
    let Some(policy) = policy else {
        return proto::Authorization {
            default_policy: "authenticated".to_owned(),
            ..Default::default()
        };
    };
    proto::Authorization {
        default_policy: match policy.default {
            AuthorizationDefault::Allow => "allow",
            AuthorizationDefault::Authenticated => "authenticated",
            AuthorizationDefault::Deny => "deny",
        }
        .to_owned(),
        audit: policy.audit,
        rules: policy
            .rules
            .iter()
            .map(|rule| proto::AuthorizationRule {
                sources: rule.value.sources.iter().map(|s| s.value.clone()).collect(),
                methods: rule.value.methods.iter().map(|m| m.value.clone()).collect(),
                paths: rule.value.paths.iter().map(|p| p.value.clone()).collect(),
            })
            .collect(),
    }
}

/// Everything a watcher needs: every mesh service (declared or registered) with its live
/// endpoints and traffic policy, who may call the watcher's own service, the trust bundle.
/// The version is a digest of the content, so two control planes of a pair agree on it.
pub(crate) fn snapshot_for(
    shared: &Shared,
    registry: &Registry,
    caller: &SpiffeId,
) -> proto::Snapshot {
    let trust_domain = &shared.config.trust_domain;
    let declared = &shared.config.services;
    let mut names: BTreeSet<(&str, &str)> = declared
        .iter()
        .map(|s| (s.namespace.as_str(), s.name.value.as_str()))
        .collect();
    names.extend(
        registry
            .instances
            .iter()
            .map(|i| (i.namespace.as_str(), i.service.as_str())),
    );
    let find = |namespace: &str, name: &str| {
        declared
            .iter()
            .find(|s| s.namespace == namespace && s.name.value == name)
    };
    let mut snapshot = proto::Snapshot {
        version: String::new(),
        trust_bundle_der: shared.trust_bundle.iter().map(|der| der.to_vec()).collect(),
        destinations: names
            .iter()
            .map(|(namespace, name)| {
                destination(
                    trust_domain,
                    namespace,
                    name,
                    find(namespace, name),
                    registry,
                )
            })
            .collect(),
        authorization: Some(authorization(
            find(&caller.namespace, &caller.service).and_then(|s| s.authorization.as_ref()),
        )),
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &snapshot.encode_to_vec());
    snapshot.version = hex(&digest.as_ref()[..8]);
    snapshot
}
