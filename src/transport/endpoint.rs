//! The QUIC endpoint: one UDP socket per node, serving and dialling, with the transport
//! settings and TLS configurations of both sides.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, IdleTimeout, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

use super::Congestion;
use crate::identity::{DenyList, IdentityError, NodeIdentity};

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
    /// The congestion controller (`--congestion`).
    pub congestion: Congestion,
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
            congestion: Congestion::Auto,
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
/// Ethernet; loopback and jumbo-frame links reach this bound). One GSO send carries as many
/// packets as fit 64 KiB (our quinn patch, vendor/quinn/PATCH.md: 10 of these, 44 at 1452).
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
    t.congestion_controller_factory(s.congestion.factory());
    t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    t
}

/// What one stream may have in flight towards us beyond what its reader has taken: 4 MB, where
/// quinn's default is 1.25 MB. A lost packet leaves a hole that the reader cannot read past
/// until the retransmission fills it, and everything sent after the hole counts against this
/// window meanwhile (the send window counts only what is unacknowledged, and the packets after
/// the hole are acknowledged). With 1 % loss at a 1500-byte MTU there are a few holes in every
/// 1.25 MB, and a single stream stalled on them: across the LAN benchmark's link, 1.7-2.35
/// Gbit/s with 1.25 MB, 2.4-2.8 with 4 MB, no better with 8 MB, and loss-free runs unchanged
/// (benches/results-lan.md, levers). TCP's receive buffer, which also holds what arrived after
/// a hole, grows to 6 MB on Linux by default. Nothing is allocated ahead: the window only lets
/// a peer (a mesh member) send that much before the reader catches up.
const STREAM_RECEIVE_WINDOW: u32 = 4_000_000;

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

/// The rate one connection's send window is sized for: a 10 Gbit/s link, in bytes per second.
const SIZED_FOR_RATE: f64 = 1.25e9;
/// The smallest send window: 10 Gbit/s fits a 1.2 ms round trip. (It was sized to be a little
/// more than quinn's 1.25 MB stream window, which bounded a loss-free single stream; the peer
/// now grants [`STREAM_RECEIVE_WINDOW`] per stream, so this bounds it, and the stream window
/// binds only behind a hole left by a lost packet.)
const MIN_SEND_WINDOW: u64 = 1_500_000;
/// The largest: quinn's default (8 of its 1.25 MB stream windows), what every connection had before.
const MAX_SEND_WINDOW: u64 = 10_000_000;

/// How many bytes a connection may hold written but unacknowledged, for the round trip its
/// handshake measured: the path's bandwidth-delay product at 10 Gbit/s, between 1.5 MB and
/// quinn's default of 10 MB. The handshake's round trip is an upper bound on a LAN's (it
/// includes both sides' certificate checks: ~1 ms on a loaded 2-core machine).
///
/// Why not always quinn's 10 MB: the window is shared by every stream of the connection, and
/// nothing else bounds what the streams together buffer while the congestion window, which
/// grows without limit on a loss-free LAN, never binds. With 8 busy streams the sender then
/// holds ~10 MB ahead of the wire and the receiver's socket queue stands at several MB (a
/// 0.1 ms link showed 1-17 ms round trips): each byte is read cold from memory when it is
/// sealed and again when it is opened. At a 1500-byte MTU, 8 streams through one pair moved
/// 17-34 % more and spent about a fifth less CPU per GB with 1.5 MB (benches/results-lan.md,
/// Notes); one stream is unchanged. A path of 8 ms and more keeps the 10 MB it had.
fn send_window_for(rtt: Duration) -> u64 {
    let bytes = rtt.as_secs_f64() * SIZED_FOR_RATE;
    // Float to integer casts saturate; the clamp keeps the result within the two bounds.
    (bytes as u64).clamp(MIN_SEND_WINDOW, MAX_SEND_WINDOW)
}

/// Sizes `conn`'s send window for the round trip measured by its handshake (see
/// [`send_window_for`]). Called once, when a connection is established, on both sides.
pub fn size_send_window(conn: &quinn::Connection) {
    let rtt = conn.rtt();
    let window = send_window_for(rtt);
    conn.set_send_window(window);
    tracing::debug!(
        ?rtt,
        send_window = window,
        "send window sized for the handshake's round trip"
    );
}

#[cfg(test)]
mod send_window_tests {
    use super::*;

    #[test]
    fn a_lan_round_trip_gets_the_floor_and_a_wan_one_keeps_quinns_default() {
        assert_eq!(send_window_for(Duration::from_micros(100)), MIN_SEND_WINDOW);
        assert_eq!(send_window_for(Duration::from_millis(1)), MIN_SEND_WINDOW);
        assert_eq!(send_window_for(Duration::ZERO), MIN_SEND_WINDOW);
        // 4 ms: 4 ms x 1.25 GB/s = 5 MB, between the bounds.
        assert_eq!(send_window_for(Duration::from_millis(4)), 5_000_000);
        assert_eq!(send_window_for(Duration::from_millis(8)), MAX_SEND_WINDOW);
        assert_eq!(send_window_for(Duration::from_secs(3600)), MAX_SEND_WINDOW);
    }
}
