//! Records are hints: every instance that only a record vouches for is dialled in the
//! background, so that its node confirms it over its control stream (or the handshake refutes
//! it) before a client needs it; and when one node name has two verified certificates, both
//! are asked whether they still answer — a restarted node's old process is dropped at once,
//! two live nodes sharing a name both stay.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{Instrument, debug, info, info_span, warn};

use super::attempt::AttemptError;
use super::{Backends, Consumer, Rejection, peer_target};
use crate::discovery::Instance;
use crate::names::NodeName;
use crate::transport::PeerTarget;
use crate::transport::protocol::RefusalCode;

/// Most background verifications at once (a flood of forged records costs no more).
const MAX_VERIFYING: usize = 64;
/// Least wait for a liveness answer from a node whose name a newer certificate announces.
const ALIVE_MIN: Duration = Duration::from_millis(300);

impl Consumer {
    /// Verifies what needs verifying now (after a discovery change).
    pub(super) fn verify(self: &Arc<Self>) {
        let Backends::Discovered(registry) = &self.backends else {
            return;
        };
        let all = registry.instances(&self.service);
        // Whatever the record says of its health: only the node's word counts.
        for i in all.iter().filter(|i| !i.confirmed && self.verifiable(i)) {
            self.spawn_verify(i);
        }
        let mut by_node: BTreeMap<&NodeName, Vec<&Instance>> = BTreeMap::new();
        for i in all.iter().filter(|i| i.confirmed) {
            by_node.entry(&i.node).or_default().push(i);
        }
        // One name with several certificates (several instances of one node are one).
        let several = |l: &&Vec<&Instance>| {
            let first = &l[0].fingerprint;
            l.iter().any(|i| i.fingerprint != *first)
        };
        for list in by_node.values().filter(several) {
            self.spawn_alive_check(list);
        }
    }

    /// Dials the node behind a record, once at a time: the pool's connection brings its
    /// control stream; a refuted record is never used again.
    fn spawn_verify(self: &Arc<Self>, i: &Instance) {
        let target = peer_target(i, self.local);
        let key = target.key();
        {
            let mut verifying = self.verifying();
            if verifying.len() >= MAX_VERIFYING || !verifying.insert(key.clone()) {
                return;
            }
        }
        let (consumer, instance) = (self.clone(), i.key());
        let span = info_span!("verify", instance = %i.key());
        let task = async move {
            match consumer.pool.get(&target).await {
                Ok(conn) => match consumer.check_announcer(&conn) {
                    Ok(()) => debug!("record verified: its node answers"),
                    Err(e) => consumer.not_authorized(&instance, e),
                },
                Err(e) if e.refutes_record() => {
                    warn!(error = %e, "peer failed the mesh handshake: its record will not be used");
                    consumer.reject(Rejection::Refuted(target));
                }
                Err(e) => debug!(error = %e, "record not verified yet"),
            }
            consumer.verifying().remove(&key);
        };
        self.tracker.spawn(task.instrument(span));
    }

    /// Asks every verified certificate of one node name whether it still answers, once per
    /// set: one that does not (the old process of a restarted node, dead or silent) has its
    /// connection closed; when two or more answer, two live nodes share the name.
    fn spawn_alive_check(self: &Arc<Self>, group: &[&Instance]) {
        let targets: Vec<PeerTarget> = group.iter().map(|i| peer_target(i, self.local)).collect();
        {
            let mut checked = self.checked();
            let fresh = targets
                .iter()
                .filter(|t| !checked.contains(&t.key()))
                .count();
            if fresh == 0 {
                return;
            }
            checked.extend(targets.iter().map(PeerTarget::key));
        }
        let consumer = self.clone();
        let node = group
            .first()
            .map(|i| i.node.to_string())
            .unwrap_or_default();
        let span = info_span!("alive", %node);
        let task = async move {
            // Asked together (each waits at most its bound); joined before the verdict.
            let mut checks = tokio::task::JoinSet::new();
            for t in targets {
                let c = consumer.clone();
                checks.spawn(async move { c.alive(&t).await });
            }
            let mut alive = 0;
            while let Some(answer) = checks.join_next().await {
                alive += usize::from(answer.unwrap_or(false));
            }
            if alive > 1 {
                warn!(
                    "{alive} live nodes of this mesh share the name {node}: all stay usable, told apart by certificate (give each its own --node)"
                );
            }
        };
        self.tracker.spawn(task.instrument(span));
    }

    /// Whether a verified node still answers; a node that fails or stays silent has its
    /// connection closed (a restarted node's old process).
    async fn alive(self: &Arc<Self>, target: &PeerTarget) -> bool {
        let key = target.key();
        let bound = self
            .pool
            .rtt(target)
            .map_or(ALIVE_MIN, |rtt| (rtt * 4 + ALIVE_MIN / 3).max(ALIVE_MIN));
        match tokio::time::timeout(bound, self.probe_once(target, None)).await {
            // A draining node is alive, and its open streams must go on.
            Ok(Err(AttemptError::Refused(r))) if r.code == RefusalCode::Draining => {
                info!(peer = %key, "the old process of a restarted node is draining: its open streams finish, new ones go to the new one");
                false
            }
            // It answers (a refusal too: a target-down node is alive).
            Ok(Ok(()) | Err(AttemptError::Refused(_))) => true,
            Ok(Err(e)) => {
                info!(peer = %key, error = %e, "another certificate announces this node's name and this one fails: dropping its connection (a restart)");
                self.pool.close(&key, b"replaced by a restarted node");
                false
            }
            Err(_) => {
                info!(peer = %key, waited = ?bound, "another certificate announces this node's name and this one is silent: dropping its connection (a restart)");
                self.pool.close(&key, b"replaced by a restarted node");
                false
            }
        }
    }
}
