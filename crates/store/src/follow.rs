//! Following the store from a gateway: the contents are read at start and again whenever
//! the version moves, announced by PostgreSQL (`LISTEN gatehouse_changes`) or seen by
//! polling (all SQLite needs; on PostgreSQL it covers a notification lost while the
//! listening connection was down). An unreachable database keeps the last contents in use.

use std::sync::Arc;
use std::time::Duration;

use crate::{Backend, Contents, Store, CHANGES_CHANNEL};

/// Calls `apply` with the store's contents now and after every change, until the task is
/// dropped. `apply` runs on this task, never on the request path.
pub async fn follow<F>(store: Arc<Store>, poll: Duration, mut apply: F)
where
    F: FnMut(Contents) + Send,
{
    let mut applied: Option<i64> = None;
    let mut failing = false;
    let mut listener: Option<sqlx::postgres::PgListener> = None;
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if store.backend() == Backend::Postgres && listener.is_none() {
            listener = listen(&store).await;
        }
        match &mut listener {
            Some(active) => {
                tokio::select! {
                    received = active.recv() => {
                        if let Err(err) = received {
                            tracing::debug!(%err, "store notifications interrupted; polling until they are back");
                            listener = None;
                        }
                    }
                    _ = ticker.tick() => {}
                }
            }
            None => {
                ticker.tick().await;
            }
        }
        match sync(&store, applied).await {
            Ok(Some(contents)) => {
                if failing {
                    tracing::info!(store = %store.display_url(), "store reachable again");
                    failing = false;
                }
                applied = Some(contents.version);
                apply(contents);
            }
            Ok(None) => {
                if failing {
                    tracing::info!(store = %store.display_url(), "store reachable again");
                    failing = false;
                }
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(store = %store.display_url(), error = %err, "store unreachable; serving its last contents");
                    failing = true;
                }
            }
        }
    }
}

/// The contents when the version differs from `applied`.
async fn sync(store: &Store, applied: Option<i64>) -> Result<Option<Contents>, crate::StoreError> {
    let version = store.version().await?;
    if Some(version) == applied {
        return Ok(None);
    }
    store.contents().await.map(Some)
}

/// A listening connection, or `None` (polling goes on) when the database does not take one
/// within two seconds: an outage must not hold up the polling.
async fn listen(store: &Store) -> Option<sqlx::postgres::PgListener> {
    let connect = async {
        let mut listener = sqlx::postgres::PgListener::connect(store.url())
            .await
            .ok()?;
        listener.listen(CHANGES_CHANNEL).await.ok()?;
        Some(listener)
    };
    tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .ok()
        .flatten()
}
