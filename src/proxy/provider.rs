//! The provider side: accepts QUIC connections from mesh members, and for each stream reads the
//! request header, connects to the service's target and splices.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream, VarInt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::Activity;
use super::splice::{Traffic, splice};
use crate::identity::{DenyList, PeerIdentity};
use crate::inject::{AUTH_FAILED_REPLY, RedisAuth};
use crate::metrics::{Metrics, ServiceLabels, StreamLabels};
use crate::names::{InstanceTag, NodeName, ServiceName};
use crate::spec::Target;
use crate::transport::control::{ServiceSet, ServiceState};
use crate::transport::protocol::{FLAG_CONTROL, FLAG_PROBE, RefusalCode, Reply, Request};
use crate::transport::{CloseCode, HeldConnections, peer_identity};

/// Most streams of one connection that may wait for their request header at once. A consumer
/// sends the header with the stream's first bytes, so only a broken or hostile peer has many
/// waiting: beyond this, new ones are refused at once instead of being held for the header
/// timeout.
const MAX_AWAITING_HEADER: usize = 1024;
/// Most QUIC connections (handshaking or open) the provider holds at once; beyond this,
/// incoming connections are refused. One per consumer node is the normal case.
const MAX_CONNECTIONS: usize = 4096;

/// What a stream asks the provider for: a service, and which of its instances when the node
/// has several (one per container).
pub(crate) type Route = (ServiceName, Option<InstanceTag>);

/// What the provider serves.
#[derive(Debug)]
pub(crate) struct ProviderConfig {
    /// Target of each announced service (instances come and go: Docker containers).
    pub services: RwLock<HashMap<Route, ServiceTarget>>,
    /// Bound on reading a stream's request header.
    pub header_timeout: Duration,
    /// Bound on connecting to a target.
    pub connect_timeout: Duration,
    /// Set while the node drains: new streams are refused with "draining".
    pub draining: AtomicBool,
    /// Open streams, for the drain.
    pub activity: super::Activity,
    /// Revoked certificates: also checked per stream, so a revocation reaches connections
    /// that were open before it.
    pub deny: Arc<DenyList>,
    /// What this node serves, as its control streams tell consumers; see [`Self::publish`].
    pub published: watch::Sender<ServiceSet>,
    /// Control streams open now: a drain waits until each has delivered the draining frame.
    pub controls: Activity,
    /// The connections consumers opened to this node (for status).
    pub incoming: HeldConnections,
    /// What the provider counts.
    pub metrics: Arc<Metrics>,
}

impl ProviderConfig {
    /// What this node serves now: every service with its health, and whether it drains.
    fn service_set(&self) -> ServiceSet {
        let mut services: Vec<ServiceState> = self
            .routes()
            .iter()
            .map(|((name, tag), t)| ServiceState {
                svc: name.clone(),
                port: t.port,
                w: t.weight,
                up: t.up.load(Ordering::Relaxed),
                tag: tag.clone(),
            })
            .collect();
        services.sort_by(|a, b| (&a.svc, &a.tag).cmp(&(&b.svc, &b.tag)));
        ServiceSet {
            draining: self.draining.load(Ordering::Relaxed),
            services,
        }
    }

    fn routes(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Route, ServiceTarget>> {
        // A poisoned lock means a panic elsewhere; the map itself is always consistent.
        self.services.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves `route` from now on (replacing what it served), and tells the control streams.
    pub(crate) fn insert(&self, route: Route, target: ServiceTarget) {
        let mut map = self.services.write().unwrap_or_else(|e| e.into_inner());
        map.insert(route, target);
        drop(map);
        self.publish();
    }

    /// Serves `route` no more: new streams for it are refused (open ones go on), and the
    /// control streams are told at once.
    pub(crate) fn remove(&self, route: &Route) {
        let mut map = self.services.write().unwrap_or_else(|e| e.into_inner());
        map.remove(route);
        drop(map);
        self.publish();
    }

    /// Begins the drain: new streams are refused ("draining"), and every consumer's control
    /// stream is told at once.
    pub(crate) fn start_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.publish();
    }

    /// Tells every consumer's control stream what this node serves now (after a health
    /// change, or when the drain begins).
    pub(crate) fn publish(&self) {
        let set = self.service_set();
        self.published.send_if_modified(|cur| {
            let changed = *cur != set;
            *cur = set;
            changed
        });
    }
}

/// An announced service's target and its health.
#[derive(Debug, Clone)]
pub(crate) struct ServiceTarget {
    /// Where streams are connected (a name is resolved at each connection).
    pub target: Target,
    /// The advertised port.
    pub port: u16,
    /// The balancing weight.
    pub weight: u32,
    /// Whether the health check finds it up; streams are refused with "target down" if not.
    pub up: Arc<AtomicBool>,
    /// Nodes admitted (`None`: every mesh member).
    pub allow: Option<Vec<NodeName>>,
    /// Credentials sent to the target before any client byte.
    pub redis_auth: Option<RedisAuth>,
    /// Headers added to every request of an HTTP application (its stream is then spoken
    /// HTTP instead of spliced).
    pub http_headers: Option<Arc<crate::inject::http::HttpHeaders>>,
    /// Where its accepted streams are counted (resolved once, not per stream).
    pub meters: ServiceMeters,
}

/// The metric handles of one announced service's accepted streams.
#[derive(Debug, Clone)]
pub(crate) struct ServiceMeters {
    /// Streams accepted.
    pub accepted: prometheus_client::metrics::counter::Counter,
    /// Streams open now.
    pub active: prometheus_client::metrics::gauge::Gauge,
    /// Bytes each way: "sent" is target to consumer, the splice's TCP-to-stream direction.
    pub traffic: Traffic,
}

impl ServiceMeters {
    /// The handles of `service` in `metrics`.
    pub(crate) fn of(metrics: &Metrics, service: &ServiceName) -> Self {
        let p = &metrics.provider;
        let labels = ServiceLabels {
            service: service.to_string(),
        };
        let accepted = StreamLabels {
            service: service.to_string(),
            outcome: "accepted",
        };
        Self {
            accepted: p.streams.get_or_create_owned(&accepted),
            active: p.active.get_or_create_owned(&labels),
            traffic: Traffic {
                tcp_to_quic: p.sent.get_or_create_owned(&labels),
                quic_to_tcp: p.received.get_or_create_owned(&labels),
            },
        }
    }
}

/// Accepts connections on `endpoint` until `cancel` fires. Every task is spawned on `tracker`.
pub(crate) async fn serve(
    endpoint: Endpoint,
    cfg: Arc<ProviderConfig>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let connections = Activity::default();
    let mut next_conn: u64 = 0;
    loop {
        let incoming = tokio::select! {
            () = cancel.cancelled() => return,
            inc = endpoint.accept() => match inc {
                Some(inc) => inc,
                None => return,
            },
        };
        let held = connections.enter();
        if connections.count() > MAX_CONNECTIONS {
            warn!(remote = %incoming.remote_address(), open = MAX_CONNECTIONS, "refused a QUIC connection: too many open");
            incoming.refuse();
            continue;
        }
        next_conn += 1;
        let span = info_span!("peer", remote = %incoming.remote_address(), conn = next_conn);
        let (cfg, cancel, tasks) = (cfg.clone(), cancel.clone(), tracker.clone());
        tracker.spawn(
            async move {
                let _held = held;
                handle_connection(incoming, cfg, cancel, tasks).await;
            }
            .instrument(span),
        );
    }
}

async fn handle_connection(
    incoming: Incoming,
    cfg: Arc<ProviderConfig>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let conn: Connection = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "refused a QUIC handshake (not a member of this mesh?)");
            return;
        }
    };
    // A verified chain always carries a certificate; a missing one is refused per stream.
    let Some(identity) = peer_identity(&conn) else {
        warn!("refused a peer whose certificate cannot be read");
        conn.close(CloseCode::Stopping.varint(), b"unreadable certificate");
        return;
    };
    crate::transport::size_send_window(&conn);
    let peer = Arc::new(identity);
    let _listed = cfg.incoming.hold(&conn);
    info!(peer = %peer.node_label(), "peer connected");
    let awaiting = Activity::default();
    let mut next_id: u64 = 0;
    loop {
        let (send, recv) = tokio::select! {
            () = cancel.cancelled() => return,
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(e) => {
                    let path = conn.stats().path;
                    info!(peer = %peer.node_label(), reason = %e, mtu = path.current_mtu, rtt = ?path.rtt, "peer disconnected");
                    // What quinn kept for a burst of streams is freed with the connection.
                    if next_id >= crate::transport::BURST_STREAMS {
                        crate::transport::give_back_soon();
                    }
                    return;
                }
            },
        };
        next_id += 1;
        let span = info_span!("stream", service = tracing::field::Empty, peer = %peer.node_label(), stream = next_id);
        let stream = Stream { send, recv };
        tracker.spawn(
            handle_stream(stream, cfg.clone(), peer.clone(), awaiting.clone()).instrument(span),
        );
    }
}

/// One accepted stream, before its reply.
struct Stream {
    send: SendStream,
    recv: RecvStream,
}

/// A typed refusal and its detail, for the reply and the log.
struct Refused(RefusalCode, String);

impl Stream {
    /// Sends a refusal, logs and counts it, and lets the reply reach the peer before the
    /// stream goes. `service` is what the stream asked for, once its header is read.
    async fn refuse(mut self, cfg: &ProviderConfig, service: &str, refused: Refused) {
        let Refused(code, detail) = refused;
        cfg.metrics.provider.stream(service, code.label());
        warn!(%code, %detail, "refused stream");
        let _ = self
            .send
            .write_all(&Reply::refuse(code, detail).encode())
            .await;
        let _ = self.send.finish();
        let _ = self.recv.stop(VarInt::from_u32(0));
        let _ = tokio::time::timeout(Duration::from_secs(2), self.send.stopped()).await;
    }

    /// Serves the control stream: `Ok`, then what this node serves, now and on every change,
    /// until the connection ends.
    async fn serve_control(mut self, cfg: &ProviderConfig) {
        let _open = cfg.controls.enter();
        let mut changes = cfg.published.subscribe();
        if self.send.write_all(&Reply::Ok.encode()).await.is_err() {
            return;
        }
        loop {
            let (frame, draining) = {
                let set = changes.borrow_and_update();
                (set.encode(), set.draining)
            };
            if self.send.write_all(&frame).await.is_err() {
                return;
            }
            if draining {
                // The last word: finished, and held until the consumer has read it, so the
                // node's close does not discard it.
                let _ = self.send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(1), self.send.stopped()).await;
                return;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = self.send.stopped() => return,
            }
        }
    }

    /// Answers a probe: whether this node would serve the service now; connects nothing.
    async fn answer_probe(mut self, up: bool) {
        let reply = if up {
            Reply::Ok
        } else {
            Reply::refuse(RefusalCode::TargetDown, "target down")
        };
        let _ = self.send.write_all(&reply.encode()).await;
        let _ = self.send.finish();
    }
}

async fn handle_stream(
    mut stream: Stream,
    cfg: Arc<ProviderConfig>,
    peer: Arc<PeerIdentity>,
    awaiting: Activity,
) {
    let req = match read_request(&mut stream, &cfg, &awaiting).await {
        Ok(req) => req,
        Err(refused) => return stream.refuse(&cfg, "", refused).await,
    };
    let service = req.service.as_str();
    tracing::Span::current().record("service", service);
    if req.flags & FLAG_CONTROL != 0 {
        if let Err(refused) = not_revoked(&cfg, &peer) {
            return stream.refuse(&cfg, service, refused).await;
        }
        return stream.serve_control(&cfg).await;
    }
    let entry = match admit(&cfg, &peer, &req) {
        Ok(entry) => entry,
        Err(refused) => return stream.refuse(&cfg, service, refused).await,
    };
    if req.flags & FLAG_PROBE != 0 {
        return stream.answer_probe(entry.up.load(Ordering::Relaxed)).await;
    }
    let mut tcp = match connect_target(&req.service, &entry, cfg.connect_timeout).await {
        Ok(tcp) => tcp,
        Err(refused) => return stream.refuse(&cfg, service, refused).await,
    };
    if let Some(auth) = &entry.redis_auth
        && let Err(e) = auth.authenticate(&mut tcp, cfg.connect_timeout).await
    {
        warn!(target = %entry.target, error = %e, "credentials injection failed");
        cfg.metrics.provider.stream(service, "auth_failed");
        return auth_failed(stream).await;
    }
    let Stream { mut send, recv } = stream;
    if send.write_all(&Reply::Ok.encode()).await.is_err() {
        debug!("consumer went away before the reply");
        return;
    }
    let m = &entry.meters;
    m.accepted.inc();
    let _active = cfg.activity.enter();
    m.active.inc();
    match &entry.http_headers {
        Some(headers) => crate::inject::http::serve(tcp, send, recv, headers.clone()).await,
        None => splice(tcp, send, recv, &m.traffic)
            .await
            .log_end(&req.service),
    }
    m.active.dec();
}

/// Reads the request header within the bound; at most [`MAX_AWAITING_HEADER`] streams of one
/// connection wait for theirs at once.
async fn read_request(
    stream: &mut Stream,
    cfg: &ProviderConfig,
    awaiting: &Activity,
) -> Result<Request, Refused> {
    let held = awaiting.enter();
    if awaiting.count() > MAX_AWAITING_HEADER {
        let detail = format!(
            "{MAX_AWAITING_HEADER} streams of this connection already wait for their header"
        );
        return Err(Refused(RefusalCode::BadRequest, detail));
    }
    let header = Request::read_from(&mut stream.recv, cfg.header_timeout).await;
    drop(held);
    header.map_err(|e| Refused(RefusalCode::BadRequest, e.to_string()))
}

/// Whether this node serves `req` for `peer` now: not draining, the service announced here,
/// the peer neither revoked since its handshake nor left out of the service's allow list.
fn admit(
    cfg: &ProviderConfig,
    peer: &PeerIdentity,
    req: &Request,
) -> Result<ServiceTarget, Refused> {
    not_revoked(cfg, peer)?;
    if cfg.draining.load(Ordering::Relaxed) {
        let detail = "this node is stopping; use another instance".to_string();
        return Err(Refused(RefusalCode::Draining, detail));
    }
    let route = (req.service.clone(), req.tag.clone());
    let Some(entry) = cfg.routes().get(&route).cloned() else {
        let detail = match &req.tag {
            None => format!("{} is not announced here", req.service),
            Some(tag) => format!(
                "{} instance {tag} is not announced here (any more)",
                req.service
            ),
        };
        return Err(Refused(RefusalCode::UnknownService, detail));
    };
    if let Some(allow) = &entry.allow
        && !peer.node.as_ref().is_some_and(|n| allow.contains(n))
    {
        let detail = format!("node {} may not use {}", peer.node_label(), req.service);
        return Err(Refused(RefusalCode::NotAllowed, detail));
    }
    Ok(entry)
}

/// Refuses a peer revoked after its handshake (deny list reloaded): its open streams go on,
/// as a reload drops nothing, but every new one is refused.
fn not_revoked(cfg: &ProviderConfig, peer: &PeerIdentity) -> Result<(), Refused> {
    if cfg.deny.denies_fingerprint(&peer.fingerprint) {
        let detail = format!(
            "the certificate of node {} is revoked (deny list)",
            peer.node_label()
        );
        return Err(Refused(RefusalCode::NotAllowed, detail));
    }
    Ok(())
}

/// Connects the service's target, unless its health check finds it down.
async fn connect_target(
    service: &ServiceName,
    entry: &ServiceTarget,
    bound: Duration,
) -> Result<TcpStream, Refused> {
    let target = &entry.target;
    if !entry.up.load(Ordering::Relaxed) {
        let detail = format!("{service} at {target} fails its health check");
        return Err(Refused(RefusalCode::TargetDown, detail));
    }
    match tokio::time::timeout(bound, target.connect()).await {
        Ok(Ok(tcp)) => Ok(tcp),
        Ok(Err(e)) => {
            let code = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                RefusalCode::TargetRefused
            } else {
                RefusalCode::TargetUnreachable
            };
            Err(Refused(code, format!("{service} at {target}: {e}")))
        }
        Err(_) => {
            let detail = format!("{service} at {target}: no answer within {bound:?}");
            Err(Refused(RefusalCode::TargetUnreachable, detail))
        }
    }
}

/// The target refused the injected credentials: the application gets a Redis error it can
/// show (the log says why), and its side never sees a reset before it has read the error.
async fn auth_failed(stream: Stream) {
    let Stream { mut send, mut recv } = stream;
    if send.write_all(&Reply::Ok.encode()).await.is_ok() {
        let _ = send.write_all(AUTH_FAILED_REPLY).await;
        let _ = send.finish();
        // Keep reading (and dropping) what the client sends until it closes.
        let drain = async { while let Ok(Some(_)) = recv.read_chunk(64 * 1024, true).await {} };
        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::identity::{MeshKey, MeshRoot};
    use crate::names::QuicAddr;
    use crate::transport::{
        ClaimedIdentity, PeerTarget, Pool, TransportSettings, client_config, endpoint,
    };

    async fn wait_view(pool: &Pool, want: impl Fn(&ServiceSet) -> bool) -> ServiceSet {
        let mut changes = pool.views().subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(v) = pool.views().snapshot().values().next()
                && want(&v.set)
            {
                return v.set.clone();
            }
            tokio::time::timeout_at(deadline, changes.changed())
                .await
                .expect("the view changes in time")
                .expect("views live");
        }
    }

    #[tokio::test]
    async fn the_control_stream_tells_health_and_drain_at_once() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let root = MeshRoot::derive(&MeshKey::generate().unwrap()).unwrap();
        let provider_id = root.issue(&NodeName::parse("b").unwrap()).unwrap();
        let consumer_id = root.issue(&NodeName::parse("a").unwrap()).unwrap();
        let (settings, deny) = (TransportSettings::default(), DenyList::empty());
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = endpoint(local, &provider_id, &deny, true, &settings).unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let service = ServiceName::parse("redis").unwrap();
        let target = ServiceTarget {
            target: Target::Addr("127.0.0.1:1".parse().unwrap()),
            port: 6379,
            weight: 2,
            up: up.clone(),
            allow: None,
            redis_auth: None,
            http_headers: None,
            meters: ServiceMeters::of(&Metrics::default(), &service),
        };
        let cfg = Arc::new(ProviderConfig {
            services: RwLock::new(HashMap::from([((service.clone(), None), target)])),
            header_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            draining: AtomicBool::new(false),
            activity: Activity::default(),
            deny: deny.clone(),
            published: watch::channel(ServiceSet::default()).0,
            controls: Activity::default(),
            incoming: HeldConnections::default(),
            metrics: Arc::default(),
        });
        cfg.publish();
        let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
        let addr = server.local_addr().unwrap();
        tokio::spawn(serve(server, cfg.clone(), cancel.clone(), tracker.clone()));

        let client_ep = endpoint(local, &consumer_id, &deny, false, &settings).unwrap();
        let client = client_config(&consumer_id, &deny, &settings).unwrap();
        let pool = Pool::new(client_ep, client, settings);
        let peer = PeerTarget {
            claimed: Some(ClaimedIdentity {
                node: provider_id.node.clone(),
                fingerprint: provider_id.fingerprint.clone(),
            }),
            addrs: vec![QuicAddr(addr)],
        };
        pool.get(&peer).await.unwrap();
        let set = wait_view(&pool, |s| !s.services.is_empty()).await;
        let s = set.get(&service, None).unwrap();
        assert!(s.up && s.w == 2 && s.port == 6379 && !set.draining);

        up.store(false, Ordering::Relaxed);
        cfg.publish();
        wait_view(&pool, |s| s.get(&service, None).is_some_and(|s| !s.up)).await;

        cfg.start_drain();
        wait_view(&pool, |s| s.draining).await;
        cancel.cancel();
    }
}
