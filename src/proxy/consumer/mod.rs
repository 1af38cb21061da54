//! The consumer side: a local TCP listener per service; each accepted connection becomes one
//! stream on the pooled QUIC connection to an instance the balancer picks. An attempt that
//! fails before any client byte reached a target (the consumer reads no client byte before the
//! provider's `ok`) is retried on another instance, so the app does not see a dead instance
//! while a live one exists.
//!
//! Rooms: this module holds the [`Consumer`] (candidates, rejections, per-instance state and
//! its upkeep); `listener` accepts and handles client connections; `attempt` is one attempt
//! (choose, hedge, retry, conclude); `probe` re-dials lost peers; `direct` is plain TCP
//! backends (with Redis auth).

mod attempt;
mod direct;
mod http;
mod listener;
mod probe;
mod verify;

pub(crate) use listener::serve_listener;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balance::{Backoff, BalanceMeters, Balancer, Choice, InstanceStats, Policy};
use crate::discovery::{BackendAddr, Endpoint, EndpointSet, Instance, Registry};
use crate::inject::RedisAuth;
use crate::metrics::{InstanceLabels, Metrics};
use crate::names::{Fingerprint, InstanceTag, QuicAddr, ServiceName, TcpAddr};
use crate::transport::{ClaimedIdentity, PeerKey, PeerTarget, Pool};

/// Where a candidate's connection goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    /// An ambassador peer, over the pooled QUIC connection.
    Peer(PeerTarget),
    /// A plain TCP backend (`--direct`): no ambassador, no QUIC, no encryption.
    Direct(TcpAddr),
}

/// One place a stream can be opened to.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// Stable key of the instance (DNS-SD full name, or the backend address): the balancer's.
    pub(crate) key: String,
    /// Whom to dial.
    pub(crate) target: Target,
    /// Balancing weight.
    pub(crate) weight: u32,
    /// Which of its node's instances of the service it is, when the node has several.
    pub(crate) tag: Option<InstanceTag>,
}

impl Candidate {
    fn from_instance(inst: &Instance, local: SocketAddr) -> Self {
        Self {
            key: inst.key(),
            target: Target::Peer(peer_target(inst, local)),
            weight: inst.weight,
            tag: inst.tag.clone(),
        }
    }

    /// An endpoint from a static list, DNS SRV or plain DNS-SD: an ambassador peer that must
    /// be a mesh member (any node name), or a plain TCP backend.
    fn from_endpoint(ep: &Endpoint) -> Self {
        let target = match ep.addr {
            BackendAddr::Peer(addr) => Target::Peer(PeerTarget {
                claimed: None,
                addrs: vec![addr],
            }),
            BackendAddr::Direct(addr) => Target::Direct(addr),
        };
        Self {
            key: ep.addr.to_string(),
            target,
            weight: ep.weight,
            tag: None,
        }
    }

    /// What a client connection remembers of a candidate it tried: the instance *and* where it
    /// went, so the same instance at a new address (a record that changed) counts as untried.
    fn tried(&self) -> Tried {
        (self.key.clone(), self.target.clone())
    }

    /// Who carries it, for the connection's log lines: the node, else the address.
    pub(super) fn peer_label(&self) -> String {
        match &self.target {
            Target::Peer(PeerTarget {
                claimed: Some(c), ..
            }) => c.node.to_string(),
            Target::Peer(t) => t.addrs.first().map_or_else(String::new, |a| a.to_string()),
            Target::Direct(a) => a.to_string(),
        }
    }

    /// The pool key of the peer behind this candidate (`None` for a direct backend).
    fn peer_key(&self) -> Option<PeerKey> {
        match &self.target {
            Target::Peer(t) => Some(t.key()),
            Target::Direct(_) => None,
        }
    }
}

/// What `status` shows of one instance.
#[derive(Debug, Clone)]
pub(crate) struct InstanceReport {
    /// Health and load.
    pub stats: InstanceStats,
    /// The node announcing it, when known.
    pub node: Option<String>,
    /// Where its connections go.
    pub address: Option<String>,
    /// Round-trip time of the open connection to its node.
    pub rtt: Option<Duration>,
    /// Bytes carried to it and from it.
    pub bytes: (u64, u64),
    /// Which of its node's instances of the service it is.
    pub tag: Option<InstanceTag>,
}

/// A candidate a client connection tried: its instance key and its target.
pub(crate) type Tried = (String, Target);

/// Whom to dial for a record: the node and certificate it claims, at its addresses.
fn peer_target(inst: &Instance, local: SocketAddr) -> PeerTarget {
    PeerTarget {
        claimed: Some(ClaimedIdentity {
            node: inst.node.clone(),
            fingerprint: inst.fingerprint.clone(),
        }),
        addrs: inst.socket_addrs(local).into_iter().map(QuicAddr).collect(),
    }
}

/// Where the instances of a service come from.
#[derive(Clone)]
pub(crate) enum Backends {
    /// The live set that discovery maintains.
    Discovered(Arc<Registry>),
    /// A replaceable list: static backends (reloaded on SIGHUP), DNS SRV, plain DNS-SD.
    Endpoints(Arc<EndpointSet>),
}

/// A record this consumer will not use again, while discovery keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Rejection {
    /// Its handshake refuted it: keyed by the identity it claims *and* the addresses it gives,
    /// so a forged copy of a real record (same identity, another address) never shuts out the
    /// real one.
    Refuted(PeerTarget),
    /// The node's certificate does not allow it to announce this service (CA mode).
    NotAllowed {
        /// The instance's full name.
        instance: String,
        /// The certificate that does not allow it.
        fingerprint: Fingerprint,
    },
}

/// What a consumer is set up with.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerSettings {
    /// The service.
    pub service: ServiceName,
    /// How long a client connection waits for a first instance.
    pub wait: Duration,
    /// Balancing policy.
    pub policy: Policy,
    /// Credentials injected into direct Redis backends.
    pub redis_auth: Option<RedisAuth>,
    /// Where connections, bytes, attempts and ejections are counted.
    pub metrics: Arc<Metrics>,
}

/// State of one consumer listener (one service).
pub(crate) struct Consumer {
    /// The service.
    pub service: ServiceName,
    /// Where its instances come from.
    backends: Backends,
    /// The QUIC connection pool (shared by every listener of the node).
    pool: Pool,
    /// The local QUIC address (its family decides which peer addresses are dialled).
    local: SocketAddr,
    /// How long a client connection waits for a first instance.
    wait: Duration,
    /// Bound on the provider's reply to a stream header.
    reply_timeout: Duration,
    /// Policy and passive health.
    balancer: Balancer,
    /// Records that will not be used again (while discovery keeps them).
    rejected: Mutex<HashSet<Rejection>>,
    /// Peers being probed after a loss.
    probing: Mutex<HashSet<PeerKey>>,
    /// Records being verified in the background.
    verifying: Mutex<HashSet<PeerKey>>,
    /// Verified nodes already asked whether they still answer (a name with two certificates).
    checked: Mutex<HashSet<PeerKey>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// Open client connections, for the drain.
    pub activity: super::Activity,
    /// Credentials injected into direct Redis backends.
    redis_auth: Option<RedisAuth>,
    /// Where connections, bytes, attempts and ejections are counted.
    metrics: Arc<Metrics>,
}

impl Consumer {
    /// A new listener state; every task it spawns is tracked by `tracker` and ends on `cancel`.
    pub(crate) fn new(
        settings: ConsumerSettings,
        backends: Backends,
        pool: Pool,
        local: SocketAddr,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            service: settings.service.clone(),
            backends,
            pool,
            local,
            wait: settings.wait,
            reply_timeout: Duration::from_secs(5),
            balancer: Balancer::new(settings.policy, Backoff::default()).with_meters(
                BalanceMeters {
                    service: settings.service.to_string(),
                    ejections: settings.metrics.consumer.ejections.clone(),
                    readmissions: settings.metrics.consumer.readmissions.clone(),
                },
            ),
            rejected: Mutex::default(),
            probing: Mutex::default(),
            verifying: Mutex::default(),
            checked: Mutex::default(),
            cancel,
            tracker,
            activity: super::Activity::default(),
            redis_auth: settings.redis_auth,
            metrics: settings.metrics,
        }
    }

    /// The metric labels of one of this service's instances.
    fn labels(&self, key: &str) -> InstanceLabels {
        InstanceLabels {
            service: self.service.to_string(),
            instance: key.to_string(),
        }
    }

    fn rejected(&self) -> std::sync::MutexGuard<'_, HashSet<Rejection>> {
        // A poisoned lock means a panic elsewhere; the set itself is always consistent.
        self.rejected.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn probing(&self) -> std::sync::MutexGuard<'_, HashSet<PeerKey>> {
        self.probing.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn verifying(&self) -> std::sync::MutexGuard<'_, HashSet<PeerKey>> {
        self.verifying.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn checked(&self) -> std::sync::MutexGuard<'_, HashSet<PeerKey>> {
        self.checked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reject(&self, rejection: Rejection) {
        self.rejected().insert(rejection);
    }

    /// The rejections that would shut out instance `i`.
    fn rejections_of(&self, i: &Instance) -> [Rejection; 2] {
        [
            Rejection::Refuted(peer_target(i, self.local)),
            Rejection::NotAllowed {
                instance: i.key(),
                fingerprint: i.fingerprint.clone(),
            },
        ]
    }

    /// Whether a record may be dialled: see [`Self::candidate_of`].
    fn verifiable(&self, i: &Instance) -> bool {
        self.candidate_of(i).is_some()
    }

    /// The candidate of instance `i` (its key and target built once), if the record may be
    /// dialled: it has an address this node can reach and was not refuted or ruled out.
    fn candidate_of(&self, i: &Instance) -> Option<Candidate> {
        let cand = Candidate::from_instance(i, self.local);
        let Target::Peer(peer) = &cand.target else {
            return None;
        };
        if peer.addrs.is_empty() {
            return None;
        }
        let rejected = self.rejected();
        let refuted = rejected.contains(&Rejection::Refuted(peer.clone()));
        let ruled_out = rejected.contains(&Rejection::NotAllowed {
            instance: cand.key.clone(),
            fingerprint: i.fingerprint.clone(),
        });
        drop(rejected);
        (!refuted && !ruled_out).then_some(cand)
    }

    /// Every current candidate.
    fn all_candidates(&self) -> Vec<Candidate> {
        self.known()
            .into_iter()
            .filter_map(|(c, up)| up.then_some(c))
            .collect()
    }

    /// Every instance that could be a candidate, and whether it is up (its node says its
    /// target passes the health check and it does not drain).
    fn known(&self) -> Vec<(Candidate, bool)> {
        match &self.backends {
            Backends::Endpoints(set) => set
                .get()
                .iter()
                .map(|e| (Candidate::from_endpoint(e), true))
                .collect(),
            Backends::Discovered(registry) => registry
                .instances(&self.service)
                .iter()
                .filter_map(|i| Some((self.candidate_of(i)?, i.up)))
                .collect(),
        }
    }

    /// Candidates not yet tried for this client; waits (up to `deadline`) for a first one.
    async fn candidates(&self, tried: &HashSet<Tried>, deadline: Instant) -> Vec<Candidate> {
        match &self.backends {
            Backends::Endpoints(set) => set.wait_nonempty(deadline).await,
            Backends::Discovered(registry) => {
                let pred = |all: &[Instance]| {
                    all.iter()
                        .filter(|i| i.up)
                        .filter_map(|i| self.candidate_of(i))
                        .any(|c| !tried.contains(&c.tried()))
                };
                registry.wait_for(&self.service, deadline, pred).await;
            }
        }
        self.all_candidates()
            .into_iter()
            .filter(|c| !tried.contains(&c.tried()))
            .collect()
    }

    /// Picks an instance not yet tried for this client (waiting up to `until` for a first).
    async fn choose(&self, tried: &HashSet<Tried>, until: Instant) -> Option<Candidate> {
        let cands = self.candidates(tried, until).await;
        let choices: Vec<Choice<'_>> = cands
            .iter()
            .map(|c| Choice {
                key: &c.key,
                weight: c.weight,
            })
            .collect();
        let idx = self.balancer.pick(&choices)?;
        drop(choices);
        cands.into_iter().nth(idx)
    }

    /// Health, load, traffic and whereabouts of this service's instances: every instance the
    /// balancer knows, and every current candidate not yet used.
    pub(crate) fn report(&self) -> Vec<InstanceReport> {
        let known = self.known();
        let mut stats = self.balancer.stats();
        for (c, _) in &known {
            if !stats.iter().any(|s| s.instance == c.key) {
                stats.push(InstanceStats::fresh(&c.key));
            }
        }
        stats.sort_by(|a, b| a.instance.cmp(&b.instance));
        stats
            .into_iter()
            .map(|mut s| {
                let found = known.iter().find(|(c, _)| c.key == s.instance);
                if found.is_some_and(|(_, up)| !up) {
                    // Its node says so: the target fails its health check, or the node drains.
                    s.health = "down";
                }
                let cand = found.map(|(c, _)| c);
                let (node, address, rtt) = match cand.map(|c| &c.target) {
                    Some(Target::Peer(p)) => (
                        p.claimed.as_ref().map(|c| c.node.to_string()),
                        p.addrs.first().map(|a| a.to_string()),
                        self.pool.rtt(p),
                    ),
                    Some(Target::Direct(a)) => (None, Some(a.to_string()), None),
                    None => (None, None, None),
                };
                let bytes = self.metrics.consumer.bytes(&self.labels(&s.instance));
                InstanceReport {
                    stats: s,
                    node,
                    address,
                    rtt,
                    bytes,
                    tag: cand.and_then(|c| c.tag.clone()),
                }
            })
            .collect()
    }

    /// Forgets the state of instances that discovery no longer has: their ejections and
    /// counters (unless a connection is still open on them) and their rejections. Probes of
    /// forgotten peers end by themselves.
    pub(crate) fn prune(&self) {
        let (keys, instances): (HashSet<String>, Vec<Instance>) = match &self.backends {
            Backends::Endpoints(set) => (
                set.get().iter().map(|e| e.addr.to_string()).collect(),
                Vec::new(),
            ),
            Backends::Discovered(registry) => {
                let all = registry.instances(&self.service);
                (all.iter().map(Instance::key).collect(), all)
            }
        };
        for gone in self.balancer.retain(|key| keys.contains(key)) {
            self.metrics.consumer.forget(&self.labels(&gone));
        }
        let live: HashSet<Rejection> = instances
            .iter()
            .flat_map(|i| self.rejections_of(i))
            .collect();
        self.rejected().retain(|r| live.contains(r));
        let peers: HashSet<PeerKey> = instances
            .iter()
            .map(|i| peer_target(i, self.local).key())
            .collect();
        self.checked().retain(|k| peers.contains(k));
    }

    /// Sizes of the per-instance state: balancer entries, rejections, probes.
    #[cfg(test)]
    pub(crate) fn state_size(&self) -> (usize, usize, usize) {
        (
            self.balancer.len(),
            self.rejected().len(),
            self.probing().len() + self.checked().len() + self.verifying().len(),
        )
    }

    /// A receiver notified whenever the candidates may have changed.
    fn discovery_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        match &self.backends {
            Backends::Endpoints(set) => set.subscribe(),
            Backends::Discovered(registry) => registry.subscribe(),
        }
    }
}

/// Keeps a consumer's state in step with the world until it is cancelled: ejects the
/// instances of peers whose pooled connection ends, as soon as it ends (keep-alive and idle
/// timeout notice a vanished peer even when no client is connecting), and forgets the state
/// of instances that discovery removed. Subscribes at once, so no change made after this call
/// is missed, whenever the returned task first runs.
pub(crate) fn upkeep(consumer: Arc<Consumer>) -> impl std::future::Future<Output = ()> {
    let mut lost = consumer.pool.subscribe_lost();
    let mut changes = consumer.discovery_changes();
    async move {
        loop {
            tokio::select! {
                () = consumer.cancel.cancelled() => return,
                ev = lost.recv() => match ev {
                    Ok(ev) => consumer.peer_lost(&ev.peer, &ev.why),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                },
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    consumer.prune();
                    consumer.verify();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
