//! The consumer's per-instance state follows discovery: it is forgotten when instances go.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::discovery::TxtRecord;
use crate::identity::{DenyList, MeshKey, MeshRoot};
use crate::names::{MeshId, NodeName};
use crate::transport::{PeerFailure, TransportSettings, Unreachable, client_config, endpoint};

fn instance(i: u32) -> Instance {
    let txt = TxtRecord {
        service: ServiceName::parse("redis").unwrap(),
        port: 6379,
        node: NodeName::parse(&format!("node-{i}")).unwrap(),
        mesh: MeshId::parse("0123456789abcdef").unwrap(),
        fingerprint: Fingerprint::parse(&format!("{i:064x}")).unwrap(),
        weight: 1,
        up: true,
        tag: None,
        http_hosts: Vec::new(),
    };
    // Loopback addresses where nothing listens: background verifications dial only here.
    let ip = IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + 0x0100 + i));
    Instance::new(
        &format!("redis@node-{i}_01234567._ambassador._udp.local."),
        4433,
        [ip],
        txt,
    )
    .unwrap()
}

async fn consumer(registry: Arc<Registry>, cancel: CancellationToken) -> Arc<Consumer> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = MeshRoot::derive(&MeshKey::generate().unwrap()).unwrap();
    let identity = root.issue(&NodeName::parse("consumer").unwrap()).unwrap();
    let settings = TransportSettings {
        handshake_timeout: Duration::from_millis(300),
        ..TransportSettings::default()
    };
    let deny = DenyList::empty();
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let ep = endpoint(local, &identity, &deny, false, &settings).unwrap();
    let local = ep.local_addr().unwrap();
    let pool = Pool::new(
        ep,
        client_config(&identity, &deny, &settings).unwrap(),
        settings,
    );
    let settings = ConsumerSettings {
        service: ServiceName::parse("redis").unwrap(),
        wait: Duration::from_secs(1),
        policy: Policy::LeastConn,
        redis_auth: None,
        metrics: Arc::default(),
    };
    let backends = Backends::Discovered(registry);
    let tracker = TaskTracker::new();
    Arc::new(Consumer::new(
        settings, backends, pool, local, cancel, tracker,
    ))
}

#[tokio::test]
async fn state_of_10000_removed_instances_is_forgotten() {
    let registry = Arc::new(Registry::default());
    let cancel = CancellationToken::new();
    let c = consumer(registry.clone(), cancel.clone()).await;
    c.tracker.spawn(upkeep(c.clone()));
    let before = (c.state_size(), c.pool.len());
    assert_eq!(before, ((0, 0, 0), 0));

    const N: u32 = 10_000;
    for i in 0..N {
        registry.upsert(instance(i));
    }
    let all = c.all_candidates();
    assert_eq!(all.len(), N as usize);
    // Lost peers are probed; their probes must end once the instances are gone.
    let lost = PeerFailure::Unreachable(Unreachable::IdleTimeout);
    for cand in all.iter().take(100) {
        c.peer_lost(&cand.peer_key().unwrap(), &lost);
    }
    for (n, cand) in all.iter().enumerate() {
        c.balancer.failed(&cand.key, "refused");
        let Target::Peer(peer) = &cand.target else {
            panic!("a record is a peer")
        };
        if n % 2 == 0 {
            c.reject(Rejection::Refuted(peer.clone()));
        } else if let Some(claimed) = &peer.claimed {
            c.reject(Rejection::NotAllowed {
                instance: cand.key.clone(),
                fingerprint: claimed.fingerprint.clone(),
            });
        }
    }
    assert_eq!(c.state_size(), (N as usize, N as usize, 100));
    assert!(
        c.all_candidates().is_empty(),
        "rejected records are not used"
    );

    for i in 0..N {
        registry.remove(&instance(i).fullname);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while (c.state_size(), c.pool.len()) != before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "state did not shrink back: {:?}",
            c.state_size()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    c.tracker.close();
    c.tracker.wait().await;
}

#[tokio::test]
async fn an_instance_with_an_open_connection_keeps_its_count() {
    let registry = Arc::new(Registry::default());
    let c = consumer(registry.clone(), CancellationToken::new()).await;
    registry.upsert(instance(1));
    let key = c.all_candidates()[0].key.clone();
    let open = c.balancer.opened(&key);
    registry.remove(&instance(1).fullname);
    c.prune();
    assert_eq!(c.state_size().0, 1, "an open connection is still counted");
    drop(open);
    c.prune();
    assert_eq!(c.state_size().0, 0);
}
