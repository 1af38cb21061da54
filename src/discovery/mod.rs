//! Discovery: what the mesh announces, as a live set of instances. The records are DNS-SD
//! (`_ambassador._udp.local.`, DESIGN §3) carried by mDNS; a record is only a hint, which the
//! QUIC handshake later proves or refutes.

pub mod dns_srv;
pub mod etcd;
pub mod mdns;
pub mod query;
mod record;

mod registry;

pub(crate) use record::sort_addrs;
pub use record::{
    Instance, MAX_HTTP_HOSTS_TXT, RecordError, SERVICE_TYPE, TxtRecord, http_hosts_txt,
};
pub use registry::{Change, Confirmed, GoodbyeOutcome, NodeKey, Registry, Upserted};

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::DiscoveryMeter;
use crate::names::{QuicAddr, TcpAddr};

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
    meter: DiscoveryMeter,
}

impl EndpointSet {
    /// A set with these endpoints; its changes are counted by `meter`.
    pub fn new(list: Vec<Endpoint>, meter: DiscoveryMeter) -> Self {
        meter.count("added", list.len() as u64);
        Self {
            list: Mutex::new(list),
            changed: watch::channel(0).0,
            meter,
        }
    }

    /// Replaces the set; returns whether it changed.
    pub fn replace(&self, list: Vec<Endpoint>) -> bool {
        let mut cur = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if *cur == list {
            return false;
        }
        let known = |set: &[Endpoint], e: &Endpoint| set.iter().any(|o| o.addr == e.addr);
        let added = list.iter().filter(|e| !known(&cur, e)).count();
        let removed = cur.iter().filter(|e| !known(&list, e)).count();
        let updated = list
            .iter()
            .filter(|e| cur.iter().any(|o| o.addr == e.addr && o != *e))
            .count();
        self.meter.count("added", added as u64);
        self.meter.count("removed", removed as u64);
        self.meter.count("updated", updated as u64);
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
