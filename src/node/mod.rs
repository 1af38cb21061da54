//! A running node: composes identity, transport, discovery and proxy for `announce`,
//! `connect` and `run`. Data flows one way: discovery → registry → balancer → transport.
//!
//! A [`Node`] owns the QUIC endpoint, the peer pool, mDNS, the cancellation token and the
//! task tracker; each step of its life is one method: start ([`Node::start`]), serve
//! announced services (`provide`), reach services (`consume`), report (`status`), reload on
//! SIGHUP (`reload`), drain and stop.

mod consume;
mod containers;
mod provide;
mod registry_publish;
mod reload;
mod status;

use std::net::SocketAddr;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use quinn::Endpoint as QuicEndpoint;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{IdentitySource, NodeConfig, Source};
use crate::discovery::Registry;
use crate::discovery::mdns::{Conflicts, Mdns};
use crate::error::Failure;
use crate::identity::{DenyList, MeshRoot, NodeIdentity, ca};
use crate::metrics::Metrics;
use crate::names::{Fingerprint, MeshId, NodeName};
use crate::proxy::provider::ProviderConfig;
use crate::transport::{self, CloseCode, EndpointError, Pool};

use consume::ConsumerEntry;
use provide::Announcements;

/// How long a stop waits for tasks to wind down.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Signals a running node reacts to besides shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop: drain first (SIGINT/SIGTERM); a second one stops at once.
    Stop,
    /// Reload the identity, the deny list and static backends (SIGHUP).
    Reload,
}

/// A running node and everything it owns.
pub struct Node {
    /// The validated configuration it runs.
    cfg: NodeConfig,
    /// This node's name (in CA mode, the certificate's).
    node: NodeName,
    /// The mesh this node belongs to.
    mesh_id: MeshId,
    /// This node's current certificate fingerprint (changes on a CA-mode reload); the mesh
    /// browser reads it to tell this node's records from another node's of the same name.
    fingerprint: Arc<RwLock<Fingerprint>>,
    /// What consumers may use: records, and what verified nodes serve.
    registry: Arc<Registry>,
    /// Records of this node's name by another node (shown by `status`).
    conflicts: Conflicts,
    /// Revoked certificates, reloaded on SIGHUP.
    deny: Arc<DenyList>,
    /// The QUIC endpoint (one UDP socket: serves and dials).
    endpoint: QuicEndpoint,
    /// Its bound address.
    quic_addr: SocketAddr,
    /// Connections to peers, shared by every consumer.
    pool: Pool,
    /// The mDNS responder and browser.
    /// mDNS, unless `--no-mdns` turned it off.
    mdns: Option<Arc<Mdns>>,
    /// The etcd registry publisher, when the node announces with `--registry`.
    etcd: Option<Arc<registry_publish::RegistryPublisher>>,
    /// Stops every task of the node.
    cancel: CancellationToken,
    /// Every task of the node, awaited at stop.
    tracker: TaskTracker,
    /// Stops the consumers' accept loops (the drain), while open connections go on.
    stop_accepting: CancellationToken,
    /// A task that hits a fatal error (a listener port in use) reports it here.
    fatal: mpsc::Sender<Failure>,
    fatal_rx: mpsc::Receiver<Failure>,
    /// What the provider serves, when the node announces anything.
    provider: Option<Arc<ProviderConfig>>,
    /// The announced services (static ones, and containers as they come and go).
    announced: Announcements,
    /// The consumers, one per reached service.
    consumers: Vec<ConsumerEntry>,
    /// What the node counts (the admin endpoint's `/metrics`, and `status`).
    metrics: Arc<Metrics>,
    /// When the node started.
    started: SystemTime,
    /// When this node's certificate expires (Unix seconds; changes on a CA-mode reload).
    not_after: Arc<AtomicI64>,
    /// The admin endpoint's listener, bound at start, until it is served.
    admin: Option<tokio::net::TcpListener>,
    /// The HTTP front's listener, bound at start, until it is served.
    http: Option<tokio::net::TcpListener>,
    /// The HTTP front's requests in flight (a drain waits for them).
    http_requests: Option<crate::proxy::Activity>,
    /// What the running containers ask to be announced (`--docker`).
    containers: Option<mpsc::Receiver<Vec<crate::docker::Wanted>>>,
}

/// Runs a node until `controls` says stop (or a fatal error), then drains, withdraws its
/// announcements and stops. `controls` also carries reload requests (SIGHUP).
pub async fn run(cfg: NodeConfig, mut controls: mpsc::Receiver<Control>) -> Result<(), Failure> {
    let mut node = Node::start(cfg).await?;
    let outcome = node.serve(&mut controls).await;
    if outcome.is_ok() {
        node.drain(&mut controls).await;
    }
    node.stop().await;
    outcome
}

impl Node {
    /// Loads the identity, binds the listeners whose port is known (a port in use is a usage
    /// error, found before anything is announced) and the QUIC endpoint, starts mDNS, then
    /// the provider, the announcements, the consumers and the status socket.
    pub async fn start(cfg: NodeConfig) -> Result<Self, Failure> {
        let identity = load_identity(&cfg)?;
        let deny = match &cfg.deny_file {
            Some(f) => DenyList::load(f).map_err(Failure::usage)?,
            None => DenyList::empty(),
        };
        let listeners = consume::bind_known_listeners(&cfg).await?;
        let admin = bind_optional(cfg.admin, "the admin endpoint (--admin)").await?;
        let http = bind_optional(cfg.http, "the HTTP front (--http)").await?;
        let serve = !cfg.announce.is_empty() || cfg.docker.is_some();
        let endpoint = transport::endpoint(cfg.bind, &identity, &deny, serve, &cfg.transport)
            .map_err(|e| match e {
                EndpointError::Bind { .. } => Failure::usage(e),
                other => Failure::Runtime(other.into()),
            })?;
        let quic_addr = endpoint
            .local_addr()
            .context("reading the QUIC socket address")?;
        let client = transport::client_config(&identity, &deny, &cfg.transport)
            .context("TLS client set-up")?;
        let pool = Pool::new(endpoint.clone(), client, cfg.transport.clone());
        let mdns = if cfg.mdns {
            Some(Arc::new(
                Mdns::new(&cfg.interfaces, Some(quic_addr)).context("starting mDNS")?,
            ))
        } else {
            info!("mDNS off (--no-mdns): announcing and discovering through the registry only");
            None
        };
        let (fatal, fatal_rx) = mpsc::channel(1);
        info!(node = %identity.node, mesh = %identity.mesh_id, quic = %quic_addr, identity = %identity_source(&cfg), congestion = %cfg.transport.congestion, "node up");
        let metrics = Arc::new(Metrics::new());
        let mut node = Self {
            node: identity.node.clone(),
            mesh_id: identity.mesh_id.clone(),
            fingerprint: Arc::new(RwLock::new(identity.fingerprint.clone())),
            registry: Arc::new(Registry::new(metrics.discovery("mdns"))),
            conflicts: Conflicts::default(),
            cfg,
            deny,
            endpoint,
            quic_addr,
            pool,
            mdns,
            etcd: None,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            stop_accepting: CancellationToken::new(),
            fatal,
            fatal_rx,
            provider: None,
            announced: Announcements::default(),
            consumers: Vec::new(),
            metrics,
            started: SystemTime::now(),
            not_after: Arc::new(AtomicI64::new(identity.not_after_unix().unwrap_or(0))),
            admin,
            http,
            http_requests: None,
            containers: None,
        };
        node.start_tasks(serve, listeners).await?;
        Ok(node)
    }

    /// Starts what the node does: serving and announcing (when `serve`), the consumers on
    /// `listeners`, the HTTP front, the mesh browser where something uses it, the status.
    async fn start_tasks(
        &mut self,
        serve: bool,
        listeners: Vec<consume::PendingListener>,
    ) -> Result<(), Failure> {
        if serve {
            self.start_serving().await?;
        }
        self.start_consumers(listeners)?;
        self.start_http();
        let mesh_consumer = self.cfg.connect.iter().any(|c| c.source == Source::Mesh);
        if serve || mesh_consumer || self.cfg.http.is_some() {
            self.browse_mesh()?;
            self.watch_registry();
        }
        self.serve_status();
        Ok(())
    }

    /// Serves tunnel streams, announces the configured services and, with `--docker`, starts
    /// watching the containers.
    async fn start_serving(&mut self) -> Result<(), Failure> {
        self.start_provider();
        if let Some(registry) = self.cfg.registry.clone() {
            let cancel = self.cancel.clone();
            let publisher = registry_publish::RegistryPublisher::start(
                registry,
                self.quic_addr,
                cancel,
                &self.tracker,
            );
            self.etcd = Some(publisher);
        }
        self.announce().await?;
        if let Some(socket) = self.cfg.docker.clone() {
            self.containers = Some(self.watch_docker(&socket)?);
        }
        Ok(())
    }

    /// Serves until a stop signal (`Ok`) or a fatal error; reloads on SIGHUP.
    async fn serve(&mut self, controls: &mut mpsc::Receiver<Control>) -> Result<(), Failure> {
        loop {
            let containers = async {
                match self.containers.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(f) = self.fatal_rx.recv() => return Err(f),
                Some(wanted) = containers => self.apply_containers(wanted).await,
                ctl = controls.recv() => match ctl {
                    Some(Control::Reload) => self.reload(),
                    Some(Control::Stop) | None => return Ok(()),
                },
            }
        }
    }

    /// Connections open now, provider streams and consumer connections together.
    fn active(&self) -> usize {
        self.provider.as_ref().map_or(0, |p| p.activity.count())
            + self.http_requests.as_ref().map_or(0, |a| a.count())
            + self
                .consumers
                .iter()
                .map(|c| c.consumer.activity.count())
                .sum::<usize>()
    }

    /// Graceful drain: withdraw the announcements, refuse new streams ("draining", which
    /// consumers retry elsewhere), stop accepting, and let open connections finish (up to the
    /// drain timeout, or until a second stop signal).
    async fn drain(&mut self, controls: &mut mpsc::Receiver<Control>) {
        if let Some(p) = &self.provider {
            // Consumers learn it over their control streams at once, before the goodbye.
            p.start_drain();
        }
        self.stop_accepting.cancel();
        if let Some(etcd) = &self.etcd {
            etcd.remove_all();
        }
        if let Some(mdns) = &self.mdns {
            mdns.withdraw_all().await;
        }
        self.deliver_drain().await;
        let open = self.active();
        if open == 0 {
            return;
        }
        let timeout = self.cfg.drain_timeout;
        info!(
            open,
            ?timeout,
            "draining: announcements withdrawn, new streams refused; waiting for open connections (signal again to stop at once)"
        );
        let deadline = tokio::time::Instant::now() + timeout;
        while self.active() > 0 {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    return warn!(open = self.active(), "drain timeout: closing the remaining connections");
                }
                ctl = controls.recv() => if matches!(ctl, Some(Control::Stop)) {
                    return warn!(open = self.active(), "second stop signal: closing the remaining connections now");
                },
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        info!("drained");
    }

    /// This node's certificate fingerprint now.
    fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits (briefly) until every control stream has delivered the draining frame, so
    /// consumers learn the drain from the node itself, not from the close that follows.
    async fn deliver_drain(&self) {
        let Some(p) = &self.provider else { return };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while p.controls.count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops every task, withdraws what is still announced, closes the endpoint.
    async fn stop(self) {
        info!("stopping: withdrawing announcements");
        self.cancel.cancel();
        if let Some(mdns) = &self.mdns {
            mdns.shutdown().await;
        }
        self.endpoint
            .close(CloseCode::Stopping.varint(), b"node stopping");
        self.tracker.close();
        if tokio::time::timeout(STOP_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            warn!("some connections did not end within {STOP_GRACE:?}; closing them");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        info!("stopped");
    }
}

/// Binds an optional listener (`what` names it and its flag in the error): a port in use is
/// a usage error, found before anything is announced.
pub(super) async fn bind_optional(
    addr: Option<SocketAddr>,
    what: &str,
) -> Result<Option<tokio::net::TcpListener>, Failure> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    tokio::net::TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|e| {
            Failure::usage(format!(
                "cannot listen on {addr} for {what}: {e}; pick another address"
            ))
        })
}

/// Where the identity came from, for the start-up line.
fn identity_source(cfg: &NodeConfig) -> String {
    match &cfg.identity {
        IdentitySource::MeshKey { source, .. } => format!("mesh key {source}"),
        IdentitySource::Bundle(dir) => format!("CA bundle {}", dir.display()),
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
    check_identity(cfg, &identity)?;
    Ok(identity)
}

/// What the identity must allow: `--allow` needs CA mode, and a certificate limited to some
/// services must list every announced one.
fn check_identity(cfg: &NodeConfig, identity: &NodeIdentity) -> Result<(), Failure> {
    if matches!(cfg.identity, IdentitySource::MeshKey { .. })
        && let Some(a) = cfg.announce.iter().find(|a| a.allow.is_some())
    {
        return Err(Failure::usage(format!(
            "--allow for {} needs CA mode (--identity DIR): with a shared mesh key every member can take any node name",
            a.spec.service
        )));
    }
    let Some(allowed) = &identity.services else {
        return Ok(());
    };
    match cfg
        .announce
        .iter()
        .find(|a| !allowed.contains(&a.spec.service))
    {
        None => Ok(()),
        Some(a) => {
            let list: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
            Err(Failure::usage(format!(
                "this node's certificate allows announcing only [{}], not {}: issue a bundle with --services including it",
                list.join(","),
                a.spec.service
            )))
        }
    }
}
