//! The consumer side: a local TCP listener per service; each accepted connection becomes one
//! stream on the pooled QUIC connection to a chosen instance's node.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{RecvStream, SendStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::splice::{SpliceEnd, splice};
use crate::discovery::{Instance, Registry};
use crate::names::ServiceName;
use crate::transport::protocol::{Refusal, Reply, Request};
use crate::transport::{DialError, PeerTarget, Pool};

/// Most instances tried for one client connection.
const MAX_ATTEMPTS: usize = 4;

/// One place a stream can be opened to.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Stable key (DNS-SD full name, or `static:ADDR`).
    pub key: String,
    /// Whom to dial.
    pub target: PeerTarget,
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
        }
    }

    /// A fixed ambassador peer: any mesh member at that address.
    pub fn static_peer(addr: SocketAddr) -> Self {
        Self {
            key: format!("static:{addr}"),
            target: PeerTarget {
                node: None,
                fingerprint: None,
                addrs: vec![addr],
            },
        }
    }
}

/// Where the instances of a service come from.
#[derive(Clone)]
pub enum Backends {
    /// The live set that discovery maintains.
    Discovered(Arc<Registry>),
    /// A fixed list.
    Static(Vec<Candidate>),
}

/// State shared by every listener of a consumer node.
pub struct ConsumerCtx {
    /// The QUIC connection pool.
    pub pool: Pool,
    /// The local QUIC address (its family decides which peer addresses are dialled).
    pub local: SocketAddr,
    /// How long a client connection waits for a first instance.
    pub wait: Duration,
    /// Bound on the provider's reply to a stream header.
    pub reply_timeout: Duration,
    /// Certificate fingerprints whose handshake failed: their records are never used again.
    pub rejected: Mutex<HashSet<String>>,
    rr: AtomicUsize,
}

impl ConsumerCtx {
    /// A new context.
    pub fn new(pool: Pool, local: SocketAddr, wait: Duration) -> Self {
        Self {
            pool,
            local,
            wait,
            reply_timeout: Duration::from_secs(10),
            rejected: Mutex::default(),
            rr: AtomicUsize::new(0),
        }
    }

    fn is_rejected(&self, fingerprint: &str) -> bool {
        self.rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(fingerprint)
    }

    async fn candidates(
        &self,
        service: &ServiceName,
        backends: &Backends,
        tried: &HashSet<String>,
        deadline: Instant,
    ) -> Vec<Candidate> {
        match backends {
            Backends::Static(list) => list
                .iter()
                .filter(|c| !tried.contains(&c.key))
                .cloned()
                .collect(),
            Backends::Discovered(registry) => {
                let usable = |i: &Instance| {
                    !tried.contains(&i.fullname)
                        && !self.is_rejected(&i.fingerprint)
                        && !i.socket_addrs(self.local).is_empty()
                };
                let found = registry
                    .wait_for(service, deadline, |all| all.iter().any(usable))
                    .await;
                found
                    .iter()
                    .filter(|i| usable(i))
                    .map(|i| Candidate::from_instance(i, self.local))
                    .collect()
            }
        }
    }
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("stream: {0}")]
    Stream(String),
    #[error("refused: {0}")]
    Refused(Refusal),
}

async fn open(
    ctx: &ConsumerCtx,
    service: &ServiceName,
    cand: &Candidate,
) -> Result<(SendStream, RecvStream), AttemptError> {
    let conn = ctx.pool.get(&cand.target).await?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| AttemptError::Stream(e.to_string()))?;
    let req = Request {
        service: service.clone(),
        flags: 0,
    };
    // Write the header at once: a stream is invisible to the peer until its first byte.
    send.write_all(&req.encode())
        .await
        .map_err(|e| AttemptError::Stream(e.to_string()))?;
    match Reply::read_from(&mut recv, ctx.reply_timeout).await {
        Ok(Reply::Ok) => Ok((send, recv)),
        Ok(Reply::Refused(r)) => Err(AttemptError::Refused(r)),
        Err(e) => Err(AttemptError::Stream(e.to_string())),
    }
}

/// Serves one listener until `cancel` fires.
pub async fn serve_listener(
    listener: TcpListener,
    service: ServiceName,
    backends: Backends,
    ctx: Arc<ConsumerCtx>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let mut next_id: u64 = 0;
    loop {
        let (tcp, client) = tokio::select! {
            () = cancel.cancelled() => return,
            acc = listener.accept() => match acc {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off briefly instead of spinning.
                    warn!(%service, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        next_id += 1;
        let span = info_span!("conn", %service, %client, id = next_id);
        let (service, backends, ctx) = (service.clone(), backends.clone(), ctx.clone());
        tracker.spawn(handle_client(tcp, service, backends, ctx).instrument(span));
    }
}

async fn handle_client(
    tcp: TcpStream,
    service: ServiceName,
    backends: Backends,
    ctx: Arc<ConsumerCtx>,
) {
    let _ = tcp.set_nodelay(true);
    let deadline = Instant::now() + ctx.wait;
    let mut tried = HashSet::new();
    for _ in 0..MAX_ATTEMPTS {
        let cands = ctx.candidates(&service, &backends, &tried, deadline).await;
        if cands.is_empty() {
            break;
        }
        let pick = &cands[ctx.rr.fetch_add(1, Ordering::Relaxed) % cands.len()];
        tried.insert(pick.key.clone());
        match open(&ctx, &service, pick).await {
            Ok((send, recv)) => {
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
                return;
            }
            Err(AttemptError::Dial(e)) if e.is_identity_failure() => {
                if let Some(fp) = &pick.target.fingerprint {
                    ctx.rejected
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(fp.clone());
                }
                warn!(instance = %pick.key, error = %e, "peer failed the mesh handshake: its record will not be used");
            }
            Err(AttemptError::Refused(r)) if !r.code.retry_elsewhere() => {
                warn!(instance = %pick.key, refusal = %r, "refused; closing the client connection");
                return;
            }
            Err(e) => info!(instance = %pick.key, error = %e, "instance failed; trying another"),
        }
    }
    if tried.is_empty() {
        warn!(wait = ?ctx.wait, "no instance of {service} found within the wait bound; closing the client connection");
    } else {
        warn!(
            tried = tried.len(),
            "every instance of {service} failed; closing the client connection"
        );
    }
}
