//! The provider side: accepts QUIC connections from mesh members, and for each stream reads the
//! request header, connects to the service's target and splices.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream, VarInt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::Activity;
use super::splice::{SpliceEnd, splice};
use crate::identity::DenyList;
use crate::inject::{AUTH_FAILED_REPLY, RedisAuth};
use crate::names::ServiceName;
use crate::transport::peer_identity;
use crate::transport::protocol::{FLAG_PROBE, RefusalCode, Reply, Request};

/// Most streams of one connection that may wait for their request header at once. A consumer
/// sends the header with the stream's first bytes, so only a broken or hostile peer has many
/// waiting: beyond this, new ones are refused at once instead of being held for the header
/// timeout.
const MAX_AWAITING_HEADER: usize = 1024;
/// Most QUIC connections (handshaking or open) the provider holds at once; beyond this,
/// incoming connections are refused. One per consumer node is the normal case.
const MAX_CONNECTIONS: usize = 4096;

/// What the provider serves.
#[derive(Debug)]
pub struct ProviderConfig {
    /// Target of each announced service.
    pub services: HashMap<ServiceName, ServiceTarget>,
    /// Bound on reading a stream's request header.
    pub header_timeout: Duration,
    /// Bound on connecting to a target.
    pub connect_timeout: Duration,
    /// Set while the node drains: new streams are refused with "draining".
    pub draining: AtomicBool,
    /// Open streams, for the drain.
    pub activity: super::Activity,
    /// Revoked certificates: also checked per stream, so a revocation reaches connections
    /// that were open before it.
    pub deny: Arc<DenyList>,
}

/// An announced service's target and its health.
#[derive(Debug, Clone)]
pub struct ServiceTarget {
    /// Where streams are connected.
    pub addr: SocketAddr,
    /// Whether the health check finds it up; streams are refused with "target down" if not.
    pub up: Arc<AtomicBool>,
    /// Nodes admitted (`None`: every mesh member).
    pub allow: Option<Vec<String>>,
    /// Credentials sent to the target before any client byte.
    pub redis_auth: Option<RedisAuth>,
}

/// Accepts connections on `endpoint` until `cancel` fires. Every task is spawned on `tracker`.
pub async fn serve(
    endpoint: Endpoint,
    cfg: Arc<ProviderConfig>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let connections = Activity::default();
    loop {
        let incoming = tokio::select! {
            () = cancel.cancelled() => return,
            inc = endpoint.accept() => match inc {
                Some(inc) => inc,
                None => return,
            },
        };
        let held = connections.enter();
        if connections.count() > MAX_CONNECTIONS {
            warn!(remote = %incoming.remote_address(), open = MAX_CONNECTIONS, "refused a QUIC connection: too many open");
            incoming.refuse();
            continue;
        }
        let span = info_span!("peer", remote = %incoming.remote_address());
        let (cfg, cancel, tasks) = (cfg.clone(), cancel.clone(), tracker.clone());
        tracker.spawn(
            async move {
                let _held = held;
                handle_connection(incoming, cfg, cancel, tasks).await;
            }
            .instrument(span),
        );
    }
}

async fn handle_connection(
    incoming: Incoming,
    cfg: Arc<ProviderConfig>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let conn: Connection = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "refused a QUIC handshake (not a member of this mesh?)");
            return;
        }
    };
    let identity = peer_identity(&conn);
    let fingerprint = identity
        .as_ref()
        .map(|p| p.fingerprint.clone())
        .unwrap_or_default();
    let peer = identity.map(|p| p.node).unwrap_or_else(|| "?".into());
    info!(%peer, "peer connected");
    let awaiting = Activity::default();
    let mut next_id: u64 = 0;
    loop {
        let (send, recv) = tokio::select! {
            () = cancel.cancelled() => return,
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(e) => {
                    let path = conn.stats().path;
                    info!(%peer, reason = %e, mtu = path.current_mtu, rtt = ?path.rtt, "peer disconnected");
                    return;
                }
            },
        };
        next_id += 1;
        let span = info_span!("stream", %peer, id = next_id);
        if cfg.deny.denies_fingerprint(&fingerprint) {
            // Revoked after its handshake (deny list reloaded): its open streams go on, as a
            // reload drops nothing, but every new one is refused.
            let detail = format!("the certificate of node {peer} is revoked (deny list)");
            tracker.spawn(refuse(send, recv, RefusalCode::NotAllowed, detail).instrument(span));
            continue;
        }
        tracker.spawn(
            handle_stream(send, recv, cfg.clone(), peer.clone(), awaiting.clone()).instrument(span),
        );
    }
}

async fn refuse(mut send: SendStream, mut recv: RecvStream, code: RefusalCode, detail: String) {
    warn!(%code, %detail, "refused stream");
    let _ = send.write_all(&Reply::refuse(code, detail).encode()).await;
    let _ = send.finish();
    let _ = recv.stop(VarInt::from_u32(0));
    // Let the reply reach the peer before the stream state goes away.
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
}

async fn handle_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    cfg: Arc<ProviderConfig>,
    peer: String,
    awaiting: Activity,
) {
    let held = awaiting.enter();
    if awaiting.count() > MAX_AWAITING_HEADER {
        drop(held);
        let detail = format!(
            "{MAX_AWAITING_HEADER} streams of this connection already wait for their header"
        );
        return refuse(send, recv, RefusalCode::BadRequest, detail).await;
    }
    let header = Request::read_from(&mut recv, cfg.header_timeout).await;
    drop(held);
    let req = match header {
        Ok(r) => r,
        Err(e) => return refuse(send, recv, RefusalCode::BadRequest, e.to_string()).await,
    };
    if cfg.draining.load(Ordering::Relaxed) {
        let detail = "this node is stopping; use another instance".to_string();
        return refuse(send, recv, RefusalCode::Draining, detail).await;
    }
    let Some(entry) = cfg.services.get(&req.service) else {
        let detail = format!("{} is not announced here", req.service);
        return refuse(send, recv, RefusalCode::UnknownService, detail).await;
    };
    if let Some(allow) = &entry.allow
        && !allow.contains(&peer)
    {
        let detail = format!("node {peer} may not use {}", req.service);
        return refuse(send, recv, RefusalCode::NotAllowed, detail).await;
    }
    if req.flags & FLAG_PROBE != 0 {
        // A consumer checking that this node is alive and accepts it: answer, connect nothing.
        let reply = if entry.up.load(Ordering::Relaxed) {
            Reply::Ok
        } else {
            Reply::refuse(RefusalCode::TargetDown, "target down")
        };
        let _ = send.write_all(&reply.encode()).await;
        let _ = send.finish();
        return;
    }
    let target = entry.addr;
    if !entry.up.load(Ordering::Relaxed) {
        let detail = format!("{} at {target} fails its health check", req.service);
        return refuse(send, recv, RefusalCode::TargetDown, detail).await;
    }
    let mut tcp = match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(target)).await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            let detail = format!("{} at {target}: {e}", req.service);
            return refuse(send, recv, RefusalCode::TargetRefused, detail).await;
        }
        Ok(Err(e)) => {
            let detail = format!("{} at {target}: {e}", req.service);
            return refuse(send, recv, RefusalCode::TargetUnreachable, detail).await;
        }
        Err(_) => {
            let detail = format!(
                "{} at {target}: no answer within {:?}",
                req.service, cfg.connect_timeout
            );
            return refuse(send, recv, RefusalCode::TargetUnreachable, detail).await;
        }
    };
    if let Some(auth) = &entry.redis_auth
        && let Err(e) = auth.authenticate(&mut tcp, cfg.connect_timeout).await
    {
        // The application gets a Redis error it can show; the log says why.
        warn!(service = %req.service, %target, error = %e, "credentials injection failed");
        if send.write_all(&Reply::Ok.encode()).await.is_ok() {
            let _ = send.write_all(AUTH_FAILED_REPLY).await;
            let _ = send.finish();
            // Keep reading (and dropping) what the client sends until it closes, so its
            // side never sees a reset before it has read the error.
            let drain = async { while let Ok(Some(_)) = recv.read_chunk(64 * 1024, true).await {} };
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        }
        return;
    }
    if send.write_all(&Reply::Ok.encode()).await.is_err() {
        debug!("consumer went away before the reply");
        return;
    }
    let _active = cfg.activity.enter();
    let stats = splice(tcp, send, recv).await;
    match stats.end {
        SpliceEnd::Closed => {
            debug!(service = %req.service, up = stats.tcp_to_quic, down = stats.quic_to_tcp, "stream closed")
        }
        SpliceEnd::Reset => debug!(service = %req.service, "stream reset"),
    }
}
