//! The data planes' connection to the control plane: gRPC over mesh TLS, the control plane
//! verified by its SPIFFE identity, the member's current certificate presented (none before
//! joining).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Status;

use crate::identity::SpiffeId;
use crate::member::{Member, Registration};
use crate::proto;
use crate::proto::mesh_control_client::MeshControlClient;

#[derive(Clone)]
pub struct ControlClient {
    grpc: MeshControlClient<Channel>,
}

impl ControlClient {
    /// A client for the control plane at `address` (`HOST:PORT`); connects lazily and
    /// reconnects as needed, so it can be made while the control plane is down.
    pub fn new(member: &Arc<Member>, address: &str) -> Result<Self, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))?
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let member = member.clone();
        let address = address.to_owned();
        let connector = tower::service_fn(move |_: Uri| {
            let member = member.clone();
            let address = address.clone();
            async move {
                let control = SpiffeId::control(&member.identity().trust_domain);
                let config = member
                    .client_config(control, &[b"h2"])
                    .map_err(std::io::Error::other)?;
                let tcp = tokio::net::TcpStream::connect(&address).await?;
                tcp.set_nodelay(true)?;
                // The name is not what is verified (the SPIFFE ID is); it only fills SNI.
                let name = ServerName::try_from("control.mesh").map_err(std::io::Error::other)?;
                let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                    .connect(name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        });
        Ok(Self {
            grpc: MeshControlClient::new(endpoint.connect_with_connector_lazy(connector)),
        })
    }

    pub async fn join(
        &self,
        token: &str,
        csr: Vec<u8>,
    ) -> Result<proto::IssuedCertificate, Status> {
        let mut request = tonic::Request::new(proto::JoinRequest {
            token: token.to_owned(),
            csr_der: csr,
        });
        request.set_timeout(Duration::from_secs(5));
        Ok(self.grpc.clone().join(request).await?.into_inner())
    }

    pub async fn renew(&self, csr: Vec<u8>) -> Result<proto::IssuedCertificate, Status> {
        let mut request = tonic::Request::new(proto::RenewRequest { csr_der: csr });
        request.set_timeout(Duration::from_secs(5));
        Ok(self.grpc.clone().renew(request).await?.into_inner())
    }

    pub async fn register(&self, registration: &Registration) -> Result<proto::Lease, Status> {
        let mut request = tonic::Request::new(proto::RegisterRequest {
            instance_id: registration.instance_id.clone(),
            address: registration.address.to_string(),
            labels: registration.labels.clone(),
        });
        request.set_timeout(Duration::from_secs(5));
        Ok(self.grpc.clone().register(request).await?.into_inner())
    }

    pub async fn heartbeat(&self, instance_id: &str) -> Result<proto::Lease, Status> {
        let mut request = tonic::Request::new(proto::HeartbeatRequest {
            instance_id: instance_id.to_owned(),
        });
        request.set_timeout(Duration::from_secs(5));
        Ok(self.grpc.clone().heartbeat(request).await?.into_inner())
    }

    pub async fn deregister(&self, instance_id: &str) -> Result<proto::Lease, Status> {
        let mut request = tonic::Request::new(proto::HeartbeatRequest {
            instance_id: instance_id.to_owned(),
        });
        request.set_timeout(Duration::from_secs(2));
        Ok(self.grpc.clone().deregister(request).await?.into_inner())
    }

    pub async fn watch(&self, node: &str) -> Result<tonic::Streaming<proto::Snapshot>, Status> {
        Ok(self
            .grpc
            .clone()
            .watch(proto::WatchRequest {
                node: node.to_owned(),
            })
            .await?
            .into_inner())
    }

    pub async fn ack(&self, node: &str, version: &str, error: &str) -> Result<(), Status> {
        let mut request = tonic::Request::new(proto::AckRequest {
            node: node.to_owned(),
            version: version.to_owned(),
            error: error.to_owned(),
        });
        request.set_timeout(Duration::from_secs(5));
        self.grpc.clone().ack(request).await?;
        Ok(())
    }
}
