//! The durable store: SQLite (a file, the default) or PostgreSQL (for fleets), through one
//! code path (sqlx's `Any` driver, portable SQL, the same migrations).
//!
//! Every change bumps a version in the same transaction. Gateways keep an in-memory copy
//! (the request path never waits on the database) and reload it when the version moves:
//! PostgreSQL pushes `NOTIFY gatehouse_changes` to every gateway of a fleet; the version is
//! also polled, which is all SQLite needs and what covers a lost notification. When the
//! database is unreachable, followers keep their last copy and say so.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

/// The PostgreSQL channel changes are announced on.
pub const CHANGES_CHANNEL: &str = "gatehouse_changes";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store `{url}`: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("store migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("{0}")]
    Conflict(String),
    /// The change itself is wrong (a bad id, terms no gateway could enforce).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("stored data is malformed: {0}")]
    Malformed(String),
}

impl StoreError {
    /// The database could not be reached or failed (as opposed to a refused change).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Connect { .. } | StoreError::Query(_) | StoreError::Migrate(_)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A consumer kept in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct StoredConsumer {
    pub id: String,
    /// Display name; the id when empty.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// What the consumer is for (an application's description in the portal).
    #[serde(default)]
    pub description: String,
    /// The developer account that owns this consumer (an application); none for
    /// consumers an admin created.
    #[serde(default)]
    pub developer_id: Option<String>,
    #[serde(default)]
    pub created_at: i64,
}

/// An API key kept in the store: its public id and keyed hash, never the key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct StoredKey {
    pub public_id: String,
    pub consumer_id: String,
    /// `hmac-sha256:<base64>`; never sent out.
    #[serde(skip_serializing, default)]
    #[schemars(skip)]
    pub hash: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// A sandbox key: it calls products' sandboxes, never the live APIs.
    #[serde(default)]
    pub sandbox: bool,
}

/// Everything gateways copy into memory, at one version.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    pub version: i64,
    pub consumers: Vec<StoredConsumer>,
    pub keys: Vec<StoredKey>,
    pub products: Vec<catalog::Product>,
    pub plans: Vec<catalog::Plan>,
    pub subscriptions: Vec<catalog::Subscription>,
}

pub struct Store {
    pool: AnyPool,
    backend: Backend,
    url: String,
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Connects (creating a SQLite file that does not exist yet) and applies the
    /// migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::Malformed(format!(
                "`{url}` is neither a sqlite: nor a postgres:// URL"
            )));
        };
        let connect_url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                // One writer at a time is what SQLite allows anyway.
                Backend::Sqlite => 1,
                Backend::Postgres => 4,
            })
            .acquire_timeout(Duration::from_secs(3))
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // Write-ahead log, synced at checkpoints: a commit no longer waits
                        // for an fsync (heartbeats and usage flushes are frequent small
                        // writes), and readers never block the writer.
                        sqlx::Executor::execute(
                            &mut *connection,
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(&connect_url)
            .await
            .map_err(|source| StoreError::Connect {
                url: redact(url),
                source,
            })?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            backend,
            url: url.to_owned(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL, with any password hidden (for logs and the admin API).
    pub fn display_url(&self) -> String {
        redact(&self.url)
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub async fn version(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT version FROM store_version WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    /// Everything, read in one transaction so the version matches the rows.
    pub async fn contents(&self) -> Result<Contents, StoreError> {
        let mut tx = self.pool.begin().await?;
        let version: i64 = sqlx::query("SELECT version FROM store_version WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let consumers = sqlx::query(&format!(
            "SELECT {CONSUMER_COLUMNS} FROM consumers ORDER BY id"
        ))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(consumer_from_row)
        .collect::<Result<_, _>>()?;
        let keys = sqlx::query(
            "SELECT public_id, consumer_id, hash, created_at, expires_at, revoked_at, environment \
             FROM api_keys ORDER BY public_id",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(key_from_row)
        .collect::<Result<_, _>>()?;
        let products = catalog::all_products(&mut tx).await?;
        let plans = catalog::all_plans(&mut tx).await?;
        let subscriptions = catalog::all_subscriptions(&mut tx).await?;
        tx.commit().await?;
        Ok(Contents {
            version,
            consumers,
            keys,
            products,
            plans,
            subscriptions,
        })
    }

    pub async fn create_consumer(
        &self,
        consumer: &StoredConsumer,
    ) -> Result<StoredConsumer, StoreError> {
        let mut tx = self.pool.begin().await?;
        let exists = sqlx::query("SELECT id FROM consumers WHERE id = $1")
            .bind(consumer.id.clone())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(StoreError::Conflict(format!(
                "consumer `{}` exists",
                consumer.id
            )));
        }
        let created = StoredConsumer {
            created_at: now(),
            ..consumer.clone()
        };
        if let Some(developer) = &created.developer_id {
            let known = sqlx::query("SELECT id FROM developers WHERE id = $1")
                .bind(developer.clone())
                .fetch_optional(&mut *tx)
                .await?;
            if known.is_none() {
                return Err(StoreError::NotFound(format!("no developer `{developer}`")));
            }
        }
        sqlx::query(
            "INSERT INTO consumers (id, name, groups_json, metadata_json, description, developer_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(created.id.clone())
        .bind(created.name.clone())
        .bind(to_json(&created.groups)?)
        .bind(to_json(&created.metadata)?)
        .bind(created.description.clone())
        .bind(created.developer_id.clone())
        .bind(created.created_at)
        .execute(&mut *tx)
        .await?;
        self.bump(&mut tx).await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Keeps a new key's hash (the key itself was shown to its owner and is not kept).
    pub async fn add_key(
        &self,
        consumer_id: &str,
        public_id: &str,
        hash: &str,
        expires_at: Option<i64>,
        sandbox: bool,
    ) -> Result<StoredKey, StoreError> {
        let mut tx = self.pool.begin().await?;
        let consumer = sqlx::query("SELECT id FROM consumers WHERE id = $1")
            .bind(consumer_id.to_owned())
            .fetch_optional(&mut *tx)
            .await?;
        if consumer.is_none() {
            return Err(StoreError::NotFound(format!("no consumer `{consumer_id}`")));
        }
        let key = StoredKey {
            public_id: public_id.to_owned(),
            consumer_id: consumer_id.to_owned(),
            hash: hash.to_owned(),
            created_at: now(),
            expires_at,
            revoked_at: None,
            sandbox,
        };
        sqlx::query(
            "INSERT INTO api_keys (public_id, consumer_id, hash, created_at, expires_at, revoked_at, environment) \
             VALUES ($1, $2, $3, $4, $5, NULL, $6)",
        )
        .bind(key.public_id.clone())
        .bind(key.consumer_id.clone())
        .bind(key.hash.clone())
        .bind(key.created_at)
        .bind(key.expires_at)
        .bind(environment(key.sandbox))
        .execute(&mut *tx)
        .await?;
        self.bump(&mut tx).await?;
        tx.commit().await?;
        Ok(key)
    }

    /// Replaces a key: the new one (same consumer, no expiry) works at once, the old one
    /// keeps working for `overlap_secs` (or until its own expiry, if sooner) so clients can
    /// switch. Returns (old, new).
    pub async fn rotate_key(
        &self,
        public_id: &str,
        new_public_id: &str,
        new_hash: &str,
        overlap_secs: i64,
    ) -> Result<(StoredKey, StoredKey), StoreError> {
        let mut tx = self.pool.begin().await?;
        let old = sqlx::query(
            "SELECT public_id, consumer_id, hash, created_at, expires_at, revoked_at, environment \
             FROM api_keys WHERE public_id = $1",
        )
        .bind(public_id.to_owned())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no API key `{public_id}`")))
        .and_then(|row| key_from_row(&row))?;
        if old.revoked_at.is_some() {
            return Err(StoreError::Conflict(format!(
                "API key `{public_id}` is revoked"
            )));
        }
        let now = now();
        let until = now.saturating_add(overlap_secs.max(0));
        let old_expires = Some(old.expires_at.map_or(until, |at| at.min(until)));
        sqlx::query("UPDATE api_keys SET expires_at = $1 WHERE public_id = $2")
            .bind(old_expires)
            .bind(public_id.to_owned())
            .execute(&mut *tx)
            .await?;
        let new = StoredKey {
            public_id: new_public_id.to_owned(),
            consumer_id: old.consumer_id.clone(),
            hash: new_hash.to_owned(),
            created_at: now,
            expires_at: None,
            revoked_at: None,
            sandbox: old.sandbox,
        };
        sqlx::query(
            "INSERT INTO api_keys (public_id, consumer_id, hash, created_at, expires_at, revoked_at, environment) \
             VALUES ($1, $2, $3, $4, NULL, NULL, $5)",
        )
        .bind(new.public_id.clone())
        .bind(new.consumer_id.clone())
        .bind(new.hash.clone())
        .bind(new.created_at)
        .bind(environment(new.sandbox))
        .execute(&mut *tx)
        .await?;
        self.bump(&mut tx).await?;
        tx.commit().await?;
        Ok((
            StoredKey {
                expires_at: old_expires,
                ..old
            },
            new,
        ))
    }

    pub async fn key(&self, public_id: &str) -> Result<StoredKey, StoreError> {
        sqlx::query(
            "SELECT public_id, consumer_id, hash, created_at, expires_at, revoked_at, environment \
             FROM api_keys WHERE public_id = $1",
        )
        .bind(public_id.to_owned())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(key_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("no API key `{public_id}`")))
    }

    /// Revokes a key at once (again: no change). The key as it now stands.
    pub async fn revoke_key(&self, public_id: &str) -> Result<StoredKey, StoreError> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE public_id = $2 AND revoked_at IS NULL",
        )
        .bind(now())
        .bind(public_id.to_owned())
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT public_id, consumer_id, hash, created_at, expires_at, revoked_at, environment \
             FROM api_keys WHERE public_id = $1",
        )
        .bind(public_id.to_owned())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no API key `{public_id}`")))?;
        if updated.rows_affected() > 0 {
            self.bump(&mut tx).await?;
        }
        tx.commit().await?;
        key_from_row(&row)
    }

    /// Bumps the version inside the change's transaction; on PostgreSQL the notification
    /// is delivered when it commits.
    pub(crate) async fn bump(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE store_version SET version = version + 1 WHERE id = 1")
            .execute(&mut **tx)
            .await?;
        if self.backend == Backend::Postgres {
            sqlx::query(&format!("NOTIFY {CHANGES_CHANNEL}"))
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

/// The consumers table's columns, in the order `consumer_from_row` reads them by name.
pub(crate) const CONSUMER_COLUMNS: &str =
    "id, name, groups_json, metadata_json, description, developer_id, created_at";

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|err| StoreError::Malformed(err.to_string()))
}

pub(crate) fn consumer_from_row(row: &AnyRow) -> Result<StoredConsumer, StoreError> {
    let groups: String = row.try_get("groups_json")?;
    let metadata: String = row.try_get("metadata_json")?;
    Ok(StoredConsumer {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        groups: serde_json::from_str(&groups)
            .map_err(|err| StoreError::Malformed(format!("groups_json: {err}")))?,
        metadata: serde_json::from_str(&metadata)
            .map_err(|err| StoreError::Malformed(format!("metadata_json: {err}")))?,
        description: row.try_get("description")?,
        developer_id: row.try_get("developer_id")?,
        created_at: row.try_get("created_at")?,
    })
}

/// The `environment` column of a key.
fn environment(sandbox: bool) -> &'static str {
    if sandbox {
        "sandbox"
    } else {
        "live"
    }
}

pub(crate) fn key_from_row(row: &AnyRow) -> Result<StoredKey, StoreError> {
    let environment: String = row.try_get("environment")?;
    Ok(StoredKey {
        sandbox: environment == "sandbox",
        public_id: row.try_get("public_id")?,
        consumer_id: row.try_get("consumer_id")?,
        hash: row.try_get("hash")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

pub mod accounts;
pub mod admins;
pub mod billing;
pub mod catalog;
pub mod follow;
pub mod mesh;
pub mod usage;
