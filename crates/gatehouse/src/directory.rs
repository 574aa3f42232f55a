//! The store's consumers and keys made into the in-memory directory every snapshot's
//! authentication looks at, kept up to date by following the store.

use std::sync::Arc;

use gatehouse_policy::consumer::StoredDirectory;
use gatehouse_policy::{Consumer, StaticDirectory};
use gatehouse_store::{Contents, Store};

/// The directory for `contents`. A malformed row is skipped and logged: the rest serves.
pub fn from_contents(contents: &Contents) -> StaticDirectory {
    let mut directory = StaticDirectory::default();
    let mut consumers = std::collections::HashMap::new();
    for stored in &contents.consumers {
        let consumer = directory.add_consumer(Consumer {
            id: stored.id.clone(),
            name: stored.name.clone(),
            groups: stored.groups.clone(),
            metadata: stored.metadata.clone(),
            quotas: Default::default(),
            api_versions: Default::default(),
        });
        consumers.insert(stored.id.as_str(), consumer);
    }
    for key in &contents.keys {
        let Some(consumer) = consumers.get(key.consumer_id.as_str()) else {
            continue; // deleted with its consumer
        };
        if let Err(err) = directory.add_api_key(
            consumer,
            &key.public_id,
            &key.hash,
            key.expires_at,
            key.revoked_at.is_some(),
        ) {
            tracing::warn!(error = %err, "skipping a malformed API key of the store");
        }
    }
    directory
}

/// Reads the store now (so keys work from the first request), then follows it in the
/// background into `directory`.
pub async fn start(
    store: Arc<Store>,
    poll: std::time::Duration,
    directory: StoredDirectory,
) -> Result<tokio::task::JoinHandle<()>, gatehouse_store::StoreError> {
    let contents = store.contents().await?;
    directory.store(Arc::new(from_contents(&contents)));
    tracing::info!(store = %store.display_url(), version = contents.version, consumers = contents.consumers.len(), keys = contents.keys.len(), "store loaded");
    Ok(tokio::spawn(gatehouse_store::follow::follow(
        store,
        poll,
        move |contents| {
            tracing::debug!(version = contents.version, "store changed");
            directory.store(Arc::new(from_contents(&contents)));
        },
    )))
}
