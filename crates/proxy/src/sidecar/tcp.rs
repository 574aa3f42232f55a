//! Opaque TCP through the mesh: bytes pass untouched inside mTLS. The inbound side checks
//! the caller's identity against the service's authorization (rules with only `sources`
//! apply: there is no method or path to match) before it connects to the application; the
//! outbound side dials an endpoint of the destination, verifying its identity.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use gatehouse_config::{
    AuthorizationDefault, AuthorizationRule, Location, RouteAuthorization, Spanned,
};
use gatehouse_mesh::{proto, Member, SpiffeId};
use gatehouse_policy::authorization::{Authorization, Decision};
use tokio::net::{TcpListener, TcpStream};

/// The authorization of the snapshot's `authorization`, for connections.
pub fn authorization(policy: Option<&proto::Authorization>) -> Result<Authorization, String> {
    let spanned = |value| Spanned::new(value, Location::UNKNOWN, Location::UNKNOWN);
    let list = |items: &[String]| items.iter().cloned().map(spanned).collect();
    let config = match policy {
        None => RouteAuthorization {
            default: AuthorizationDefault::Authenticated,
            ..RouteAuthorization::default()
        },
        Some(policy) => RouteAuthorization {
            default: match policy.default_policy.as_str() {
                "allow" => AuthorizationDefault::Allow,
                "deny" => AuthorizationDefault::Deny,
                _ => AuthorizationDefault::Authenticated,
            },
            audit: policy.audit,
            rules: policy
                .rules
                .iter()
                .map(|rule| {
                    Spanned::new(
                        AuthorizationRule {
                            sources: list(&rule.sources),
                            methods: list(&rule.methods),
                            paths: list(&rule.paths),
                        },
                        Location::UNKNOWN,
                        Location::UNKNOWN,
                    )
                })
                .collect(),
        },
    };
    Authorization::new(&config, "inbound")
}

/// Accepts mTLS from other workloads and pipes each allowed connection to `application`.
pub async fn serve_inbound(
    listener: TcpListener,
    member: Arc<Member>,
    application: SocketAddr,
    policy: Arc<ArcSwap<Authorization>>,
) {
    loop {
        let Ok((tcp, peer_addr)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (member, policy) = (member.clone(), policy.clone());
        tokio::spawn(async move {
            let config = match member.server_config(&[]) {
                Ok(config) => config,
                Err(err) => {
                    tracing::warn!(error = %err, "mesh tcp: no server configuration");
                    return;
                }
            };
            let accepted = tokio::time::timeout(
                Duration::from_secs(10),
                tokio_rustls::TlsAcceptor::from(config).accept(tcp),
            )
            .await;
            let Ok(Ok(mut tls)) = accepted else {
                tracing::debug!(%peer_addr, "mesh tcp: handshake failed");
                return;
            };
            let peer = gatehouse_mesh::tls::peer_identity(tls.get_ref().1.peer_certificates())
                .map(|id| id.to_string());
            match policy.load().decide_connection(peer.as_deref()) {
                Decision::Allow => {}
                Decision::AuditDeny(denial) => {
                    tracing::warn!(peer = peer.as_deref().unwrap_or("-"), reason = %denial, "mesh tcp: authorization would refuse this connection; audit mode lets it through");
                }
                Decision::Deny(denial) => {
                    tracing::info!(peer = peer.as_deref().unwrap_or("-"), reason = %denial, "mesh tcp: connection refused by authorization");
                    return;
                }
            }
            match TcpStream::connect(application).await {
                Ok(mut app) => {
                    let _ = app.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut app).await;
                }
                Err(err) => {
                    tracing::warn!(%application, error = %err, "mesh tcp: application unreachable")
                }
            }
        });
    }
}

/// Accepts plain TCP from the local application and pipes it over mTLS to an instance of
/// `namespace/service`, trying up to three instances when a connection fails.
pub async fn serve_outbound(
    listener: TcpListener,
    member: Arc<Member>,
    namespace: String,
    service: String,
) {
    let peer = SpiffeId::new(&member.identity().trust_domain, &namespace, &service);
    loop {
        let Ok((mut local, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (member, peer, namespace, service) = (
            member.clone(),
            peer.clone(),
            namespace.clone(),
            service.clone(),
        );
        tokio::spawn(async move {
            let _ = local.set_nodelay(true);
            let mut endpoints = member.endpoints(&namespace, &service, &Default::default());
            fastrand::shuffle(&mut endpoints);
            let config = match member.client_config(peer.clone(), &[]) {
                Ok(config) => Arc::new(config),
                Err(err) => {
                    tracing::warn!(error = %err, "mesh tcp: no client configuration");
                    return;
                }
            };
            let name =
                rustls_pki_types::ServerName::try_from(format!("{service}.{namespace}.mesh"))
                    .unwrap_or_else(|_| {
                        rustls_pki_types::ServerName::from(std::net::Ipv4Addr::LOCALHOST)
                    });
            for endpoint in endpoints.into_iter().take(3) {
                let dial = async {
                    let tcp = TcpStream::connect(endpoint).await?;
                    tcp.set_nodelay(true)?;
                    tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name.clone(), tcp)
                        .await
                };
                match tokio::time::timeout(Duration::from_secs(5), dial).await {
                    Ok(Ok(mut remote)) => {
                        let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
                        return;
                    }
                    Ok(Err(err)) => {
                        tracing::warn!(%endpoint, %peer, error = %err, "mesh tcp: cannot reach an instance; trying another")
                    }
                    Err(_) => {
                        tracing::warn!(%endpoint, "mesh tcp: connection timed out; trying another")
                    }
                }
            }
            tracing::warn!(%peer, "mesh tcp: no instance reachable; closing");
        });
    }
}
