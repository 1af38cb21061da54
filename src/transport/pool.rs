//! The pool of peer connections: one QUIC connection per (this node, peer node), opened on
//! first need and re-established on loss, so a new TCP connection costs a stream, never a
//! handshake.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use quinn::{Connection, Endpoint};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::TransportSettings;
use super::failure::{CloseCode, PeerFailure, Refutation, Unreachable};
use super::load::PooledConnection;
use super::views::PeerViews;
use crate::identity::{ANY_NODE_SAN, DenyList, PeerIdentity};
use crate::names::{Fingerprint, NodeName, QuicAddr};

/// The identity a record claims for its node: the certificate must name `node` and have
/// this fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClaimedIdentity {
    /// The node name (the TLS server name dialled).
    pub node: NodeName,
    /// The leaf certificate's fingerprint.
    pub fingerprint: Fingerprint,
}

/// Whom to dial: a node as a record describes it, or an address alone (any mesh member).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerTarget {
    /// The identity the peer must prove; `None` accepts any mesh member.
    pub claimed: Option<ClaimedIdentity>,
    /// Addresses to try, in order of preference.
    pub addrs: Vec<QuicAddr>,
}

/// The pool key of a peer: the identity its record claims, or (for a peer known by address
/// only) its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerKey {
    /// A node known by its record.
    Node(ClaimedIdentity),
    /// A static or DNS backend, any mesh member.
    Addrs(Vec<QuicAddr>),
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Node(c) => write!(f, "{}/{}", c.node, c.fingerprint.short(12)),
            Self::Addrs(addrs) => {
                let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                f.write_str(&list.join(","))
            }
        }
    }
}

impl PeerTarget {
    /// The pool key of this peer.
    pub fn key(&self) -> PeerKey {
        match &self.claimed {
            Some(c) => PeerKey::Node(c.clone()),
            None => PeerKey::Addrs(self.addrs.clone()),
        }
    }
}

/// A pooled connection ended other than by this node's own close.
#[derive(Debug, Clone)]
pub struct PeerLost {
    /// Whose.
    pub peer: PeerKey,
    /// Why.
    pub why: PeerFailure,
}

/// The stagger between the starts of two dial attempts to one peer (RFC 8305's "Connection
/// Attempt Delay"). A QUIC handshake on a LAN takes a few milliseconds, so a live first
/// address nearly always wins before a second attempt starts, and a dead one delays the
/// connection by this much. RFC 8305 recommends 250 ms for the Internet and a floor of 10 ms;
/// 50 ms keeps a LAN's first connection well under 250 ms past a dead address while still
/// sparing a healthy peer a duplicate handshake on a loaded host.
const ATTEMPT_DELAY: Duration = Duration::from_millis(50);

/// How often a pooled connection's load is looked at (see [`super::load`]).
const RETIRE_CHECK: Duration = Duration::from_secs(2);

type Slot = Arc<tokio::sync::Mutex<Option<PooledConnection>>>;

/// Pool of QUIC connections to peers, one per peer identity.
#[derive(Clone)]
pub struct Pool {
    endpoint: Endpoint,
    settings: TransportSettings,
    slots: Arc<Mutex<HashMap<PeerKey, Slot>>>,
    /// The client configuration new connections use (replaced on identity reload).
    client: Arc<RwLock<quinn::ClientConfig>>,
    /// Every pooled connection that ended other than by our own close.
    lost: broadcast::Sender<PeerLost>,
    /// What verified peers say they serve (their control streams).
    views: PeerViews,
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
            client: Arc::new(RwLock::new(client)),
            settings,
            slots: Arc::default(),
            lost: broadcast::channel(256).0,
            views: PeerViews::default(),
        }
    }

    /// What verified peers say they serve, over their control streams.
    pub fn views(&self) -> &PeerViews {
        &self.views
    }

    /// Closes the pooled connection to `peer`, if any (a peer proved dead or replaced), and
    /// reports it lost.
    pub fn close(&self, peer: &PeerKey, why: &'static [u8]) {
        let slot = self.slots().get(peer).cloned();
        if let Some(slot) = slot
            && let Ok(guard) = slot.try_lock()
            && let Some(conn) = guard.as_ref()
        {
            conn.close(CloseCode::Stopping.varint(), why);
            let _ = self.lost.send(PeerLost {
                peer: peer.clone(),
                why: PeerFailure::ClosedHere,
            });
        }
    }

    /// Replaces the client configuration for new connections (open ones are kept).
    pub fn set_client_config(&self, client: quinn::ClientConfig) {
        *self.client.write().unwrap_or_else(|e| e.into_inner()) = client;
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<PeerKey, Slot>> {
        // A poisoned lock means a panic elsewhere while holding it; the map is still valid.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes pooled connections to peers whose certificate is now denied (after a reload).
    pub fn close_denied(&self, deny: &DenyList) {
        let slots: Vec<Slot> = self.slots().values().cloned().collect();
        for slot in slots {
            if let Ok(guard) = slot.try_lock()
                && let Some(conn) = guard.as_ref()
                && peer_identity(conn).is_some_and(|p| deny.denies_fingerprint(&p.fingerprint))
            {
                tracing::warn!("closing the connection to a peer whose certificate is now revoked");
                conn.close(CloseCode::Revoked.varint(), b"certificate revoked");
            }
        }
    }

    /// The round-trip time of the open connection to `peer`, if there is one (never dials).
    pub fn rtt(&self, peer: &PeerTarget) -> Option<Duration> {
        let slot = self.slots().get(&peer.key()).cloned()?;
        let guard = slot.try_lock().ok()?;
        guard
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .map(|c| c.rtt())
    }

    /// The open pooled connections (those being dialled are skipped, never waited for).
    pub fn connections(&self) -> Vec<Connection> {
        let slots: Vec<Slot> = self.slots().values().cloned().collect();
        slots
            .iter()
            .filter_map(|slot| slot.try_lock().ok()?.as_ref().map(|p| p.conn.clone()))
            .filter(|c| c.close_reason().is_none())
            .collect()
    }

    /// Pooled connections now (open or being dialled).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots().len()
    }

    /// Notifications of lost peers.
    pub fn subscribe_lost(&self) -> broadcast::Receiver<PeerLost> {
        self.lost.subscribe()
    }

    /// The live connection to `peer`, dialled if there is none. Concurrent callers for one peer
    /// share one handshake.
    pub async fn get(&self, peer: &PeerTarget) -> Result<PooledConnection, PeerFailure> {
        let key = peer.key();
        let slot = self.slots().entry(key.clone()).or_default().clone();
        let mut guard = slot.lock().await;
        if let Some(pooled) = guard.as_ref()
            && pooled.close_reason().is_none()
        {
            return Ok(pooled.clone());
        }
        *guard = None;
        let conn = match self.dial(peer).await {
            Ok(conn) => conn,
            Err(e) => {
                drop(guard);
                drop(slot);
                self.forget_slot(&key, None);
                return Err(e);
            }
        };
        let pooled = PooledConnection::new(conn);
        *guard = Some(pooled.clone());
        self.adopt(peer, &pooled);
        Ok(pooled)
    }

    /// Starts following a connection just pooled for `peer`: its control stream, its end.
    fn adopt(&self, peer: &PeerTarget, pooled: &PooledConnection) {
        if let Some(claimed) = &peer.claimed {
            self.views.follow(claimed.clone(), pooled.conn.clone());
        }
        let pool = self.clone();
        let (peer, pooled) = (peer.clone(), pooled.clone());
        tokio::spawn(async move { pool.watch(peer, pooled).await });
    }

    /// Reports the connection's loss when it ends, and forgets its slot, so the map does not
    /// grow with dead peers. A connection that carried a burst of streams which is over is
    /// replaced (see [`super::load`]).
    async fn watch(self, peer: PeerTarget, pooled: PooledConnection) {
        let key = peer.key();
        let conn = &pooled.conn;
        let reason = loop {
            tokio::select! {
                reason = conn.closed() => break reason,
                () = tokio::time::sleep(RETIRE_CHECK) => {
                    if pooled.load.worth_retiring() && self.retire(&peer, &pooled).await {
                        return;
                    }
                }
            }
        };
        let why = PeerFailure::classify(&reason, conn.remote_address());
        if why != PeerFailure::ClosedHere {
            tracing::info!(peer = %key, reason = %why, "peer connection lost");
            let _ = self.lost.send(PeerLost {
                peer: key.clone(),
                why,
            });
        }
        self.forget_slot(&key, Some(conn.stable_id()));
    }

    /// Replaces `old` in the slot of `peer` by a freshly dialled connection, then closes `old`
    /// once its last stream has ended. False when `old` stays (the dial failed, or the slot
    /// is busy or holds another connection).
    async fn retire(&self, peer: &PeerTarget, old: &PooledConnection) -> bool {
        let Ok(fresh) = self.dial(peer).await else {
            return false;
        };
        let fresh = PooledConnection::new(fresh);
        let slot = self.slots().get(&peer.key()).cloned();
        let swapped = slot.is_some_and(|slot| {
            let Ok(mut guard) = slot.try_lock() else {
                return false;
            };
            let ours = guard
                .as_ref()
                .is_some_and(|p| p.stable_id() == old.stable_id());
            if ours {
                *guard = Some(fresh.clone());
            }
            ours
        });
        if !swapped {
            fresh.close(CloseCode::Retired.varint(), b"not needed");
            return false;
        }
        self.adopt(peer, &fresh);
        tracing::debug!(peer = %peer.key(), "pooled connection replaced after a burst of streams");
        while old.load.open() > 0 && old.close_reason().is_none() {
            tokio::select! {
                _ = old.closed() => {}
                () = tokio::time::sleep(RETIRE_CHECK) => {}
            }
        }
        old.close(CloseCode::Retired.varint(), b"replaced after a burst");
        super::load::give_back_soon();
        true
    }

    /// Removes the slot of `key` if no caller is using it and it holds no other connection
    /// than `stable_id` (or none).
    fn forget_slot(&self, key: &PeerKey, stable_id: Option<usize>) {
        let mut slots = self.slots();
        let stale = slots.get(key).is_some_and(|s| {
            Arc::strong_count(s) == 1
                && s.try_lock()
                    .is_ok_and(|g| g.as_ref().is_none_or(|c| Some(c.stable_id()) == stable_id))
        });
        if stale {
            slots.remove(key);
        }
    }

    /// Dials `peer` at all its addresses, Happy-Eyeballs style (RFC 8305, section 5): the
    /// first attempt starts at once and each next one [`ATTEMPT_DELAY`] after the previous
    /// start, or as soon as an attempt fails, whichever comes first. The first attempt that
    /// yields a verified connection (certificate chained and fingerprint checked in
    /// [`Self::dial_one`]) wins; the others are cancelled, and one that completed meanwhile
    /// is closed. A dead address costs the stagger, not a handshake timeout, and a refuting
    /// one (a forged address) never hides one that works.
    ///
    /// When all fail: a refutation if any address refuted the record, else the last failure.
    async fn dial(&self, peer: &PeerTarget) -> Result<Connection, PeerFailure> {
        let mut waiting: VecDeque<SocketAddr> = peer.addrs.iter().map(|a| a.0).collect();
        let mut attempts = JoinSet::new();
        let mut failures = DialFailures::default();
        let mut next = waiting.pop_front();
        loop {
            if let Some(addr) = next.take() {
                self.start_attempt(&mut attempts, peer, addr);
            }
            let more = !waiting.is_empty();
            let joined = tokio::select! {
                joined = attempts.join_next() => joined,
                () = tokio::time::sleep(ATTEMPT_DELAY), if more => {
                    next = waiting.pop_front();
                    continue;
                }
            };
            match joined {
                // No attempt running and none waiting.
                None => return Err(failures.verdict()),
                Some(Ok(Ok(conn))) => {
                    close_losers(attempts).await;
                    return Ok(conn);
                }
                Some(Ok(Err(e))) => failures.record(e),
                // A panicked attempt tells nothing about the peer; go on with the others.
                Some(Err(_)) => {}
            }
            next = waiting.pop_front();
        }
    }

    /// Spawns one attempt of [`Self::dial`] into `attempts`, in a span naming its address.
    fn start_attempt(
        &self,
        attempts: &mut JoinSet<Result<Connection, PeerFailure>>,
        peer: &PeerTarget,
        addr: SocketAddr,
    ) {
        let (pool, target) = (self.clone(), peer.clone());
        let span = tracing::debug_span!("dial", peer = %peer.key(), %addr);
        attempts.spawn(async move { pool.dial_one(&target, addr).await }.instrument(span));
    }

    async fn dial_one(
        &self,
        peer: &PeerTarget,
        addr: SocketAddr,
    ) -> Result<Connection, PeerFailure> {
        let server_name = peer
            .claimed
            .as_ref()
            .map_or(ANY_NODE_SAN, |c| c.node.as_str());
        let client = self
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let connecting = self
            .endpoint
            .connect_with(client, addr, server_name)
            .map_err(|_| PeerFailure::Unreachable(Unreachable::BadAddress))?;
        let conn = match tokio::time::timeout(self.settings.handshake_timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(PeerFailure::classify(&e, addr)),
            Err(_) => return Err(PeerFailure::Unreachable(Unreachable::HandshakeTimeout)),
        };
        if let Some(claimed) = &peer.claimed {
            let got = peer_identity(&conn).map(|i| i.fingerprint);
            if got.as_ref() != Some(&claimed.fingerprint) {
                conn.close(CloseCode::IdentityMismatch.varint(), b"identity mismatch");
                return Err(PeerFailure::NotWhoItClaims {
                    addr,
                    why: Refutation::FingerprintMismatch {
                        expected: claimed.fingerprint.clone(),
                        got,
                    },
                });
            }
        }
        // Only for a connection that is kept: one refused above closes unsized.
        super::size_send_window(&conn);
        Ok(conn)
    }
}

/// Failures of the attempts of one dial, for its verdict when none succeeds.
#[derive(Default)]
struct DialFailures {
    /// The last failure that did not refute the record.
    last: Option<PeerFailure>,
    /// A refutation (a forged or stale address), which outranks any other failure.
    refuted: Option<PeerFailure>,
}

impl DialFailures {
    /// Notes one attempt's failure.
    fn record(&mut self, e: PeerFailure) {
        if e.refutes_record() {
            self.refuted = Some(e);
        } else {
            self.last = Some(e);
        }
    }

    /// The dial's failure: a refutation if any address refuted the record, else the last
    /// failure (no address at all if there was none to try).
    fn verdict(self) -> PeerFailure {
        self.refuted.or(self.last).unwrap_or(PeerFailure::NoAddress)
    }
}

/// Cancels the attempts still running after a winner (dropping a handshake in progress
/// closes it), and closes any that completed meanwhile, so no connection is left open
/// beside the winner.
async fn close_losers(mut attempts: JoinSet<Result<Connection, PeerFailure>>) {
    attempts.abort_all();
    while let Some(joined) = attempts.join_next().await {
        if let Ok(Ok(conn)) = joined {
            conn.close(CloseCode::Stopping.varint(), b"another address won");
        }
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

/// Why a stream on `conn` failed: the connection's end, classified, if it has ended.
pub fn connection_failure(conn: &Connection) -> Option<PeerFailure> {
    conn.close_reason()
        .map(|reason| PeerFailure::classify(&reason, conn.remote_address()))
}
