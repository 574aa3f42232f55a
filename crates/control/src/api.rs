//! The gRPC service data planes talk to, and the TLS listener it is served on.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_mesh::proto::mesh_control_server::{MeshControl, MeshControlServer};
use gatehouse_mesh::{proto, SpiffeId};
use gatehouse_store::mesh::{now_ms, Instance};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{registry, token_hash, Shared};

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let (connections, incoming) = mpsc::channel(64);
    // Handshakes run on their own tasks: a slow or silent client holds up nobody.
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "control plane: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = connections.send(Ok::<_, std::io::Error>(tls)).await;
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "control plane: TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "control plane: TLS handshake timed out"),
                }
            });
        }
    });
    let service = MeshControlServer::new(Api { shared });
    if let Err(err) = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(service)
        .serve_with_incoming(ReceiverStream::new(incoming))
        .await
    {
        tracing::error!(error = %err, "control plane: gRPC server stopped");
    }
}

struct Api {
    shared: Arc<Shared>,
}

impl Api {
    /// The caller's identity from its verified client certificate, in this trust domain.
    fn caller<T>(&self, request: &Request<T>) -> Result<SpiffeId, Status> {
        let certs = request.peer_certs();
        let identity = gatehouse_mesh::tls::peer_identity(certs.as_deref().map(Vec::as_slice))
            .ok_or_else(|| Status::unauthenticated("a mesh certificate is required"))?;
        if identity.trust_domain != self.shared.config.trust_domain {
            return Err(Status::permission_denied(format!(
                "{identity} is not in trust domain {}",
                self.shared.config.trust_domain
            )));
        }
        Ok(identity)
    }

    async fn issue(
        &self,
        csr: &[u8],
        identity: &SpiffeId,
    ) -> Result<proto::IssuedCertificate, Status> {
        let issued = self
            .shared
            .authority
            .issue(csr, identity, self.shared.config.certificate_lifetime.0)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        self.shared
            .store
            .record_mesh_certificate(&issued.serial, &identity.to_string(), issued.not_after)
            .await
            .map_err(store_unavailable)?;
        tracing::info!(%identity, serial = issued.serial, "control plane: certificate issued");
        Ok(proto::IssuedCertificate {
            chain_der: issued.chain.iter().map(|der| der.to_vec()).collect(),
            trust_bundle_der: self
                .shared
                .trust_bundle
                .iter()
                .map(|der| der.to_vec())
                .collect(),
            spiffe_id: identity.to_string(),
            not_before_unix: issued.not_before,
            not_after_unix: issued.not_after,
        })
    }

    fn lease(&self) -> proto::Lease {
        proto::Lease {
            ttl_ms: self.shared.config.lease.0.as_millis() as u64,
        }
    }
}

fn store_unavailable(err: gatehouse_store::StoreError) -> Status {
    tracing::error!(error = %err, "control plane: store failure");
    Status::unavailable("the control plane's store is unavailable")
}

#[tonic::async_trait]
impl MeshControl for Api {
    async fn join(
        &self,
        request: Request<proto::JoinRequest>,
    ) -> Result<Response<proto::IssuedCertificate>, Status> {
        let join = request.into_inner();
        let grant = self
            .shared
            .store
            .join_token(&token_hash(&join.token))
            .await
            .map_err(store_unavailable)?
            .ok_or_else(|| Status::permission_denied("unknown or expired join token"))?;
        let identity = SpiffeId::new(
            &self.shared.config.trust_domain,
            &grant.namespace,
            &grant.service,
        );
        Ok(Response::new(self.issue(&join.csr_der, &identity).await?))
    }

    async fn renew(
        &self,
        request: Request<proto::RenewRequest>,
    ) -> Result<Response<proto::IssuedCertificate>, Status> {
        let identity = self.caller(&request)?;
        let renew = request.into_inner();
        Ok(Response::new(self.issue(&renew.csr_der, &identity).await?))
    }

    async fn register(
        &self,
        request: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::Lease>, Status> {
        let identity = self.caller(&request)?;
        let register = request.into_inner();
        if register.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "`{}` is not an IP:PORT address",
                register.address
            )));
        }
        if register.instance_id.is_empty() {
            return Err(Status::invalid_argument("instance_id is empty"));
        }
        let instance = Instance {
            id: register.instance_id,
            namespace: identity.namespace.clone(),
            service: identity.service.clone(),
            address: register.address,
            labels: register.labels,
            lease_expires_at_ms: now_ms() + self.shared.config.lease.0.as_millis() as i64,
        };
        self.shared
            .store
            .register_instance(&instance)
            .await
            .map_err(store_unavailable)?;
        tracing::info!(%identity, instance = instance.id, address = instance.address, "control plane: instance registered");
        registry::refresh(&self.shared)
            .await
            .map_err(|err| Status::unavailable(err.to_string()))?;
        Ok(Response::new(self.lease()))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::Lease>, Status> {
        let identity = self.caller(&request)?;
        let id = request.into_inner().instance_id;
        let until = now_ms() + self.shared.config.lease.0.as_millis() as i64;
        let renewed = self
            .shared
            .store
            .renew_instance_lease(&id, &identity.namespace, &identity.service, until)
            .await
            .map_err(store_unavailable)?;
        if !renewed {
            return Err(Status::not_found(format!("no lease for instance `{id}`")));
        }
        Ok(Response::new(self.lease()))
    }

    async fn deregister(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::Lease>, Status> {
        let identity = self.caller(&request)?;
        let id = request.into_inner().instance_id;
        self.shared
            .store
            .deregister_instance(&id, &identity.namespace, &identity.service)
            .await
            .map_err(store_unavailable)?;
        tracing::info!(%identity, instance = id, "control plane: instance deregistered");
        registry::refresh(&self.shared)
            .await
            .map_err(|err| Status::unavailable(err.to_string()))?;
        Ok(Response::new(proto::Lease { ttl_ms: 0 }))
    }

    type WatchStream = ReceiverStream<Result<proto::Snapshot, Status>>;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let identity = self.caller(&request)?;
        let node = request.into_inner().node;
        let (sender, receiver) = mpsc::channel(4);
        let shared = self.shared.clone();
        let mut changes = shared.registry.subscribe();
        tracing::info!(%identity, node, "control plane: data plane watching");
        let caller = identity.to_string();
        let stream = shared.data_planes.connected(&caller, &node);
        tokio::spawn(async move {
            let mut sent = String::new();
            loop {
                let registry = changes.borrow_and_update().clone();
                let snapshot = registry::snapshot_for(&shared, &registry, &identity);
                if snapshot.version != sent {
                    sent = snapshot.version.clone();
                    if sender.send(Ok(snapshot)).await.is_err() {
                        break; // the watcher went away
                    }
                    shared.data_planes.sent(&caller, &node, &sent);
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    () = sender.closed() => break,
                }
            }
            shared.data_planes.closed(&caller, &node, stream);
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn ack(
        &self,
        request: Request<proto::AckRequest>,
    ) -> Result<Response<proto::AckResponse>, Status> {
        let identity = self.caller(&request)?;
        let ack = request.into_inner();
        self.shared.data_planes.acknowledged(
            &identity.to_string(),
            &ack.node,
            &ack.version,
            &ack.error,
        );
        if ack.error.is_empty() {
            tracing::debug!(%identity, node = ack.node, version = ack.version, "control plane: snapshot applied");
        } else {
            tracing::warn!(%identity, node = ack.node, version = ack.version, reason = ack.error, "control plane: snapshot rejected");
        }
        Ok(Response::new(proto::AckResponse {}))
    }
}
