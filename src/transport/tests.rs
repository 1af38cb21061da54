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

/// An endpoint of `identity` on a free loopback port, serving mesh members when `serve`.
fn loopback_endpoint(
    identity: &NodeIdentity,
    deny: &Arc<DenyList>,
    serve: bool,
) -> quinn::Endpoint {
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    endpoint(local, identity, deny, serve, &settings()).unwrap()
}

/// A provider-side endpoint on loopback that accepts every handshake it can and holds the
/// connections open.
fn server(identity: &NodeIdentity, deny: &Arc<DenyList>) -> quinn::Endpoint {
    serve(identity, deny).0
}

/// What a [`serve`] endpoint saw of one connection.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Its handshake completed.
    Up,
    /// It ended: closed after its handshake, or its handshake failed or was abandoned.
    Ended,
}

/// [`server`], with a channel told of each connection's handshake and end.
fn serve(
    identity: &NodeIdentity,
    deny: &Arc<DenyList>,
) -> (quinn::Endpoint, tokio::sync::mpsc::UnboundedReceiver<Seen>) {
    let ep = loopback_endpoint(identity, deny, true);
    let accepting = ep.clone();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    let _ = tx.send(Seen::Up);
                    conn.closed().await;
                }
                let _ = tx.send(Seen::Ended);
            });
        }
    });
    (ep, rx)
}

/// An address that swallows every datagram: a dead address (the socket must be kept).
fn black_hole() -> (std::net::UdpSocket, QuicAddr) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = QuicAddr(socket.local_addr().unwrap());
    (socket, addr)
}

/// A UDP relay on loopback to `to` that delays every datagram, both ways, by `delay`: a live
/// address that answers slowly. Serves one client.
async fn slow_relay(to: SocketAddr, delay: Duration) -> QuicAddr {
    let outer = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let inner = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    inner.connect(to).await.unwrap();
    let addr = QuicAddr(outer.local_addr().unwrap());
    let (client_tx, mut client_rx) = tokio::sync::watch::channel(None);
    let (from, towards) = (outer.clone(), inner.clone());
    tokio::spawn(async move {
        let mut buf = vec![0; 65_536];
        while let Ok((n, client)) = from.recv_from(&mut buf).await {
            client_tx.send_replace(Some(client));
            let (datagram, towards) = (buf[..n].to_vec(), towards.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = towards.send(&datagram).await;
            });
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0; 65_536];
        while let Ok(n) = inner.recv(&mut buf).await {
            let Some(client) = *client_rx.borrow_and_update() else {
                continue;
            };
            let (datagram, back) = (buf[..n].to_vec(), outer.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = back.send_to(&datagram, client).await;
            });
        }
    });
    addr
}

fn pool(identity: &NodeIdentity, deny: &Arc<DenyList>) -> Pool {
    let ep = loopback_endpoint(identity, deny, false);
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
        Ok(conn) => first_stream_failure(quinn::Connection::clone(&conn)).await,
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
    assert_eq!(established.recv().await, Some(Seen::Up));
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

/// A target of `of` at `addrs`, dialled in this order.
fn target_at(of: &NodeIdentity, addrs: Vec<QuicAddr>) -> PeerTarget {
    PeerTarget {
        addrs,
        ..target(of, "127.0.0.1:1".parse().unwrap())
    }
}

#[tokio::test]
async fn a_dead_address_costs_the_stagger_not_the_handshake_timeout() {
    let (_, provider, consumer) = setup();
    let (_hole, dead) = black_hole();
    let srv = server(&provider, &DenyList::empty());
    let live = QuicAddr(srv.local_addr().unwrap());
    let pool = pool(&consumer, &DenyList::empty());
    let started = std::time::Instant::now();
    let conn = pool.get(&target_at(&provider, vec![dead, live])).await;
    let took = started.elapsed();
    assert_eq!(conn.map(|c| c.remote_address()).ok(), Some(live.0));
    assert!(took < Duration::from_millis(150), "took {took:?}");
    assert_eq!(pool.len(), 1);
}

#[tokio::test]
async fn a_refuting_address_never_hides_a_live_one() {
    let (_, provider, consumer) = setup();
    let (_, rogue, _) = setup();
    let forged = server(&rogue, &DenyList::empty());
    let srv = server(&provider, &DenyList::empty());
    let addrs = vec![
        QuicAddr(forged.local_addr().unwrap()),
        QuicAddr(srv.local_addr().unwrap()),
    ];
    let pool = pool(&consumer, &DenyList::empty());
    let conn = pool.get(&target_at(&provider, addrs)).await.unwrap();
    assert_eq!(conn.remote_address(), srv.local_addr().unwrap());
    let who = peer_identity(&conn).map(|p| p.fingerprint);
    assert_eq!(who, Some(provider.fingerprint.clone()));
}

#[tokio::test]
async fn a_refutation_outranks_dead_addresses() {
    let (_, provider, consumer) = setup();
    let (_, rogue, _) = setup();
    let forged = server(&rogue, &DenyList::empty());
    let forged_addr = forged.local_addr().unwrap();
    let (_hole, dead) = black_hole();
    let addrs = vec![QuicAddr(forged_addr), dead];
    let pool = pool(&consumer, &DenyList::empty());
    let err = pool.get(&target_at(&provider, addrs)).await.unwrap_err();
    let why = Refutation::Certificate(AlertDescription::DecryptError);
    assert_eq!(
        err,
        PeerFailure::NotWhoItClaims {
            addr: forged_addr,
            why
        }
    );
}

#[tokio::test]
async fn all_dead_addresses_cost_one_handshake_timeout() {
    let (_, provider, consumer) = setup();
    let holes: Vec<_> = (0..3).map(|_| black_hole()).collect();
    let addrs = holes.iter().map(|(_, addr)| *addr).collect();
    let pool = pool(&consumer, &DenyList::empty());
    let started = std::time::Instant::now();
    let err = pool.get(&target_at(&provider, addrs)).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err, PeerFailure::Unreachable(Unreachable::HandshakeTimeout));
    let timeout = settings().handshake_timeout;
    assert!(took >= timeout, "took {took:?}");
    assert!(
        took < timeout * 2,
        "took {took:?}: the attempts ran one after the other"
    );
    assert_eq!(pool.len(), 0);
}

#[tokio::test]
async fn the_losing_attempt_is_closed_not_leaked() {
    let (_, provider, consumer) = setup();
    let (slow_srv, mut slow_seen) = serve(&provider, &DenyList::empty());
    let slow = slow_relay(slow_srv.local_addr().unwrap(), Duration::from_millis(150)).await;
    let (fast_srv, mut fast_seen) = serve(&provider, &DenyList::empty());
    let fast = QuicAddr(fast_srv.local_addr().unwrap());
    let pool = pool(&consumer, &DenyList::empty());
    let conn = pool
        .get(&target_at(&provider, vec![slow, fast]))
        .await
        .unwrap();
    assert_eq!(
        conn.remote_address(),
        fast.0,
        "the second, faster address won"
    );
    assert_eq!(fast_seen.recv().await, Some(Seen::Up));
    // The slow peer heard the first attempt and then its end, long before any idle timeout.
    let ended = tokio::time::timeout(Duration::from_secs(1), async {
        while slow_seen.recv().await? != Seen::Ended {}
        Some(())
    })
    .await;
    assert_eq!(ended, Ok(Some(())), "the losing connection was left open");
    assert_eq!(pool.len(), 1);
    assert!(conn.close_reason().is_none());
    assert!(fast_seen.try_recv().is_err(), "the winner stays open");
}

/// A stream may run 4 MB ahead of its reader (quinn's default is 1.25 MB): what arrives after a
/// lost packet's hole waits there, and a smaller window stalls a lossy bulk transfer. Here the
/// provider does not read at all until the consumer has written 3 MB, and every byte arrives.
#[tokio::test]
async fn a_stream_runs_four_megabytes_ahead_of_its_reader() {
    const LEN: usize = 3_000_000;
    let (_, provider, consumer) = setup();
    let srv = server_accepting_streams(&provider);
    let pool = pool(&consumer, &DenyList::empty());
    let conn = pool
        .get(&target(&provider, srv.0.local_addr().unwrap()))
        .await
        .unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    // A deadline, not a timing: with a smaller window the write never completes.
    tokio::time::timeout(Duration::from_secs(10), send.write_all(&data))
        .await
        .expect("3 MB written while the provider reads nothing")
        .unwrap();
    send.finish().unwrap();
    let (_provider_side, mut recv) = srv.1.await.unwrap();
    let got = recv.read_to_end(LEN).await.unwrap();
    assert!(got == data, "the 3 MB arrive intact");
}

/// A provider endpoint that accepts one connection and its first stream, and hands the
/// connection and the stream's receiving half over, unread.
fn server_accepting_streams(
    identity: &NodeIdentity,
) -> (
    quinn::Endpoint,
    tokio::task::JoinHandle<(quinn::Connection, quinn::RecvStream)>,
) {
    let ep = loopback_endpoint(identity, &DenyList::empty(), true);
    let accepting = ep.clone();
    let stream = tokio::spawn(async move {
        let conn = accepting.accept().await.unwrap().await.unwrap();
        let (_send, recv) = conn.accept_bi().await.unwrap();
        (conn, recv)
    });
    (ep, stream)
}

/// The Linux socket of the vendored quinn (`vendor/quinn/PATCH.md`, second change) takes a
/// `recvmmsg` that fills fewer slots than it was given for a drained queue. That holds while no
/// pending socket error can end a batch early, which on an unconnected UDP socket needs
/// `IP_RECVERR` (`IPV6_RECVERR`): quinn-udp, which sets up the socket's options, must not set it.
/// A quinn-udp update that starts to would fail here.
#[cfg(target_os = "linux")]
#[test]
fn the_quic_socket_queues_no_errors_that_could_cut_a_receive_batch_short() {
    use std::os::fd::AsRawFd;

    fn option(sock: &std::net::UdpSocket, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` outlive the call, and `len` is `value`'s size.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt: {}", std::io::Error::last_os_error());
        value
    }

    let v4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    quinn::udp::UdpSocketState::new((&v4).into()).unwrap();
    assert_eq!(option(&v4, libc::SOL_IP, libc::IP_RECVERR), 0, "IPv4");
    // Dual-stack, as a bind to an IPv6 address makes it; absent where the host has no IPv6.
    if let Ok(v6) = std::net::UdpSocket::bind("[::1]:0") {
        quinn::udp::UdpSocketState::new((&v6).into()).unwrap();
        assert_eq!(option(&v6, libc::SOL_IPV6, libc::IPV6_RECVERR), 0, "IPv6");
        assert_eq!(
            option(&v6, libc::SOL_IP, libc::IP_RECVERR),
            0,
            "IPv6, IPv4 part"
        );
    }
}
