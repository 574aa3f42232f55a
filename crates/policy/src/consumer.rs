//! Consumers and their credentials, behind [`ConsumerDirectory`] so the configuration serves
//! them today and the store (developer portal) can serve them later.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use gatehouse_config::{parse_rfc3339, ConsumerConfig};

use crate::identity::Identity;

/// The caller's identity as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub id: String,
    pub name: String,
    pub groups: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    /// Allowance per quota policy, overriding the policy's own.
    pub quotas: BTreeMap<String, u64>,
    /// Version of each API (by name) used when a request names none.
    pub api_versions: BTreeMap<String, String>,
}

impl Consumer {
    /// A consumer known only from a token (its `sub`), not from configuration.
    pub fn ad_hoc(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            name: id.to_owned(),
            groups: Vec::new(),
            metadata: BTreeMap::new(),
            quotas: BTreeMap::new(),
            api_versions: BTreeMap::new(),
        }
    }
}

/// A stored API key: never the key itself, only its keyed hash.
#[derive(Debug)]
pub struct ApiKeyRecord {
    /// The identity this key authenticates as (credential `api_key:<public id>`).
    pub identity: Arc<Identity>,
    /// HMAC-SHA-256 of the whole key under the server secret.
    pub hash: Vec<u8>,
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<i64>,
    pub revoked: bool,
}

/// A stored HTTP Basic credential.
#[derive(Debug)]
pub struct BasicRecord {
    pub identity: Arc<Identity>,
    /// Argon2 PHC string.
    pub password_hash: String,
}

/// Where consumers and credentials are looked up. Implementations answer from memory: the
/// request path never waits on a database.
pub trait ConsumerDirectory: Send + Sync {
    fn consumer(&self, id: &str) -> Option<Arc<Consumer>>;
    fn api_key(&self, public_id: &str) -> Option<Arc<ApiKeyRecord>>;
    fn basic_user(&self, username: &str) -> Option<Arc<BasicRecord>>;
    fn certificate_identity(&self, identity: &str) -> Option<Arc<Identity>>;
}

/// The directory compiled from the configuration's `consumers`.
#[derive(Default)]
pub struct StaticDirectory {
    consumers: HashMap<String, Arc<Consumer>>,
    api_keys: HashMap<String, Arc<ApiKeyRecord>>,
    basic: HashMap<String, Arc<BasicRecord>>,
    certificates: HashMap<String, Arc<Identity>>,
}

impl StaticDirectory {
    /// Build from validated configuration (invalid hashes and times were refused there).
    pub fn from_config(consumers: &[ConsumerConfig]) -> Self {
        use base64::Engine;
        let mut directory = Self::default();
        for config in consumers {
            let consumer = Arc::new(Consumer {
                id: config.id.value.clone(),
                name: config
                    .name
                    .clone()
                    .unwrap_or_else(|| config.id.value.clone()),
                groups: config.groups.clone(),
                metadata: config.metadata.clone(),
                quotas: config.quotas.clone(),
                api_versions: config.api_versions.clone(),
            });
            for key in &config.api_keys {
                let encoded = key.hash.value.trim_start_matches("hmac-sha256:");
                let hash = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded))
                    .unwrap_or_default();
                directory.api_keys.insert(
                    key.id.value.clone(),
                    Arc::new(ApiKeyRecord {
                        identity: Arc::new(Identity::of_consumer(
                            consumer.clone(),
                            format!("api_key:{}", key.id.value).into(),
                        )),
                        hash,
                        expires_at: key.expires.as_ref().and_then(|e| parse_rfc3339(&e.value)),
                        revoked: key.revoked,
                    }),
                );
            }
            if let Some(basic) = &config.basic_auth {
                directory.basic.insert(
                    basic.username.clone(),
                    Arc::new(BasicRecord {
                        identity: Arc::new(Identity::of_consumer(
                            consumer.clone(),
                            format!("basic:{}", basic.username).into(),
                        )),
                        password_hash: basic.password_hash.value.clone(),
                    }),
                );
            }
            for identity in &config.certificate_identities {
                directory.certificates.insert(
                    identity.clone(),
                    Arc::new(Identity::of_consumer(
                        consumer.clone(),
                        format!("client_certificate:{identity}").into(),
                    )),
                );
            }
            directory.consumers.insert(consumer.id.clone(), consumer);
        }
        directory
    }
}

impl StaticDirectory {
    /// Adds a consumer (from the store); returns it for its credentials.
    pub fn add_consumer(&mut self, consumer: Consumer) -> Arc<Consumer> {
        let consumer = Arc::new(consumer);
        self.consumers.insert(consumer.id.clone(), consumer.clone());
        consumer
    }

    /// Adds an API key of `consumer` by its public id; `hash` is `hmac-sha256:<base64>`.
    /// A `sandbox` key's identity reaches sandboxes only.
    pub fn add_api_key(
        &mut self,
        consumer: &Arc<Consumer>,
        public_id: &str,
        hash: &str,
        expires_at: Option<i64>,
        revoked: bool,
        sandbox: bool,
    ) -> Result<(), String> {
        use base64::Engine;
        let encoded = hash
            .strip_prefix("hmac-sha256:")
            .ok_or_else(|| format!("key `{public_id}`: the hash is not hmac-sha256"))?;
        let hash = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| format!("key `{public_id}`: the hash is not base64"))?;
        self.api_keys.insert(
            public_id.to_owned(),
            Arc::new(ApiKeyRecord {
                identity: Arc::new(Identity {
                    sandbox,
                    ..Identity::of_consumer(consumer.clone(), format!("api_key:{public_id}").into())
                }),
                hash,
                expires_at,
                revoked,
            }),
        );
        Ok(())
    }
}

/// The consumers kept in the store, as the gateway last read them: swapped whole when the
/// store changes, shared by every snapshot.
pub type StoredDirectory = Arc<arc_swap::ArcSwap<StaticDirectory>>;

/// The configuration's consumers first, then the store's.
pub struct LayeredDirectory {
    pub configured: StaticDirectory,
    pub stored: StoredDirectory,
}

impl ConsumerDirectory for LayeredDirectory {
    fn consumer(&self, id: &str) -> Option<Arc<Consumer>> {
        self.configured
            .consumer(id)
            .or_else(|| self.stored.load().consumer(id))
    }
    fn api_key(&self, public_id: &str) -> Option<Arc<ApiKeyRecord>> {
        self.configured
            .api_key(public_id)
            .or_else(|| self.stored.load().api_key(public_id))
    }
    fn basic_user(&self, username: &str) -> Option<Arc<BasicRecord>> {
        self.configured.basic_user(username)
    }
    fn certificate_identity(&self, identity: &str) -> Option<Arc<Identity>> {
        self.configured.certificate_identity(identity)
    }
}

impl ConsumerDirectory for StaticDirectory {
    fn consumer(&self, id: &str) -> Option<Arc<Consumer>> {
        self.consumers.get(id).cloned()
    }
    fn api_key(&self, public_id: &str) -> Option<Arc<ApiKeyRecord>> {
        self.api_keys.get(public_id).cloned()
    }
    fn basic_user(&self, username: &str) -> Option<Arc<BasicRecord>> {
        self.basic.get(username).cloned()
    }
    fn certificate_identity(&self, identity: &str) -> Option<Arc<Identity>> {
        self.certificates.get(identity).cloned()
    }
}

#[cfg(test)]
mod layered_tests {
    use super::*;

    fn directory_with(consumer: &str, public_id: &str) -> StaticDirectory {
        let mut directory = StaticDirectory::default();
        let owner = directory.add_consumer(Consumer::ad_hoc(consumer));
        directory
            .add_api_key(&owner, public_id, "hmac-sha256:AAAA", None, false, false)
            .unwrap();
        directory
    }

    #[test]
    fn the_files_consumers_win_and_the_store_fills_in() {
        let stored: StoredDirectory = Default::default();
        let layered = LayeredDirectory {
            configured: directory_with("from-file", "shared"),
            stored: stored.clone(),
        };
        assert!(layered.api_key("only-stored").is_none());
        let mut store = directory_with("from-store", "shared");
        let owner = store.add_consumer(Consumer::ad_hoc("stored-only"));
        store
            .add_api_key(
                &owner,
                "only-stored",
                "hmac-sha256:AAAA",
                None,
                false,
                false,
            )
            .unwrap();
        stored.store(Arc::new(store));
        let shared = layered.api_key("shared").unwrap();
        assert_eq!(shared.identity.consumer.id, "from-file");
        let added = layered.api_key("only-stored").unwrap();
        assert_eq!(added.identity.consumer.id, "stored-only");
        assert!(layered.consumer("stored-only").is_some());
        assert!(!added.identity.sandbox);
        let mut sandbox = StaticDirectory::default();
        sandbox
            .add_api_key(&owner, "trial", "hmac-sha256:AAAA", None, false, true)
            .unwrap();
        assert!(
            sandbox.api_key("trial").unwrap().identity.sandbox,
            "a sandbox key's identity says so wherever it travels"
        );
        let mut bad = StaticDirectory::default();
        assert!(bad
            .add_api_key(&owner, "x", "sha1:AAAA", None, false, false)
            .is_err());
    }
}
