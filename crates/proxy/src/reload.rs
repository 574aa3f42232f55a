//! The configuration store of a running gateway: the current snapshot, the versions applied
//! so far, and reloads (file change, SIGHUP, admin API) that either apply whole or change
//! nothing.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use gatehouse_config::{Config, ConfigErrors, Problem};
use serde::Serialize;

use crate::snapshot::Snapshot;
use gatehouse_telemetry::{AccessLog, Metrics, Telemetry, Tracer};

use crate::upstream::metrics::UpstreamCollector;

/// Versions kept for rollback.
const HISTORY: usize = 50;

struct VersionRecord {
    version: u64,
    applied_at: u64,
    reason: String,
    text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub version: u64,
    /// Unix time in seconds.
    pub applied_at: u64,
    pub reason: String,
    pub active: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("version {0} is not in the history")]
    UnknownVersion(u64),
    #[error("version cannot be applied again:\n{0}")]
    Invalid(ConfigErrors),
}

pub struct ConfigStore {
    /// Shared with the upstream metrics collector, which reads it at scrape time.
    current: Arc<ArcSwap<Snapshot>>,
    /// Metrics and the access log: process-wide, they outlive snapshots.
    pub telemetry: Arc<Telemetry>,
    path: Option<PathBuf>,
    history: Mutex<VecDeque<VersionRecord>>,
    next_version: AtomicU64,
    /// Serializes reloads: compile + swap + record happen as one step.
    applying: Mutex<()>,
    /// The mesh membership mesh listeners and services take their mTLS and endpoints from.
    member: Option<Arc<gatehouse_mesh::Member>>,
}

impl ConfigStore {
    pub fn from_file(path: &Path) -> Result<Arc<Self>, ConfigErrors> {
        Self::from_file_in_mesh(path, None)
    }

    /// A configuration whose mesh listeners and services use `member`'s identity.
    pub fn from_file_in_mesh(
        path: &Path,
        member: Option<Arc<gatehouse_mesh::Member>>,
    ) -> Result<Arc<Self>, ConfigErrors> {
        let (config, text) = gatehouse_config::load_file(path)?;
        Self::start(
            config,
            text,
            Some(path.to_owned()),
            &path.display().to_string(),
            member,
        )
    }

    pub fn from_text(text: &str, origin: &str) -> Result<Arc<Self>, ConfigErrors> {
        Self::from_text_in_mesh(text, origin, None)
    }

    pub fn from_text_in_mesh(
        text: &str,
        origin: &str,
        member: Option<Arc<gatehouse_mesh::Member>>,
    ) -> Result<Arc<Self>, ConfigErrors> {
        let config = gatehouse_config::parse_str(text, origin)?;
        Self::start(config, text.to_owned(), None, origin, member)
    }

    fn start(
        config: Config,
        text: String,
        path: Option<PathBuf>,
        origin: &str,
        member: Option<Arc<gatehouse_mesh::Member>>,
    ) -> Result<Arc<Self>, ConfigErrors> {
        let snapshot =
            Snapshot::compile_in_mesh(config, 1, None, member.as_ref()).map_err(|problems| {
                ConfigErrors {
                    file: origin.to_owned(),
                    problems,
                }
            })?;
        let snapshot = Arc::new(snapshot);
        let current = Arc::new(ArcSwap::new(snapshot.clone()));
        let mut metrics = Metrics::new();
        metrics.register_collector(Box::new(UpstreamCollector {
            current: current.clone(),
        }));
        metrics.config_version.set(1);
        let access_log = match &snapshot.config.access_log {
            Some(log_config) => Some(
                AccessLog::start(
                    log_config,
                    api_key_query_parameters(&snapshot.config),
                    metrics.access_log_dropped.clone(),
                )
                .map_err(|err| ConfigErrors {
                    file: origin.to_owned(),
                    problems: vec![Problem::new(
                        0,
                        0,
                        format!("cannot start the access log: {err}"),
                    )],
                })?,
            ),
            None => None,
        };
        let tracer = match &snapshot.config.tracing {
            Some(tracing) => Some(Tracer::start(tracing, metrics.trace_spans.clone()).map_err(
                |err| ConfigErrors {
                    file: origin.to_owned(),
                    problems: vec![Problem::at(
                        &tracing.otlp.endpoint.referenced,
                        err.to_string(),
                    )],
                },
            )?),
            None => None,
        };
        let store = Self {
            telemetry: Arc::new(Telemetry {
                metrics,
                access_log,
                tracer,
                usage: Default::default(),
            }),
            current,
            path,
            history: Mutex::new(VecDeque::new()),
            next_version: AtomicU64::new(2),
            applying: Mutex::new(()),
            member,
        };
        store.record(1, "initial".to_owned(), text);
        Ok(Arc::new(store))
    }

    /// The snapshot requests should use now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn member(&self) -> Option<&Arc<gatehouse_mesh::Member>> {
        self.member.as_ref()
    }

    /// Mesh services take the endpoints of the member's latest snapshot (called when the
    /// control plane pushes one; configuration and versions stay as they are).
    pub fn refresh_mesh_endpoints(&self) {
        let Some(member) = &self.member else {
            return;
        };
        for service in self.snapshot().services.values() {
            service.refresh_mesh_endpoints(member);
        }
    }

    /// Re-read the configuration file. `force` recompiles even when the text is unchanged,
    /// so SIGHUP also picks up renewed certificate files; the file watcher does not force,
    /// because editors write a file in several events.
    pub fn reload_file(&self, reason: &str, force: bool) -> Result<u64, ConfigErrors> {
        let Some(path) = &self.path else {
            return Err(ConfigErrors::single(
                "<none>",
                Problem::new(0, 0, "no configuration file to reload"),
            ));
        };
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| {
            ConfigErrors::single(
                &origin,
                Problem::new(0, 0, format!("cannot read file: {err}")),
            )
        })?;
        let unchanged = self.lock_history().back().is_some_and(|r| r.text == text);
        if unchanged && !force {
            return Ok(self.current.load().version);
        }
        self.apply_text(&text, &origin, reason)
    }

    /// Validate, compile and swap in a new configuration; on any problem nothing changes.
    pub fn apply_text(&self, text: &str, origin: &str, reason: &str) -> Result<u64, ConfigErrors> {
        let result = self.apply_text_counted(text, origin, reason);
        let metrics = &self.telemetry.metrics;
        let outcome = if result.is_ok() {
            "applied"
        } else {
            "rejected"
        };
        metrics
            .config_reloads
            .get_or_create(&gatehouse_telemetry::metrics::ResultLabels { result: outcome })
            .inc();
        if let Ok(version) = result {
            metrics.config_version.set(version as i64);
        }
        result
    }

    fn apply_text_counted(
        &self,
        text: &str,
        origin: &str,
        reason: &str,
    ) -> Result<u64, ConfigErrors> {
        let _guard = self
            .applying
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut config = gatehouse_config::parse_str(text, origin)?;
        config.base_dir = self
            .path
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf);
        let current = self.snapshot();
        let errors = |problems| ConfigErrors {
            file: origin.to_owned(),
            problems,
        };
        check_restart_only_changes(&current.config, &config).map_err(errors)?;
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let snapshot =
            Snapshot::compile_in_mesh(config, version, Some(&current), self.member.as_ref())
                .map_err(errors)?;
        self.current.store(Arc::new(snapshot));
        self.record(version, reason.to_owned(), text.to_owned());
        tracing::info!(version, reason, "configuration applied");
        Ok(version)
    }

    /// Apply the text of an earlier version again, as a new version.
    pub fn rollback(&self, version: u64) -> Result<u64, RollbackError> {
        let text = self
            .lock_history()
            .iter()
            .find(|r| r.version == version)
            .map(|r| r.text.clone())
            .ok_or(RollbackError::UnknownVersion(version))?;
        self.apply_text(
            &text,
            &format!("version {version}"),
            &format!("rollback to {version}"),
        )
        .map_err(RollbackError::Invalid)
    }

    pub fn versions(&self) -> Vec<VersionInfo> {
        let active = self.current.load().version;
        self.lock_history()
            .iter()
            .map(|r| VersionInfo {
                version: r.version,
                applied_at: r.applied_at,
                reason: r.reason.clone(),
                active: r.version == active,
            })
            .collect()
    }

    fn lock_history(&self) -> std::sync::MutexGuard<'_, VecDeque<VersionRecord>> {
        self.history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, version: u64, reason: String, text: String) {
        let applied_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut history = self.lock_history();
        history.push_back(VersionRecord {
            version,
            applied_at,
            reason,
            text,
        });
        while history.len() > HISTORY {
            history.pop_front();
        }
    }
}

/// Listener sockets and the admin address are bound once; changing them needs a restart.
fn check_restart_only_changes(running: &Config, next: &Config) -> Result<(), Vec<Problem>> {
    let mut problems = Vec::new();
    for listener in &next.listeners {
        let same = running.listeners.iter().any(|r| {
            r.name.value == listener.name.value
                && r.listen.value == listener.listen.value
                && r.tls.is_some() == listener.tls.is_some()
        });
        if !same {
            problems.push(Problem::at(
                &listener.listen.referenced,
                format!(
                    "listener `{}` at {} is new or changed its address or TLS mode; listener changes need a restart",
                    listener.name.value, listener.listen.value
                ),
            ));
        }
    }
    for listener in &running.listeners {
        if !next
            .listeners
            .iter()
            .any(|n| n.name.value == listener.name.value)
        {
            problems.push(Problem::new(
                0,
                0,
                format!(
                    "listener `{}` was removed; listener changes need a restart",
                    listener.name.value
                ),
            ));
        }
    }
    let admin_listen = |c: &Config| c.admin.as_ref().map(|a| a.listen.value.clone());
    if admin_listen(running) != admin_listen(next) {
        let at = next
            .admin
            .as_ref()
            .map(|a| a.listen.referenced)
            .unwrap_or(gatehouse_config::Location::UNKNOWN);
        problems.push(Problem::at(
            &at,
            "the admin listener address changed; that needs a restart",
        ));
    }
    // Set up once at start-up: a change would silently not apply.
    let started_once = [
        (
            serde_json::to_string(&running.access_log).ok() != serde_json::to_string(&next.access_log).ok(),
            "`access_log` changed; the access log is set up at start-up, so that needs a restart",
        ),
        (
            serde_json::to_string(&running.tracing).ok() != serde_json::to_string(&next.tracing).ok(),
            "`tracing` changed; the tracer and its exporter are set up at start-up, so that needs a restart",
        ),
    ];
    for (changed, message) in started_once {
        if changed {
            problems.push(Problem::new(0, 0, message));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Query parameters that carry API keys: never written to the access log.
fn api_key_query_parameters(config: &Config) -> Vec<String> {
    config
        .authentication
        .methods
        .values()
        .filter_map(|method| match &method.value {
            gatehouse_config::AuthMethodConfig::ApiKey(key) => key.query.clone(),
            _ => None,
        })
        .collect()
}

/// Reload when the configuration file changes. Keep the returned watcher alive.
pub fn watch_file(store: Arc<ConfigStore>) -> notify::Result<Option<notify::RecommendedWatcher>> {
    use notify::Watcher;
    let Some(path) = store.path().map(Path::to_path_buf) else {
        return Ok(None);
    };
    let directory = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let file_name = path.file_name().map(|n| n.to_owned());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let ours = event
                .paths
                .iter()
                .any(|p| p.file_name() == file_name.as_deref());
            if ours && (event.kind.is_modify() || event.kind.is_create()) {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(&directory, notify::RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Editors write in several steps; wait for the burst to settle.
            tokio::time::sleep(Duration::from_millis(150)).await;
            while rx.try_recv().is_ok() {}
            let store = store.clone();
            let result =
                tokio::task::spawn_blocking(move || store.reload_file("file changed", false)).await;
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(errors)) => {
                    tracing::error!(
                        "configuration change rejected, the running configuration stays:\n{errors}"
                    )
                }
                Err(err) => tracing::error!(%err, "reload task failed"),
            }
        }
    });
    Ok(Some(watcher))
}
