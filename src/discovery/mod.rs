//! Discovery: what the mesh announces, as a live set of instances. The records are DNS-SD
//! (`_ambassador._udp.local.`, DESIGN §3) carried by mDNS; a record is only a hint, which the
//! QUIC handshake later proves or refutes.

pub mod dns_srv;
pub mod mdns;
pub mod query;
mod record;

pub use record::{Instance, RecordError, SERVICE_TYPE, TxtRecord};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::names::{QuicAddr, ServiceName, TcpAddr};

/// The live set of instances this node may use, keyed by DNS-SD full name. Discovery writes it;
/// balancers read it and wait on its changes.
pub struct Registry {
    instances: Mutex<BTreeMap<String, Instance>>,
    changed: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            instances: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
        }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Instance>> {
        // A poisoned lock means a panic elsewhere; the map itself is always consistent.
        self.instances.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or updates an instance. Addresses of repeated resolutions of one record (IPv4,
    /// IPv6, loopback...) are merged; a new certificate replaces the old entry.
    pub fn upsert(&self, mut inst: Instance) -> bool {
        let mut map = self.lock();
        let is_new = match map.get(&inst.fullname) {
            Some(old) if old.fingerprint == inst.fingerprint && old.quic_port == inst.quic_port => {
                for a in &old.addrs {
                    if !inst.addrs.contains(a) {
                        inst.addrs.push(*a);
                    }
                }
                record::sort_addrs(&mut inst.addrs);
                if *old == inst {
                    return false;
                }
                false
            }
            Some(_) => false,
            None => true,
        };
        map.insert(inst.fullname.clone(), inst);
        drop(map);
        self.changed.send_modify(|v| *v += 1);
        is_new
    }

    /// Removes an instance; returns it if it was known.
    pub fn remove(&self, fullname: &str) -> Option<Instance> {
        let removed = self.lock().remove(fullname);
        if removed.is_some() {
            self.changed.send_modify(|v| *v += 1);
        }
        removed
    }

    /// Every known instance of `service`.
    pub fn instances(&self, service: &ServiceName) -> Vec<Instance> {
        self.lock()
            .values()
            .filter(|i| &i.service == service)
            .cloned()
            .collect()
    }

    /// Every known instance.
    pub fn all(&self) -> Vec<Instance> {
        self.lock().values().cloned().collect()
    }

    /// Waits until `pred` holds for the instances of `service` or `deadline` passes; returns
    /// the instances at that moment.
    pub async fn wait_for(
        &self,
        service: &ServiceName,
        deadline: Instant,
        pred: impl Fn(&[Instance]) -> bool,
    ) -> Vec<Instance> {
        let mut rx = self.changed.subscribe();
        loop {
            let now = self.instances(service);
            if pred(&now) {
                return now;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.instances(service),
            }
        }
    }

    /// A receiver notified on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// How long a consumer waits at most for a first instance, by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// What a backend address is: an ambassador's QUIC endpoint, or a plain TCP service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendAddr {
    /// An ambassador peer (any mesh member), reached over QUIC.
    Peer(QuicAddr),
    /// A plain TCP service (`--direct`): not an ambassador, not encrypted.
    Direct(TcpAddr),
}

/// Which kind of address a backend source yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Ambassador peers.
    Peer,
    /// Plain TCP services (`--direct`).
    Direct,
}

impl BackendKind {
    /// `addr` as this kind of backend address.
    pub fn addr(self, addr: SocketAddr) -> BackendAddr {
        match self {
            Self::Peer => BackendAddr::Peer(QuicAddr(addr)),
            Self::Direct => BackendAddr::Direct(TcpAddr(addr)),
        }
    }
}

impl std::fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Peer(a) => write!(f, "peer:{a}"),
            Self::Direct(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// A fixed or resolved backend (static list, DNS SRV, a plain DNS-SD service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: BackendAddr,
    /// Balancing weight.
    pub weight: u32,
}

/// A replaceable set of endpoints; readers wait on its changes.
pub struct EndpointSet {
    list: Mutex<Vec<Endpoint>>,
    changed: watch::Sender<u64>,
}

impl EndpointSet {
    /// A set with these endpoints.
    pub fn new(list: Vec<Endpoint>) -> Self {
        Self {
            list: Mutex::new(list),
            changed: watch::channel(0).0,
        }
    }

    /// Replaces the set; returns whether it changed.
    pub fn replace(&self, list: Vec<Endpoint>) -> bool {
        let mut cur = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if *cur == list {
            return false;
        }
        *cur = list;
        drop(cur);
        self.changed.send_modify(|v| *v += 1);
        true
    }

    /// The endpoints now.
    pub fn get(&self) -> Vec<Endpoint> {
        self.list.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A receiver notified on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits until the set is non-empty or `deadline` passes.
    pub async fn wait_nonempty(&self, deadline: Instant) {
        let mut rx = self.changed.subscribe();
        while self.get().is_empty() {
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}
