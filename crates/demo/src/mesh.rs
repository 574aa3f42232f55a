//! The mesh demo's applications and configurations: a storefront that calls a catalog (two
//! instances) and reviews (a v1/v2 canary) through its sidecar, each service behind its own
//! sidecar, the edge gateway in front, one control plane. `gatehouse demo --mesh` runs it.

use std::net::SocketAddr;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{json, Value};

/// The demo's addresses, all on loopback, derived from one base port.
#[derive(Debug, Clone, Copy)]
pub struct MeshPorts {
    pub base: u16,
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
}

/// One workload of the demo: its identity, its application and sidecar ports.
#[derive(Debug, Clone)]
pub struct Workload {
    pub service: &'static str,
    pub instance: &'static str,
    pub labels: &'static str,
    pub application: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl MeshPorts {
    pub fn control(&self) -> SocketAddr {
        local(self.base)
    }

    /// The control plane's admin API.
    pub fn control_admin(&self) -> SocketAddr {
        local(self.base + 40)
    }

    /// The storefront's outbound ports to the catalog and to reviews.
    pub fn storefront_outbound(&self) -> (SocketAddr, SocketAddr) {
        (local(self.base + 91), local(self.base + 92))
    }

    pub fn workloads(&self) -> Vec<Workload> {
        [
            ("storefront", "storefront-1", ""),
            ("catalog", "catalog-1", ""),
            ("catalog", "catalog-2", ""),
            ("reviews", "reviews-v1", "version: v1"),
            ("reviews", "reviews-v2", "version: v2"),
        ]
        .into_iter()
        .enumerate()
        .map(|(index, (service, instance, labels))| {
            let index = index as u16;
            Workload {
                service,
                instance,
                labels,
                application: local(self.base + 21 + index),
                inbound: local(self.base + 1 + index),
                admin: local(self.base + 41 + index),
            }
        })
        .collect()
    }
}

/// `control.yaml` of the demo.
pub fn control_config(
    ports: &MeshPorts,
    store: &std::path::Path,
    anchors: &std::path::Path,
) -> String {
    format!(
        r#"store:
  url: sqlite:{store}
control:
  listen: {control}
  trust_anchors_out: {anchors}
  services:
    - name: storefront
      namespace: shop
      authorization:
        default: deny
        rules:
          - sources: [spiffe://mesh.local/ns/edge/sa/gateway]
    - name: catalog
      namespace: shop
      authorization:
        default: deny
        rules:
          - sources: [spiffe://mesh.local/ns/shop/sa/storefront]
            methods: [GET]
    - name: reviews
      namespace: shop
      subsets:
        v1: {{ version: v1 }}
        v2: {{ version: v2 }}
      routes:
        - headers: [{{ name: x-canary, exact: "1" }}]
          backends: [{{ subset: v2, weight: 100 }}]
        - backends: [{{ subset: v1, weight: 90 }}, {{ subset: v2, weight: 10 }}]
admin:
  listen: {control_admin}
  token: ${{GATEHOUSE_ADMIN_TOKEN}}
"#,
        store = store.display(),
        control_admin = ports.control_admin(),
        control = ports.control(),
        anchors = anchors.display(),
    )
}

fn membership(
    ports: &MeshPorts,
    anchors: &std::path::Path,
    namespace: &str,
    service: &str,
    token_env: &str,
) -> String {
    format!(
        "mesh:\n  control: {control}\n  trust_anchors: {anchors}\n  namespace: {namespace}\n  service: {service}\n  join_token: ${{{token_env}}}\n",
        control = ports.control(),
        anchors = anchors.display(),
    )
}

/// A sidecar's configuration; its join token comes from `GATEHOUSE_JOIN_TOKEN`.
pub fn sidecar_config(ports: &MeshPorts, anchors: &std::path::Path, workload: &Workload) -> String {
    let mut yaml = membership(
        ports,
        anchors,
        "shop",
        workload.service,
        "GATEHOUSE_JOIN_TOKEN",
    );
    yaml.push_str(&format!(
        "sidecar:\n  inbound:\n    listen: {}\n    application: {}\n  labels: {{{}}}\n",
        workload.inbound, workload.application, workload.labels
    ));
    if workload.service == "storefront" {
        let (catalog, reviews) = ports.storefront_outbound();
        yaml.push_str(&format!(
            "  outbound:\n    - {{ listen: {catalog}, service: catalog }}\n    - {{ listen: {reviews}, service: reviews }}\n"
        ));
    }
    yaml.push_str(&format!(
        "admin:\n  listen: {}\n  token: ${{GATEHOUSE_ADMIN_TOKEN}}\n",
        workload.admin
    ));
    yaml
}

/// The edge gateway's configuration: `/` to the storefront, in the mesh as `edge/gateway`.
pub fn gateway_config(ports: &MeshPorts, anchors: &std::path::Path) -> String {
    let mut yaml = membership(ports, anchors, "edge", "gateway", "GATEHOUSE_JOIN_TOKEN");
    yaml.push_str(&format!(
        r#"admin:
  listen: {admin}
  token: ${{GATEHOUSE_ADMIN_TOKEN}}
listeners:
  - name: public
    listen: {gateway}
services:
  - name: storefront
    mesh: {{ service: storefront, namespace: shop }}
routes:
  - match: {{ path: {{ prefix: / }} }}
    service: storefront
"#,
        admin = ports.admin,
        gateway = ports.gateway,
    ));
    yaml
}

#[derive(Clone)]
struct Storefront {
    catalog: SocketAddr,
    reviews: SocketAddr,
}

/// The storefront application: a product page assembled from the catalog and reviews,
/// both called through its sidecar's outbound ports (plain HTTP on loopback).
pub fn storefront_router(catalog: SocketAddr, reviews: SocketAddr) -> Router {
    Router::new()
        .route("/products/{id}", get(product_page))
        .route("/health", get(|| async { "ok" }))
        .with_state(Storefront { catalog, reviews })
}

async fn product_page(
    State(storefront): State<Storefront>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Json<Value> {
    // The canary header is passed on, as an application passes on its request context.
    let canary = headers
        .get("x-canary")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (product_path, reviews_path) = (format!("/products/{id}"), format!("/reviews/{id}"));
    let (product, reviews) = tokio::join!(
        call(storefront.catalog, &product_path, None),
        call(storefront.reviews, &reviews_path, canary.as_deref()),
    );
    Json(json!({
        "product": id,
        "caller": headers.get("x-gatehouse-peer-identity").and_then(|v| v.to_str().ok()),
        "catalog": product,
        "reviews": reviews,
    }))
}

/// A GET through the sidecar: which instance answered and with what status.
async fn call(addr: SocketAddr, path: &str, canary: Option<&str>) -> Value {
    let outcome = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let mut request = axum::http::Request::get(path).header("host", addr.to_string());
        if let Some(canary) = canary {
            request = request.header("x-canary", canary);
        }
        let request = request
            .body(http_body_util::Empty::<axum::body::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let instance = response
            .headers()
            .get("x-demo-instance")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let peer = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
            v["headers"]["x-gatehouse-peer-identity"]
                .as_str()
                .map(str::to_owned)
        });
        Ok::<_, String>(json!({ "status": status, "instance": instance, "seen_caller": peer }))
    }
    .await;
    outcome.unwrap_or_else(|error| json!({ "error": error }))
}
