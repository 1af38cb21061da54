//! What the node reports: one snapshot of what it announces and reaches, served on its status
//! socket (`ambassador status`), on the admin endpoint (`/status`, `/`) and read by `/metrics`
//! at each scrape.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Node;
use super::consume::{ConsumerEntry, ListenAddr};
use super::provide::{Announced, Announcements};
use crate::control::{
    self, AnnounceStatus, CertificateStatus, ConnectStatus, EXPIRY_WARNING_SECONDS, InstanceStatus,
    NodeStatus, PeerDirection, PeerStatus,
};
use crate::discovery::mdns::Conflicts;
use crate::metrics::Metrics;
use crate::proxy::consumer::{Consumer, InstanceReport};
use crate::proxy::provider::ProviderConfig;
use crate::transport::{Pool, peer_identity};

/// A consumer as status shows it: the consumer, its listen address, its policy.
type ConsumerRow = (Arc<Consumer>, ListenAddr, String);

/// The status snapshot function, shared by the status socket, the admin endpoint and
/// `/metrics`.
pub(crate) type TakeStatus = Arc<dyn Fn() -> NodeStatus + Send + Sync>;

/// What a snapshot is taken of (shared with the status tasks).
struct Snapshot {
    node: String,
    mesh: String,
    quic: String,
    congestion: String,
    started: SystemTime,
    fingerprint: Arc<std::sync::RwLock<crate::names::Fingerprint>>,
    not_after: Arc<AtomicI64>,
    announced: Announcements,
    consumers: Vec<ConsumerRow>,
    conflicts: Conflicts,
    provider: Option<Arc<ProviderConfig>>,
    pool: Pool,
    metrics: Arc<Metrics>,
    /// Cancelled when the drain begins.
    draining: CancellationToken,
}

/// Unix seconds of `t` (0 before the epoch, never expected).
fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Snapshot {
    fn take(&self) -> NodeStatus {
        let now = SystemTime::now();
        let not_after = self.not_after.load(Ordering::Relaxed);
        let fingerprint = self
            .fingerprint
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .to_string();
        NodeStatus {
            node: self.node.clone(),
            mesh: self.mesh.clone(),
            quic: self.quic.clone(),
            congestion: self.congestion.clone(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_unix: unix(self.started),
            uptime_seconds: now.duration_since(self.started).map_or(0, |d| d.as_secs()),
            draining: self.draining.is_cancelled(),
            certificate: CertificateStatus {
                fingerprint,
                not_after_unix: not_after,
                expires_in_seconds: not_after.saturating_sub(unix(now) as i64),
            },
            announce: self.announce_all(),
            connect: self.consumers.iter().map(connect_status).collect(),
            peers: self.peers(),
            name_conflicts: self
                .conflicts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect(),
        }
    }

    fn announce_all(&self) -> Vec<AnnounceStatus> {
        let list = self.announced.read().unwrap_or_else(|e| e.into_inner());
        list.iter().map(|a| self.announce(a)).collect()
    }

    fn announce(&self, a: &Announced) -> AnnounceStatus {
        let service = a.cfg.spec.service.as_str();
        let p = &self.metrics.provider;
        let (accepted, refused, open) = p.totals(service);
        let (sent, received) = p.bytes(service);
        AnnounceStatus {
            service: service.to_string(),
            port: a.cfg.spec.port,
            target: a.cfg.spec.target.to_string(),
            target_up: a.up.load(Ordering::Relaxed),
            weight: a.cfg.weight,
            open_streams: open,
            accepted_streams: accepted,
            refused_streams: refused,
            bytes_sent: sent,
            bytes_received: received,
            tag: a.tag.as_ref().map(|t| t.to_string()),
        }
    }

    /// Every QUIC connection: those this node dialled, then those peers opened to it.
    fn peers(&self) -> Vec<PeerStatus> {
        let incoming = self.provider.as_ref().map(|p| p.incoming.list());
        let out = self
            .pool
            .connections()
            .into_iter()
            .map(|c| (c, PeerDirection::Out));
        let inc = incoming
            .into_iter()
            .flatten()
            .map(|c| (c, PeerDirection::In));
        let mut all: Vec<PeerStatus> = out
            .chain(inc)
            .map(|(c, direction)| peer_status(&c, direction))
            .collect();
        all.sort_by(|a, b| (&a.node, &a.address).cmp(&(&b.node, &b.address)));
        all
    }
}

fn peer_status(conn: &quinn::Connection, direction: PeerDirection) -> PeerStatus {
    let path = conn.stats().path;
    PeerStatus {
        node: peer_identity(conn).and_then(|p| p.node.map(|n| n.to_string())),
        address: conn.remote_address().to_string(),
        direction,
        rtt_ms: path.rtt.as_secs_f64() * 1000.0,
        cwnd_bytes: path.cwnd,
        sent_packets: path.sent_packets,
        lost_packets: path.lost_packets,
        mtu: path.current_mtu,
    }
}

fn connect_status((consumer, listen, policy): &ConsumerRow) -> ConnectStatus {
    ConnectStatus {
        service: consumer.service.to_string(),
        listen: listen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|a| a.to_string()),
        policy: policy.clone(),
        instances: consumer.report().into_iter().map(instance_status).collect(),
    }
}

fn instance_status(r: InstanceReport) -> InstanceStatus {
    let s = r.stats;
    InstanceStatus {
        instance: s.instance,
        node: r.node,
        address: r.address,
        health: s.health.to_string(),
        open: s.open,
        total: s.total,
        failures: s.failures,
        bytes_sent: r.bytes.0,
        bytes_received: r.bytes.1,
        last_failure: s.last_failure,
        last_failure_unix: s.last_failure_at.map(unix),
        rtt_ms: r.rtt.map(|d| d.as_secs_f64() * 1000.0),
        tag: r.tag.map(|t| t.to_string()),
    }
}

fn consumer_row(c: &ConsumerEntry) -> ConsumerRow {
    (c.consumer.clone(), c.listen.clone(), c.policy.to_string())
}

/// How often the certificate's expiry is looked at.
const EXPIRY_CHECK: Duration = Duration::from_secs(3600);

impl Node {
    /// The status snapshot function of this node.
    fn status_snapshot(&self) -> TakeStatus {
        let snapshot = Snapshot {
            node: self.node.to_string(),
            mesh: self.mesh_id.to_string(),
            quic: self.quic_addr.to_string(),
            congestion: self.cfg.transport.congestion.to_string(),
            started: self.started,
            fingerprint: self.fingerprint.clone(),
            not_after: self.not_after.clone(),
            announced: self.announced.clone(),
            consumers: self.consumers.iter().map(consumer_row).collect(),
            conflicts: self.conflicts.clone(),
            provider: self.provider.clone(),
            pool: self.pool.clone(),
            metrics: self.metrics.clone(),
            draining: self.stop_accepting.clone(),
        };
        Arc::new(move || snapshot.take())
    }

    /// Serves status snapshots on this node's status socket, and on the admin endpoint when
    /// one is configured, until the node stops.
    pub(super) fn serve_status(&mut self) {
        self.watch_expiry();
        let take = self.status_snapshot();
        self.metrics.set_snapshot(take.clone());
        let (node, cancel) = (self.node.to_string(), self.cancel.clone());
        let socket = take.clone();
        self.tracker
            .spawn(async move { control::serve(&node, socket, cancel).await });
        if let Some(listener) = self.admin.take() {
            let admin = crate::admin::Admin {
                status: take,
                metrics: self.metrics.clone(),
            };
            self.tracker
                .spawn(crate::admin::serve(listener, admin, self.cancel.clone()));
        }
    }

    /// Logs once when this node's certificate comes within a week of its expiry, and once
    /// when it has expired (checked hourly, and after a reload changes it).
    fn watch_expiry(&self) {
        let (not_after, cancel) = (self.not_after.clone(), self.cancel.clone());
        self.tracker.spawn(async move {
            let mut said = (0i64, 0u8);
            loop {
                let t = not_after.load(Ordering::Relaxed);
                let left = t.saturating_sub(unix(SystemTime::now()) as i64);
                let level = match left {
                    l if l <= 0 => 2,
                    l if l < EXPIRY_WARNING_SECONDS => 1,
                    _ => 0,
                };
                if (t, level) != said && t > 0 {
                    match level {
                        2 => warn!(not_after = t, "this node's certificate has expired: peers refuse it; issue a new one (`ambassador ca issue`) and reload (SIGHUP)"),
                        1 => warn!(not_after = t, days_left = left / 86_400, "this node's certificate expires within 7 days: issue a new one and reload (SIGHUP)"),
                        _ if said.0 != 0 => info!(not_after = t, "this node's certificate is valid for more than 7 days"),
                        _ => {}
                    }
                    said = (t, level);
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(EXPIRY_CHECK) => {}
                }
            }
        });
    }
}
