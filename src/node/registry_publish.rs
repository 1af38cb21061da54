//! Publishing this node's announcements to the etcd registry (`--registry`): one key per
//! announced instance ([`value::key`]), all on one lease the node keeps alive. The keys wanted
//! now are a map that announcements, health changes and withdrawals edit; one task keeps etcd
//! equal to it. An unreachable registry is retried with backoff (mDNS goes on meanwhile); a
//! lost lease (etcd restarted with its data wiped) is granted again and every key put again.
//! A clean stop deletes the keys (the drain) and revokes the lease.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::discovery::TxtRecord;
use crate::discovery::etcd::{self, Backoff, FollowError, RegistryConfig, bounded, value};

/// The lease's time to live: keys of a node that died go this long after its last keep-alive.
pub(super) const LEASE_TTL: Duration = Duration::from_secs(10);

/// The keys this node wants in the registry, by key: their JSON values.
type Wanted = BTreeMap<String, String>;

/// This node's side of the registry: what it wants published.
pub(super) struct RegistryPublisher {
    wanted: watch::Sender<Wanted>,
    /// The node's QUIC addresses, published with every record.
    addrs: Vec<SocketAddr>,
}

impl RegistryPublisher {
    /// Starts publishing to `cfg` (nothing yet) for a node whose QUIC socket is `quic`; the
    /// task runs until `cancel`, then revokes its lease.
    pub(super) fn start(
        cfg: RegistryConfig,
        quic: SocketAddr,
        cancel: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Arc<Self> {
        let (wanted, rx) = watch::channel(Wanted::new());
        let addrs = routable_addrs(quic);
        info!(endpoints = %cfg.endpoints.join(","), addrs = ?addrs, "publishing to the etcd registry");
        tracker.spawn(run(cfg, rx, cancel));
        Arc::new(Self { wanted, addrs })
    }

    /// Publishes (again) the record `txt`.
    pub(super) fn put(&self, txt: &TxtRecord) {
        let json = value::Value::new(txt, &self.addrs).to_json();
        self.wanted.send_if_modified(|w| {
            let key = value::key(txt);
            let changed = w.get(&key) != Some(&json);
            w.insert(key, json);
            changed
        });
    }

    /// Deletes the record `txt`.
    pub(super) fn remove(&self, txt: &TxtRecord) {
        self.wanted
            .send_if_modified(|w| w.remove(&value::key(txt)).is_some());
    }

    /// Deletes every record (the drain).
    pub(super) fn remove_all(&self) {
        self.wanted.send_if_modified(|w| {
            let had = !w.is_empty();
            w.clear();
            had
        });
    }
}

/// The addresses consumers can dial this node's QUIC socket at: the bound address when it is
/// a specific one; else every address of an interface that is up, of the socket's family
/// (IPv6 link-local ones left out: they need a scope), loopback only when nothing else exists.
pub(super) fn routable_addrs(quic: SocketAddr) -> Vec<SocketAddr> {
    let port = quic.port();
    if !quic.ip().is_unspecified() {
        return vec![quic];
    }
    let v6 = quic.is_ipv6();
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i.is_oper_up() && !i.is_loopback())
        .map(|i| i.ip())
        .filter(|ip| match ip {
            IpAddr::V4(_) => true,
            IpAddr::V6(v) => v6 && (v.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect();
    if ips.is_empty() {
        ips.push(if v6 {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        });
    }
    crate::discovery::sort_addrs(&mut ips);
    ips.dedup();
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// Publishes until `cancel`: one session after another, with backoff between failures.
async fn run(cfg: RegistryConfig, mut wanted: watch::Receiver<Wanted>, cancel: CancellationToken) {
    let mut backoff = Backoff::default();
    // Whose turn it is among the endpoints: the next one after a failure.
    let mut turn = etcd::first_turn();
    loop {
        match session(&cfg, turn, &mut wanted, &cancel, &mut backoff).await {
            Ok(()) => return,
            Err(e) => {
                turn = turn.wrapping_add(1);
                let pause = backoff.pause();
                warn!(endpoints = %cfg.endpoints.join(","), error = %e, retry_in = ?pause, "etcd registry unreachable or refused: retrying (mDNS goes on)");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// One lease, on the endpoint whose turn `turn` is: granted, every wanted key put on it, kept
/// alive at a third of its TTL, the keys kept equal to the wanted ones; at `cancel`, revoked
/// (`Ok`). Any failure ends it (`Err`).
async fn session(
    cfg: &RegistryConfig,
    turn: usize,
    wanted: &mut watch::Receiver<Wanted>,
    cancel: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), FollowError> {
    let mut client = etcd::connect(cfg, turn).await?;
    let ttl = LEASE_TTL.as_secs() as i64;
    let lease = bounded(client.lease_grant(ttl, None)).await?.id();
    let (mut keeper, mut acks) = bounded(client.lease_keep_alive(lease)).await?;
    let mut lease = Lease {
        client,
        id: lease,
        put: Wanted::new(),
    };
    let now = wanted.borrow_and_update().clone();
    lease.sync(&now).await?;
    info!(
        lease = lease.id,
        keys = now.len(),
        "published to the etcd registry"
    );
    backoff.reset();
    let mut tick = tokio::time::interval(LEASE_TTL / 3);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return lease.revoke().await,
            _ = tick.tick() => keeper.keep_alive().await?,
            ack = acks.message() => match ack? {
                Some(a) if a.ttl() > 0 => debug!(lease = lease.id, ttl = a.ttl(), "lease kept alive"),
                _ => return Err(FollowError::Ended),
            },
            changed = wanted.changed() => {
                if changed.is_err() {
                    return lease.revoke().await;
                }
                let now = wanted.borrow_and_update().clone();
                lease.sync(&now).await?;
            }
        }
    }
}

/// A granted lease and the keys put on it.
struct Lease {
    client: Client,
    id: i64,
    /// The keys put, with their values.
    put: Wanted,
}

impl Lease {
    /// Puts what changed and deletes what is no longer wanted.
    async fn sync(&mut self, wanted: &Wanted) -> Result<(), FollowError> {
        for (key, json) in wanted {
            if self.put.get(key) == Some(json) {
                continue;
            }
            let opts = PutOptions::new().with_lease(self.id);
            bounded(self.client.put(key.clone(), json.clone(), Some(opts))).await?;
            info!(%key, "etcd key put");
            self.put.insert(key.clone(), json.clone());
        }
        let gone: Vec<String> = self
            .put
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            bounded(self.client.delete(key.clone(), None)).await?;
            info!(%key, "etcd key deleted");
            self.put.remove(&key);
        }
        Ok(())
    }

    /// Revokes the lease: its keys go at once.
    async fn revoke(mut self) -> Result<(), FollowError> {
        match tokio::time::timeout(Duration::from_secs(1), self.client.lease_revoke(self.id)).await
        {
            Ok(Ok(_)) => info!(lease = self.id, "etcd lease revoked: keys deleted"),
            Ok(Err(e)) => {
                warn!(lease = self.id, error = %e, "cannot revoke the etcd lease: its keys go when it expires")
            }
            Err(_) => warn!(
                lease = self.id,
                "etcd lease revocation timed out: its keys go when it expires"
            ),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_specific_bind_address_is_the_one_published() {
        let a: SocketAddr = "10.77.0.2:7443".parse().unwrap();
        assert_eq!(routable_addrs(a), [a]);
        let any = routable_addrs("0.0.0.0:7443".parse().unwrap());
        assert!(!any.is_empty());
        assert!(any.iter().all(|a| a.port() == 7443 && a.is_ipv4()));
        // Loopback only when nothing else exists.
        assert!(any.len() == 1 || any.iter().all(|a| !a.ip().is_loopback()));
    }
}
