//! QUIC transport: the endpoint (one UDP socket per node, serving and dialling), the pool of
//! peer connections, the stream protocol, and the classification of peer failures.

mod congestion;
pub mod control;
mod endpoint;
pub mod failure;
mod pool;
pub mod protocol;
mod views;

mod held;
mod load;
pub use held::{Held, HeldConnections};
pub use load::{BURST_STREAMS, PooledConnection, StreamTicket, Tunnel, give_back_soon};

pub use congestion::Congestion;
pub use endpoint::{
    EndpointError, TransportSettings, client_config, endpoint, server_config, size_send_window,
};
pub use failure::{CloseCode, PeerFailure, Refutation, Unreachable};
pub use pool::{
    ClaimedIdentity, PeerKey, PeerLost, PeerTarget, Pool, connection_failure, peer_identity,
};
pub use views::{PeerView, PeerViews};

#[cfg(test)]
mod tests;
