//! mDNS/DNS-SD through `mdns-sd`: announcing this node's services and browsing the mesh's.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mdns_sd::{
    IfKind, ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo, UnregisterStatus,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    BackendKind, GoodbyeOutcome, Instance, RecordError, Registry, SERVICE_TYPE, TxtRecord,
    Upserted, query,
};
use crate::names::{Fingerprint, MeshId, NodeName};

/// Errors of the mDNS layer.
#[derive(Debug, thiserror::Error)]
#[error("mDNS: {0}")]
pub struct MdnsError(#[from] mdns_sd::Error);

/// One mDNS responder/querier for this process.
pub struct Mdns {
    daemon: ServiceDaemon,
    registered: Mutex<Vec<String>>,
    /// The interfaces mDNS is limited to (`--interface`); empty for all.
    interfaces: Vec<String>,
}

/// How often the interfaces are looked at for new or gone addresses, in seconds.
const IP_CHECK_SECS: u32 = 1;

impl Mdns {
    /// Starts the daemon; with `interfaces` non-empty, only those interfaces are used. With
    /// `quic` an IPv4 address, mDNS runs over IPv4 only: an IPv6 answer (which carries only
    /// the AAAA records) would resolve an instance to addresses that socket cannot dial, and
    /// its known answer then keeps the IPv4 answer from ever coming.
    pub fn new(interfaces: &[String], quic: Option<SocketAddr>) -> Result<Self, MdnsError> {
        let daemon = ServiceDaemon::new()?;
        // A network attached while the node runs (`docker network connect`, a link coming
        // up) is announced on and browsed within about a second (mdns-sd's default: 5 s).
        daemon.set_ip_check_interval(IP_CHECK_SECS)?;
        if !interfaces.is_empty() {
            daemon.disable_interface(IfKind::All)?;
            for name in interfaces {
                daemon.enable_interface(IfKind::Name(name.clone()))?;
            }
        }
        if quic.is_some_and(|a| a.is_ipv4()) {
            daemon.disable_interface(vec![IfKind::IPv6, IfKind::LoopbackV6])?;
        }
        Ok(Self {
            daemon,
            registered: Mutex::new(Vec::new()),
            interfaces: interfaces.to_vec(),
        })
    }

    /// Announces one service of this node (again, to update its record); returns the
    /// instance's full name.
    pub fn announce(
        &self,
        node: &NodeName,
        quic_port: u16,
        txt: &TxtRecord,
    ) -> Result<String, MdnsError> {
        let tag = txt.mesh.tag();
        let instance = txt.instance_name();
        let host = format!("{node}-{tag}.local.");
        let mut info = ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &host,
            "",
            quic_port,
            txt.to_properties(),
        )?
        .enable_addr_auto();
        // The instance name embeds the node name and the mesh, unique by construction:
        // probing for conflicts would only delay the first announcement by ~1 s.
        info.set_requires_probe(false);
        let fullname = info.get_fullname().to_string();
        self.daemon.register(info)?;
        let mut registered = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        if !registered.contains(&fullname) {
            registered.push(fullname.clone());
        }
        drop(registered);
        Ok(fullname)
    }

    /// Withdraws one announcement (mDNS goodbye) and waits until it is sent.
    pub async fn withdraw(&self, fullname: &str) {
        self.registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|f| f != fullname);
        match self.daemon.unregister(fullname) {
            Ok(rx) => match tokio::time::timeout(Duration::from_secs(2), rx.recv_async()).await {
                Ok(Ok(UnregisterStatus::OK)) => debug!(%fullname, "withdrawn"),
                other => warn!(%fullname, ?other, "withdrawal not confirmed"),
            },
            Err(e) => warn!(%fullname, error = %e, "cannot withdraw"),
        }
    }

    /// Withdraws every announcement of this process.
    pub async fn withdraw_all(&self) {
        let all = std::mem::take(&mut *self.registered.lock().unwrap_or_else(|e| e.into_inner()));
        for fullname in all {
            self.withdraw(&fullname).await;
        }
    }

    /// Browses another DNS-SD service type (e.g. `_redis._tcp.local.`).
    pub fn browse_type(&self, ty: &str) -> Result<mdns_sd::Receiver<ServiceEvent>, MdnsError> {
        Ok(self.daemon.browse(ty)?)
    }

    /// Browses the mesh's service type.
    pub fn browse(&self) -> Result<mdns_sd::Receiver<ServiceEvent>, MdnsError> {
        Ok(self.daemon.browse(SERVICE_TYPE)?)
    }

    /// The interfaces mDNS is limited to (`--interface`); empty for all.
    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    /// Stops the daemon (after withdrawing everything).
    pub async fn shutdown(&self) {
        self.withdraw_all().await;
        if let Ok(rx) = self.daemon.shutdown() {
            let _ = tokio::time::timeout(Duration::from_secs(1), rx.recv_async()).await;
        }
    }
}

/// Turns a resolved record into an instance (strict parse of the TXT keys).
pub fn instance_from_resolved(rs: &ResolvedService) -> Result<Instance, RecordError> {
    let props = rs.get_properties();
    let txt = TxtRecord::parse(|k| props.get_property_val_str(k).map(str::to_string))?;
    Instance::new(
        &rs.fullname,
        rs.port,
        rs.addresses.iter().map(|a| a.to_ip_addr()),
        txt,
    )
}

/// Which records a browser keeps.
#[derive(Debug, Clone)]
pub struct BrowseFilter {
    /// Only records of this mesh id.
    pub mesh_id: MeshId,
    /// This node's name: its records (with its certificate) are skipped; a record of this
    /// name with another certificate is another node given the same name.
    pub own_node: NodeName,
    /// This node's certificate fingerprint (replaced on a CA-mode reload).
    pub own_fingerprint: Arc<RwLock<Fingerprint>>,
}

/// Records of this node's name announced by another node (another certificate), by instance
/// key: what `status` shows as name conflicts.
pub type Conflicts = Arc<Mutex<BTreeMap<String, String>>>;

/// The next mDNS event, or `None` once `cancel` fires or the daemon stops.
async fn next_event(
    rx: &mdns_sd::Receiver<ServiceEvent>,
    cancel: &CancellationToken,
) -> Option<ServiceEvent> {
    tokio::select! {
        () = cancel.cancelled() => None,
        ev = rx.recv_async() => ev.ok(),
    }
}

/// What the mesh browser remembers between events, so each oddity is logged once.
struct Browser<'a> {
    registry: &'a Registry,
    filter: BrowseFilter,
    conflicts: Conflicts,
    /// Records of another mesh, already logged.
    ignored: HashSet<String>,
    /// Malformed records, already logged.
    malformed: HashSet<String>,
}

impl Browser<'_> {
    /// A resolved record (from the mDNS cache or an answer): kept as a hint for consumers.
    fn on_resolved(&mut self, resolved: Result<Instance, RecordError>, fullname: &str) {
        let inst = match resolved {
            Ok(inst) => inst,
            // Normal while only an IPv6 link-local address has been resolved yet.
            Err(RecordError::NoAddress) => {
                return debug!(instance = %fullname, "record has no usable address yet");
            }
            Err(e) => {
                if self.malformed.insert(fullname.to_string()) {
                    warn!(instance = %fullname, error = %e, "ignoring a malformed record");
                }
                return;
            }
        };
        if inst.mesh != self.filter.mesh_id {
            if self.ignored.insert(inst.fullname.clone()) {
                info!(instance = %inst.fullname, mesh = %inst.mesh, "ignoring a record of another mesh");
            }
            return;
        }
        if inst.node == self.filter.own_node {
            let own = self
                .filter
                .own_fingerprint
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if inst.fingerprint == own {
                return;
            }
            self.conflict(&inst);
        }
        let (key, addrs, port) = (inst.key(), inst.addrs.clone(), inst.quic_port);
        match self.registry.upsert(inst) {
            Upserted::New => {
                info!(instance = %key, ?addrs, quic_port = port, "discovered (a record: verified when dialled)")
            }
            Upserted::Updated => info!(instance = %key, ?addrs, quic_port = port, "record updated"),
            Upserted::Unchanged => {}
        }
    }

    /// A record of this node's name with another certificate: two nodes were given one
    /// `--node`. Both stay usable, told apart by certificate; say so once, loudly.
    fn conflict(&self, inst: &Instance) {
        let key = inst.key();
        let mut conflicts = self.conflicts.lock().unwrap_or_else(|e| e.into_inner());
        if conflicts.contains_key(&key) {
            return;
        }
        let addrs: Vec<String> = inst
            .addrs
            .iter()
            .map(|ip| std::net::SocketAddr::new(*ip, inst.quic_port).to_string())
            .collect();
        let what = format!(
            "node {} with certificate {} at {} also announces {}",
            inst.node,
            inst.fingerprint,
            addrs.join(","),
            inst.service
        );
        warn!(instance = %inst.fullname, other = %addrs.join(","), fingerprint = %inst.fingerprint, "another node of this mesh uses this node's name: give each node its own --node (both stay usable, told apart by certificate)");
        conflicts.insert(key, what);
    }

    /// An mDNS goodbye: only a reason to doubt a record whose node is verified.
    fn on_removed(&mut self, fullname: &str) {
        self.ignored.remove(fullname);
        self.malformed.remove(fullname);
        self.conflicts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|key, _| !key.starts_with(fullname));
        match self.registry.goodbye(fullname) {
            GoodbyeOutcome::Unknown => {}
            GoodbyeOutcome::HeldElsewhere => {
                debug!(instance = %fullname, "mDNS goodbye; the etcd registry still carries the record");
            }
            GoodbyeOutcome::Removed => {
                info!(instance = %fullname, "withdrawn by its node (mDNS goodbye)");
            }
            GoodbyeOutcome::Kept(nodes) => {
                for (node, fp) in nodes {
                    info!(instance = %fullname, %node, fingerprint = %fp, "mDNS goodbye ignored: its node still serves it over its verified connection (forged or stale goodbye?)");
                }
            }
        }
    }
}

/// Feeds `registry` from mDNS events until `cancel` fires. At the start, one-shot unicast
/// queries on `interfaces` (the `--interface` list; empty for all) also ask for the mesh's
/// records, so a record multicast just before the start is known at once (see [`query`]); their
/// answers take the path of the browsed records (`Browser::on_resolved`).
pub async fn run_browser(
    rx: mdns_sd::Receiver<ServiceEvent>,
    interfaces: &[String],
    registry: &Registry,
    filter: BrowseFilter,
    conflicts: Conflicts,
    cancel: CancellationToken,
) {
    // Both halves run in this one task, each taking the lock only between its awaits.
    let browser = Mutex::new(Browser {
        registry,
        filter,
        conflicts,
        ignored: HashSet::new(),
        malformed: HashSet::new(),
    });
    let lock = || browser.lock().unwrap_or_else(|e| e.into_inner());
    let events = async {
        while let Some(event) = next_event(&rx, &cancel).await {
            match event {
                ServiceEvent::ServiceResolved(rs) => {
                    lock().on_resolved(instance_from_resolved(&rs), &rs.fullname);
                }
                ServiceEvent::ServiceRemoved(_, fullname) => lock().on_removed(&fullname),
                _ => {}
            }
        }
    };
    let answers = |r: query::Resolved| lock().on_resolved(r.instance, &r.fullname);
    tokio::join!(events, run_queries(interfaces, answers, cancel.clone()));
}

/// Sends the one-shot queries for the mesh's records on the IPv4 interfaces among `interfaces`
/// (all with none) and hands every answer to `on`, for about a second. It only adds to what the
/// browser finds: a failure is logged at debug level and changes nothing else.
pub(crate) async fn run_queries(
    interfaces: &[String],
    on: impl FnMut(query::Resolved),
    cancel: CancellationToken,
) {
    match query::interface_addrs(interfaces).and_then(query::Querier::bind) {
        Ok(querier) => querier.run(on, cancel).await,
        Err(e) => debug!(error = %e, "no one-shot mDNS queries"),
    }
}

/// Feeds `set` from a plain DNS-SD service type (not ambassadors): every resolved instance's
/// IPv4 addresses with its SRV port, for `--direct` backends.
pub async fn run_plain_browser(
    rx: mdns_sd::Receiver<ServiceEvent>,
    set: std::sync::Arc<super::EndpointSet>,
    cancel: CancellationToken,
) {
    let mut instances: std::collections::BTreeMap<String, Vec<super::Endpoint>> =
        Default::default();
    while let Some(event) = next_event(&rx, &cancel).await {
        match event {
            ServiceEvent::ServiceResolved(rs) => {
                let eps = instances.entry(rs.fullname.clone()).or_default();
                for ip in rs
                    .addresses
                    .iter()
                    .map(|a| a.to_ip_addr())
                    .filter(|ip| ip.is_ipv4())
                {
                    let addr = BackendKind::Direct.addr(SocketAddr::new(ip, rs.port));
                    if !eps.iter().any(|e| e.addr == addr) {
                        eps.push(super::Endpoint { addr, weight: 1 });
                    }
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                instances.remove(&fullname);
            }
            _ => continue,
        }
        let all: Vec<super::Endpoint> = instances.values().flatten().cloned().collect();
        if set.replace(all) {
            info!(instances = instances.len(), "DNS-SD backends changed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::ServiceName;

    const OURS: &str = "0123456789abcdef";
    const THEIRS: &str = "fedcba9876543210";

    fn fingerprint(byte: &str) -> Fingerprint {
        Fingerprint::parse(&byte.repeat(32)).unwrap()
    }

    /// An instance of `redis` on `node` of `mesh`, as a one-shot query's answer resolves it.
    fn answer(node: &str, mesh: &str, fp: &str) -> query::Resolved {
        let txt = TxtRecord {
            service: ServiceName::parse("redis").unwrap(),
            port: 6379,
            node: NodeName::parse(node).unwrap(),
            mesh: MeshId::parse(mesh).unwrap(),
            fingerprint: fingerprint(fp),
            weight: 1,
            up: true,
            tag: None,
            http_hosts: Vec::new(),
        };
        let fullname = format!("redis@{node}_{}.{SERVICE_TYPE}", &mesh[..8]);
        let instance = Instance::new(&fullname, 4433, ["10.77.0.2".parse().unwrap()], txt);
        query::Resolved { fullname, instance }
    }

    /// The one-shot queries' answers take the browser's path: this node's own records and
    /// another mesh's are skipped, the others kept.
    #[test]
    fn answers_are_filtered_as_browsed_records() {
        let registry = Registry::default();
        let mut browser = Browser {
            registry: &registry,
            filter: BrowseFilter {
                mesh_id: MeshId::parse(OURS).unwrap(),
                own_node: NodeName::parse("a").unwrap(),
                own_fingerprint: Arc::new(RwLock::new(fingerprint("aa"))),
            },
            conflicts: Conflicts::default(),
            ignored: HashSet::new(),
            malformed: HashSet::new(),
        };
        for r in [answer("a", OURS, "aa"), answer("b", THEIRS, "bb")] {
            browser.on_resolved(r.instance, &r.fullname);
        }
        assert!(registry.all().is_empty());
        let ok = answer("b", OURS, "bb");
        browser.on_resolved(ok.instance.clone(), &ok.fullname);
        assert_eq!(registry.all(), [ok.instance.unwrap()]);
    }
}
