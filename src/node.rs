//! A running node: composes identity, transport, discovery and proxy for `announce`,
//! `connect` and `run`. Data flows one way: discovery → registry → consumer → transport.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::config::{ConnectConfig, NodeConfig};
use crate::discovery::mdns::{BrowseFilter, Mdns, run_browser};
use crate::discovery::{Registry, TxtRecord};
use crate::error::Failure;
use crate::identity::MeshRoot;
use crate::proxy::consumer::{Backends, Candidate, ConsumerCtx, serve_listener};
use crate::proxy::provider::{self, ProviderConfig};
use crate::transport::{self, EndpointError, Pool};

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

    if !cfg.announce.is_empty() {
        let services = cfg
            .announce
            .iter()
            .map(|a| (a.service.clone(), a.target))
            .collect::<HashMap<_, _>>();
        let pcfg = Arc::new(ProviderConfig {
            services,
            header_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        });
        tracker.spawn(provider::serve(
            endpoint.clone(),
            pcfg,
            cancel.clone(),
            tracker.clone(),
        ));
        for a in &cfg.announce {
            let txt = TxtRecord {
                service: a.service.clone(),
                port: a.port,
                node: cfg.node.clone(),
                mesh: identity.mesh_id.clone(),
                fingerprint: identity.fingerprint.clone(),
                weight: cfg.weight,
            };
            let fullname = mdns
                .announce(&cfg.node, quic_addr.port(), &txt)
                .context("announcing over mDNS")?;
            info!(service = %a.service, port = a.port, target = %a.target, instance = %fullname, "announcing");
        }
    }

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
            let ctx = Arc::new(ConsumerCtx::new(pool.clone(), quic_addr, c.wait));
            let (cancel, tracker2, registry, fatal) = (
                cancel.clone(),
                tracker.clone(),
                registry.clone(),
                fatal_tx.clone(),
            );
            let span = info_span!("listener", service = %c.spec.service);
            tracker.spawn(
                async move {
                    let listener = match bound {
                        Some(l) => l,
                        None => {
                            // The listen port is the advertised one: learn it from the first record.
                            info!("waiting for an announcement to learn the port (give {}:PORT to listen at once)", c.spec.service);
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
                        Ok(addr) => info!(listen = %addr, "listening"),
                        Err(e) => warn!(error = %e, "listening (address unknown)"),
                    }
                    serve_listener(listener, c.spec.service.clone(), backends, ctx, cancel, tracker2).await;
                }
                .instrument(span),
            );
        }
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
