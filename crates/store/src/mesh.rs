//! The service mesh's control-plane state: its certificate authority, join tokens, the
//! instance registry with leases, and the issued-certificate log. Control planes of a highly
//! available pair share it through PostgreSQL; each reads the registry from here.

use std::collections::BTreeMap;

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{now, to_json, Store, StoreError};

/// The CA's certificate and key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAuthority {
    pub trust_domain: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Whom a join token lets in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub namespace: String,
    pub service: String,
    pub expires_at: Option<i64>,
}

/// A registered instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub namespace: String,
    pub service: String,
    pub address: String,
    pub labels: BTreeMap<String, String>,
    pub lease_expires_at_ms: i64,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    pub async fn mesh_authority(&self) -> Result<Option<StoredAuthority>, StoreError> {
        let row =
            sqlx::query("SELECT trust_domain, cert_pem, key_pem FROM mesh_authority WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        row.map(|row| {
            Ok(StoredAuthority {
                trust_domain: row.try_get("trust_domain")?,
                cert_pem: row.try_get("cert_pem")?,
                key_pem: row.try_get("key_pem")?,
            })
        })
        .transpose()
    }

    /// Keeps `authority` unless one is stored already, and returns the one that is: two
    /// control planes starting together on one database end up with the same CA.
    pub async fn init_mesh_authority(
        &self,
        authority: &StoredAuthority,
    ) -> Result<StoredAuthority, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO mesh_authority (id, trust_domain, cert_pem, key_pem, created_at) \
             VALUES (1, $1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&authority.trust_domain)
        .bind(&authority.cert_pem)
        .bind(&authority.key_pem)
        .bind(now())
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(authority.clone());
        }
        self.mesh_authority()
            .await?
            .ok_or_else(|| StoreError::Malformed("mesh_authority vanished".to_owned()))
    }

    pub async fn create_join_token(
        &self,
        token_hash: &str,
        namespace: &str,
        service: &str,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO mesh_join_tokens (token_hash, namespace, service, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash)
        .bind(namespace)
        .bind(service)
        .bind(now())
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The token's grant, when it exists and has not expired.
    pub async fn join_token(&self, token_hash: &str) -> Result<Option<JoinToken>, StoreError> {
        let row = sqlx::query(
            "SELECT namespace, service, expires_at FROM mesh_join_tokens WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let token = JoinToken {
            namespace: row.try_get("namespace")?,
            service: row.try_get("service")?,
            expires_at: row.try_get("expires_at")?,
        };
        Ok(token
            .expires_at
            .is_none_or(|at| at > now())
            .then_some(token))
    }

    /// Registers (or re-registers, after a control-plane restart) an instance with a lease.
    pub async fn register_instance(&self, instance: &Instance) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO mesh_instances \
               (id, namespace, service, address, labels_json, registered_at, lease_expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (id) DO UPDATE SET namespace = excluded.namespace, \
               service = excluded.service, address = excluded.address, \
               labels_json = excluded.labels_json, \
               lease_expires_at_ms = excluded.lease_expires_at_ms",
        )
        .bind(&instance.id)
        .bind(&instance.namespace)
        .bind(&instance.service)
        .bind(&instance.address)
        .bind(to_json(&instance.labels)?)
        .bind(now())
        .bind(instance.lease_expires_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Extends the lease of an instance of this service; false when there is none (expired
    /// and swept, or never registered): the sidecar registers again.
    pub async fn renew_instance_lease(
        &self,
        id: &str,
        namespace: &str,
        service: &str,
        lease_expires_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE mesh_instances SET lease_expires_at_ms = $1 \
             WHERE id = $2 AND namespace = $3 AND service = $4",
        )
        .bind(lease_expires_at_ms)
        .bind(id)
        .bind(namespace)
        .bind(service)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    pub async fn deregister_instance(
        &self,
        id: &str,
        namespace: &str,
        service: &str,
    ) -> Result<bool, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM mesh_instances WHERE id = $1 AND namespace = $2 AND service = $3",
        )
        .bind(id)
        .bind(namespace)
        .bind(service)
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected() == 1)
    }

    /// Pauses lease clocks across a time when no control plane ran: a data plane cannot
    /// renew a lease while nobody answers, so that time must not count against it.
    /// The newest lease tells when a control plane last granted one (`max - ttl_ms`); every
    /// lease granted by then is pushed back by the time since. Returns that time (ms), 0
    /// when a control plane was granting leases all along (the other plane of a pair).
    ///
    /// While the other plane of a pair runs, the newest lease is at most one heartbeat
    /// interval old, so a plane starting then pushes leases back by no more than that;
    /// leases renewed after the read are past the newest and left alone.
    pub async fn resume_leases(&self, now_ms: i64, ttl_ms: i64) -> Result<i64, StoreError> {
        let newest: Option<i64> =
            sqlx::query("SELECT MAX(lease_expires_at_ms) AS newest FROM mesh_instances")
                .fetch_one(&self.pool)
                .await?
                .try_get("newest")?;
        let Some(newest) = newest else {
            return Ok(0);
        };
        let away_ms = now_ms - (newest - ttl_ms);
        if away_ms <= 0 {
            return Ok(0);
        }
        sqlx::query(
            "UPDATE mesh_instances SET lease_expires_at_ms = lease_expires_at_ms + $1 \
             WHERE lease_expires_at_ms <= $2",
        )
        .bind(away_ms)
        .bind(newest)
        .execute(&self.pool)
        .await?;
        Ok(away_ms)
    }

    /// Instances whose lease runs past `now_ms`, ordered for stable snapshots; expired ones
    /// are deleted on the way.
    pub async fn live_instances(&self, now_ms: i64) -> Result<Vec<Instance>, StoreError> {
        sqlx::query("DELETE FROM mesh_instances WHERE lease_expires_at_ms <= $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "SELECT id, namespace, service, address, labels_json, lease_expires_at_ms \
             FROM mesh_instances ORDER BY namespace, service, address, id",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(instance_from_row)
        .collect()
    }

    pub async fn record_mesh_certificate(
        &self,
        serial: &str,
        spiffe_id: &str,
        not_after: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO mesh_certificates (serial, spiffe_id, issued_at, not_after) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(serial)
        .bind(spiffe_id)
        .bind(now())
        .bind(not_after)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

fn instance_from_row(row: &AnyRow) -> Result<Instance, StoreError> {
    let labels: String = row.try_get("labels_json")?;
    Ok(Instance {
        id: row.try_get("id")?,
        namespace: row.try_get("namespace")?,
        service: row.try_get("service")?,
        address: row.try_get("address")?,
        labels: serde_json::from_str(&labels)
            .map_err(|err| StoreError::Malformed(format!("instance labels: {err}")))?,
        lease_expires_at_ms: row.try_get("lease_expires_at_ms")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> Store {
        Store::open("sqlite::memory:")
            .await
            .expect("in-memory store")
    }

    #[tokio::test]
    async fn the_first_authority_stays() {
        let store = store().await;
        let first = StoredAuthority {
            trust_domain: "mesh.local".into(),
            cert_pem: "A".into(),
            key_pem: "a".into(),
        };
        let second = StoredAuthority {
            cert_pem: "B".into(),
            ..first.clone()
        };
        assert_eq!(store.init_mesh_authority(&first).await.unwrap(), first);
        assert_eq!(store.init_mesh_authority(&second).await.unwrap(), first);
    }

    #[tokio::test]
    async fn leases_expire_and_renewals_need_the_instance() {
        let store = store().await;
        let instance = Instance {
            id: "i-1".into(),
            namespace: "shop".into(),
            service: "orders".into(),
            address: "127.0.0.1:7001".into(),
            labels: BTreeMap::from([("version".into(), "v1".into())]),
            lease_expires_at_ms: 1_000,
        };
        store.register_instance(&instance).await.unwrap();
        assert_eq!(
            store.live_instances(999).await.unwrap(),
            vec![instance.clone()]
        );
        assert!(store
            .renew_instance_lease("i-1", "shop", "orders", 2_000)
            .await
            .unwrap());
        // Another service cannot renew (or hijack) this instance's lease.
        assert!(!store
            .renew_instance_lease("i-1", "shop", "payments", 9_000)
            .await
            .unwrap());
        assert_eq!(store.live_instances(1_500).await.unwrap().len(), 1);
        assert!(store.live_instances(2_000).await.unwrap().is_empty());
        assert!(!store
            .renew_instance_lease("i-1", "shop", "orders", 3_000)
            .await
            .unwrap());
    }

    async fn leases(store: &Store, now_ms: i64) -> Vec<i64> {
        let live = store.live_instances(now_ms).await.unwrap();
        live.iter().map(|i| i.lease_expires_at_ms).collect()
    }

    #[tokio::test]
    async fn leases_do_not_run_while_no_control_plane_does() {
        let store = store().await;
        assert_eq!(store.resume_leases(50_000, 3_000).await.unwrap(), 0);
        let instance = |id: &str, lease_expires_at_ms| Instance {
            id: id.into(),
            namespace: "shop".into(),
            service: "orders".into(),
            address: format!("127.0.0.1:{}", 7000 + id.len()),
            labels: BTreeMap::new(),
            lease_expires_at_ms,
        };
        // Last lease granted at 10 s (3 s leases): one renewed then, one that had 1 s left.
        store
            .register_instance(&instance("a", 13_000))
            .await
            .unwrap();
        store
            .register_instance(&instance("bb", 11_000))
            .await
            .unwrap();
        // The control plane comes back at 30 s: 20 s away, both keep what they had left.
        assert_eq!(store.resume_leases(30_000, 3_000).await.unwrap(), 20_000);
        assert_eq!(leases(&store, 30_000).await, vec![33_000, 31_000]);
        // A second plane starting 100 ms later pushes them back by those 100 ms only.
        assert_eq!(store.resume_leases(30_100, 3_000).await.unwrap(), 100);
        // A plane starting while leases are being granted pushes nothing.
        store
            .renew_instance_lease("a", "shop", "orders", 33_200)
            .await
            .unwrap();
        assert_eq!(store.resume_leases(30_200, 3_000).await.unwrap(), 0);
        assert_eq!(leases(&store, 30_200).await, vec![33_200, 31_100]);
    }

    #[tokio::test]
    async fn expired_tokens_admit_nobody() {
        let store = store().await;
        store
            .create_join_token("h1", "shop", "orders", None)
            .await
            .unwrap();
        store
            .create_join_token("h2", "shop", "orders", Some(now() - 1))
            .await
            .unwrap();
        assert_eq!(
            store.join_token("h1").await.unwrap().map(|t| t.service),
            Some("orders".to_owned())
        );
        assert_eq!(store.join_token("h2").await.unwrap(), None);
        assert_eq!(store.join_token("nope").await.unwrap(), None);
    }
}
