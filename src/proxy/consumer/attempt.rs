//! One attempt to carry a client connection: open a stream on the chosen instance (hedged on
//! another one when the first is slow to answer), then act on the outcome, exhaustively by
//! its type: splice, retry elsewhere, or close the client connection.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use quinn::SendStream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::direct::{DirectError, splice_tcp};
use super::{Candidate, Consumer, Rejection, Target, Tried};
use crate::inject::AUTH_FAILED_REPLY;
use crate::metrics::ServiceLabels;
use crate::names::{Fingerprint, InstanceTag, ServiceName};
use crate::proxy::splice::{Traffic, splice};
use crate::transport::protocol::{HeaderError, Refusal, RefusalCode, Reply, Request};
use crate::transport::{
    PeerFailure, PeerTarget, PooledConnection, Tunnel, connection_failure, peer_identity,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Least wait for a provider's answer before another instance is asked too (a hedge).
const HEDGE_MIN: Duration = Duration::from_millis(100);
/// Most wait before a hedge, however slow the path.
const HEDGE_MAX: Duration = Duration::from_secs(1);
/// Wait before a hedge when no connection to the peer is open yet (its handshake is part of
/// the attempt), and for direct backends.
const HEDGE_COLD: Duration = Duration::from_millis(300);

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    /// The peer could not be reached or used (dial failure, connection lost), classified.
    #[error(transparent)]
    Peer(#[from] PeerFailure),
    /// The stream failed while its connection stayed up (no reply in time, a malformed one).
    #[error("stream: {0}")]
    Stream(HeaderError),
    /// The provider refused the stream with a typed reply.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The peer's certificate does not allow its node to announce the service (CA mode).
    #[error("the certificate of node {node} does not allow it to announce {service}")]
    NotAuthorized {
        /// The node (as its certificate names it).
        node: String,
        /// The service.
        service: ServiceName,
        /// The certificate.
        fingerprint: Fingerprint,
    },
    /// A direct backend could not be connected.
    #[error(transparent)]
    Direct(#[from] DirectError),
    /// The target rejected the injected credentials.
    #[error("the target rejected the credentials: {0}")]
    AuthRejected(String),
}

/// Resets its stream when dropped before the provider answered (an attempt cancelled while it
/// waits).
struct ResetUnlessAnswered<'a> {
    send: &'a mut SendStream,
    answered: bool,
}

impl Drop for ResetUnlessAnswered<'_> {
    fn drop(&mut self) {
        if !self.answered {
            let _ = self.send.reset(quinn::VarInt::from_u32(0));
        }
    }
}

/// An attempt that worked: a tunnel stream, or a direct TCP connection.
pub(crate) enum Opened {
    Stream(Tunnel),
    Direct(TcpStream),
}

/// The client connection an attempt is for: taken once carried (or closed for good).
pub(super) struct Client {
    /// The connection, until it is carried or closed.
    pub tcp: Option<TcpStream>,
    /// When it was accepted.
    pub accepted: Instant,
}

/// What to do after an attempt.
pub(super) enum Next {
    /// The client connection is served (or closed for good).
    Done,
    /// Try another instance known now.
    Another,
    /// Try another instance, waiting for one (up to the wait bound) if none is known: the
    /// instance's node is draining or lost, so a restarted one may be announced any moment.
    AwaitAnother,
}

impl Consumer {
    /// How long an attempt may go unanswered before another instance is asked too: a few
    /// round trips of the pooled connection, at least [`HEDGE_MIN`].
    fn hedge_delay(&self, cand: &Candidate) -> Duration {
        match &cand.target {
            Target::Direct(_) => HEDGE_COLD,
            Target::Peer(peer) => match self.pool.rtt(peer) {
                Some(rtt) => (rtt * 4 + HEDGE_MIN).min(HEDGE_MAX),
                None => HEDGE_COLD,
            },
        }
    }

    /// Opens the candidate, counted as open on the instance while it waits, so least-conn
    /// steers new connections away from an instance that is slow to answer (or silently dead).
    async fn open_counted(&self, cand: &Candidate) -> Result<Opened, AttemptError> {
        let _waiting = self.balancer.opened(&cand.key);
        match &cand.target {
            Target::Direct(addr) => self.open_direct(*addr).await.map(Opened::Direct),
            Target::Peer(peer) => self.open_stream(peer, cand.tag.as_ref()).await,
        }
    }

    /// Counts one event of this service in `family`.
    pub(super) fn count(&self, family: &Family<ServiceLabels, Counter>) {
        let labels = ServiceLabels {
            service: self.service.to_string(),
        };
        family.get_or_create(&labels).inc();
    }

    /// Whether the peer's certificate allows its node to announce this service (CA mode).
    pub(super) fn check_announcer(&self, conn: &quinn::Connection) -> Result<(), AttemptError> {
        match peer_identity(conn) {
            Some(id) if !id.may_announce(&self.service) => Err(AttemptError::NotAuthorized {
                node: id.node_label().to_string(),
                service: self.service.clone(),
                fingerprint: id.fingerprint,
            }),
            _ => Ok(()),
        }
    }

    /// An announcement its node's certificate does not allow: never used again.
    pub(super) fn not_authorized(&self, instance: &str, e: AttemptError) {
        let why = e.to_string();
        if let AttemptError::NotAuthorized { fingerprint, .. } = e {
            self.reject(Rejection::NotAllowed {
                instance: instance.to_string(),
                fingerprint,
            });
        }
        self.balancer.failed(instance, &why);
        warn!(%instance, reason = %why, "ignoring this announcement");
    }

    /// Opens a tunnel stream to `peer` and waits for the provider's reply.
    async fn open_stream(
        &self,
        peer: &PeerTarget,
        tag: Option<&InstanceTag>,
    ) -> Result<Opened, AttemptError> {
        let conn = self.pool.get(peer).await?;
        self.check_announcer(&conn)?;
        let tunnel = self.ask(&conn, tag, 0, self.reply_timeout).await?;
        Ok(Opened::Stream(tunnel))
    }

    /// Opens a stream on `conn` for this service (its instance `tag`, if any) with `flags`,
    /// sends its header, and waits up to `bound` for the provider's answer: the stream when it
    /// says ok. The stream is counted on its pooled connection while it lives.
    pub(super) async fn ask(
        &self,
        conn: &PooledConnection,
        tag: Option<&InstanceTag>,
        flags: u8,
        bound: Duration,
    ) -> Result<Tunnel, AttemptError> {
        let ticket = conn.ticket();
        // A stream failure on a connection that has ended is the connection's failure.
        let failed = |e: HeaderError| match connection_failure(conn) {
            Some(f) => AttemptError::Peer(f),
            None => AttemptError::Stream(e),
        };
        let io = |e: &dyn std::fmt::Display| failed(HeaderError::Io(e.to_string()));
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| io(&e))?;
        let req = Request {
            service: self.service.clone(),
            flags,
            tag: tag.cloned(),
        };
        // An attempt given up (another instance answered first) resets its stream, so the
        // provider connects nothing for it; dropped as is, the stream would only be finished.
        let mut pending = ResetUnlessAnswered {
            send: &mut send,
            answered: false,
        };
        // Write the header at once: a stream is invisible to the peer until its first byte.
        pending
            .send
            .write_all(&req.encode())
            .await
            .map_err(|e| io(&e))?;
        let reply = Reply::read_from(&mut recv, bound).await;
        pending.answered = true;
        drop(pending);
        match reply {
            Ok(Reply::Ok) => Ok(Tunnel { send, recv, ticket }),
            Ok(Reply::Refused(r)) => Err(AttemptError::Refused(r)),
            Err(e) => Err(failed(e)),
        }
    }
}

/// Opens a stream (or direct connection) on `pick`. Without an answer after a few round trips
/// (a peer that died silently is only noticed when its keep-alive times out, seconds later),
/// another instance is asked too and the first answer is taken; when one of the two fails,
/// the other's outcome is awaited. Returns the outcome to act on and whose it is, or `None`
/// when a failure already ended the client connection.
pub(super) async fn attempt(
    consumer: &Arc<Consumer>,
    tcp: &mut Client,
    tried: &mut HashSet<Tried>,
    pick: Candidate,
) -> Option<(Candidate, Result<Opened, AttemptError>)> {
    // Boxed: the task of a connection is as large as its largest state, and two attempts in
    // flight would otherwise stay in every connection's memory while it splices.
    let mut first = Box::pin(consumer.open_counted(&pick));
    let delay = consumer.hedge_delay(&pick);
    if let Ok(outcome) = tokio::time::timeout(delay, &mut first).await {
        drop(first);
        return Some((pick, outcome));
    }
    let Some(second) = consumer.choose(tried, Instant::now()).await else {
        let outcome = first.await;
        return Some((pick, outcome));
    };
    tried.insert(second.tried());
    consumer.count(&consumer.metrics.consumer.hedges);
    info!(instance = %pick.key, waited = ?delay, also = %second.key, "no answer yet; also trying another instance");
    let mut other = Box::pin(consumer.open_counted(&second));
    let (first_done, outcome) = tokio::select! {
        o = &mut first => (true, o),
        o = &mut other => (false, o),
    };
    let (done, pending) = if first_done {
        (&pick, &second)
    } else {
        (&second, &pick)
    };
    match outcome {
        Ok(opened) => {
            // The other attempt is dropped (its stream reset). When the hedge won, the slow
            // instance rests a moment, as any failed one.
            if !first_done {
                let why = format!("no answer within {delay:?}");
                consumer.balancer.failed(&pending.key, &why);
            }
            Some((done.clone(), Ok(opened)))
        }
        Err(e) => {
            if let Next::Done = conclude(consumer, tcp, done, Err(e)).await {
                return None;
            }
            // One failed: the other may still answer.
            let rest = if first_done { other.await } else { first.await };
            Some((pending.clone(), rest))
        }
    }
}

/// Acts on the outcome of one attempt: splices on success, or records the failure and says
/// whether another instance may serve the client.
pub(super) async fn conclude(
    consumer: &Arc<Consumer>,
    client: &mut Client,
    pick: &Candidate,
    outcome: Result<Opened, AttemptError>,
) -> Next {
    let error = match outcome {
        Ok(opened) => {
            if let Some(tcp) = client.tcp.take() {
                carry(consumer, tcp, client.accepted, pick, opened).await;
            }
            return Next::Done;
        }
        Err(e) => e,
    };
    let labels = consumer.labels(&pick.key);
    consumer
        .metrics
        .consumer
        .failed
        .get_or_create(&labels)
        .inc();
    let tcp = &mut client.tcp;
    match error {
        AttemptError::Peer(failure) => peer_failed(consumer, pick, failure),
        e @ AttemptError::NotAuthorized { .. } => {
            consumer.not_authorized(&pick.key, e);
            Next::Another
        }
        AttemptError::AuthRejected(why) => {
            warn!(backend = %pick.key, reason = %why, "credentials injection failed");
            if let Some(mut tcp) = tcp.take() {
                let _ = tcp.write_all(AUTH_FAILED_REPLY).await;
                let _ = tcp.shutdown().await;
            }
            Next::Done
        }
        AttemptError::Refused(r) if !r.code.retry_elsewhere() => {
            warn!(instance = %pick.key, refusal = %r, "refused; closing the client connection");
            consumer.count(&consumer.metrics.consumer.dropped);
            Next::Done
        }
        AttemptError::Refused(r) if r.code == RefusalCode::Draining => {
            info!(instance = %pick.key, refusal = %r, "its node is stopping; trying another instance (waiting for one if need be)");
            consumer.balancer.failed(&pick.key, &r.to_string());
            Next::AwaitAnother
        }
        e @ (AttemptError::Refused(_) | AttemptError::Stream(_) | AttemptError::Direct(_)) => {
            info!(instance = %pick.key, error = %e, "instance failed; trying another");
            consumer.balancer.failed(&pick.key, &e.to_string());
            Next::Another
        }
    }
}

/// Records a failed peer: a refuted record is never used again; any other failure ejects
/// the peer's instances until a probe reaches it.
fn peer_failed(consumer: &Arc<Consumer>, pick: &Candidate, failure: PeerFailure) -> Next {
    let reason = failure.to_string();
    match (&failure, &pick.target) {
        (PeerFailure::NotWhoItClaims { .. }, Target::Peer(peer)) => {
            consumer.reject(Rejection::Refuted(peer.clone()));
            consumer.balancer.failed(&pick.key, &reason);
            warn!(instance = %pick.key, error = %reason, "peer failed the mesh handshake: its record will not be used");
            // The real record may come yet (a forged answer that is being corrected).
            return Next::AwaitAnother;
        }
        (PeerFailure::RefusesOurCertificate(_), _) => {
            warn!(instance = %pick.key, error = %reason, "the peer refused this node's certificate (other mesh, revoked or expired?); trying another instance");
        }
        (
            PeerFailure::NoAddress
            | PeerFailure::NotWhoItClaims { .. }
            | PeerFailure::Unreachable(_)
            | PeerFailure::ClosedByPeer(_)
            | PeerFailure::ClosedHere
            | PeerFailure::Protocol(_),
            _,
        ) => {
            info!(instance = %pick.key, error = %reason, "peer unreachable; trying another instance");
        }
    }
    match pick.peer_key() {
        Some(key) => consumer.peer_lost(&key, &failure),
        None => consumer.balancer.failed(&pick.key, &reason),
    }
    Next::AwaitAnother
}

/// Carries the client connection over what the attempt opened, and logs how it ended. The
/// connection's metric handles are resolved here, once.
async fn carry(
    consumer: &Consumer,
    tcp: TcpStream,
    accepted: Instant,
    pick: &Candidate,
    opened: Opened,
) {
    consumer.balancer.succeeded(&pick.key);
    let _open = consumer.balancer.opened(&pick.key);
    let families = &consumer.metrics.consumer;
    let labels = consumer.labels(&pick.key);
    families
        .setup
        .get_or_create(&labels)
        .observe(accepted.elapsed().as_secs_f64());
    families.opened.get_or_create(&labels).inc();
    let meters = families.connection(&labels);
    let _counted = meters.open();
    match opened {
        Opened::Direct(backend) => {
            debug!(backend = %pick.key, "direct connection open");
            splice_tcp(tcp, backend, &meters).await;
        }
        Opened::Stream(Tunnel { send, recv, ticket }) => {
            let _counted = ticket;
            debug!(instance = %pick.key, "stream open");
            // Consumer side: "sent" is client to instance, the splice's TCP-to-stream way.
            let traffic = Traffic {
                tcp_to_quic: meters.sent.clone(),
                quic_to_tcp: meters.received.clone(),
            };
            splice(tcp, send, recv, &traffic).await.log_end(&pick.key);
        }
    }
}
