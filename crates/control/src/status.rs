//! What the operator asks a control plane: which data planes watch it, which snapshot
//! version each was sent and which it applied or rejected (and why), and the registry it
//! serves. Kept in memory by each control plane for the data planes connected to it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use gatehouse_store::mesh::now_ms;
use serde::Serialize;

/// A disconnected data plane is still listed this long (its last state explains why it
/// left), then forgotten.
const FORGET_AFTER_MS: i64 = 3_600_000;

/// One data plane (a sidecar instance or a gateway), keyed by identity and node name.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DataPlane {
    /// SPIFFE identity from its client certificate.
    pub identity: String,
    /// The node name it watches with (a sidecar's instance id).
    pub node: String,
    /// Whether its snapshot stream to this control plane is open.
    pub connected: bool,
    pub connected_at_ms: i64,
    pub disconnected_at_ms: Option<i64>,
    /// The last snapshot version this control plane pushed to it.
    pub sent_version: Option<String>,
    pub sent_at_ms: Option<i64>,
    /// The last version it reported applied.
    pub applied_version: Option<String>,
    pub applied_at_ms: Option<i64>,
    /// The last version it refused, with its reason.
    pub rejected: Option<Rejection>,
    /// `in_sync` (applied what was sent), `pending` (sent, no answer yet), `rejected` (refused
    /// the last version sent; it keeps serving its previous one) or `disconnected`.
    pub state: &'static str,
    /// Which watch stream of the node is current: a reconnect replaces the entry, and the
    /// old stream closing afterwards must not mark the node disconnected.
    #[serde(skip)]
    stream: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rejection {
    pub version: String,
    pub reason: String,
    pub at_ms: i64,
}

impl DataPlane {
    fn new(identity: &str, node: &str, stream: u64) -> Self {
        Self {
            identity: identity.to_owned(),
            node: node.to_owned(),
            connected: stream != 0,
            connected_at_ms: now_ms(),
            disconnected_at_ms: None,
            sent_version: None,
            sent_at_ms: None,
            applied_version: None,
            applied_at_ms: None,
            rejected: None,
            state: "pending",
            stream,
        }
    }

    fn settle(&mut self) {
        self.state = if !self.connected {
            "disconnected"
        } else if self.sent_version.is_some() && self.sent_version == self.applied_version {
            "in_sync"
        } else if self.rejected.as_ref().map(|r| Some(&r.version))
            == Some(self.sent_version.as_ref())
        {
            "rejected"
        } else {
            "pending"
        };
    }
}

/// The data planes of this control plane.
#[derive(Default)]
pub(crate) struct DataPlanes {
    entries: Mutex<BTreeMap<(String, String), DataPlane>>,
    streams: std::sync::atomic::AtomicU64,
}

impl DataPlanes {
    fn with<R>(&self, identity: &str, node: &str, change: impl FnOnce(&mut DataPlane) -> R) -> R {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = entries
            .entry((identity.to_owned(), node.to_owned()))
            .or_insert_with(|| DataPlane::new(identity, node, 0));
        let result = change(entry);
        entry.settle();
        result
    }

    /// A watch stream opened; returns the stream's token for [`Self::sent`] and
    /// [`Self::closed`].
    pub fn connected(&self, identity: &str, node: &str) -> u64 {
        let stream = 1 + self
            .streams
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = now_ms();
        entries.retain(|_, plane| {
            plane
                .disconnected_at_ms
                .is_none_or(|at| now - at < FORGET_AFTER_MS)
        });
        let entry = entries
            .entry((identity.to_owned(), node.to_owned()))
            .or_insert_with(|| DataPlane::new(identity, node, stream));
        entry.stream = stream;
        entry.connected = true;
        entry.connected_at_ms = now;
        entry.disconnected_at_ms = None;
        // A new stream starts over: the first snapshot on it is sent whatever was sent before.
        entry.sent_version = None;
        entry.sent_at_ms = None;
        entry.settle();
        stream
    }

    pub fn sent(&self, identity: &str, node: &str, version: &str) {
        self.with(identity, node, |plane| {
            plane.sent_version = Some(version.to_owned());
            plane.sent_at_ms = Some(now_ms());
        });
    }

    pub fn closed(&self, identity: &str, node: &str, stream: u64) {
        self.with(identity, node, |plane| {
            if plane.stream == stream {
                plane.connected = false;
                plane.disconnected_at_ms = Some(now_ms());
            }
        });
    }

    pub fn acknowledged(&self, identity: &str, node: &str, version: &str, error: &str) {
        self.with(identity, node, |plane| {
            if error.is_empty() {
                plane.applied_version = Some(version.to_owned());
                plane.applied_at_ms = Some(now_ms());
            } else {
                plane.rejected = Some(Rejection {
                    version: version.to_owned(),
                    reason: error.to_owned(),
                    at_ms: now_ms(),
                });
            }
        });
    }

    pub fn list(&self) -> Vec<DataPlane> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "spiffe://mesh.local/ns/shop/sa/catalog";

    fn state(planes: &DataPlanes) -> &'static str {
        planes.list()[0].state
    }

    #[test]
    fn states_follow_send_ack_reject_and_disconnect() {
        let planes = DataPlanes::default();
        let stream = planes.connected(ID, "catalog-1");
        assert_eq!(state(&planes), "pending");
        planes.sent(ID, "catalog-1", "v1");
        assert_eq!(state(&planes), "pending");
        planes.acknowledged(ID, "catalog-1", "v1", "");
        assert_eq!(state(&planes), "in_sync");
        planes.sent(ID, "catalog-1", "v2");
        planes.acknowledged(ID, "catalog-1", "v2", "route `x`: no such service");
        assert_eq!(state(&planes), "rejected");
        let plane = &planes.list()[0];
        assert_eq!(plane.applied_version.as_deref(), Some("v1"));
        assert_eq!(
            plane.rejected.as_ref().map(|r| r.reason.as_str()),
            Some("route `x`: no such service")
        );
        // A later version applied clears the rejected state (the rejection stays listed).
        planes.sent(ID, "catalog-1", "v3");
        planes.acknowledged(ID, "catalog-1", "v3", "");
        assert_eq!(state(&planes), "in_sync");
        planes.closed(ID, "catalog-1", stream);
        assert_eq!(state(&planes), "disconnected");
    }

    #[test]
    fn an_old_stream_closing_after_a_reconnect_leaves_the_node_connected() {
        let planes = DataPlanes::default();
        let old = planes.connected(ID, "catalog-1");
        let _new = planes.connected(ID, "catalog-1");
        planes.closed(ID, "catalog-1", old);
        assert_eq!(planes.list().len(), 1);
        assert!(planes.list()[0].connected);
    }
}
