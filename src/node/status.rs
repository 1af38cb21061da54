//! What the node reports to `ambassador status`: a snapshot of what it announces and reaches,
//! served on its status socket.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Node;
use super::consume::{ConsumerEntry, ListenAddr};
use super::provide::Announced;
use crate::balance::InstanceStats;
use crate::control::{self, AnnounceStatus, ConnectStatus, InstanceStatus, NodeStatus};
use crate::discovery::mdns::Conflicts;
use crate::proxy::consumer::Consumer;

/// A consumer as status shows it: the consumer, its listen address, its policy.
type ConsumerRow = (Arc<Consumer>, ListenAddr, String);

/// What a snapshot is taken of (shared with the status task).
struct Snapshot {
    node: String,
    mesh: String,
    quic: String,
    announced: Vec<Arc<Announced>>,
    consumers: Vec<ConsumerRow>,
    conflicts: Conflicts,
}

impl Snapshot {
    fn take(&self) -> NodeStatus {
        NodeStatus {
            node: self.node.clone(),
            mesh: self.mesh.clone(),
            quic: self.quic.clone(),
            pid: std::process::id(),
            announce: self.announced.iter().map(|a| announce_status(a)).collect(),
            connect: self.consumers.iter().map(connect_status).collect(),
            name_conflicts: self
                .conflicts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
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

fn connect_status((consumer, listen, policy): &ConsumerRow) -> ConnectStatus {
    ConnectStatus {
        service: consumer.service.to_string(),
        listen: listen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|a| a.to_string()),
        policy: policy.clone(),
        instances: consumer.stats().into_iter().map(instance_status).collect(),
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

fn consumer_row(c: &ConsumerEntry) -> ConsumerRow {
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
            conflicts: self.conflicts.clone(),
        };
        let take = Arc::new(move || snapshot.take());
        let (node, cancel) = (self.node.to_string(), self.cancel.clone());
        self.tracker
            .spawn(async move { control::serve(&node, take, cancel).await });
    }
}
