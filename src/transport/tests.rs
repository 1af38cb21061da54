//! Each class of peer failure, built from a real error: real endpoints on loopback, real
//! certificates (another mesh's, expired, revoked), a closed port, a stopping peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::AlertDescription;

use super::*;
use crate::identity::{DenyList, MeshKey, MeshRoot, NodeIdentity};
use crate::names::{NodeName, QuicAddr};

fn node(n: &str) -> NodeName {
    NodeName::parse(n).unwrap()
}

fn settings() -> TransportSettings {
    TransportSettings {
        handshake_timeout: Duration::from_millis(400),
        ..TransportSettings::default()
    }
}

/// A provider-side endpoint on loopback that accepts every handshake it can and holds the
/// connections open.
fn server(identity: &NodeIdentity, deny: &Arc<DenyList>) -> quinn::Endpoint {
    serve(identity, deny).0
}

/// [`server`], with a channel told of each completed handshake.
fn serve(
    identity: &NodeIdentity,
    deny: &Arc<DenyList>,
) -> (quinn::Endpoint, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let ep = endpoint(local, identity, deny, true, &settings()).unwrap();
    let accepting = ep.clone();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    let _ = tx.send(());
                    conn.closed().await;
                }
            });
        }
    });
    (ep, rx)
}

fn pool(identity: &NodeIdentity, deny: &Arc<DenyList>) -> Pool {
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let ep = endpoint(local, identity, deny, false, &settings()).unwrap();
    Pool::new(
        ep,
        client_config(identity, deny, &settings()).unwrap(),
        settings(),
    )
}

/// A target as a record of `of` at `addr` would describe it.
fn target(of: &NodeIdentity, addr: SocketAddr) -> PeerTarget {
    PeerTarget {
        claimed: Some(ClaimedIdentity {
            node: of.node.clone(),
            fingerprint: of.fingerprint.clone(),
        }),
        addrs: vec![QuicAddr(addr)],
    }
}

/// Opens a stream, sends a byte and waits for the stream to fail: the connection's end,
/// classified (the way a consumer learns that a peer refused its certificate).
async fn first_stream_failure(conn: quinn::Connection) -> PeerFailure {
    if let Ok((mut send, mut recv)) = conn.open_bi().await {
        let _ = send.write_all(b"A").await;
        let _ = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(16)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    connection_failure(&conn).expect("the connection ended")
}

/// Dials `serving` (a provider endpoint) as `consumer` would for `record`'s record, and
/// checks that the dial is refuted as `why`.
async fn assert_refuted(
    consumer: &NodeIdentity,
    consumer_deny: &Arc<DenyList>,
    serving: &NodeIdentity,
    record: &NodeIdentity,
    why: Refutation,
) {
    let srv = server(serving, &DenyList::empty());
    let addr = srv.local_addr().unwrap();
    let err = pool(consumer, consumer_deny)
        .get(&target(record, addr))
        .await
        .unwrap_err();
    assert_eq!(err, PeerFailure::NotWhoItClaims { addr, why });
    assert!(err.refutes_record());
}

fn setup() -> (MeshRoot, NodeIdentity, NodeIdentity) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = MeshRoot::derive(&MeshKey::generate().unwrap()).unwrap();
    let provider = root.issue(&node("provider")).unwrap();
    let consumer = root.issue(&node("consumer")).unwrap();
    (root, provider, consumer)
}

#[tokio::test]
async fn a_member_is_reached() {
    let (_, provider, consumer) = setup();
    let srv = server(&provider, &DenyList::empty());
    let pool = pool(&consumer, &DenyList::empty());
    let conn = pool
        .get(&target(&provider, srv.local_addr().unwrap()))
        .await;
    assert!(conn.is_ok(), "{:?}", conn.err());
    assert_eq!(pool.len(), 1);
}

#[tokio::test]
async fn a_node_of_another_mesh_is_not_who_its_record_claims() {
    let (_, _, consumer) = setup();
    let (_, rogue, _) = setup();
    // Both meshes' roots carry the same name: the chain fails on its signature.
    let why = Refutation::Certificate(AlertDescription::DecryptError);
    assert_refuted(&consumer, &DenyList::empty(), &rogue, &rogue, why).await;
}

#[tokio::test]
async fn a_record_with_another_fingerprint_is_refuted() {
    let (root, provider, consumer) = setup();
    let impostor = root.issue(&node("provider")).unwrap();
    let why = Refutation::FingerprintMismatch {
        expected: provider.fingerprint.clone(),
        got: Some(impostor.fingerprint.clone()),
    };
    assert_refuted(&consumer, &DenyList::empty(), &impostor, &provider, why).await;
}

#[tokio::test]
async fn an_expired_provider_certificate_is_refuted() {
    let (root, _, consumer) = setup();
    let now = time::OffsetDateTime::now_utc();
    let expired = root
        .issue_valid(
            &node("provider"),
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .unwrap();
    let why = Refutation::Certificate(AlertDescription::CertificateExpired);
    assert_refuted(&consumer, &DenyList::empty(), &expired, &expired, why).await;
}

#[tokio::test]
async fn a_revoked_provider_is_refuted_and_a_revoked_consumer_is_refused() {
    let (_, provider, consumer) = setup();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("deny");
    std::fs::write(
        &list,
        format!("{}\n{}\n", provider.fingerprint, consumer.fingerprint),
    )
    .unwrap();
    let deny = DenyList::load(&list).unwrap();

    // The consumer's list revokes the provider: the consumer refuses it in the handshake.
    let why = Refutation::Certificate(AlertDescription::CertificateRevoked);
    assert_refuted(&consumer, &deny, &provider, &provider, why).await;

    // The provider's list revokes the consumer: with TLS 1.3 the consumer learns it after its
    // handshake, on its first stream.
    let srv = server(&provider, &deny);
    let addr = srv.local_addr().unwrap();
    let failure = match pool(&consumer, &DenyList::empty())
        .get(&target(&provider, addr))
        .await
    {
        Ok(conn) => first_stream_failure(conn).await,
        Err(e) => e,
    };
    assert_eq!(
        failure,
        PeerFailure::RefusesOurCertificate(AlertDescription::CertificateRevoked)
    );
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let (_, provider, consumer) = setup();
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let pool = pool(&consumer, &DenyList::empty());
    let err = pool.get(&target(&provider, addr)).await.unwrap_err();
    assert_eq!(err, PeerFailure::Unreachable(Unreachable::HandshakeTimeout));
    assert!(!err.refutes_record());
    assert_eq!(pool.len(), 0, "a failed dial leaves no slot behind");
    let none = PeerTarget {
        claimed: None,
        addrs: Vec::new(),
    };
    assert_eq!(pool.get(&none).await.unwrap_err(), PeerFailure::NoAddress);
}

#[tokio::test]
async fn a_stopping_peer_closed_the_connection() {
    let (_, provider, consumer) = setup();
    let (srv, mut established) = serve(&provider, &DenyList::empty());
    let pool = pool(&consumer, &DenyList::empty());
    let mut lost = pool.subscribe_lost();
    let peer = target(&provider, srv.local_addr().unwrap());
    let conn = pool.get(&peer).await.unwrap();
    established.recv().await.unwrap();
    srv.close(CloseCode::Stopping.varint(), b"node stopping");
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    assert_eq!(
        connection_failure(&conn),
        Some(PeerFailure::ClosedByPeer(Some(CloseCode::Stopping)))
    );
    let ev = tokio::time::timeout(Duration::from_secs(5), lost.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.peer, peer.key());
    assert_eq!(ev.why, PeerFailure::ClosedByPeer(Some(CloseCode::Stopping)));
}
