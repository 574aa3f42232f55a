//! Workload identity for the Gatehouse mesh.
//!
//! - [`identity`]: SPIFFE IDs (`spiffe://<trust domain>/ns/<namespace>/sa/<service>`).
//! - [`ca`]: the certificate authority the control plane signs workload certificates with.
//! - [`tls`]: mTLS configurations that verify peers by SPIFFE ID and present a certificate
//!   that rotates in place.
//! - [`member`] and [`client`]: a data plane's side of the control-plane API: join, renew at
//!   two thirds of the certificate's life, register with a lease, follow pushed snapshots.
//! - [`proto`]: the control-plane API (`proto/gatehouse/mesh/v1/mesh.proto`).

pub mod ca;
pub mod client;
pub mod identity;
pub mod member;
pub mod tls;

#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("gatehouse.mesh.v1");
}

pub use client::ControlClient;
pub use identity::SpiffeId;
pub use member::{Apply, Member, MemberError, Registration};
