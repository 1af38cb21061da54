//! QUIC transport: the endpoint (one UDP socket per node, serving and dialling), and the pool
//! of peer connections: one connection per (this node, peer node), opened on first need and
//! re-established on loss, so a new TCP connection costs a stream, never a handshake.

pub mod protocol;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, IdleTimeout, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

use crate::identity::{ANY_NODE_SAN, DenyList, IdentityError, NodeIdentity, PeerIdentity};

/// Tunables of the QUIC transport.
#[derive(Debug, Clone)]
pub struct TransportSettings {
    /// Interval of QUIC keep-alive pings on idle connections.
    pub keep_alive: Duration,
    /// A peer silent this long is taken as dead (its connection closes).
    pub idle_timeout: Duration,
    /// Bound on a QUIC handshake.
    pub handshake_timeout: Duration,
    /// UDP socket send and receive buffer size (bytes).
    pub udp_buffer: usize,
    /// Most concurrent streams (= TCP connections) a peer may open on one connection.
    pub max_streams: u32,
}

impl TransportSettings {
    /// Settings where a silent peer is taken as dead after `timeout` (keep-alive at a third).
    pub fn with_peer_timeout(timeout: Duration) -> Self {
        Self {
            keep_alive: (timeout / 3).max(Duration::from_millis(100)),
            idle_timeout: timeout,
            ..Self::default()
        }
    }
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(5),
            udp_buffer: 4 << 20,
            max_streams: 12_288,
        }
    }
}

/// Errors setting up the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The UDP socket could not be bound.
    #[error(
        "cannot bind the QUIC socket to {addr}: {source} (choose another --bind address or port)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TLS set-up failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Any other I/O error.
    #[error("QUIC endpoint: {0}")]
    Io(#[from] std::io::Error),
}

/// Which side a transport configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Accepts streams (the provider).
    Server,
    /// Only opens streams (the consumer): it accepts none, so reserves nothing for them.
    Client,
}

/// Largest UDP payload sent or accepted; MTU discovery stops at what the path carries (1452 on
/// Ethernet; loopback and jumbo-frame links reach this bound). Not 8952 for jumbo frames: quinn
/// batches up to 10 packets in one GSO send, and a batch over 64 KiB fails with EMSGSIZE, which
/// quinn-udp drops silently (every batch of 8952-byte packets would be lost).
const MAX_UDP_PAYLOAD: u16 = 6500;

fn transport_config(s: &TransportSettings, side: Side) -> TransportConfig {
    let mut t = TransportConfig::default();
    let accepted = if side == Side::Server {
        s.max_streams
    } else {
        0
    };
    t.max_concurrent_bidi_streams(VarInt::from_u32(accepted));
    // Probe for paths larger than Ethernet's 1500 bytes (jumbo frames, loopback): fewer
    // packets to seal and acknowledge per byte (on loopback: 6500-byte packets, ~1.7x the bulk
    // throughput of 1452). Discovery falls back safely to 1200+.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    // Congestion losses of large packets (a receiver that falls behind under bulk load) look
    // like an MTU black hole to quinn, which then drops to 1200-byte packets for a minute:
    // probe again soon, as its documentation advises.
    mtu.black_hole_cooldown(Duration::from_secs(1));
    t.mtu_discovery_config(Some(mtu));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.keep_alive_interval(Some(s.keep_alive));
    // An idle timeout is a few seconds at most: it always fits a VarInt of milliseconds.
    t.max_idle_timeout(IdleTimeout::try_from(s.idle_timeout).ok());
    t
}

fn udp_socket(bind: SocketAddr, buffer: usize) -> Result<std::net::UdpSocket, EndpointError> {
    let bind_err = |source| EndpointError::Bind { addr: bind, source };
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_err)?;
    if bind.is_ipv6() {
        // Dual-stack where the host allows it; failure just leaves the socket IPv6-only.
        let _ = socket.set_only_v6(false);
    }
    // Larger buffers absorb bursts; the kernel caps them at net.core.[rw]mem_max.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&bind.into()).map_err(bind_err)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The QUIC server configuration for `identity`: mesh members only.
pub fn server_config(
    identity: &NodeIdentity,
    deny: &Arc<DenyList>,
    settings: &TransportSettings,
) -> Result<quinn::ServerConfig, IdentityError> {
    let crypto = QuicServerConfig::try_from(identity.server_config(deny.clone())?)
        .map_err(|e| IdentityError::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport_config(settings, Side::Server)));
    Ok(server)
}

/// The QUIC client configuration for `identity`.
pub fn client_config(
    identity: &NodeIdentity,
    deny: &Arc<DenyList>,
    settings: &TransportSettings,
) -> Result<quinn::ClientConfig, IdentityError> {
    let crypto = QuicClientConfig::try_from(identity.client_config(deny.clone())?)
        .map_err(|e| IdentityError::Quic(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport_config(settings, Side::Client)));
    Ok(client)
}

/// Builds this node's QUIC endpoint. With `serve`, it accepts connections from mesh members.
pub fn endpoint(
    bind: SocketAddr,
    identity: &NodeIdentity,
    deny: &Arc<DenyList>,
    serve: bool,
    settings: &TransportSettings,
) -> Result<Endpoint, EndpointError> {
    let socket = udp_socket(bind, settings.udp_buffer)?;
    let server = if serve {
        Some(server_config(identity, deny, settings)?)
    } else {
        None
    };
    // Accept datagrams as large as MTU discovery may probe for (the default, 1472, would cap
    // every path at Ethernet size: the peer advertises it and discovery never goes above).
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        // Invariant: the only error is a value below 1200, and the constant is 6500.
        .expect("MAX_UDP_PAYLOAD is at least 1200");
    let endpoint = Endpoint::new(config, server, socket, Arc::new(quinn::TokioRuntime))?;
    Ok(endpoint)
}

/// Whom to dial: a node as a record describes it, or an address alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerTarget {
    /// The node name the certificate must carry; `None` accepts any mesh member.
    pub node: Option<String>,
    /// The certificate fingerprint the record published, if any.
    pub fingerprint: Option<String>,
    /// Addresses to try, in order of preference.
    pub addrs: Vec<SocketAddr>,
}

impl PeerTarget {
    /// The pool key of this peer: node name and fingerprint, or the addresses.
    pub fn key(&self) -> String {
        match (&self.node, &self.fingerprint) {
            (Some(n), Some(f)) => format!("{n}/{f}"),
            _ => format!("{:?}", self.addrs),
        }
    }
}

/// Why a peer could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DialError {
    /// No usable address.
    #[error("no usable address for the peer")]
    NoAddress,
    /// The handshake failed at every address.
    #[error("QUIC handshake with {addr} failed: {reason}")]
    Handshake {
        /// The last address tried.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The peer's certificate is valid but is not the one its record published.
    #[error("peer at {addr} presented certificate {got}, but its record says {expected}")]
    IdentityMismatch {
        /// The address.
        addr: SocketAddr,
        /// From the record.
        expected: String,
        /// From the handshake.
        got: String,
    },
}

impl DialError {
    /// True when the peer proved not to be who it claims (or not a mesh member): its record
    /// must not be used again.
    pub fn is_identity_failure(&self) -> bool {
        match self {
            DialError::IdentityMismatch { .. } => true,
            DialError::Handshake { reason, .. } => {
                reason.contains("certificate") || reason.contains("crypto")
            }
            DialError::NoAddress => false,
        }
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Connection>>>;

/// Pool of QUIC connections to peers, one per peer identity.
#[derive(Clone)]
pub struct Pool {
    endpoint: Endpoint,
    settings: TransportSettings,
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    /// The client configuration new connections use (replaced on identity reload).
    client: Arc<std::sync::RwLock<quinn::ClientConfig>>,
    /// (peer key, reason) of every pooled connection that ended other than by our own close.
    lost: tokio::sync::broadcast::Sender<(String, String)>,
}

impl Pool {
    /// A pool dialling from `endpoint`.
    pub fn new(
        endpoint: Endpoint,
        client: quinn::ClientConfig,
        settings: TransportSettings,
    ) -> Self {
        Self {
            endpoint,
            client: Arc::new(std::sync::RwLock::new(client)),
            settings,
            slots: Arc::default(),
            lost: tokio::sync::broadcast::channel(256).0,
        }
    }

    /// Replaces the client configuration for new connections (open ones are kept).
    pub fn set_client_config(&self, client: quinn::ClientConfig) {
        *self.client.write().unwrap_or_else(|e| e.into_inner()) = client;
    }

    /// Closes pooled connections to peers whose certificate is now denied (after a reload).
    pub fn close_denied(&self, deny: &DenyList) {
        let slots: Vec<Slot> = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for slot in slots {
            if let Ok(guard) = slot.try_lock()
                && let Some(conn) = guard.as_ref()
                && peer_identity(conn).is_some_and(|p| deny.denies_fingerprint(&p.fingerprint))
            {
                tracing::warn!("closing the connection to a peer whose certificate is now revoked");
                conn.close(VarInt::from_u32(2), b"certificate revoked");
            }
        }
    }

    /// The round-trip time of the open connection to `peer`, if there is one (never dials).
    pub fn rtt(&self, peer: &PeerTarget) -> Option<Duration> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer.key())
            .cloned()?;
        let guard = slot.try_lock().ok()?;
        guard
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .map(|c| c.rtt())
    }

    /// Notifications of lost peers: (peer key, reason).
    pub fn subscribe_lost(&self) -> tokio::sync::broadcast::Receiver<(String, String)> {
        self.lost.subscribe()
    }

    /// The live connection to `peer`, dialled if there is none. Concurrent callers for one peer
    /// share one handshake.
    pub async fn get(&self, peer: &PeerTarget) -> Result<Connection, DialError> {
        let key = peer.key();
        let slot = {
            // A poisoned lock means a panic elsewhere while holding it; the map is still valid.
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.entry(key.clone()).or_default().clone()
        };
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref()
            && conn.close_reason().is_none()
        {
            return Ok(conn.clone());
        }
        *guard = None;
        let conn = self.dial(peer).await?;
        *guard = Some(conn.clone());
        // Forget the slot when the connection ends, so the map does not grow with dead peers.
        let slots = self.slots.clone();
        let watched = conn.clone();
        let lost = self.lost.clone();
        tokio::spawn(async move {
            let reason = watched.closed().await;
            if !matches!(reason, quinn::ConnectionError::LocallyClosed) {
                tracing::info!(peer = %key, %reason, "peer connection lost");
                let _ = lost.send((key.clone(), reason.to_string()));
            }
            let mut slots = slots.lock().unwrap_or_else(|e| e.into_inner());
            let stale = slots.get(&key).is_some_and(|s| {
                s.try_lock().is_ok_and(|g| {
                    g.as_ref()
                        .is_none_or(|c| c.stable_id() == watched.stable_id())
                })
            });
            if stale {
                slots.remove(&key);
            }
        });
        Ok(conn)
    }

    async fn dial(&self, peer: &PeerTarget) -> Result<Connection, DialError> {
        let server_name = peer.node.as_deref().unwrap_or(ANY_NODE_SAN);
        let mut last = DialError::NoAddress;
        let mut identity_failure: Option<DialError> = None;
        for &addr in &peer.addrs {
            let client = self
                .client
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let connecting = match self.endpoint.connect_with(client, addr, server_name) {
                Ok(c) => c,
                Err(e) => {
                    last = DialError::Handshake {
                        addr,
                        reason: e.to_string(),
                    };
                    continue;
                }
            };
            let conn = match tokio::time::timeout(self.settings.handshake_timeout, connecting).await
            {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    last = DialError::Handshake {
                        addr,
                        reason: e.to_string(),
                    };
                    // A failed identity at one address (a forged or stale record) does not
                    // condemn the others: try them all, and report the identity failure.
                    if last.is_identity_failure() {
                        identity_failure = Some(last.clone());
                    }
                    continue;
                }
                Err(_) => {
                    last = DialError::Handshake {
                        addr,
                        reason: "timed out".into(),
                    };
                    continue;
                }
            };
            let identity = peer_identity(&conn);
            let got = identity.map(|i| i.fingerprint).unwrap_or_default();
            if let Some(expected) = &peer.fingerprint
                && *expected != got
            {
                conn.close(VarInt::from_u32(1), b"identity mismatch");
                identity_failure = Some(DialError::IdentityMismatch {
                    addr,
                    expected: expected.clone(),
                    got,
                });
                continue;
            }
            return Ok(conn);
        }
        Err(identity_failure.unwrap_or(last))
    }
}

/// The verified identity of a connection's peer.
pub fn peer_identity(conn: &Connection) -> Option<PeerIdentity> {
    conn.peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| PeerIdentity::from_certs(&certs))
}
