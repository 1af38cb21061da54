//! The etcd registry's layout, in one place for the publisher and the watchers: one key per
//! announced instance, `/ambassador/<mesh>/<service>/<instance>`, whose JSON value holds the
//! fields of the DNS-SD TXT record (DESIGN §3) and the node's QUIC addresses.
//!
//! A value is parsed as strictly as a TXT record (it goes through [`TxtRecord::parse`]), and is
//! only a hint: the QUIC handshake proves the node.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::discovery::record::RECORD_VERSION;
use crate::discovery::{Instance, RecordError, TxtRecord};
use crate::names::MeshId;

/// The root of every key ambassador writes.
pub const ROOT: &str = "/ambassador/";

/// The prefix of the keys of mesh `mesh`, with its final `/`: what consumers watch.
pub fn mesh_prefix(mesh: &MeshId) -> String {
    format!("{ROOT}{mesh}/")
}

/// The key of the instance `txt` describes: `/ambassador/<mesh>/<service>/<instance>`, the
/// instance being `<node>@<fingerprint, 16 hex digits>` (`<node>.<tag>@...` for a container),
/// so two nodes given one name are two keys.
pub fn key(txt: &TxtRecord) -> String {
    let node = match &txt.tag {
        None => txt.node.to_string(),
        Some(ci) => format!("{}.{ci}", txt.node),
    };
    format!(
        "{}{}/{node}@{}",
        mesh_prefix(&txt.mesh),
        txt.service,
        txt.fingerprint.short(16)
    )
}

/// The JSON value of a key: the TXT record's fields under their TXT names, typed, and the
/// node's QUIC addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    /// Record format version (TXT `v`).
    pub v: String,
    /// Service name.
    pub svc: String,
    /// Advertised port.
    pub port: u16,
    /// Node name.
    pub node: String,
    /// Mesh id.
    pub mesh: String,
    /// The node certificate's fingerprint.
    pub id: String,
    /// Balancing weight.
    pub w: u32,
    /// Health of the target: `up` or `down`.
    pub h: String,
    /// The container instance tag, when the node has several instances of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci: Option<String>,
    /// HTTP host names, when the service is an HTTP application.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hh: Vec<String>,
    /// The node's QUIC addresses (IP:PORT), best first.
    pub addrs: Vec<SocketAddr>,
}

/// Why a value is not taken, as a consumer reads it.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// A well-formed record of another mesh.
    #[error("a record of another mesh ({0})")]
    OtherMesh(MeshId),
    /// A value that is not a record of this layout.
    #[error("a malformed record: {0}")]
    Malformed(#[from] Malformed),
}

/// What is wrong with a malformed value.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    /// Not the JSON of a [`Value`].
    #[error("not a record's JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A field is missing or malformed, as in a TXT record.
    #[error("{0}")]
    Record(#[from] RecordError),
    /// The key is not the one its record names (`expected`).
    #[error("its key is not {expected}")]
    Key {
        /// The key the record would have.
        expected: String,
    },
}

impl Value {
    /// The value of the record `txt` of a node reached at `addrs`.
    pub fn new(txt: &TxtRecord, addrs: &[SocketAddr]) -> Self {
        Self {
            v: RECORD_VERSION.to_string(),
            svc: txt.service.to_string(),
            port: txt.port,
            node: txt.node.to_string(),
            mesh: txt.mesh.to_string(),
            id: txt.fingerprint.to_string(),
            w: txt.weight,
            h: if txt.up { "up" } else { "down" }.to_string(),
            ci: txt.tag.as_ref().map(ToString::to_string),
            hh: txt.http_hosts.iter().map(ToString::to_string).collect(),
            addrs: addrs.to_vec(),
        }
    }

    /// The JSON text of the value.
    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and addresses always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The record's fields, through the strict TXT parser.
    fn txt(&self) -> Result<TxtRecord, RecordError> {
        TxtRecord::parse(|k| match k {
            "v" => Some(self.v.clone()),
            "svc" => Some(self.svc.clone()),
            "port" => Some(self.port.to_string()),
            "node" => Some(self.node.clone()),
            "mesh" => Some(self.mesh.clone()),
            "id" => Some(self.id.clone()),
            "w" => Some(self.w.to_string()),
            "h" => Some(self.h.clone()),
            "ci" => self.ci.clone(),
            "hh" => (!self.hh.is_empty()).then(|| self.hh.join(",")),
            _ => None,
        })
    }
}

/// The instance that key `key` with value `bytes` announces, for a consumer of mesh `ours`:
/// another mesh's record, or a malformed one (its key not the one its fields name included), is
/// refused. The instance is named as its mDNS record is, so both sources merge into one.
pub fn decode(key: &str, bytes: &[u8], ours: &MeshId) -> Result<Instance, Refused> {
    let value: Value = serde_json::from_slice(bytes).map_err(Malformed::Json)?;
    let txt = value.txt().map_err(Malformed::Record)?;
    if txt.mesh != *ours {
        return Err(Refused::OtherMesh(txt.mesh));
    }
    let expected = self::key(&txt);
    if key != expected {
        return Err(Malformed::Key { expected }.into());
    }
    let Some(first) = value.addrs.first() else {
        return Err(Malformed::Record(RecordError::NoAddress).into());
    };
    let port = first.port();
    let ips = value
        .addrs
        .iter()
        .filter(|a| a.port() == port)
        .map(|a| a.ip());
    let mut inst = Instance::new(&txt.fullname(), port, ips, txt).map_err(Malformed::Record)?;
    inst.alternates = value
        .addrs
        .iter()
        .filter(|a| a.port() != port)
        .copied()
        .collect();
    Ok(inst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::record::sample_txt;
    use crate::names::{HostName, InstanceTag};

    fn ours() -> MeshId {
        sample_txt(1).mesh
    }

    fn addrs() -> Vec<SocketAddr> {
        vec!["10.77.0.2:7443".parse().unwrap()]
    }

    #[test]
    fn round_trip() {
        let mut txt = sample_txt(3);
        txt.tag = Some(InstanceTag::parse("web1").unwrap());
        txt.http_hosts = vec![HostName::parse("blog.example.com").unwrap()];
        txt.up = false;
        let json = Value::new(&txt, &addrs()).to_json();
        let k = key(&txt);
        assert_eq!(
            k,
            format!(
                "/ambassador/{}/redis/node-b.web1@{}",
                txt.mesh,
                "ab".repeat(8)
            )
        );
        let inst = decode(&k, json.as_bytes(), &ours()).unwrap();
        let want = Instance::new(&txt.fullname(), 7443, [addrs()[0].ip()], txt.clone()).unwrap();
        assert_eq!(inst, want);
        assert_eq!(
            inst.fullname,
            "redis-web1@node-b_01234567._ambassador._udp.local."
        );
    }

    #[test]
    fn another_mesh_is_refused() {
        let mut txt = sample_txt(1);
        txt.mesh = MeshId::parse("fedcba9876543210").unwrap();
        let json = Value::new(&txt, &addrs()).to_json();
        // Put under our prefix or its own, it is another mesh's.
        let k = key(&sample_txt(1));
        assert!(matches!(
            decode(&k, json.as_bytes(), &ours()),
            Err(Refused::OtherMesh(m)) if m == txt.mesh
        ));
    }

    #[test]
    fn malformed_is_refused() {
        let txt = sample_txt(1);
        let k = key(&txt);
        let good = Value::new(&txt, &addrs());
        type Case = (Vec<u8>, fn(&Malformed) -> bool);
        let cases: Vec<Case> = vec![
            (b"not json".to_vec(), |m| matches!(m, Malformed::Json(_))),
            (b"{\"v\":\"1\"}".to_vec(), |m| {
                matches!(m, Malformed::Json(_))
            }),
            (
                Value {
                    w: 0,
                    ..good.clone()
                }
                .to_json()
                .into_bytes(),
                |m| matches!(m, Malformed::Record(RecordError::Malformed("w"))),
            ),
            (
                Value {
                    v: "9".into(),
                    ..good.clone()
                }
                .to_json()
                .into_bytes(),
                |m| matches!(m, Malformed::Record(RecordError::Version(_))),
            ),
            (
                Value {
                    addrs: vec![],
                    ..good.clone()
                }
                .to_json()
                .into_bytes(),
                |m| matches!(m, Malformed::Record(RecordError::NoAddress)),
            ),
            (
                Value {
                    svc: "web".into(),
                    ..good.clone()
                }
                .to_json()
                .into_bytes(),
                |m| matches!(m, Malformed::Key { .. }),
            ),
        ];
        for (bytes, is) in cases {
            match decode(&k, &bytes, &ours()) {
                Err(Refused::Malformed(m)) => assert!(is(&m), "{m:?}"),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(&bytes)),
            }
        }
    }
}
