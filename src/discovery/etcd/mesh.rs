//! The mesh's own records in the etcd registry, fed to the [`Registry`] of instances beside
//! mDNS's: the same hints, named as mDNS names them (so one instance from both sources is one
//! record), filtered as browsed ones (another mesh's and malformed ones refused, this node's
//! own skipped), proven by the QUIC handshake when dialled.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use etcd_client::{GetOptions, KeyValue};
use tracing::{debug, info, warn};

use super::value::{self, Refused};
use super::{FollowError, RegistryConfig, Sink, bounded, key_text};
use crate::discovery::mdns::BrowseFilter;
use crate::discovery::{GoodbyeOutcome, Instance, Registry, Upserted};
use crate::metrics::DiscoveryMeter;
use crate::names::MeshId;

/// Feeds a [`Registry`] from the keys of the mesh's prefix.
pub struct MeshSink {
    registry: Arc<Registry>,
    filter: BrowseFilter,
    /// Counts what this source adds, updates and removes (source `etcd`).
    meter: DiscoveryMeter,
    /// The instance (its full name) each key put into the registry.
    known: BTreeMap<String, String>,
    /// Keys refused, already logged.
    refused: HashSet<String>,
}

impl MeshSink {
    /// A sink into `registry` keeping the records `filter` admits.
    pub fn new(registry: Arc<Registry>, filter: BrowseFilter, meter: DiscoveryMeter) -> Self {
        Self {
            registry,
            filter,
            meter,
            known: BTreeMap::new(),
            refused: HashSet::new(),
        }
    }

    /// Whether `inst` is this node's own record.
    fn own(&self, inst: &Instance) -> bool {
        inst.node == self.filter.own_node
            && inst.fingerprint
                == *self
                    .filter
                    .own_fingerprint
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
    }

    /// Logs a refused key once (until it changes into a good one or goes).
    fn refuse(&mut self, key: &str, why: &Refused) {
        if !self.refused.insert(key.to_string()) {
            return;
        }
        match why {
            Refused::OtherMesh(mesh) => {
                info!(%key, %mesh, "ignoring an etcd record of another mesh")
            }
            Refused::Malformed(e) => warn!(%key, error = %e, "ignoring a malformed etcd record"),
        }
    }

    /// Key `key` was put with `bytes`: its instance is taken, or the key refused.
    fn put_value(&mut self, key: &str, bytes: &[u8]) {
        match value::decode(key, bytes, &self.filter.mesh_id) {
            Ok(inst) => self.take(key, inst),
            Err(why) => {
                // A key that turned bad no longer vouches for its instance.
                if let Some(old) = self.known.remove(key) {
                    self.registry.goodbye_counted(&old, &self.meter);
                }
                self.refuse(key, &why);
            }
        }
    }

    /// Takes a decoded instance of `key` into the registry.
    fn take(&mut self, key: &str, inst: Instance) {
        self.refused.remove(key);
        if self.own(&inst) {
            return;
        }
        let fullname = inst.fullname.clone();
        if let Some(old) = self.known.insert(key.to_string(), fullname.clone())
            && old != fullname
        {
            self.registry.goodbye_counted(&old, &self.meter);
        }
        let (addrs, port) = (inst.addrs.clone(), inst.quic_port);
        match self.registry.upsert_counted(inst, &self.meter) {
            Upserted::New => {
                info!(instance = %fullname, %key, ?addrs, quic_port = port, "discovered in the etcd registry (a record: verified when dialled)")
            }
            Upserted::Updated => info!(instance = %fullname, %key, "etcd record updated"),
            Upserted::Unchanged => {}
        }
    }
}

impl Sink for MeshSink {
    fn replace(&mut self, kvs: &[KeyValue]) {
        let now: HashSet<String> = kvs.iter().map(key_text).collect();
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|k| !now.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.delete(&key);
        }
        self.refused.retain(|k| now.contains(k));
        for kv in kvs {
            self.put(kv);
        }
    }

    fn put(&mut self, kv: &KeyValue) {
        self.put_value(&key_text(kv), kv.value());
    }

    fn delete(&mut self, key: &str) {
        self.refused.remove(key);
        let Some(fullname) = self.known.remove(key) else {
            return;
        };
        match self.registry.goodbye_counted(&fullname, &self.meter) {
            GoodbyeOutcome::Removed => {
                info!(instance = %fullname, %key, "withdrawn from the etcd registry")
            }
            GoodbyeOutcome::Kept(_) => {
                info!(instance = %fullname, %key, "etcd key gone, but its node still serves it over its verified connection")
            }
            GoodbyeOutcome::HeldElsewhere => {
                debug!(instance = %fullname, %key, "etcd key gone; mDNS still carries the record")
            }
            GoodbyeOutcome::Unknown => {}
        }
    }
}

/// The mesh's records in the registry now, read once (`ls`): the well-formed ones of mesh
/// `mesh`; the others are left out, as a consumer refuses them. Each endpoint is tried in turn
/// until one answers.
pub async fn read(cfg: &RegistryConfig, mesh: &MeshId) -> Result<Vec<Instance>, FollowError> {
    let mut last = FollowError::Ended;
    let first = super::first_turn();
    for turn in (0..cfg.endpoints.len()).map(|i| first.wrapping_add(i)) {
        match read_one(cfg, turn, mesh).await {
            Ok(found) => return Ok(found),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// [`read`] on the endpoint whose turn `turn` is.
async fn read_one(
    cfg: &RegistryConfig,
    turn: usize,
    mesh: &MeshId,
) -> Result<Vec<Instance>, FollowError> {
    let mut client = super::connect(cfg, turn).await?;
    let prefix = value::mesh_prefix(mesh);
    let all = bounded(client.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
    Ok(all
        .kvs()
        .iter()
        .filter_map(|kv| value::decode(&key_text(kv), kv.value(), mesh).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use super::*;
    use crate::discovery::record::sample_txt;
    use crate::names::{Fingerprint, NodeName};

    fn sink(registry: &Arc<Registry>) -> MeshSink {
        let filter = BrowseFilter {
            mesh_id: sample_txt(1).mesh,
            own_node: NodeName::parse("a").unwrap(),
            own_fingerprint: Arc::new(RwLock::new(Fingerprint::parse(&"cd".repeat(32)).unwrap())),
        };
        MeshSink::new(registry.clone(), filter, DiscoveryMeter::detached("etcd"))
    }

    #[test]
    fn keys_come_and_go_and_bad_ones_are_refused() {
        let registry = Arc::new(Registry::default());
        let mut s = sink(&registry);
        let txt = sample_txt(1);
        let k = value::key(&txt);
        let v = value::Value::new(&txt, &["127.0.0.1:7443".parse().unwrap()]).to_json();
        s.put_value(&k, v.as_bytes());
        assert_eq!(registry.all().len(), 1);
        assert_eq!(registry.all()[0].fullname, txt.fullname());
        // A key turned malformed takes its instance away; a replace without it too.
        s.put_value(&k, b"{}");
        assert!(registry.all().is_empty());
        assert!(s.refused.contains(&k));
        s.put_value(&k, v.as_bytes());
        assert_eq!(registry.all().len(), 1);
        s.replace(&[]);
        assert!(registry.all().is_empty());
    }
}
