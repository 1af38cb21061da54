//! A running node: composes identity, transport, discovery and proxy for `announce`,
//! `connect` and `run`. Data flows one way: discovery → registry → balancer → transport.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::balance::{Backoff, Balancer};
use crate::config::{ConnectConfig, NodeConfig};
use crate::control::{self, AnnounceStatus, ConnectStatus, NodeStatus};
use crate::discovery::mdns::{BrowseFilter, Mdns, run_browser};
use crate::discovery::{Registry, TxtRecord};
use crate::error::Failure;
use crate::identity::MeshRoot;
use crate::names::NodeName;
use crate::proxy::consumer::{Backends, Candidate, ConsumerCtx, serve_listener, watch_pool};
use crate::proxy::provider::{self, ProviderConfig, ServiceTarget};
use crate::spec::AnnounceSpec;
use crate::transport::{self, EndpointError, Pool};

/// The listen address of a consumer, once bound (for status).
type ListenAddr = Arc<Mutex<Option<SocketAddr>>>;

/// How long a stop waits for tasks to wind down.
const STOP_GRACE: Duration = Duration::from_secs(2);

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

/// One announced service: its record and the health flag the provider reads.
struct Announced {
    spec: AnnounceSpec,
    txt: TxtRecord,
    up: Arc<AtomicBool>,
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
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let up = target_up(a.spec.target, interval.min(Duration::from_secs(2))).await;
        if up == a.up.load(Ordering::Relaxed) {
            continue;
        }
        a.up.store(up, Ordering::Relaxed);
        if up {
            info!(target = %a.spec.target, "target is up again: announcing it as healthy");
        } else {
            warn!(target = %a.spec.target, "target is down: marking the record down and refusing streams");
        }
        let txt = TxtRecord {
            up,
            ..a.txt.clone()
        };
        if let Err(e) = mdns.announce(&node, quic_port, &txt) {
            warn!(error = %e, "cannot update the record");
        }
    }
}

/// Runs a node until `shutdown` resolves (or a fatal error), then withdraws its announcements
/// and stops.
pub async fn run(cfg: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), Failure> {
    let root = MeshRoot::derive(&cfg.key).context("deriving the mesh root")?;
    let identity = root
        .issue(&cfg.node)
        .context("issuing this node's certificate")?;

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

    let endpoint = transport::endpoint(
        cfg.bind,
        &identity,
        !cfg.announce.is_empty(),
        &cfg.transport,
    )
    .map_err(|e| match e {
        EndpointError::Bind { .. } => Failure::usage(e),
        other => Failure::Runtime(other.into()),
    })?;
    let quic_addr = endpoint
        .local_addr()
        .context("reading the QUIC socket address")?;
    let mdns = Arc::new(Mdns::new(&cfg.interfaces).context("starting mDNS")?);
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<Failure>(1);
    info!(node = %cfg.node, mesh = %identity.mesh_id, quic = %quic_addr, key = %cfg.key_source, "node up");

    let mut announced = Vec::new();
    if !cfg.announce.is_empty() {
        let mut services = HashMap::new();
        for a in &cfg.announce {
            // The first health check runs before the first announcement.
            let up = target_up(a.target, Duration::from_secs(1)).await;
            let txt = TxtRecord {
                service: a.service.clone(),
                port: a.port,
                node: cfg.node.clone(),
                mesh: identity.mesh_id.clone(),
                fingerprint: identity.fingerprint.clone(),
                weight: cfg.weight,
                up,
            };
            let entry = Arc::new(Announced {
                spec: a.clone(),
                txt,
                up: Arc::new(AtomicBool::new(up)),
            });
            services.insert(
                a.service.clone(),
                ServiceTarget {
                    addr: a.target,
                    up: entry.up.clone(),
                },
            );
            announced.push(entry);
        }
        let pcfg = Arc::new(ProviderConfig {
            services,
            header_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
        });
        tracker.spawn(provider::serve(
            endpoint.clone(),
            pcfg,
            cancel.clone(),
            tracker.clone(),
        ));
        for a in &announced {
            let fullname = mdns
                .announce(&cfg.node, quic_addr.port(), &a.txt)
                .context("announcing over mDNS")?;
            let up = a.up.load(Ordering::Relaxed);
            info!(service = %a.spec.service, port = a.spec.port, target = %a.spec.target, instance = %fullname, target_up = up, "announcing");
            if !up {
                warn!(service = %a.spec.service, target = %a.spec.target, "target is down: announced as down until it answers");
            }
            let span = info_span!("health", service = %a.spec.service);
            tracker.spawn(
                health_loop(
                    a.clone(),
                    mdns.clone(),
                    cfg.node.clone(),
                    quic_addr.port(),
                    cfg.health_interval,
                    cancel.clone(),
                )
                .instrument(span),
            );
        }
    }

    let mut consumers: Vec<(Arc<ConsumerCtx>, ListenAddr)> = Vec::new();
    if !cfg.connect.is_empty() {
        let registry = Arc::new(Registry::default());
        if cfg.connect.iter().any(|c| c.backends.is_empty()) {
            let rx = mdns.browse().context("browsing mDNS")?;
            let filter = BrowseFilter {
                mesh_id: identity.mesh_id.clone(),
                own_node: cfg.node.clone(),
            };
            let (reg, c) = (registry.clone(), cancel.clone());
            tracker.spawn(async move { run_browser(rx, &reg, filter, c).await });
        }
        let pool = Pool::new(endpoint.clone(), cfg.transport.clone());
        for (c, bound) in listeners {
            let backends = if c.backends.is_empty() {
                Backends::Discovered(registry.clone())
            } else {
                Backends::Static(
                    c.backends
                        .iter()
                        .map(|a| Candidate::static_peer(*a))
                        .collect(),
                )
            };
            let ctx = Arc::new(ConsumerCtx::new(
                c.spec.service.clone(),
                backends,
                pool.clone(),
                quic_addr,
                c.wait,
                Balancer::new(c.policy, Backoff::default()),
                cancel.clone(),
                tracker.clone(),
            ));
            let listen_addr = Arc::new(Mutex::new(None));
            consumers.push((ctx.clone(), listen_addr.clone()));
            tracker.spawn(watch_pool(ctx.clone()));
            let (cancel, registry, fatal) = (cancel.clone(), registry.clone(), fatal_tx.clone());
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
                    serve_listener(listener, ctx).await;
                }
                .instrument(span),
            );
        }
    }

    let snapshot = {
        let (node, mesh, quic) = (
            cfg.node.to_string(),
            identity.mesh_id.clone(),
            quic_addr.to_string(),
        );
        let announced: Vec<Arc<Announced>> = announced.clone();
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
                    service: a.spec.service.to_string(),
                    port: a.spec.port,
                    target: a.spec.target.to_string(),
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
        let (node, cancel) = (cfg.node.to_string(), cancel.clone());
        tracker.spawn(async move { control::serve(&node, snapshot, cancel).await });
    }

    let outcome = tokio::select! {
        () = shutdown => Ok(()),
        Some(f) = fatal_rx.recv() => Err(f),
    };
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
