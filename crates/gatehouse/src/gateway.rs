//! Start-up of the gateway role: load configuration, bind listeners and the admin API, react
//! to signals (SIGHUP reload, SIGTERM/SIGINT drain and stop) and file changes.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gatehouse_admin::AdminState;
use gatehouse_proxy::{listener, reload, ConfigStore, Snapshot};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

pub fn check(path: &Path) -> ExitCode {
    let errors = match gatehouse_config::load_file(path) {
        Ok((config, _)) => {
            let summary = (
                config.listeners.len(),
                config.services.len(),
                config.routes.len(),
            );
            let member = match crate::mesh::offline_member(&config) {
                Ok(member) => member,
                Err(problem) => {
                    println!("{}:{problem}", path.display());
                    return ExitCode::FAILURE;
                }
            };
            match Snapshot::compile_in_mesh(config, 0, None, member.as_ref()) {
                Ok(_) => {
                    println!(
                        "{}: ok ({} listeners, {} services, {} routes)",
                        path.display(),
                        summary.0,
                        summary.1,
                        summary.2
                    );
                    return ExitCode::SUCCESS;
                }
                Err(problems) => gatehouse_config::ConfigErrors {
                    file: path.display().to_string(),
                    problems,
                },
            }
        }
        Err(errors) => errors,
    };
    for line in errors.lines() {
        println!("{line}");
    }
    ExitCode::FAILURE
}

pub async fn run_file(path: &Path) -> Result<ExitCode, ExitCode> {
    let store = ConfigStore::from_file(path).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::FAILURE
    })?;
    run(store).await
}

pub async fn run_demo(
    listen: SocketAddr,
    admin: SocketAddr,
    portal: SocketAddr,
) -> Result<ExitCode, ExitCode> {
    let fail = |message: String| {
        eprintln!("gatehouse demo: {message}");
        ExitCode::FAILURE
    };
    let upstreams = gatehouse_demo::start_upstreams()
        .await
        .map_err(|err| fail(format!("cannot start demo services: {err}")))?;
    // A fresh store per run: the sample product, and whatever the visitor does with it.
    let dir = std::env::temp_dir().join(format!("gatehouse-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|err| fail(format!("cannot create {}: {err}", dir.display())))?;
    let paths = gatehouse_demo::DemoPaths {
        store: dir.join("store.db"),
        outbox: dir.join("outbox"),
    };
    let data = gatehouse_store::Store::open(&format!("sqlite:{}", paths.store.display()))
        .await
        .map_err(|err| fail(err.to_string()))?;
    gatehouse_demo::seed_store(&data)
        .await
        .map_err(|err| fail(format!("cannot seed the demo store: {err}")))?;
    let password = gatehouse_policy::auth::api_key::random_hex(8).map_err(fail)?;
    let hash = gatehouse_policy::auth::basic::hash_password(&password).map_err(fail)?;
    data.upsert_admin_user(
        "admin@example.com",
        "Demo admin",
        &hash,
        gatehouse_store::admins::Role::Admin,
    )
    .await
    .map_err(|err| fail(err.to_string()))?;
    drop(data);
    let text = gatehouse_demo::demo_config(&upstreams, listen, admin, portal, &paths);
    let store = ConfigStore::from_text(&text, "examples/demo.yaml").map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::FAILURE
    })?;
    let token = store
        .snapshot()
        .config
        .admin
        .as_ref()
        .and_then(|a| a.token.as_ref())
        .map(|t| t.0.clone())
        .unwrap_or_default();
    println!(
        "Gatehouse demo\n\
         \n  gateway    http://{listen}\n  admin      http://{admin}  (token: {token})\
         \n  portal     http://{portal}\n  dashboard  http://{admin}/dashboard  (admin@example.com / {password})\
         \n  store      {store_path}\n  outbox     {outbox}  (the portal's emails)\n\
         \n  demo services: catalog at {c0} and {c1}, echo at {e0} and {e1}\n\
         \nTry:\n\
         \n  curl -i http://{listen}/api/books            # JSON API, round robin over two instances (see x-demo-instance)\
         \n  curl -i http://{listen}/api/books/2\
         \n  curl -i -X POST http://{listen}/api/books -H 'content-type: application/json' -d '{{\"title\":\"Ubik\",\"author_id\":2}}'\
         \n  curl -i http://{listen}/echo/hello?x=1        # the echo service shows what the upstream received\
         \n  curl -i http://{listen}/v1/books/1           # a redirect route\
         \n  curl -i http://{listen}/nowhere              # problem+json 404\
         \n  curl -s http://{admin}/admin/services -H 'authorization: Bearer {token}'\
         \n  curl -s http://{admin}/admin/config/versions -H 'authorization: Bearer {token}'\
         \n  curl -s http://{admin}/metrics -H 'authorization: Bearer {token}' | grep requests_total\
         \n\nThe developer journey (docs/portal.md): open http://{portal}, sign up, open the confirmation\
         \nlink from the newest file in the outbox, sign in, create an application, subscribe it to the\
         \nFree plan of the Book Catalog API, create a key, then:\
         \n\n  curl -i http://{listen}/partner/books -H 'x-api-key: YOUR_KEY'   # 10 a minute on Free\
         \n\nThe Pro plan needs approval: approve it in the dashboard. Sandbox keys work on the sandbox\
         \nwithout a subscription, and in the try-it console of the product's page.\
         \n\nPress Ctrl-C to stop.\n",
        store_path = paths.store.display(),
        outbox = paths.outbox.display(),
        c0 = upstreams.catalog[0],
        c1 = upstreams.catalog[1],
        e0 = upstreams.echo[0],
        e1 = upstreams.echo[1],
    );
    let result = run(store).await;
    // The demo's store lives as long as the demo.
    if let Err(err) = std::fs::remove_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), %err, "demo files not removed");
    }
    result
}

/// Serve until SIGTERM or SIGINT, then drain.
/// Moments of a role's life another part of the process acts on (the sidecar registers
/// once its listeners are bound, and deregisters when draining starts).
#[derive(Default)]
pub struct Lifecycle {
    pub ready: Option<tokio::sync::oneshot::Sender<()>>,
    pub stopping: Option<tokio::sync::oneshot::Sender<()>>,
    /// How SIGHUP reloads when the configuration is not simply the file (a sidecar's is
    /// generated from its file and the control plane's snapshot); the argument is the reason.
    pub reload: Option<Reload>,
}

pub type Reload = Arc<dyn Fn(&str) -> Result<u64, gatehouse_config::ConfigErrors> + Send + Sync>;

pub async fn run(store: Arc<ConfigStore>) -> Result<ExitCode, ExitCode> {
    run_with(store, Lifecycle::default()).await
}

pub async fn run_with(
    store: Arc<ConfigStore>,
    mut lifecycle: Lifecycle,
) -> Result<ExitCode, ExitCode> {
    let failed = |message: String| {
        eprintln!("gatehouse: {message}");
        ExitCode::FAILURE
    };
    // Handlers first: a SIGHUP that arrives once we say "ready" must reload, not kill us.
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| failed(e.to_string()))?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| failed(e.to_string()))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| failed(e.to_string()))?;
    // SIGUSR1: reopen the access log (after log rotation moved the file away).
    let mut user1 = signal(SignalKind::user_defined1()).map_err(|e| failed(e.to_string()))?;
    let bound = listener::bind_all(&store)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let admin_listener = match gatehouse_admin::admin_addr(&store) {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| failed(format!("cannot bind the admin listener on {addr}: {e}")))?,
        ),
        None => None,
    };
    let portal_listener = match gatehouse_portal::portal_addr(&store) {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| failed(format!("cannot bind the portal listener on {addr}: {e}")))?,
        ),
        None => None,
    };
    // The durable store: opened (and migrated) before we are ready, so issued keys work
    // from the first request; an unreachable store at start is an error.
    let data = match store.snapshot().config.store.clone() {
        Some(config) => {
            let opened = gatehouse_store::Store::open(&config.url.value.0)
                .await
                .map(Arc::new)
                .map_err(|e| failed(e.to_string()))?;
            let follower =
                crate::directory::start(opened.clone(), config.poll_interval.0, store.clone())
                    .await
                    .map_err(|e| failed(e.to_string()))?;
            let meter = crate::metering::start(opened.clone(), store.clone());
            Some((opened, follower, meter))
        }
        None => None,
    };
    let drain = store.snapshot().config.shutdown.drain_timeout.0;
    let (stop_tx, stop_rx) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));

    let mut serving = tokio::task::JoinSet::new();
    let first_listener = bound.first().and_then(|l| l.local_addr().ok());
    for listener in bound {
        let addr = listener.local_addr().map_err(|e| failed(e.to_string()))?;
        println!("gatehouse: listener {} on {addr}", listener.name());
        serving.spawn(listener::serve(
            store.clone(),
            listener,
            stop_rx.clone(),
            drain,
        ));
    }
    if let Some(admin_listener) = admin_listener {
        let addr = admin_listener
            .local_addr()
            .map_err(|e| failed(e.to_string()))?;
        println!("gatehouse: admin on {addr}");
        let state = AdminState {
            store: store.clone(),
            data: data.as_ref().map(|(opened, _, _)| opened.clone()),
            ready: ready.clone(),
        };
        let mut stop = stop_rx.clone();
        serving.spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(err) = gatehouse_admin::serve(admin_listener, state, shutdown).await {
                tracing::error!(%err, "admin listener failed");
            }
        });
    }
    if let (Some(portal_listener), Some((opened, _, _))) = (portal_listener, &data) {
        let addr = portal_listener
            .local_addr()
            .map_err(|e| failed(e.to_string()))?;
        let state =
            gatehouse_portal::PortalState::new(store.clone(), opened.clone(), addr, first_listener)
                .map_err(failed)?;
        println!("gatehouse: portal on {addr}");
        let mut stop = stop_rx.clone();
        serving.spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(err) = gatehouse_portal::serve(portal_listener, state, shutdown).await {
                tracing::error!(%err, "portal listener failed");
            }
        });
    }
    let _watcher = match reload::watch_file(store.clone()) {
        Ok(watcher) => watcher,
        Err(err) => {
            tracing::warn!(%err, "cannot watch the configuration file; reload with SIGHUP or the admin API");
            None
        }
    };
    // Purges published by the fleet's other gateways (a no-op without `cache.redis`).
    tokio::spawn(gatehouse_proxy::cache::follow_purges(store.clone()));
    ready.store(true, Ordering::Relaxed);
    println!(
        "gatehouse: ready (configuration version {})",
        store.snapshot().version
    );
    if let Some(ready) = lifecycle.ready.take() {
        let _ = ready.send(());
    }

    loop {
        tokio::select! {
            _ = hangup.recv() => {
                let store = store.clone();
                let reload = lifecycle.reload.clone();
                let reloading = move || match reload {
                    Some(reload) => reload("SIGHUP"),
                    None => store.reload_file("SIGHUP", true),
                };
                match tokio::task::spawn_blocking(reloading).await {
                    Ok(Ok(version)) => tracing::info!(version, "reloaded on SIGHUP"),
                    Ok(Err(errors)) => tracing::error!("reload rejected, the running configuration stays:\n{errors}"),
                    Err(err) => tracing::error!(%err, "reload task failed"),
                }
            }
            _ = user1.recv() => {
                if let Some(log) = &store.telemetry.access_log {
                    log.reopen();
                }
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    tracing::info!(
        drain_ms = drain.as_millis() as u64,
        "shutting down: no new connections, draining"
    );
    ready.store(false, Ordering::Relaxed);
    if let Some(stopping) = lifecycle.stopping.take() {
        let _ = stopping.send(());
    }
    let _ = stop_tx.send(true);
    while serving.join_next().await.is_some() {}
    if let Some((opened, _, meter)) = &data {
        meter.abort();
        crate::metering::flush(opened, &store).await;
    }
    if let Err(message) = store.snapshot().quotas.flush() {
        tracing::error!(error = %message, "quota counters not saved at shutdown");
    }
    if store.telemetry.tracer.is_some() {
        let telemetry = store.telemetry.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            if let Some(tracer) = &telemetry.tracer {
                tracer.flush();
            }
        });
        let _ = flushed.await;
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// `gatehouse explain`: print what the gateway would do with one request.
pub async fn explain(
    path: &Path,
    method: &str,
    headers: &[String],
    client_ip: Option<std::net::IpAddr>,
    json: bool,
    url: &str,
) -> Result<ExitCode, ExitCode> {
    let fail = |message: String| {
        eprintln!("gatehouse explain: {message}");
        ExitCode::FAILURE
    };
    let (config, _) = gatehouse_config::load_file(path).map_err(|errors| {
        eprint!("{errors}");
        ExitCode::FAILURE
    })?;
    let snapshot = Snapshot::compile(config, 0, None).map_err(|problems| {
        eprint!(
            "{}",
            gatehouse_config::ConfigErrors {
                file: path.display().to_string(),
                problems,
            }
        );
        ExitCode::FAILURE
    })?;
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| fail(format!("`{method}` is not a method")))?;
    let headers = headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| fail(format!("header `{h}` is not `Name: value`")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let request = gatehouse_proxy::explain::ExplainRequest {
        method,
        url: url.to_owned(),
        headers,
        client_ip,
        live: false,
    };
    let report = gatehouse_proxy::explain::explain(&snapshot, &request)
        .await
        .map_err(fail)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", gatehouse_proxy::explain::render_text(&report));
    }
    Ok(ExitCode::SUCCESS)
}
