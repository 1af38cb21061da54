//! A running node: composes identity, transport, discovery and proxy for `announce`,
//! `connect` and `run`. Data flows one way: discovery → registry → balancer → transport.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use quinn::Endpoint as QuicEndpoint;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::balance::{Backoff, Balancer};
use crate::config::{
    AnnounceConfig, ConnectConfig, FileConfig, IdentitySource, NodeConfig, Source,
};
use crate::control::{self, AnnounceStatus, ConnectStatus, NodeStatus};
use crate::discovery::mdns::{BrowseFilter, Mdns, run_browser, run_plain_browser};
use crate::discovery::{Endpoint, EndpointSet, Registry, TxtRecord, dns_srv};
use crate::error::Failure;
use crate::identity::{DenyList, MeshRoot, NodeIdentity, ca};
use crate::names::{NodeName, ServiceName};
use crate::proxy::consumer::{Backends, ConsumerCtx, serve_listener, watch_pool};
use crate::proxy::provider::{self, ProviderConfig, ServiceTarget};
use crate::transport::{self, EndpointError, Pool, TransportSettings};

/// The listen address of a consumer, once bound (for status).
type ListenAddr = Arc<Mutex<Option<SocketAddr>>>;

/// How long a stop waits for tasks to wind down.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Signals a running node reacts to besides shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop: drain first (SIGINT/SIGTERM); a second one stops at once.
    Stop,
    /// Reload the identity and the deny list (SIGHUP).
    Reload,
}

async fn bind_listener(addr: SocketAddr, c: &ConnectConfig) -> Result<TcpListener, Failure> {
    TcpListener::bind(addr).await.map_err(|e| {
        let mend = if e.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                "stop what uses it or pick another port: {}:PORT",
                c.spec.service
            )
        } else {
            "pick another listen address (SPEC NAME:PORT=IP:PORT)".to_string()
        };
        Failure::usage(format!(
            "cannot listen on {addr} for {}: {e}; {mend}",
            c.spec.service
        ))
    })
}

/// Whether a target accepts a TCP connection within `bound`.
async fn target_up(addr: SocketAddr, bound: Duration) -> bool {
    matches!(
        tokio::time::timeout(bound, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

fn static_endpoints(addrs: &[SocketAddr]) -> Vec<Endpoint> {
    addrs
        .iter()
        .map(|a| Endpoint {
            addr: *a,
            weight: 1,
            label: a.to_string(),
        })
        .collect()
}

/// Re-reads the config file's `[connect.NAME]` backends and applies them to the running
/// static listeners (new connections only; open ones are kept).
fn reload_backends(path: &std::path::Path, sets: &HashMap<ServiceName, Arc<EndpointSet>>) {
    let file = match FileConfig::load(path) {
        Ok(f) => f,
        Err(e) => return warn!(error = %e, "config not reloaded"),
    };
    for (name, c) in &file.connect {
        let Some(set) = ServiceName::parse(name).ok().and_then(|n| sets.get(&n)) else {
            if !c.backends.is_empty() {
                warn!(service = %name, "a new or non-static [connect] section needs a restart");
            }
            continue;
        };
        let mut addrs = Vec::new();
        for b in &c.backends {
            use std::net::ToSocketAddrs;
            match b.to_socket_addrs().ok().and_then(|mut a| a.next()) {
                Some(a) => addrs.push(a),
                None => {
                    return warn!(service = %name, backend = %b, "bad backend; config not reloaded");
                }
            }
        }
        if set.replace(static_endpoints(&addrs)) {
            info!(service = %name, backends = ?addrs, "backends reloaded");
        }
    }
}

/// Loads or derives this node's identity, and checks it against the configuration.
fn load_identity(cfg: &NodeConfig) -> Result<NodeIdentity, Failure> {
    let identity = match &cfg.identity {
        IdentitySource::MeshKey { key, .. } => MeshRoot::derive(key)
            .and_then(|root| root.issue(&cfg.node))
            .context("making this node's certificate")?,
        IdentitySource::Bundle(dir) => {
            let id = ca::load(dir, cfg.insecure_key_permissions).map_err(Failure::usage)?;
            if cfg.node_explicit && id.node != cfg.node {
                return Err(Failure::usage(format!(
                    "--node {} does not match the certificate in {}, which names {}: drop --node or issue a bundle for {}",
                    cfg.node,
                    dir.display(),
                    id.node,
                    cfg.node
                )));
            }
            id
        }
    };
    if matches!(cfg.identity, IdentitySource::MeshKey { .. })
        && let Some(a) = cfg.announce.iter().find(|a| a.allow.is_some())
    {
        return Err(Failure::usage(format!(
            "--allow for {} needs CA mode (--identity DIR): with a shared mesh key every member can take any node name",
            a.spec.service
        )));
    }
    if let Some(allowed) = &identity.services {
        for a in &cfg.announce {
            if !allowed.contains(&a.spec.service) {
                let list = allowed
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(",");
                return Err(Failure::usage(format!(
                    "this node's certificate allows announcing only [{list}], not {}: issue a bundle with --services including it",
                    a.spec.service
                )));
            }
        }
    }
    Ok(identity)
}

/// One announced service: its record and the health flag the provider reads.
struct Announced {
    cfg: AnnounceConfig,
    txt: Mutex<TxtRecord>,
    up: Arc<AtomicBool>,
}

impl Announced {
    fn record(&self) -> TxtRecord {
        self.txt.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Checks a target every `interval`; on a change, marks the record (TXT `h`) and the flag.
async fn health_loop(
    a: Arc<Announced>,
    mdns: Arc<Mdns>,
    node: NodeName,
    quic_port: u16,
    interval: Duration,
    cancel: CancellationToken,
) {
    let target = a.cfg.spec.target;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let up = target_up(target, interval.min(Duration::from_secs(2))).await;
        if up == a.up.load(Ordering::Relaxed) {
            continue;
        }
        a.up.store(up, Ordering::Relaxed);
        if up {
            info!(%target, "target is up again: announcing it as healthy");
        } else {
            warn!(%target, "target is down: marking the record down and refusing streams");
        }
        let txt = {
            let mut txt = a.txt.lock().unwrap_or_else(|e| e.into_inner());
            txt.up = up;
            txt.clone()
        };
        if let Err(e) = mdns.announce(&node, quic_port, &txt) {
            warn!(error = %e, "cannot update the record");
        }
    }
}

/// Applies a reload: the deny list, and in CA mode a re-read bundle (new certificate for new
/// connections; open connections are kept).
#[allow(clippy::too_many_arguments)]
fn reload(
    cfg: &NodeConfig,
    node: &NodeName,
    deny: &Arc<DenyList>,
    endpoint: &QuicEndpoint,
    pool: &Pool,
    serve: bool,
    settings: &TransportSettings,
    mdns: &Mdns,
    announced: &[Arc<Announced>],
    quic_port: u16,
) {
    match deny.reload() {
        Ok(n) if cfg.deny_file.is_some() => info!(entries = n, "deny list reloaded"),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "deny list not reloaded; the old one stays"),
    }
    pool.close_denied(deny);
    if let IdentitySource::MeshKey { .. } = cfg.identity {
        // A mesh-key node's certificate is made at start; nothing to re-read.
        return;
    }
    let identity = match load_identity(cfg) {
        Ok(id) if id.node == *node => id,
        Ok(id) => {
            warn!(new = %id.node, "the reloaded certificate names another node; keeping the old identity");
            return;
        }
        Err(e) => {
            warn!(error = %e, "identity not reloaded; the old one stays");
            return;
        }
    };
    if serve {
        match transport::server_config(&identity, deny, settings) {
            Ok(sc) => endpoint.set_server_config(Some(sc)),
            Err(e) => return warn!(error = %e, "identity not reloaded"),
        }
    }
    match transport::client_config(&identity, deny, settings) {
        Ok(cc) => pool.set_client_config(cc),
        Err(e) => return warn!(error = %e, "identity not reloaded"),
    }
    for a in announced {
        let txt = {
            let mut txt = a.txt.lock().unwrap_or_else(|e| e.into_inner());
            txt.fingerprint = identity.fingerprint.clone();
            txt.clone()
        };
        if let Err(e) = mdns.announce(node, quic_port, &txt) {
            warn!(error = %e, "cannot update the record");
        }
    }
    info!(fingerprint = %identity.fingerprint, "identity reloaded; open connections are kept");
}

/// Runs a node until `shutdown` resolves (or a fatal error), then withdraws its announcements
/// and stops. `controls` carries reload requests (SIGHUP).
pub async fn run(cfg: NodeConfig, mut controls: mpsc::Receiver<Control>) -> Result<(), Failure> {
    let identity = load_identity(&cfg)?;
    let node = identity.node.clone();
    let deny = match &cfg.deny_file {
        Some(f) => DenyList::load(f).map_err(Failure::usage)?,
        None => DenyList::empty(),
    };

    // Listeners whose port is known are bound first: a port in use is a usage error, found
    // before anything is announced.
    let mut listeners = Vec::new();
    for c in &cfg.connect {
        let bound = match c.spec.listen_port {
            Some(port) => Some(bind_listener(SocketAddr::new(c.spec.listen_ip, port), c).await?),
            None => None,
        };
        listeners.push((c.clone(), bound));
    }

    let serve = !cfg.announce.is_empty();
    let endpoint = transport::endpoint(cfg.bind, &identity, &deny, serve, &cfg.transport).map_err(
        |e| match e {
            EndpointError::Bind { .. } => Failure::usage(e),
            other => Failure::Runtime(other.into()),
        },
    )?;
    let quic_addr = endpoint
        .local_addr()
        .context("reading the QUIC socket address")?;
    let client =
        transport::client_config(&identity, &deny, &cfg.transport).context("TLS client set-up")?;
    let pool = Pool::new(endpoint.clone(), client, cfg.transport.clone());
    let mdns = Arc::new(Mdns::new(&cfg.interfaces, Some(quic_addr)).context("starting mDNS")?);
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<Failure>(1);
    let source = match &cfg.identity {
        IdentitySource::MeshKey { source, .. } => format!("mesh key {source}"),
        IdentitySource::Bundle(dir) => format!("CA bundle {}", dir.display()),
    };
    info!(node = %node, mesh = %identity.mesh_id, quic = %quic_addr, identity = %source, "node up");

    let mut announced = Vec::new();
    let mut provider_cfg: Option<Arc<ProviderConfig>> = None;
    let stop_accepting = CancellationToken::new();
    if serve {
        let mut services = HashMap::new();
        for a in &cfg.announce {
            // The first health check runs before the first announcement.
            let up = target_up(a.spec.target, Duration::from_secs(1)).await;
            let txt = TxtRecord {
                service: a.spec.service.clone(),
                port: a.spec.port,
                node: node.clone(),
                mesh: identity.mesh_id.clone(),
                fingerprint: identity.fingerprint.clone(),
                weight: a.weight,
                up,
            };
            let entry = Arc::new(Announced {
                cfg: a.clone(),
                txt: Mutex::new(txt),
                up: Arc::new(AtomicBool::new(up)),
            });
            services.insert(
                a.spec.service.clone(),
                ServiceTarget {
                    addr: a.spec.target,
                    up: entry.up.clone(),
                    allow: a
                        .allow
                        .as_ref()
                        .map(|l| l.iter().map(|n| n.to_string()).collect()),
                    redis_auth: a.redis_auth.clone(),
                },
            );
            announced.push(entry);
        }
        let pcfg = Arc::new(ProviderConfig {
            services,
            header_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            draining: AtomicBool::new(false),
            deny: deny.clone(),
            activity: Default::default(),
        });
        provider_cfg = Some(pcfg.clone());
        tracker.spawn(provider::serve(
            endpoint.clone(),
            pcfg,
            cancel.clone(),
            tracker.clone(),
        ));
        for a in &announced {
            let spec = &a.cfg.spec;
            let fullname = mdns
                .announce(&node, quic_addr.port(), &a.record())
                .context("announcing over mDNS")?;
            let up = a.up.load(Ordering::Relaxed);
            info!(service = %spec.service, port = spec.port, target = %spec.target, instance = %fullname, target_up = up, "announcing");
            if !up {
                warn!(service = %spec.service, target = %spec.target, "target is down: announced as down until it answers");
            }
            let span = info_span!("health", service = %spec.service);
            tracker.spawn(
                health_loop(
                    a.clone(),
                    mdns.clone(),
                    node.clone(),
                    quic_addr.port(),
                    cfg.health_interval,
                    cancel.clone(),
                )
                .instrument(span),
            );
        }
    }

    let mut consumers: Vec<(Arc<ConsumerCtx>, ListenAddr)> = Vec::new();
    let mut static_sets: HashMap<ServiceName, Arc<EndpointSet>> = HashMap::new();
    if !cfg.connect.is_empty() {
        let registry = Arc::new(Registry::default());
        if cfg.connect.iter().any(|c| c.source == Source::Mesh) {
            let rx = mdns.browse().context("browsing mDNS")?;
            let filter = BrowseFilter {
                mesh_id: identity.mesh_id.clone(),
                own_node: node.clone(),
            };
            let (reg, c) = (registry.clone(), cancel.clone());
            tracker.spawn(async move { run_browser(rx, &reg, filter, c).await });
        }
        for (c, bound) in listeners {
            let backends = match &c.source {
                Source::Mesh => Backends::Discovered(registry.clone()),
                Source::Static(addrs) => {
                    let set = Arc::new(EndpointSet::new(static_endpoints(addrs)));
                    static_sets.insert(c.spec.service.clone(), set.clone());
                    Backends::Endpoints {
                        set,
                        direct: c.direct,
                    }
                }
                Source::DnsSrv { name, server } => {
                    let resolver = dns_srv::resolver(*server)
                        .map_err(|e| Failure::usage(format!("DNS resolver for {name}: {e}")))?;
                    let set = Arc::new(EndpointSet::new(Vec::new()));
                    let span = info_span!("dns-srv", service = %c.spec.service);
                    tracker.spawn(
                        dns_srv::run(resolver, name.clone(), set.clone(), cancel.clone())
                            .instrument(span),
                    );
                    Backends::Endpoints {
                        set,
                        direct: c.direct,
                    }
                }
                Source::MdnsType(ty) => {
                    let rx = mdns.browse_type(ty).context("browsing mDNS")?;
                    let set = Arc::new(EndpointSet::new(Vec::new()));
                    tracker.spawn(run_plain_browser(rx, set.clone(), cancel.clone()));
                    Backends::Endpoints {
                        set,
                        direct: c.direct,
                    }
                }
            };
            if c.direct {
                warn!(service = %c.spec.service, "direct backends: traffic to them is plain TCP, not encrypted");
            }
            let mut ctx = ConsumerCtx::new(
                c.spec.service.clone(),
                backends,
                pool.clone(),
                quic_addr,
                c.wait,
                Balancer::new(c.policy, Backoff::default()),
                cancel.clone(),
                tracker.clone(),
            );
            ctx.redis_auth = c.redis_auth.clone();
            let ctx = Arc::new(ctx);
            let listen_addr = Arc::new(Mutex::new(None));
            consumers.push((ctx.clone(), listen_addr.clone()));
            tracker.spawn(watch_pool(ctx.clone()));
            let (cancel, registry, fatal) = (cancel.clone(), registry.clone(), fatal_tx.clone());
            let stop_accepting = stop_accepting.clone();
            let span = info_span!("listener", service = %c.spec.service);
            tracker.spawn(
                async move {
                    let listener = match bound {
                        Some(l) => l,
                        None => {
                            // The listen port is the advertised one: learn it from the first record.
                            info!(
                                "waiting for an announcement to learn the port (give {}:PORT to listen at once)",
                                c.spec.service
                            );
                            let svc = c.spec.service.clone();
                            let found = tokio::select! {
                                () = cancel.cancelled() => return,
                                found = async {
                                    let far = tokio::time::Instant::now() + Duration::from_secs(365 * 86_400);
                                    registry.wait_for(&svc, far, |i| !i.is_empty()).await
                                } => found,
                            };
                            let Some(port) = found.first().map(|i| i.port) else { return };
                            match bind_listener(SocketAddr::new(c.spec.listen_ip, port), &c).await {
                                Ok(l) => l,
                                Err(e) => {
                                    let _ = fatal.send(e).await;
                                    return;
                                }
                            }
                        }
                    };
                    match listener.local_addr() {
                        Ok(addr) => {
                            *listen_addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
                            info!(listen = %addr, "listening");
                        }
                        Err(e) => warn!(error = %e, "listening (address unknown)"),
                    }
                    serve_listener(listener, ctx, stop_accepting).await;
                }
                .instrument(span),
            );
        }
    }

    let snapshot = {
        let (node, mesh, quic) = (
            node.to_string(),
            identity.mesh_id.clone(),
            quic_addr.to_string(),
        );
        let announced: Vec<Arc<Announced>> = announced.clone();
        let consumers = consumers.clone();
        let policies: Vec<String> = cfg
            .connect
            .iter()
            .map(|c| format!("{:?}", c.policy))
            .collect();
        Arc::new(move || NodeStatus {
            node: node.clone(),
            mesh: mesh.clone(),
            quic: quic.clone(),
            pid: std::process::id(),
            announce: announced
                .iter()
                .map(|a| AnnounceStatus {
                    service: a.cfg.spec.service.to_string(),
                    port: a.cfg.spec.port,
                    target: a.cfg.spec.target.to_string(),
                    target_up: a.up.load(Ordering::Relaxed),
                })
                .collect(),
            connect: consumers
                .iter()
                .zip(&policies)
                .map(|((ctx, listen), policy)| ConnectStatus {
                    service: ctx.service.to_string(),
                    listen: listen
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .map(|a| a.to_string()),
                    policy: policy.clone(),
                    instances: ctx.stats(),
                })
                .collect(),
        })
    };
    {
        let (node, cancel) = (node.to_string(), cancel.clone());
        tracker.spawn(async move { control::serve(&node, snapshot, cancel).await });
    }

    let outcome = loop {
        tokio::select! {
            Some(f) = fatal_rx.recv() => break Err(f),
            ctl = controls.recv() => match ctl {
                Some(Control::Reload) => {
                    info!("reload requested");
                    if let Some(path) = &cfg.config_file {
                        reload_backends(path, &static_sets);
                    }
                    reload(&cfg, &node, &deny, &endpoint, &pool, serve, &cfg.transport, &mdns, &announced, quic_addr.port());
                }
                Some(Control::Stop) | None => break Ok(()),
            },
        }
    };
    if outcome.is_ok() {
        // Graceful drain: withdraw, refuse new streams, let open ones finish.
        let active = || {
            provider_cfg.as_ref().map_or(0, |p| p.activity.count())
                + consumers
                    .iter()
                    .map(|(c, _)| c.activity.count())
                    .sum::<usize>()
        };
        if let Some(p) = &provider_cfg {
            p.draining.store(true, Ordering::Relaxed);
        }
        stop_accepting.cancel();
        mdns.withdraw_all().await;
        let open = active();
        if open > 0 {
            info!(open, timeout = ?cfg.drain_timeout, "draining: announcements withdrawn, new streams refused; waiting for open connections (signal again to stop at once)");
            let deadline = tokio::time::Instant::now() + cfg.drain_timeout;
            loop {
                if active() == 0 {
                    info!("drained");
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {
                        warn!(open = active(), "drain timeout: closing the remaining connections");
                        break;
                    }
                    ctl = controls.recv() => if matches!(ctl, Some(Control::Stop)) {
                        warn!(open = active(), "second stop signal: closing the remaining connections now");
                        break;
                    },
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
    info!("stopping: withdrawing announcements");
    cancel.cancel();
    mdns.shutdown().await;
    endpoint.close(quinn::VarInt::from_u32(0), b"node stopping");
    tracker.close();
    if tokio::time::timeout(STOP_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!("some connections did not end within {STOP_GRACE:?}; closing them");
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    info!("stopped");
    outcome
}
