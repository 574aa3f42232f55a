//! The mesh sections: membership, sidecar listeners, the control plane's services.

use std::collections::HashSet;
use std::net::SocketAddr;

use serde_saphyr::Spanned;

use crate::mesh::{MeshMembership, SidecarConfig};
use crate::model::Config;
use crate::problem::Problem;

pub(super) fn validate_mesh(config: &Config, problems: &mut Vec<Problem>) {
    if let Some(membership) = &config.mesh {
        validate_membership(membership, problems);
    }
    if let Some(sidecar) = &config.sidecar {
        if config.mesh.is_none() {
            problems.push(Problem::at(
                &sidecar.inbound.listen.referenced,
                "`sidecar` needs `mesh`: the identity it serves with and its control plane",
            ));
        }
        validate_sidecar(sidecar, problems);
    }
    if let Some(control) = &config.control {
        socket_address(&control.listen, problems);
        if control.lease.0 < std::time::Duration::from_secs(1) {
            problems.push(Problem::at(
                &control.listen.referenced,
                "`lease` must be at least 1s",
            ));
        }
        if control.certificate_lifetime.0 < std::time::Duration::from_secs(6) {
            problems.push(Problem::at(
                &control.listen.referenced,
                "`certificate_lifetime` must be at least 6s",
            ));
        }
        let mut names = HashSet::new();
        for service in &control.services {
            if !names.insert((service.namespace.as_str(), service.name.value.as_str())) {
                problems.push(Problem::at(
                    &service.name.referenced,
                    format!(
                        "mesh service `{}/{}` is declared twice",
                        service.namespace, service.name.value
                    ),
                ));
            }
            identity_segment(&service.name, problems);
            for route in &service.routes {
                if route.backends.iter().all(|b| b.weight == 0) {
                    problems.push(Problem::at(
                        &service.name.referenced,
                        "a route needs a backend with a weight above 0",
                    ));
                }
                for backend in &route.backends {
                    if !service.subsets.contains_key(&backend.subset.value) {
                        problems.push(Problem::at(
                            &backend.subset.referenced,
                            format!(
                                "subset `{}` is not among the service's `subsets`",
                                backend.subset.value
                            ),
                        ));
                    }
                    if backend.weight > 1000 {
                        problems.push(Problem::at(
                            &backend.subset.referenced,
                            format!("weight {} is outside 0..=1000", backend.weight),
                        ));
                    }
                }
            }
            if let Some(authorization) = &service.authorization {
                super::authorization::validate_authorization(
                    authorization,
                    &format!("mesh service `{}`", service.name.value),
                    problems,
                );
            }
        }
        for instance in &control.static_instances {
            if instance.address.parse::<SocketAddr>().is_err() {
                problems.push(Problem::at(
                    &control.listen.referenced,
                    format!(
                        "static instance `{}` is not an IP:PORT address",
                        instance.address
                    ),
                ));
            }
        }
    }
}

fn validate_membership(membership: &MeshMembership, problems: &mut Vec<Problem>) {
    if !membership.control.value.contains(':') {
        problems.push(Problem::at(
            &membership.control.referenced,
            format!(
                "`{}` is not a HOST:PORT address of the control plane",
                membership.control.value
            ),
        ));
    }
    identity_segment(&membership.service, problems);
}

fn validate_sidecar(sidecar: &SidecarConfig, problems: &mut Vec<Problem>) {
    socket_address(&sidecar.inbound.listen, problems);
    socket_address(&sidecar.inbound.application, problems);
    if let Some(advertise) = &sidecar.inbound.advertise {
        if advertise.parse::<SocketAddr>().is_err() {
            problems.push(Problem::at(
                &sidecar.inbound.listen.referenced,
                format!("`advertise: {advertise}` is not an IP:PORT address"),
            ));
        }
    }
    for outbound in &sidecar.outbound {
        socket_address(&outbound.listen, problems);
        identity_segment(&outbound.service, problems);
    }
    if let Some(proxy) = &sidecar.http_proxy {
        socket_address(&proxy.listen, problems);
    }
}

/// `spiffe://<trust domain>/ns/<namespace>/sa/<service>`: a service name is one path
/// segment.
fn identity_segment(name: &Spanned<String>, problems: &mut Vec<Problem>) {
    let valid = !name.value.is_empty()
        && name
            .value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        problems.push(Problem::at(
            &name.referenced,
            format!(
                "`{}` is not a service name (letters, digits, `-`, `_`, `.`)",
                name.value
            ),
        ));
    }
}

fn socket_address(address: &Spanned<String>, problems: &mut Vec<Problem>) {
    if address.value.parse::<SocketAddr>().is_err() {
        problems.push(Problem::at(
            &address.referenced,
            format!("`{}` is not an IP:PORT address", address.value),
        ));
    }
}
