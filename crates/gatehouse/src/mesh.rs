//! Start-up of the mesh roles: the control plane, the sidecar, and the gateway joining the
//! mesh. Identity comes before bind: a data plane gets its certificate and first snapshot,
//! then binds its listeners, then registers.

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gatehouse_config::{Config, MeshMembership};
use gatehouse_mesh::{Apply, ControlClient, Member, Registration, SpiffeId};
use gatehouse_proxy::ConfigStore;

use crate::gateway::{self, Lifecycle};

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("gatehouse: {message}");
    ExitCode::FAILURE
}

fn load(path: &Path) -> Result<(Config, String), ExitCode> {
    gatehouse_config::load_file(path).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::FAILURE
    })
}

/// `gatehouse control`: the control plane of `control:` with its state in `store:`.
pub async fn run_control(path: &Path) -> Result<ExitCode, ExitCode> {
    let (config, _) = load(path)?;
    let control = config
        .control
        .as_ref()
        .ok_or_else(|| fail(format!("{}: no `control` section", path.display())))?;
    let store = open_store(&config).await?;
    let plane = gatehouse_control::ControlPlane::start(control, store, config.base_dir.as_deref())
        .await
        .map_err(fail)?;
    let plane = Arc::new(plane);
    println!("gatehouse: listener control on {}", plane.local_addr);
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(admin) = &config.admin {
        let addr = &admin.listen.value;
        let listener = tokio::net::TcpListener::bind(addr.as_str())
            .await
            .map_err(|err| fail(format!("cannot bind the admin listener on {addr}: {err}")))?;
        let local = listener.local_addr().map_err(fail)?;
        println!("gatehouse: admin on {local}");
        let (plane, admin) = (plane.clone(), admin.clone());
        tokio::spawn(async move {
            let shutdown = async {
                let _ = admin_stopped.await;
            };
            if let Err(err) =
                gatehouse_admin::control::serve(listener, plane, Some(&admin), shutdown).await
            {
                tracing::error!(error = %err, "control plane admin API stopped");
            }
        });
    }
    println!("gatehouse: ready");
    wait_for_signal().await;
    tracing::info!("control plane stopping");
    let _ = stop_admin.send(());
    drop(plane);
    Ok(ExitCode::SUCCESS)
}

/// `gatehouse control new-root`: a new self-signed root for the configuration's trust
/// domain, written as PEM for `control.ca` (the first step of a CA rotation, docs/mesh.md).
pub fn create_root(path: &Path, cert_out: &Path, key_out: &Path) -> Result<ExitCode, ExitCode> {
    let (config, _) = load(path)?;
    let control = config
        .control
        .as_ref()
        .ok_or_else(|| fail(format!("{}: no `control` section", path.display())))?;
    for out in [cert_out, key_out] {
        if out.exists() {
            return Err(fail(format!(
                "{} exists; a root is never overwritten",
                out.display()
            )));
        }
    }
    let (authority, cert_pem, key_pem) =
        gatehouse_mesh::ca::Authority::generate(&control.trust_domain).map_err(fail)?;
    write_private(key_out, &key_pem)?;
    std::fs::write(cert_out, &cert_pem)
        .map_err(|err| fail(format!("cannot write {}: {err}", cert_out.display())))?;
    for anchor in gatehouse_mesh::ca::describe_anchors(authority.trust_bundle()) {
        println!("{} (sha256 {})", anchor.subject, anchor.sha256);
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates `path` readable by its owner only, then writes `text`: a CA key.
fn write_private(path: &Path, text: &str) -> Result<(), ExitCode> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|err| fail(format!("cannot write {}: {err}", path.display())))
}

/// `gatehouse control token`: a join token for a service, printed once.
pub async fn create_token(
    path: &Path,
    namespace: &str,
    service: &str,
    ttl: Option<&str>,
) -> Result<ExitCode, ExitCode> {
    let (config, _) = load(path)?;
    let ttl = ttl
        .map(|text| {
            gatehouse_config::units::HumanDuration::parse(text)
                .map(|d| d.0)
                .map_err(fail)
        })
        .transpose()?;
    let store = open_store(&config).await?;
    let token = gatehouse_control::create_join_token(&store, namespace, service, ttl)
        .await
        .map_err(fail)?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

async fn open_store(config: &Config) -> Result<gatehouse_store::Store, ExitCode> {
    let url = config
        .store
        .as_ref()
        .map(|store| store.url.value.0.clone())
        .unwrap_or_else(|| "sqlite:gatehouse-control.db".to_owned());
    gatehouse_store::Store::open(&url).await.map_err(fail)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut terminate), Ok(mut interrupt)) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// The member a configuration describes, without joining (for `check`): mesh listeners and
/// services compile against its trust anchors. The error is `LINE:COLUMN: message`.
pub fn offline_member(config: &Config) -> Result<Option<Arc<Member>>, String> {
    let Some(membership) = &config.mesh else {
        return Ok(None);
    };
    let path = config.resolve_path(&membership.trust_anchors.value);
    let anchors = gatehouse_proxy::tls::load_certs(&path).map_err(|err| {
        let at = &membership.trust_anchors.referenced;
        format!("{}:{}: trust anchors: {err}", at.line(), at.column())
    })?;
    let identity = SpiffeId::new(
        &membership.trust_domain,
        &membership.namespace,
        &membership.service.value,
    );
    Member::new(identity, anchors).map(Some).map_err(|err| {
        let at = &membership.trust_anchors.referenced;
        format!("{}:{}: trust anchors: {err}", at.line(), at.column())
    })
}

/// A member of the mesh with its first certificate: the control plane verified against the
/// trust anchors, the join token exchanged for a certificate.
async fn join(
    config: &Config,
    membership: &MeshMembership,
) -> Result<(Arc<Member>, ControlClient), ExitCode> {
    let anchors_path = config.resolve_path(&membership.trust_anchors.value);
    let anchors = gatehouse_proxy::tls::load_certs(&anchors_path).map_err(fail)?;
    let identity = SpiffeId::new(
        &membership.trust_domain,
        &membership.namespace,
        &membership.service.value,
    );
    let member = Member::new(identity, anchors)
        .map_err(|err| fail(format!("{}: {err}", anchors_path.display())))?;
    let bootstrap = ControlClient::new(&member, &membership.control.value).map_err(fail)?;
    member
        .join(&bootstrap, &membership.join_token.0)
        .await
        .map_err(|err| fail(format!("cannot join the mesh: {err}")))?;
    println!("gatehouse: joined the mesh as {}", member.identity());
    // A new connection: the bootstrap one was made without a certificate, and every
    // other call is authenticated by it.
    let client = ControlClient::new(&member, &membership.control.value).map_err(fail)?;
    Ok((member, client))
}

/// Follows the control plane's snapshots with `apply`, and waits (a bounded time) for the
/// first one, so listeners start with endpoints and policy.
async fn follow_first(member: &Arc<Member>, client: &ControlClient, node: &str, apply: Apply) {
    let mut applied = member.applied_versions();
    tokio::spawn(
        member
            .clone()
            .follow(client.clone(), node.to_owned(), apply),
    );
    let first = tokio::time::timeout(
        Duration::from_secs(10),
        applied.wait_for(|version| !version.is_empty()),
    )
    .await;
    if first.is_err() {
        tracing::warn!("no snapshot from the control plane yet; starting with none");
    }
}

/// `gatehouse sidecar`: the mesh data plane for one local application.
pub async fn run_sidecar(path: &Path) -> Result<ExitCode, ExitCode> {
    let (config, text) = load(path)?;
    let origin = path.display().to_string();
    let (Some(membership), Some(sidecar)) = (config.mesh.clone(), config.sidecar.clone()) else {
        return Err(fail(format!(
            "{origin}: a sidecar needs `mesh` and `sidecar` sections"
        )));
    };
    let base = gatehouse_config::parse_value(&text, &origin).map_err(fail)?;
    let (member, client) = join(&config, &membership).await?;

    // The store exists only once the first snapshot arrived; until then snapshots are
    // kept by the member and used when the store is made.
    let store_cell: Arc<OnceLock<Arc<ConfigStore>>> = Arc::new(OnceLock::new());
    // The file's part of the generated configuration: replaced on SIGHUP. Held locked while
    // a configuration is generated and applied, so a snapshot and a reload arriving together
    // cannot apply one made from the file being replaced.
    let source = Arc::new(std::sync::Mutex::new(SidecarSource {
        base,
        sidecar: sidecar.clone(),
    }));
    let generate = {
        let membership = membership.clone();
        move |source: &SidecarSource, snapshot: &gatehouse_mesh::proto::Snapshot| {
            gatehouse_proxy::sidecar::gateway_config(
                &source.base,
                &source.sidecar,
                &membership,
                snapshot,
            )
        }
    };
    // Opaque TCP inbound: the caller's identity against the service's authorization.
    let tcp_policy = Arc::new(arc_swap::ArcSwap::from_pointee(
        gatehouse_proxy::sidecar::tcp::authorization(None).map_err(fail)?,
    ));
    let apply: Apply = {
        let (store_cell, generate, origin) = (store_cell.clone(), generate.clone(), origin.clone());
        let (tcp_policy, source) = (tcp_policy.clone(), source.clone());
        Arc::new(move |snapshot| {
            tcp_policy.store(Arc::new(gatehouse_proxy::sidecar::tcp::authorization(
                snapshot.authorization.as_ref(),
            )?));
            let Some(store) = store_cell.get() else {
                return Ok(());
            };
            let source = source
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            store
                .apply_text(
                    &generate(&source, snapshot),
                    &format!("{origin} (mesh snapshot {})", snapshot.version),
                    &format!("mesh snapshot {}", snapshot.version),
                )
                .map(|_| ())
                .map_err(|errors| errors.to_string())
        })
    };
    let instance_id = format!(
        "{}-{}-{}",
        membership.service.value,
        std::process::id(),
        fastrand::u32(..)
    );
    follow_first(&member, &client, &instance_id, apply).await;
    let snapshot = member.snapshot().unwrap_or_default();
    let first = generate(
        &source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
        &snapshot,
    );
    let store = ConfigStore::from_text_in_mesh(
        &first,
        &format!("{origin} (mesh snapshot {})", snapshot.version),
        Some(member.clone()),
    )
    .map_err(|errors| fail(format!("the sidecar's configuration is invalid:\n{errors}")))?;
    let _ = store_cell.set(store.clone());
    tokio::spawn(member.clone().rotate(client.clone()));
    serve_tcp_ports(&sidecar, &membership, &member, &tcp_policy).await?;

    let advertise = sidecar
        .inbound
        .advertise
        .clone()
        .unwrap_or_else(|| sidecar.inbound.listen.value.clone());
    let registration = Registration {
        instance_id,
        address: advertise
            .parse()
            .map_err(|_| fail(format!("`{advertise}` is not IP:PORT")))?,
        labels: sidecar.labels.clone(),
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel();
    let registering = {
        let (member, client, registration) = (member.clone(), client.clone(), registration.clone());
        tokio::spawn(async move {
            if ready_rx.await.is_ok() {
                member.keep_registered(client, registration).await;
            }
        })
    };
    let deregistering = {
        let client = client.clone();
        let id = registration.instance_id.clone();
        tokio::spawn(async move {
            if stopping_rx.await.is_ok() {
                registering.abort();
                if let Err(status) = client.deregister(&id).await {
                    tracing::warn!(error = %status.message(), "could not deregister; the lease will expire");
                }
            }
        })
    };
    let reload: gateway::Reload = {
        let (path, store, member) = (path.to_owned(), store.clone(), member.clone());
        Arc::new(move |reason: &str| {
            let origin = path.display().to_string();
            let refuse = |message: String| {
                gatehouse_config::ConfigErrors::single(
                    &origin,
                    gatehouse_config::Problem::new(0, 0, message),
                )
            };
            let (config, text) = gatehouse_config::load_file(&path)?;
            let (Some(next_membership), Some(next_sidecar)) = (config.mesh, config.sidecar) else {
                return Err(refuse(
                    "a sidecar needs `mesh` and `sidecar` sections".to_owned(),
                ));
            };
            restart_only_changes(&membership, &sidecar, &next_membership, &next_sidecar)
                .map_err(refuse)?;
            let base = gatehouse_config::parse_value(&text, &origin)?;
            let snapshot = member.snapshot().unwrap_or_default();
            let mut source = source
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let next = SidecarSource {
                base,
                sidecar: next_sidecar,
            };
            let version = store.apply_text(
                &generate(&next, &snapshot),
                &format!("{origin} (mesh snapshot {})", snapshot.version),
                reason,
            )?;
            *source = next;
            Ok(version)
        })
    };
    let outcome = gateway::run_with(
        store,
        Lifecycle {
            ready: Some(ready_tx),
            stopping: Some(stopping_tx),
            reload: Some(reload),
        },
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(3), deregistering).await;
    outcome
}

/// The sidecar's opaque TCP ports: the inbound listener when the application speaks TCP,
/// and outbound ports marked `protocol: tcp`.
/// What a sidecar's own file contributes to the configuration it runs.
struct SidecarSource {
    /// The file's settings besides `mesh` and `sidecar` (admin, metrics, limits, ...).
    base: serde_json::Value,
    sidecar: gatehouse_config::SidecarConfig,
}

/// What a sidecar cannot change without a restart: its identity and control plane (its
/// certificate and registration stand for them), the inbound listener and what it is
/// registered as, and the opaque TCP ports (bound once, outside the HTTP listeners, whose
/// own address changes the reload refuses as for any gateway).
fn restart_only_changes(
    running: &MeshMembership,
    running_sidecar: &gatehouse_config::SidecarConfig,
    next: &MeshMembership,
    next_sidecar: &gatehouse_config::SidecarConfig,
) -> Result<(), String> {
    let identity = |m: &MeshMembership| {
        (
            m.control.value.clone(),
            m.trust_anchors.value.clone(),
            m.trust_domain.clone(),
            m.namespace.clone(),
            m.service.value.clone(),
        )
    };
    if identity(running) != identity(next) {
        return Err(
            "`mesh` changed (control plane, trust anchors or identity); that needs a restart"
                .to_owned(),
        );
    }
    let inbound = |s: &gatehouse_config::SidecarConfig| {
        (
            s.inbound.listen.value.clone(),
            s.inbound.advertise.clone(),
            s.inbound.protocol,
            s.labels.clone(),
        )
    };
    if inbound(running_sidecar) != inbound(next_sidecar) {
        return Err("`sidecar.inbound.listen`, `advertise`, `protocol` or `labels` changed; that needs a restart".to_owned());
    }
    let tcp_ports = |s: &gatehouse_config::SidecarConfig| {
        s.outbound
            .iter()
            .filter(|o| o.protocol == gatehouse_config::PortProtocol::Tcp)
            .map(|o| (o.listen.value.clone(), o.service.value.clone()))
            .collect::<Vec<_>>()
    };
    if tcp_ports(running_sidecar) != tcp_ports(next_sidecar) {
        return Err("the TCP outbound ports changed; that needs a restart".to_owned());
    }
    Ok(())
}

async fn serve_tcp_ports(
    sidecar: &gatehouse_config::SidecarConfig,
    membership: &MeshMembership,
    member: &Arc<Member>,
    policy: &Arc<arc_swap::ArcSwap<gatehouse_policy::authorization::Authorization>>,
) -> Result<(), ExitCode> {
    use gatehouse_proxy::sidecar::tcp;
    let bind = |address: String| async move {
        tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|err| fail(format!("cannot bind {address}: {err}")))
    };
    if sidecar.inbound.protocol == gatehouse_config::MeshProtocol::Tcp {
        let listener = bind(sidecar.inbound.listen.value.clone()).await?;
        let application = sidecar
            .inbound
            .application
            .value
            .parse()
            .map_err(|_| fail("`inbound.application` is not IP:PORT"))?;
        println!(
            "gatehouse: listener inbound on {}",
            listener.local_addr().map_err(fail)?
        );
        tokio::spawn(tcp::serve_inbound(
            listener,
            member.clone(),
            application,
            policy.clone(),
        ));
    }
    for outbound in &sidecar.outbound {
        if outbound.protocol != gatehouse_config::PortProtocol::Tcp {
            continue;
        }
        let listener = bind(outbound.listen.value.clone()).await?;
        let (service, namespace) = match outbound.service.value.split_once('.') {
            Some((name, namespace)) => (name.to_owned(), namespace.to_owned()),
            None => (outbound.service.value.clone(), membership.namespace.clone()),
        };
        println!(
            "gatehouse: listener outbound-{} on {}",
            outbound.service.value,
            listener.local_addr().map_err(fail)?
        );
        tokio::spawn(tcp::serve_outbound(
            listener,
            member.clone(),
            namespace,
            service,
        ));
    }
    Ok(())
}

/// `gatehouse gateway` with `mesh:`: mesh services get endpoints and mTLS from the mesh,
/// with the gateway's own identity.
pub async fn run_gateway_in_mesh(path: &Path) -> Result<ExitCode, ExitCode> {
    let (config, _) = load(path)?;
    let Some(membership) = config.mesh.clone() else {
        return gateway::run_file(path).await;
    };
    let (member, client) = join(&config, &membership).await?;
    let store_cell: Arc<OnceLock<Arc<ConfigStore>>> = Arc::new(OnceLock::new());
    let apply: Apply = {
        let store_cell = store_cell.clone();
        Arc::new(move |_snapshot| {
            if let Some(store) = store_cell.get() {
                store.refresh_mesh_endpoints();
            }
            Ok(())
        })
    };
    let node = format!("{}-{}", membership.service.value, std::process::id());
    follow_first(&member, &client, &node, apply).await;
    let store = ConfigStore::from_file_in_mesh(path, Some(member.clone())).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::FAILURE
    })?;
    let _ = store_cell.set(store.clone());
    tokio::spawn(member.clone().rotate(client));
    gateway::run(store).await
}

/// A child process of the mesh demo; killed when dropped.
struct DemoProcess {
    name: String,
    child: std::process::Child,
}

impl Drop for DemoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `gatehouse <role> -c <config>` and waits until it prints that it is ready; its
/// log goes to `<dir>/<name>.log`.
fn spawn_role(
    dir: &Path,
    name: &str,
    role: &str,
    config: &str,
    env: &[(&str, &str)],
) -> Result<DemoProcess, String> {
    use std::io::BufRead;
    let config_path = dir.join(format!("{name}.yaml"));
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(exe)
        .arg(role)
        .arg("-c")
        .arg(&config_path)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let stdout = child.stdout.take();
    let process = DemoProcess {
        name: name.to_owned(),
        child,
    };
    let mut lines = std::io::BufReader::new(stdout.ok_or("no stdout")?).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("gatehouse: ready") => break,
            Some(Ok(_)) => {}
            _ => {
                return Err(format!(
                    "{} stopped before it was ready; see {}",
                    process.name,
                    dir.join(format!("{name}.log")).display()
                ))
            }
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(process)
}

/// `gatehouse demo --mesh`: a control plane, the edge gateway and five workloads (the
/// storefront; the catalog twice; reviews v1 and v2) each behind a sidecar, on loopback.
pub async fn run_mesh_demo(ports: gatehouse_demo::mesh::MeshPorts) -> Result<ExitCode, ExitCode> {
    let dir = std::env::temp_dir().join(format!("gatehouse-mesh-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(fail)?;
    let anchors = dir.join("trust-anchors.pem");
    let store_path = dir.join("control.db");
    let admin_token = format!("demo-{:016x}", fastrand::u64(..));
    let mut processes = Vec::new();
    let control = gatehouse_demo::mesh::control_config(&ports, &store_path, &anchors);
    processes.push(
        spawn_role(
            &dir,
            "control",
            "control",
            &control,
            &[("GATEHOUSE_ADMIN_TOKEN", admin_token.as_str())],
        )
        .map_err(fail)?,
    );
    let store = gatehouse_store::Store::open(&format!("sqlite:{}", store_path.display()))
        .await
        .map_err(fail)?;
    let token = |namespace: &'static str, service: &'static str| {
        let store = &store;
        async move {
            gatehouse_control::create_join_token(store, namespace, service, None)
                .await
                .map_err(fail)
        }
    };
    let (catalog, reviews) = ports.storefront_outbound();
    for workload in ports.workloads() {
        let router = match workload.service {
            "storefront" => gatehouse_demo::mesh::storefront_router(catalog, reviews),
            _ => gatehouse_demo::echo_router(workload.instance),
        };
        gatehouse_demo::spawn(router, workload.application)
            .await
            .map_err(|e| fail(format!("cannot start {}: {e}", workload.instance)))?;
        let config = gatehouse_demo::mesh::sidecar_config(&ports, &anchors, &workload);
        let join_token = token("shop", workload.service).await?;
        processes.push(
            spawn_role(
                &dir,
                &format!("sidecar-{}", workload.instance),
                "sidecar",
                &config,
                &[
                    ("GATEHOUSE_JOIN_TOKEN", join_token.as_str()),
                    ("GATEHOUSE_ADMIN_TOKEN", admin_token.as_str()),
                ],
            )
            .map_err(fail)?,
        );
    }
    let join_token = token("edge", "gateway").await?;
    processes.push(
        spawn_role(
            &dir,
            "gateway",
            "gateway",
            &gatehouse_demo::mesh::gateway_config(&ports, &anchors),
            &[
                ("GATEHOUSE_JOIN_TOKEN", join_token.as_str()),
                ("GATEHOUSE_ADMIN_TOKEN", admin_token.as_str()),
            ],
        )
        .map_err(fail)?,
    );
    println!("gatehouse: listener public on {}", ports.gateway);
    println!(
        "gatehouse: mesh demo ready (logs and configurations in {})",
        dir.display()
    );
    println!();
    println!(
        "  curl http://{}/products/7                     # storefront -> catalog + reviews",
        ports.gateway
    );
    println!(
        "  curl -H 'x-canary: 1' http://{}/products/7    # reviews v2 only",
        ports.gateway
    );
    println!(
        "  curl -H 'authorization: Bearer {admin_token}' http://{}/metrics   # the gateway's metrics",
        ports.admin
    );
    println!(
        "  curl -H 'authorization: Bearer {admin_token}' http://{}/admin/mesh/data-planes   # the control plane: who applied which snapshot",
        ports.control_admin()
    );
    println!("  docs/mesh.md explains the topology; Ctrl-C stops everything.");
    println!("gatehouse: ready");
    wait_for_signal().await;
    drop(processes);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ExitCode::SUCCESS)
}
