//! The consumer side: a local TCP listener per service; each accepted connection becomes one
//! stream on the pooled QUIC connection to an instance the balancer picks. An attempt that
//! fails before any client byte reached a target (the consumer reads no client byte before the
//! provider's `ok`) is retried on another instance, so the app does not see a dead instance
//! while a live one exists.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{RecvStream, SendStream};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::splice::{SpliceEnd, splice};
use crate::balance::{Balancer, Choice, InstanceStats};
use crate::discovery::{Endpoint, EndpointSet, Instance, Registry};
use crate::inject::{AUTH_FAILED_REPLY, InjectError, RedisAuth};
use crate::names::ServiceName;
use crate::transport::protocol::{FLAG_PROBE, Refusal, Reply, Request};
use crate::transport::{DialError, PeerTarget, Pool, peer_identity};

/// Most instances tried for one client connection.
const MAX_ATTEMPTS: usize = 4;
/// Least wait for a provider's answer before another instance is asked too (a hedge).
const HEDGE_MIN: Duration = Duration::from_millis(100);
/// Most wait before a hedge, however slow the path.
const HEDGE_MAX: Duration = Duration::from_secs(1);
/// Wait before a hedge when no connection to the peer is open yet (its handshake is part of
/// the attempt), and for direct backends.
const HEDGE_COLD: Duration = Duration::from_millis(300);
/// Bound on the answer to a probe stream.
const PROBE_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between two probes of a lost peer.
const PROBE_MAX: Duration = Duration::from_secs(5);
/// Pause between probes of a peer that refuses this node's certificate.
const PROBE_REFUSED: Duration = Duration::from_secs(30);

/// True when an error says the peer refused this node's certificate in the TLS handshake
/// (revoked, expired, unknown issuer), as opposed to a peer that is unreachable.
fn refuses_our_certificate(error: &str) -> bool {
    [
        "certificate",
        "Revoked",
        "revoked",
        "UnknownIssuer",
        "Expired",
    ]
    .iter()
    .any(|w| error.contains(w))
}

/// One place a stream can be opened to.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Stable key (DNS-SD full name, or `static:ADDR`).
    pub key: String,
    /// Whom to dial.
    pub target: PeerTarget,
    /// Balancing weight.
    pub weight: u32,
    /// A plain TCP backend (`--direct`): no ambassador, no QUIC, no encryption.
    pub direct: bool,
}

impl Candidate {
    fn from_instance(inst: &Instance, local: SocketAddr) -> Self {
        Self {
            key: inst.fullname.clone(),
            target: PeerTarget {
                node: Some(inst.node.to_string()),
                fingerprint: Some(inst.fingerprint.clone()),
                addrs: inst.socket_addrs(local),
            },
            weight: inst.weight,
            direct: false,
        }
    }

    /// An endpoint from a static list, DNS SRV or plain DNS-SD: an ambassador peer that must
    /// be a mesh member (any node name), or with `direct` a plain TCP backend.
    pub fn from_endpoint(ep: &Endpoint, direct: bool) -> Self {
        Self {
            key: format!("{}:{}", if direct { "tcp" } else { "peer" }, ep.addr),
            target: PeerTarget {
                node: None,
                fingerprint: None,
                addrs: vec![ep.addr],
            },
            weight: ep.weight,
            direct,
        }
    }
}

/// Where the instances of a service come from.
#[derive(Clone)]
pub enum Backends {
    /// The live set that discovery maintains.
    Discovered(Arc<Registry>),
    /// A replaceable list: static backends (reloaded on SIGHUP), DNS SRV, plain DNS-SD.
    Endpoints {
        /// The set.
        set: Arc<EndpointSet>,
        /// Plain TCP backends instead of ambassador peers.
        direct: bool,
    },
}

/// State of one consumer listener (one service).
pub struct ConsumerCtx {
    /// The service.
    pub service: ServiceName,
    /// Where its instances come from.
    pub backends: Backends,
    /// The QUIC connection pool (shared by every listener of the node).
    pub pool: Pool,
    /// The local QUIC address (its family decides which peer addresses are dialled).
    pub local: SocketAddr,
    /// How long a client connection waits for a first instance.
    pub wait: Duration,
    /// Bound on the provider's reply to a stream header.
    pub reply_timeout: Duration,
    /// Policy and passive health.
    pub balancer: Balancer,
    /// Certificate fingerprints whose handshake failed: their records are never used again.
    rejected: Mutex<HashSet<String>>,
    /// Peers being probed after a loss.
    probing: Mutex<HashSet<String>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// Open client connections, for the drain.
    pub activity: super::Activity,
    /// Credentials injected into direct Redis backends.
    pub redis_auth: Option<RedisAuth>,
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("peer connection lost: {0}")]
    Lost(String),
    #[error("stream: {0}")]
    Stream(String),
    #[error("refused: {0}")]
    Refused(Refusal),
    #[error("{0}")]
    NotAuthorized(String),
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
enum Opened {
    Stream(SendStream, RecvStream),
    Direct(TcpStream),
}

/// A record whose handshake failed is never used again: keyed by the identity it claims *and*
/// the addresses it gives, so a forged copy of a real record (same fingerprint, another
/// address) never shuts out the real one.
fn rejection_key(t: &PeerTarget) -> String {
    format!("{}@{:?}", t.fingerprint.as_deref().unwrap_or("-"), t.addrs)
}

/// Bound on connecting to a direct backend.
const DIRECT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl ConsumerCtx {
    /// A new listener state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        service: ServiceName,
        backends: Backends,
        pool: Pool,
        local: SocketAddr,
        wait: Duration,
        balancer: Balancer,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            service,
            backends,
            pool,
            local,
            wait,
            reply_timeout: Duration::from_secs(5),
            balancer,
            rejected: Mutex::default(),
            probing: Mutex::default(),
            cancel,
            tracker,
            activity: super::Activity::default(),
            redis_auth: None,
        }
    }

    fn is_rejected(&self, fingerprint: &str) -> bool {
        self.rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(fingerprint)
    }

    fn usable(&self, i: &Instance) -> bool {
        let target = Candidate::from_instance(i, self.local).target;
        i.up && !self.is_rejected(&rejection_key(&target))
            && !self.is_rejected(&format!("{}#{}", i.fullname, i.fingerprint))
            && !i.socket_addrs(self.local).is_empty()
    }

    /// Every current candidate.
    fn all_candidates(&self) -> Vec<Candidate> {
        match &self.backends {
            Backends::Endpoints { set, direct } => set
                .get()
                .iter()
                .map(|e| Candidate::from_endpoint(e, *direct))
                .collect(),
            Backends::Discovered(registry) => registry
                .instances(&self.service)
                .iter()
                .filter(|i| self.usable(i))
                .map(|i| Candidate::from_instance(i, self.local))
                .collect(),
        }
    }

    /// Candidates not yet tried for this client; waits (up to `deadline`) for a first one.
    async fn candidates(&self, tried: &HashSet<String>, deadline: Instant) -> Vec<Candidate> {
        if let Backends::Endpoints { set, .. } = &self.backends {
            set.wait_nonempty(deadline).await;
        }
        if let Backends::Discovered(registry) = &self.backends {
            let pred = |all: &[Instance]| {
                all.iter()
                    .any(|i| !tried.contains(&i.fullname) && self.usable(i))
            };
            registry.wait_for(&self.service, deadline, pred).await;
        }
        self.all_candidates()
            .into_iter()
            .filter(|c| !tried.contains(&c.key))
            .collect()
    }

    /// Health and load of this service's instances.
    pub fn stats(&self) -> Vec<InstanceStats> {
        self.balancer.stats()
    }

    /// Picks an instance not yet tried for this client (waiting up to `until` for a first).
    async fn choose(&self, tried: &HashSet<String>, until: Instant) -> Option<Candidate> {
        let cands = self.candidates(tried, until).await;
        let choices: Vec<Choice<'_>> = cands
            .iter()
            .map(|c| Choice {
                key: &c.key,
                weight: c.weight,
            })
            .collect();
        let idx = self.balancer.pick(&choices)?;
        drop(choices);
        cands.into_iter().nth(idx)
    }

    /// How long an attempt may go unanswered before another instance is asked too: a few
    /// round trips of the pooled connection, at least [`HEDGE_MIN`].
    fn hedge_delay(&self, cand: &Candidate) -> Duration {
        if cand.direct {
            return HEDGE_COLD;
        }
        match self.pool.rtt(&cand.target) {
            Some(rtt) => (rtt * 4 + HEDGE_MIN).min(HEDGE_MAX),
            None => HEDGE_COLD,
        }
    }

    /// [`Self::open`], counted as open on the instance while it waits, so least-conn steers new
    /// connections away from an instance that is slow to answer (or silently dead).
    async fn open_counted(&self, cand: &Candidate) -> Result<Opened, AttemptError> {
        let _waiting = self.balancer.opened(&cand.key);
        self.open(cand).await
    }

    async fn open(&self, cand: &Candidate) -> Result<Opened, AttemptError> {
        if cand.direct {
            return self.open_direct(cand).await;
        }
        let conn = self.pool.get(&cand.target).await?;
        if let Some(peer) = peer_identity(&conn)
            && !peer.may_announce(self.service.as_str())
        {
            return Err(AttemptError::NotAuthorized(format!(
                "the certificate of node {} does not allow it to announce {}",
                peer.node, self.service
            )));
        }
        let lost = |e: &dyn std::fmt::Display| match conn.close_reason() {
            Some(reason) => AttemptError::Lost(reason.to_string()),
            None => AttemptError::Stream(e.to_string()),
        };
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
        let req = Request {
            service: self.service.clone(),
            flags: 0,
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
            .map_err(|e| lost(&e))?;
        let reply = Reply::read_from(&mut recv, self.reply_timeout).await;
        pending.answered = true;
        drop(pending);
        match reply {
            Ok(Reply::Ok) => Ok(Opened::Stream(send, recv)),
            Ok(Reply::Refused(r)) => Err(AttemptError::Refused(r)),
            Err(e) => Err(lost(&e)),
        }
    }

    /// Connects a plain TCP backend, and authenticates to it when credentials are configured.
    async fn open_direct(&self, cand: &Candidate) -> Result<Opened, AttemptError> {
        let addr = *cand
            .target
            .addrs
            .first()
            .ok_or(AttemptError::Dial(DialError::NoAddress))?;
        let mut tcp =
            match tokio::time::timeout(DIRECT_CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => return Err(AttemptError::Stream(format!("connect {addr}: {e}"))),
                Err(_) => {
                    return Err(AttemptError::Stream(format!(
                        "connect {addr}: no answer within {DIRECT_CONNECT_TIMEOUT:?}"
                    )));
                }
            };
        let _ = tcp.set_nodelay(true);
        if let Some(auth) = &self.redis_auth {
            match auth.authenticate(&mut tcp, DIRECT_CONNECT_TIMEOUT).await {
                Ok(()) => {}
                Err(InjectError::Rejected(why)) => return Err(AttemptError::AuthRejected(why)),
                Err(e) => return Err(AttemptError::Stream(e.to_string())),
            }
        }
        Ok(Opened::Direct(tcp))
    }

    /// A peer is lost: eject its instances of this service until a probe reaches it again.
    pub fn peer_lost(self: &Arc<Self>, peer_key: &str, reason: &str) {
        let mine: Vec<Candidate> = self
            .all_candidates()
            .into_iter()
            .filter(|c| c.target.key() == peer_key)
            .collect();
        if mine.is_empty() {
            return;
        }
        for c in &mine {
            self.balancer.lost(&c.key, reason);
        }
        if !self
            .probing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer_key.to_string())
        {
            return;
        }
        let (ctx, key) = (self.clone(), peer_key.to_string());
        let span = info_span!("probe", service = %self.service, peer = %peer_key);
        self.tracker
            .spawn(async move { ctx.probe(key).await }.instrument(span));
    }

    /// One liveness check: a probe stream must get an answer (the handshake alone proves
    /// little: with TLS 1.3 a peer that refuses our certificate says so only afterwards).
    async fn probe_once(&self, target: &PeerTarget) -> Result<(), String> {
        let conn = self.pool.get(target).await.map_err(|e| e.to_string())?;
        let work = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let req = Request {
                service: self.service.clone(),
                flags: FLAG_PROBE,
            };
            send.write_all(&req.encode())
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            Reply::read_from(&mut recv, PROBE_REPLY_TIMEOUT)
                .await
                .map_err(|e| e.to_string())
        };
        match work.await {
            Ok(Reply::Ok) => Ok(()),
            Ok(Reply::Refused(r)) => Err(format!("refused: {r}")),
            Err(e) => match conn.close_reason() {
                Some(reason) => Err(format!("connection lost: {reason}")),
                None => Err(e),
            },
        }
    }

    /// Re-dials a lost peer with a growing pause until it answers (its instances are then
    /// re-admitted) or discovery forgets it.
    async fn probe(self: Arc<Self>, peer_key: String) {
        let mut pause = Duration::from_millis(250);
        let mut told = false;
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(PROBE_MAX);
            let mine: Vec<Candidate> = self
                .all_candidates()
                .into_iter()
                .filter(|c| c.target.key() == peer_key)
                .collect();
            let Some(first) = mine.first() else {
                debug!("peer forgotten by discovery; probe ends");
                break;
            };
            match self.probe_once(&first.target).await {
                Ok(()) => {
                    for c in &mine {
                        self.balancer.readmit(&c.key);
                    }
                    break;
                }
                Err(e) if refuses_our_certificate(&e) => {
                    // Revoked, expired or of another mesh in its eyes: that changes only with an
                    // operator's hand, so ask again rarely instead of every few seconds.
                    if !told {
                        told = true;
                        info!(error = %e, retry = ?PROBE_REFUSED, "the peer refuses this node's certificate; probing it rarely");
                    }
                    pause = PROBE_REFUSED;
                }
                Err(e) => debug!(error = %e, "peer still unreachable"),
            }
        }
        self.probing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer_key);
    }
}

/// Serves one listener until the context's cancellation or `stop` fires (a drain stops
/// accepting while open connections go on).
pub async fn serve_listener(listener: TcpListener, ctx: Arc<ConsumerCtx>, stop: CancellationToken) {
    let mut next_id: u64 = 0;
    loop {
        let (tcp, client) = tokio::select! {
            () = ctx.cancel.cancelled() => return,
            () = stop.cancelled() => return,
            acc = listener.accept() => match acc {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off briefly instead of spinning.
                    warn!(service = %ctx.service, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        next_id += 1;
        let span = info_span!("conn", service = %ctx.service, %client, id = next_id);
        ctx.tracker
            .spawn(handle_client(tcp, ctx.clone()).instrument(span));
    }
}

/// Copies both ways between the client and a direct backend; a failure resets both.
async fn splice_tcp(mut client: TcpStream, mut backend: TcpStream) {
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        debug!(error = %e, "direct connection failed; resetting both sides");
        for s in [&client, &backend] {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
    }
}

/// Ejects the instances of peers whose pooled connection ends, as soon as it ends (keep-alive
/// and idle timeout notice a vanished peer even when no client is connecting).
pub async fn watch_pool(ctx: Arc<ConsumerCtx>) {
    let mut lost = ctx.pool.subscribe_lost();
    loop {
        let event = tokio::select! {
            () = ctx.cancel.cancelled() => return,
            ev = lost.recv() => ev,
        };
        match event {
            Ok((peer, reason)) => ctx.peer_lost(&peer, &reason),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        }
    }
}

/// What to do after an attempt.
enum Next {
    /// The client connection is served (or closed for good).
    Done,
    /// Try another instance.
    Another,
}

/// Acts on the outcome of one attempt: splices on success, or records the failure and says
/// whether another instance may serve the client.
async fn conclude(
    ctx: &Arc<ConsumerCtx>,
    tcp: &mut Option<TcpStream>,
    pick: &Candidate,
    outcome: Result<Opened, AttemptError>,
) -> Next {
    match outcome {
        Ok(opened) => {
            ctx.balancer.succeeded(&pick.key);
            let _open = ctx.balancer.opened(&pick.key);
            let Some(tcp) = tcp.take() else {
                return Next::Done;
            };
            match opened {
                Opened::Direct(backend) => {
                    debug!(backend = %pick.key, "direct connection open");
                    splice_tcp(tcp, backend).await;
                }
                Opened::Stream(send, recv) => {
                    debug!(instance = %pick.key, "stream open");
                    let stats = splice(tcp, send, recv).await;
                    match stats.end {
                        SpliceEnd::Closed => {
                            debug!(up = stats.tcp_to_quic, down = stats.quic_to_tcp, "closed")
                        }
                        SpliceEnd::Reset => {
                            debug!(up = stats.tcp_to_quic, down = stats.quic_to_tcp, "reset")
                        }
                    }
                }
            }
            Next::Done
        }
        Err(AttemptError::Dial(e)) if e.is_identity_failure() => {
            ctx.rejected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(rejection_key(&pick.target));
            ctx.balancer.failed(&pick.key, &e.to_string());
            warn!(instance = %pick.key, error = %e, "peer failed the mesh handshake: its record will not be used");
            Next::Another
        }
        Err(AttemptError::NotAuthorized(why)) => {
            let record = format!(
                "{}#{}",
                pick.key,
                pick.target.fingerprint.as_deref().unwrap_or("")
            );
            ctx.rejected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(record);
            ctx.balancer.failed(&pick.key, &why);
            warn!(instance = %pick.key, reason = %why, "ignoring this announcement");
            Next::Another
        }
        Err(AttemptError::AuthRejected(why)) => {
            warn!(backend = %pick.key, reason = %why, "credentials injection failed");
            if let Some(mut tcp) = tcp.take() {
                let _ = tcp.write_all(AUTH_FAILED_REPLY).await;
                let _ = tcp.shutdown().await;
            }
            Next::Done
        }
        Err(AttemptError::Refused(r)) if !r.code.retry_elsewhere() => {
            warn!(instance = %pick.key, refusal = %r, "refused; closing the client connection");
            Next::Done
        }
        Err(e @ (AttemptError::Dial(_) | AttemptError::Lost(_))) => {
            if refuses_our_certificate(&e.to_string()) {
                warn!(instance = %pick.key, error = %e, "the peer refused this node's certificate (other mesh, revoked or expired?); trying another instance");
            } else {
                info!(instance = %pick.key, error = %e, "peer unreachable; trying another instance");
            }
            ctx.peer_lost(&pick.target.key(), &e.to_string());
            Next::Another
        }
        Err(e) => {
            info!(instance = %pick.key, error = %e, "instance failed; trying another");
            ctx.balancer.failed(&pick.key, &e.to_string());
            Next::Another
        }
    }
}

/// Opens a stream (or direct connection) on `pick`. Without an answer after a few round trips
/// (a peer that died silently is only noticed when its keep-alive times out, seconds later),
/// another instance is asked too and the first answer is taken; when one of the two fails,
/// the other's outcome is awaited. Returns the outcome to act on and whose it is, or `None`
/// when a failure already ended the client connection.
async fn attempt(
    ctx: &Arc<ConsumerCtx>,
    tcp: &mut Option<TcpStream>,
    tried: &mut HashSet<String>,
    pick: Candidate,
) -> Option<(Candidate, Result<Opened, AttemptError>)> {
    // Boxed: the task of a connection is as large as its largest state, and two attempts in
    // flight would otherwise stay in every connection's memory while it splices.
    let mut first = Box::pin(ctx.open_counted(&pick));
    let delay = ctx.hedge_delay(&pick);
    if let Ok(outcome) = tokio::time::timeout(delay, &mut first).await {
        drop(first);
        return Some((pick, outcome));
    }
    let Some(second) = ctx.choose(tried, Instant::now()).await else {
        let outcome = first.await;
        return Some((pick, outcome));
    };
    tried.insert(second.key.clone());
    info!(instance = %pick.key, waited = ?delay, also = %second.key, "no answer yet; also trying another instance");
    let mut other = Box::pin(ctx.open_counted(&second));
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
                ctx.balancer
                    .failed(&pending.key, &format!("no answer within {delay:?}"));
            }
            Some((done.clone(), Ok(opened)))
        }
        Err(e) => {
            if let Next::Done = conclude(ctx, tcp, done, Err(e)).await {
                return None;
            }
            // One failed: the other may still answer.
            let rest = if first_done { other.await } else { first.await };
            Some((pending.clone(), rest))
        }
    }
}

async fn handle_client(tcp: TcpStream, ctx: Arc<ConsumerCtx>) {
    let _active = ctx.activity.enter();
    let _ = tcp.set_nodelay(true);
    let mut tcp = Some(tcp);
    let deadline = Instant::now() + ctx.wait;
    let mut tried = HashSet::new();
    while tried.len() < MAX_ATTEMPTS {
        // Wait for a first instance only; after a failure, use what is known now.
        let until = if tried.is_empty() {
            deadline
        } else {
            Instant::now()
        };
        let Some(pick) = ctx.choose(&tried, until).await else {
            break;
        };
        tried.insert(pick.key.clone());
        let Some((winner, outcome)) = attempt(&ctx, &mut tcp, &mut tried, pick).await else {
            return;
        };
        if let Next::Done = conclude(&ctx, &mut tcp, &winner, outcome).await {
            return;
        }
    }
    if tried.is_empty() {
        warn!(wait = ?ctx.wait, "no instance of {} found within the wait bound; closing the client connection", ctx.service);
    } else {
        warn!(
            tried = tried.len(),
            "every instance of {} failed; closing the client connection", ctx.service
        );
    }
}
