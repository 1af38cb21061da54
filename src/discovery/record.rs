//! The TXT record of an announced service: encoding, and the strict parser that turns a
//! resolved DNS-SD record into an [`Instance`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::names::{Fingerprint, HostName, InstanceTag, MeshId, NodeName, ServiceName};
use crate::weight::{WEIGHT_DEFAULT, check_weight};

/// The DNS-SD service type of every ambassador record.
pub const SERVICE_TYPE: &str = "_ambassador._udp.local.";

/// Record format version published as TXT `v`.
pub(super) const RECORD_VERSION: &str = "1";

/// Why a record was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A required key is missing.
    #[error("TXT key {0:?} is missing")]
    Missing(&'static str),
    /// A key has a malformed value.
    #[error("TXT key {0:?} is malformed")]
    Malformed(&'static str),
    /// A record version this build does not read.
    #[error("record version {0:?} is not supported")]
    Version(String),
    /// The record carries no usable address.
    #[error("record has no usable address")]
    NoAddress,
}

/// The TXT keys of a record (DESIGN §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxtRecord {
    /// Service name (`svc`).
    pub service: ServiceName,
    /// Advertised port (`port`).
    pub port: u16,
    /// Node name (`node`).
    pub node: NodeName,
    /// Mesh id (`mesh`).
    pub mesh: MeshId,
    /// Leaf certificate fingerprint (`id`).
    pub fingerprint: Fingerprint,
    /// Balancing weight (`w`).
    pub weight: u32,
    /// Whether the provider's health check finds the target up (`h`: `up` or `down`).
    pub up: bool,
    /// Which of the node's instances of the service this is (`ci`), when it has several (one
    /// per container).
    pub tag: Option<InstanceTag>,
    /// The HTTP host names the application answers to (`hh`, comma-separated), if it is one.
    pub http_hosts: Vec<HostName>,
}

/// The longest `hh` value: one TXT string holds at most 255 bytes, `hh=` included.
pub const MAX_HTTP_HOSTS_TXT: usize = 255 - 3;

/// The `hh` value of `hosts`.
pub fn http_hosts_txt(hosts: &[HostName]) -> String {
    hosts
        .iter()
        .map(HostName::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

impl TxtRecord {
    /// The DNS-SD instance name of this record: unique per node, service (and container tag)
    /// and mesh, e.g. `redis@node-b_01234567` or `redis-web1@node-b_01234567`.
    pub fn instance_name(&self) -> String {
        // Node names are unique within a mesh, not across meshes: two meshes on one LAN may
        // each have a node `b`. The mesh id's first 8 hex digits make the names unique across
        // meshes, so another mesh's `redis@b` never replaces ours in a browser's cache (nor its
        // host name's addresses ours). The suffix has a fixed length, so the names stay unique.
        let mesh = self.mesh.tag();
        match &self.tag {
            None => format!("{}@{}_{mesh}", self.service, self.node),
            Some(ci) => format!("{}-{ci}@{}_{mesh}", self.service, self.node),
        }
    }

    /// The DNS-SD full name of this record (its instance name in [`SERVICE_TYPE`]): what
    /// every source of records (mDNS, the etcd registry) names this instance by.
    pub fn fullname(&self) -> String {
        format!("{}.{SERVICE_TYPE}", self.instance_name())
    }

    /// The key/value pairs to publish.
    pub fn to_properties(&self) -> HashMap<String, String> {
        let mut props = HashMap::from([
            ("v".to_string(), RECORD_VERSION.to_string()),
            ("svc".to_string(), self.service.to_string()),
            ("port".to_string(), self.port.to_string()),
            ("node".to_string(), self.node.to_string()),
            ("mesh".to_string(), self.mesh.to_string()),
            ("id".to_string(), self.fingerprint.to_string()),
            ("w".to_string(), self.weight.to_string()),
            (
                "h".to_string(),
                if self.up { "up" } else { "down" }.to_string(),
            ),
        ]);
        if let Some(tag) = &self.tag {
            props.insert("ci".to_string(), tag.to_string());
        }
        if !self.http_hosts.is_empty() {
            props.insert("hh".to_string(), http_hosts_txt(&self.http_hosts));
        }
        props
    }

    /// Parses TXT properties given as a lookup function. Strict: every key must be present and
    /// well-formed, or the record is ignored.
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Self, RecordError> {
        let need = |k: &'static str| get(k).ok_or(RecordError::Missing(k));
        let v = need("v")?;
        if v != RECORD_VERSION {
            return Err(RecordError::Version(v));
        }
        let service =
            ServiceName::parse(&need("svc")?).map_err(|_| RecordError::Malformed("svc"))?;
        let port = need("port")?
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or(RecordError::Malformed("port"))?;
        let node = NodeName::parse(&need("node")?).map_err(|_| RecordError::Malformed("node"))?;
        let mesh = MeshId::parse(&need("mesh")?).map_err(|_| RecordError::Malformed("mesh"))?;
        let fingerprint =
            Fingerprint::parse(&need("id")?).map_err(|_| RecordError::Malformed("id"))?;
        let weight = match get("w") {
            None => WEIGHT_DEFAULT,
            Some(w) => w
                .parse::<u32>()
                .ok()
                .and_then(|w| check_weight(w).ok())
                .ok_or(RecordError::Malformed("w"))?,
        };
        let up = match get("h").as_deref() {
            None | Some("up") => true,
            Some("down") => false,
            Some(_) => return Err(RecordError::Malformed("h")),
        };
        let tag = get("ci")
            .map(|t| InstanceTag::parse(&t).map_err(|_| RecordError::Malformed("ci")))
            .transpose()?;
        let http_hosts = match get("hh") {
            None => Vec::new(),
            Some(hh) => hh
                .split(',')
                .map(HostName::parse)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| RecordError::Malformed("hh"))?,
        };
        Ok(Self {
            service,
            port,
            node,
            mesh,
            fingerprint,
            weight,
            up,
            tag,
            http_hosts,
        })
    }
}

/// One announced instance of a service, as discovery knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Instance {
    /// DNS-SD full name, e.g. `redis@node-b._ambassador._udp.local.`.
    pub fullname: String,
    /// The service.
    pub service: ServiceName,
    /// The node that announces it.
    pub node: NodeName,
    /// The node's certificate fingerprint.
    pub fingerprint: Fingerprint,
    /// The mesh id the record claims.
    pub mesh: MeshId,
    /// The advertised (consumer-side) port.
    pub port: u16,
    /// The node's QUIC port.
    pub quic_port: u16,
    /// The node's addresses, best first.
    pub addrs: Vec<IpAddr>,
    /// Balancing weight.
    pub weight: u32,
    /// Whether the provider reports its target up.
    pub up: bool,
    /// Which of its node's instances of the service it is, when the node has several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<InstanceTag>,
    /// The HTTP host names it answers to, when it is an HTTP application.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_hosts: Vec<HostName>,
    /// Whether its node confirmed it over a verified connection (its control stream), rather
    /// than a record alone claiming it.
    #[serde(skip)]
    pub confirmed: bool,
    /// Other QUIC addresses that records of this same instance (name and certificate) gave,
    /// newest first: a changed record (a forged redirect, or a real move) adds to the
    /// candidates instead of replacing them, and the handshake tells which ones work.
    #[serde(skip)]
    pub alternates: Vec<SocketAddr>,
}

impl Instance {
    /// The stable key of this instance: its full name and its certificate, so that two nodes
    /// announcing one name (a restart, or two nodes given one `--node`) are two instances.
    pub fn key(&self) -> String {
        format!("{}#{}", self.fullname, self.fingerprint.short(8))
    }

    /// Builds an instance from a record's parts.
    pub fn new(
        fullname: &str,
        quic_port: u16,
        addrs: impl IntoIterator<Item = IpAddr>,
        txt: TxtRecord,
    ) -> Result<Self, RecordError> {
        let mut addrs: Vec<IpAddr> = addrs.into_iter().filter(usable).collect();
        if addrs.is_empty() || quic_port == 0 {
            return Err(RecordError::NoAddress);
        }
        sort_addrs(&mut addrs);
        Ok(Self {
            fullname: fullname.to_string(),
            service: txt.service,
            node: txt.node,
            fingerprint: txt.fingerprint,
            mesh: txt.mesh,
            port: txt.port,
            quic_port,
            addrs,
            weight: txt.weight,
            up: txt.up,
            tag: txt.tag,
            http_hosts: txt.http_hosts,
            confirmed: false,
            alternates: Vec::new(),
        })
    }

    /// The node this record claims: its name and certificate.
    pub fn node_key(&self) -> super::NodeKey {
        (self.node.clone(), self.fingerprint.clone())
    }

    /// The QUIC socket addresses to dial, best first (then the alternates), of the families
    /// `local` can reach.
    pub fn socket_addrs(&self, local: SocketAddr) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self
            .addrs
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.quic_port))
            .collect();
        for a in &self.alternates {
            if !out.contains(a) {
                out.push(*a);
            }
        }
        out.retain(|a| local.is_ipv6() || a.is_ipv4());
        out
    }
}

/// Unspecified, multicast and IPv6 link-local addresses (which need a scope) are not dialled.
fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_multicast() && !v4.is_broadcast(),
        IpAddr::V6(v6) => {
            !v6.is_unspecified() && !v6.is_multicast() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

/// Orders addresses best first: IPv4 before IPv6, loopback last.
pub(crate) fn sort_addrs(addrs: &mut [IpAddr]) {
    addrs.sort_by_key(|ip| (ip.is_loopback(), ip.is_ipv6(), *ip));
}

/// A well-formed record of `redis` on `node-b` with weight `weight` (unit tests' sample).
#[cfg(test)]
pub(crate) fn sample_txt(weight: u32) -> TxtRecord {
    TxtRecord {
        service: ServiceName::parse("redis").unwrap(),
        port: 6379,
        node: NodeName::parse("node-b").unwrap(),
        mesh: MeshId::parse("0123456789abcdef").unwrap(),
        fingerprint: Fingerprint::parse(&"ab".repeat(32)).unwrap(),
        weight,
        up: true,
        tag: None,
        http_hosts: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt() -> TxtRecord {
        sample_txt(3)
    }

    #[test]
    fn txt_round_trip() {
        let props = txt().to_properties();
        let parsed = TxtRecord::parse(|k| props.get(k).cloned()).unwrap();
        assert_eq!(parsed, txt());
    }

    #[test]
    fn txt_strict() {
        for (key, bad) in [
            ("v", "2"),
            ("svc", "a b"),
            ("port", "0"),
            ("port", "x"),
            ("node", "_"),
            ("mesh", "xyz"),
            ("id", "00"),
            ("w", "0"),
            ("h", "sideways"),
        ] {
            let mut props = txt().to_properties();
            props.insert(key.into(), bad.into());
            assert!(
                TxtRecord::parse(|k| props.get(k).cloned()).is_err(),
                "{key}={bad}"
            );
        }
        let mut props = txt().to_properties();
        props.remove("id");
        assert_eq!(
            TxtRecord::parse(|k| props.get(k).cloned()),
            Err(RecordError::Missing("id"))
        );
    }

    #[test]
    fn addresses_ordered_and_filtered() {
        let ips: Vec<IpAddr> = ["127.0.0.1", "fe80::1", "10.0.0.2", "2001:db8::1", "0.0.0.0"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let inst = Instance::new("redis@node-b._ambassador._udp.local.", 4433, ips, txt()).unwrap();
        assert_eq!(
            inst.addrs,
            ["10.0.0.2", "2001:db8::1", "127.0.0.1"].map(|s| s.parse::<IpAddr>().unwrap())
        );
        let v4: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert_eq!(inst.socket_addrs(v4).len(), 2);
        assert!(Instance::new("x", 4433, vec![], txt()).is_err());
    }
}
