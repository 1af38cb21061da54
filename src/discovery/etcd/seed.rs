//! dynamic-ambassador's layout in etcd (`--discover etcd-keys:/services/redis`): one key per
//! backend, `/services/<name>/<port>/<id>/<ip>:<pub-port>`, its value unused. The backends are
//! plain TCP services (like `--direct`), kept in an [`EndpointSet`].

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use etcd_client::KeyValue;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Sink, key_text};
use crate::discovery::{BackendKind, Endpoint, EndpointSet};

/// Why a key under the prefix names no backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedKeyError {
    /// Not `<port>/<id>/<ip>:<pub-port>` under the prefix.
    #[error("expected <prefix>/<port>/<id>/<ip>:<port>")]
    Shape,
    /// The service port is not a port.
    #[error("bad service port")]
    Port,
    /// The last part is not `IP:PORT`.
    #[error("bad backend address (expected IP:PORT)")]
    Addr,
}

/// The service port and the backend that `key` under `prefix` (with its final `/`) names.
pub fn parse_key(prefix: &str, key: &str) -> Result<(u16, SocketAddr), SeedKeyError> {
    let rest = key.strip_prefix(prefix).ok_or(SeedKeyError::Shape)?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [port, id, addr] = parts[..] else {
        return Err(SeedKeyError::Shape);
    };
    if id.is_empty() {
        return Err(SeedKeyError::Shape);
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or(SeedKeyError::Port)?;
    let addr = addr
        .parse::<SocketAddr>()
        .ok()
        .filter(|a| a.port() != 0 && !a.ip().is_unspecified())
        .ok_or(SeedKeyError::Addr)?;
    Ok((port, addr))
}

/// The watch prefix of `--discover etcd-keys:PREFIX`: PREFIX with one final `/`, so
/// `/services/redis` does not also match `/services/redis-cache`.
pub fn watch_prefix(prefix: &str) -> String {
    format!("{}/", prefix.trim_end_matches('/'))
}

/// Keeps an [`EndpointSet`] equal to the backends the keys under a prefix name.
pub struct SeedSink {
    prefix: String,
    set: Arc<EndpointSet>,
    /// The backend of each key.
    keys: BTreeMap<String, SocketAddr>,
    /// Keys refused, already logged.
    refused: HashSet<String>,
    /// The service port of the first key taken: a consumer without a listen port listens there.
    port: watch::Sender<Option<u16>>,
}

impl SeedSink {
    /// A sink of the keys under `prefix` (a [`watch_prefix`]) into `set`; the service port of
    /// the first key goes to `port`.
    pub fn new(prefix: String, set: Arc<EndpointSet>, port: watch::Sender<Option<u16>>) -> Self {
        Self {
            prefix,
            set,
            keys: BTreeMap::new(),
            refused: HashSet::new(),
            port,
        }
    }

    /// Takes key `key` (without publishing the set).
    fn take(&mut self, key: String) {
        match parse_key(&self.prefix, &key) {
            Ok((port, addr)) => {
                self.port.send_if_modified(|learnt| match learnt {
                    Some(_) => false,
                    None => learnt.replace(port).is_none(),
                });
                self.refused.remove(&key);
                self.keys.insert(key, addr);
            }
            Err(e) => {
                self.keys.remove(&key);
                if self.refused.insert(key.clone()) {
                    warn!(%key, error = %e, "ignoring an etcd key that names no backend");
                }
            }
        }
    }

    /// Publishes the backends now (each address once).
    fn publish(&self) {
        let mut addrs: Vec<SocketAddr> = self.keys.values().copied().collect();
        addrs.sort();
        addrs.dedup();
        let list: Vec<Endpoint> = addrs
            .iter()
            .map(|a| Endpoint {
                addr: BackendKind::Direct.addr(*a),
                weight: 1,
            })
            .collect();
        if self.set.replace(list) {
            let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            info!(prefix = %self.prefix, count = addrs.len(), backends = %shown.join(","), "etcd backends changed");
        }
    }
}

impl Sink for SeedSink {
    fn replace(&mut self, kvs: &[KeyValue]) {
        self.keys.clear();
        self.refused.clear();
        for kv in kvs {
            self.take(key_text(kv));
        }
        self.publish();
    }

    fn put(&mut self, kv: &KeyValue) {
        self.take(key_text(kv));
        self.publish();
    }

    fn delete(&mut self, key: &str) {
        self.refused.remove(key);
        if self.keys.remove(key).is_some() {
            self.publish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::DiscoveryMeter;

    const P: &str = "/services/redis/";

    #[test]
    fn keys_of_the_layout() {
        assert_eq!(watch_prefix("/services/redis"), P);
        assert_eq!(watch_prefix("/services/redis/"), P);
        let ok = parse_key(P, "/services/redis/6379/abc/10.0.0.7:32768").unwrap();
        assert_eq!(ok, (6379, "10.0.0.7:32768".parse().unwrap()));
        assert!(parse_key(P, "/services/redis/6379/abc/[::1]:1").is_ok());
        for (key, want) in [
            ("/services/other/6379/abc/10.0.0.7:1", SeedKeyError::Shape),
            ("/services/redis/6379/10.0.0.7:1", SeedKeyError::Shape),
            ("/services/redis/6379//10.0.0.7:1", SeedKeyError::Shape),
            ("/services/redis/6379/a/b/10.0.0.7:1", SeedKeyError::Shape),
            ("/services/redis/x/abc/10.0.0.7:1", SeedKeyError::Port),
            ("/services/redis/6379/abc/host:1", SeedKeyError::Addr),
            ("/services/redis/6379/abc/10.0.0.7:0", SeedKeyError::Addr),
            ("/services/redis/6379/abc/0.0.0.0:1", SeedKeyError::Addr),
        ] {
            assert_eq!(parse_key(P, key), Err(want), "{key}");
        }
    }

    #[test]
    fn the_set_follows_the_keys() {
        let set = Arc::new(EndpointSet::new(
            Vec::new(),
            DiscoveryMeter::detached("etcd"),
        ));
        let (port, learnt) = watch::channel(None);
        let mut s = SeedSink::new(P.to_string(), set.clone(), port);
        s.take("/services/redis/6379/a/10.0.0.7:1".into());
        s.take("/services/redis/6380/b/10.0.0.8:1".into());
        assert_eq!(*learnt.borrow(), Some(6379), "the first key's port");
        s.take("/services/redis/6379/c/nonsense".into());
        s.publish();
        assert_eq!(set.get().len(), 2);
        s.delete("/services/redis/6379/a/10.0.0.7:1");
        assert_eq!(set.get().len(), 1);
        assert!(s.refused.contains("/services/redis/6379/c/nonsense"));
    }
}
