//! mDNS/DNS-SD through `mdns-sd`: announcing this node's services and browsing the mesh's.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use mdns_sd::{
    IfKind, ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo, UnregisterStatus,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{BackendKind, Instance, RecordError, Registry, SERVICE_TYPE, TxtRecord, query};
use crate::names::{MeshId, NodeName};

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

impl Mdns {
    /// Starts the daemon; with `interfaces` non-empty, only those interfaces are used. With
    /// `quic` an IPv4 address, mDNS runs over IPv4 only: an IPv6 answer (which carries only
    /// the AAAA records) would resolve an instance to addresses that socket cannot dial, and
    /// its known answer then keeps the IPv4 answer from ever coming.
    pub fn new(interfaces: &[String], quic: Option<SocketAddr>) -> Result<Self, MdnsError> {
        let daemon = ServiceDaemon::new()?;
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
        // Node names are unique within a mesh, not across meshes: two meshes on one LAN may
        // each have a node `b`. The mesh id's first 8 hex digits make the names unique across
        // meshes, so another mesh's `redis@b` never replaces ours in a browser's cache (nor its
        // host name's addresses ours). The suffix has a fixed length, so the names stay unique.
        let tag = txt.mesh.tag();
        let instance = format!("{}@{}_{tag}", txt.service, node);
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
        self.registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(fullname.clone());
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
    /// Records of this node (our own) are skipped.
    pub own_node: NodeName,
}

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

/// What [`on_resolved`] did with an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// One of this node's own records: skipped.
    Own,
    /// A record of another mesh (this one): skipped.
    OtherMesh(MeshId),
    /// A new instance, now in the registry.
    New,
    /// A known instance, updated (or unchanged).
    Known,
}

/// Takes one resolved instance into `registry`, unless `filter` skips it. Every discovery path
/// of the mesh (the browser, the one-shot queries) goes through here.
pub fn on_resolved(registry: &Registry, filter: &BrowseFilter, inst: Instance) -> Taken {
    if inst.node == filter.own_node {
        return Taken::Own;
    }
    if inst.mesh != filter.mesh_id {
        return Taken::OtherMesh(inst.mesh);
    }
    let name = inst.fullname.clone();
    let addrs = inst.addrs.clone();
    if registry.upsert(inst) {
        info!(instance = %name, ?addrs, "discovered");
        Taken::New
    } else {
        Taken::Known
    }
}

/// Sends the one-shot (legacy unicast) queries for the mesh's records on the IPv4 interfaces
/// among `interfaces` (all with none) and feeds `registry` with the answers, for about a
/// second after the start (see [`query`](super::query)). It only adds to what the browser
/// finds; a failure is logged at debug level and changes nothing else.
pub async fn run_queries(
    interfaces: &[String],
    registry: &Registry,
    filter: BrowseFilter,
    cancel: CancellationToken,
) {
    let querier = match query::interface_addrs(interfaces).and_then(query::Querier::bind) {
        Ok(q) => q,
        Err(e) => return debug!(error = %e, "no one-shot mDNS queries"),
    };
    let on = |r: query::Resolved| match r.instance {
        Ok(inst) => match on_resolved(registry, &filter, inst) {
            Taken::OtherMesh(mesh) => {
                debug!(instance = %r.fullname, %mesh, "answer of another mesh");
            }
            Taken::Own | Taken::New | Taken::Known => {}
        },
        Err(e) => debug!(instance = %r.fullname, error = %e, "answer not taken"),
    };
    querier.run(on, cancel).await;
}

/// Feeds `registry` from mDNS events until `cancel` fires.
pub async fn run_browser(
    rx: mdns_sd::Receiver<ServiceEvent>,
    registry: &Registry,
    filter: BrowseFilter,
    cancel: CancellationToken,
) {
    let mut ignored: HashSet<String> = HashSet::new();
    let mut malformed: HashSet<String> = HashSet::new();
    while let Some(event) = next_event(&rx, &cancel).await {
        match event {
            ServiceEvent::ServiceResolved(rs) => match instance_from_resolved(&rs) {
                Ok(inst) => {
                    if let Taken::OtherMesh(mesh) = on_resolved(registry, &filter, inst)
                        && ignored.insert(rs.fullname.clone())
                    {
                        info!(instance = %rs.fullname, %mesh, "ignoring a record of another mesh");
                    }
                }
                Err(RecordError::NoAddress) => {
                    // Normal while only an IPv6 link-local address has been resolved yet.
                    debug!(instance = %rs.fullname, "record has no usable address yet");
                }
                Err(e) => {
                    if malformed.insert(rs.fullname.clone()) {
                        warn!(instance = %rs.fullname, error = %e, "ignoring a malformed record");
                    }
                }
            },
            ServiceEvent::ServiceRemoved(_, fullname) => {
                ignored.remove(&fullname);
                malformed.remove(&fullname);
                if registry.remove(&fullname).is_some() {
                    info!(instance = %fullname, "withdrawn by its node");
                }
            }
            _ => {}
        }
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
    use crate::names::{Fingerprint, ServiceName};

    fn inst(node: &str, mesh: &str) -> Instance {
        let txt = TxtRecord {
            service: ServiceName::parse("redis").unwrap(),
            port: 6379,
            node: NodeName::parse(node).unwrap(),
            mesh: MeshId::parse(mesh).unwrap(),
            fingerprint: Fingerprint::parse(&"ab".repeat(32)).unwrap(),
            weight: 1,
            up: true,
        };
        let fullname = format!("redis@{node}_{}.{SERVICE_TYPE}", &mesh[..8]);
        Instance::new(&fullname, 4433, ["10.77.0.2".parse().unwrap()], txt).unwrap()
    }

    /// The browser and the one-shot queries take records through one filter.
    #[test]
    fn on_resolved_filters_own_and_foreign_records() {
        let (ours, theirs) = ("0123456789abcdef", "fedcba9876543210");
        let filter = BrowseFilter {
            mesh_id: MeshId::parse(ours).unwrap(),
            own_node: NodeName::parse("a").unwrap(),
        };
        let registry = Registry::default();
        assert_eq!(on_resolved(&registry, &filter, inst("a", ours)), Taken::Own);
        assert_eq!(
            on_resolved(&registry, &filter, inst("b", theirs)),
            Taken::OtherMesh(MeshId::parse(theirs).unwrap())
        );
        assert!(registry.all().is_empty());
        assert_eq!(on_resolved(&registry, &filter, inst("b", ours)), Taken::New);
        assert_eq!(
            on_resolved(&registry, &filter, inst("b", ours)),
            Taken::Known
        );
        assert_eq!(registry.all(), [inst("b", ours)]);
    }
}
