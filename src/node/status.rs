//! What the node reports to `ambassador status`: a snapshot of what it announces and reaches,
//! served on its status socket.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Node;
use super::consume::ConsumerEntry;
use super::provide::Announced;
use crate::balance::InstanceStats;
use crate::control::{self, AnnounceStatus, ConnectStatus, InstanceStatus, NodeStatus};

/// What a snapshot is taken of (shared with the status task).
struct Snapshot {
    node: String,
    mesh: String,
    quic: String,
    announced: Vec<Arc<Announced>>,
    consumers: Vec<(
        Arc<crate::proxy::consumer::Consumer>,
        super::consume::ListenAddr,
        String,
    )>,
}

impl Snapshot {
    fn take(&self) -> NodeStatus {
        NodeStatus {
            node: self.node.clone(),
            mesh: self.mesh.clone(),
            quic: self.quic.clone(),
            pid: std::process::id(),
            announce: self.announced.iter().map(|a| announce_status(a)).collect(),
            connect: self
                .consumers
                .iter()
                .map(|(consumer, listen, policy)| ConnectStatus {
                    service: consumer.service.to_string(),
                    listen: listen
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .map(|a| a.to_string()),
                    policy: policy.clone(),
                    instances: consumer.stats().into_iter().map(instance_status).collect(),
                })
                .collect(),
        }
    }
}

fn announce_status(a: &Announced) -> AnnounceStatus {
    AnnounceStatus {
        service: a.cfg.spec.service.to_string(),
        port: a.cfg.spec.port,
        target: a.cfg.spec.target.to_string(),
        target_up: a.up.load(Ordering::Relaxed),
    }
}

fn instance_status(s: InstanceStats) -> InstanceStatus {
    InstanceStatus {
        instance: s.instance,
        health: s.health.to_string(),
        open: s.open,
        total: s.total,
        failures: s.failures,
        last_failure: s.last_failure,
    }
}

fn consumer_row(
    c: &ConsumerEntry,
) -> (
    Arc<crate::proxy::consumer::Consumer>,
    super::consume::ListenAddr,
    String,
) {
    (c.consumer.clone(), c.listen.clone(), c.policy.to_string())
}

impl Node {
    /// Serves status snapshots on this node's status socket until the node stops.
    pub(super) fn serve_status(&self) {
        let snapshot = Snapshot {
            node: self.node.to_string(),
            mesh: self.mesh_id.to_string(),
            quic: self.quic_addr.to_string(),
            announced: self.announced.clone(),
            consumers: self.consumers.iter().map(consumer_row).collect(),
        };
        let take = Arc::new(move || snapshot.take());
        let (node, cancel) = (self.node.to_string(), self.cancel.clone());
        self.tracker
            .spawn(async move { control::serve(&node, take, cancel).await });
    }
}
