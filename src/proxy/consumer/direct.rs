//! Plain TCP backends (`--direct`): no ambassador, no QUIC, no encryption; credentials are
//! injected here when configured.

use std::time::Duration;

use tokio::net::TcpStream;
use tracing::debug;

use super::Consumer;
use super::attempt::AttemptError;
use crate::inject::InjectError;
use crate::metrics::ConnMeters;
use crate::names::TcpAddr;

/// Bound on connecting to a direct backend.
pub(super) const DIRECT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a direct backend could not be connected.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DirectError {
    /// The connection failed.
    #[error("connect {0}: {1}")]
    Connect(TcpAddr, std::io::Error),
    /// No answer in time.
    #[error("connect {0}: no answer within {DIRECT_CONNECT_TIMEOUT:?}")]
    Timeout(TcpAddr),
    /// Talking to it during credentials injection failed.
    #[error("{0}")]
    Inject(InjectError),
}

impl Consumer {
    /// Connects a plain TCP backend, and authenticates to it when credentials are configured.
    pub(super) async fn open_direct(&self, addr: TcpAddr) -> Result<TcpStream, AttemptError> {
        let connect = TcpStream::connect(addr.0);
        let mut tcp = match tokio::time::timeout(DIRECT_CONNECT_TIMEOUT, connect).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(DirectError::Connect(addr, e).into()),
            Err(_) => return Err(DirectError::Timeout(addr).into()),
        };
        let _ = tcp.set_nodelay(true);
        if let Some(auth) = &self.redis_auth {
            match auth.authenticate(&mut tcp, DIRECT_CONNECT_TIMEOUT).await {
                Ok(()) => {}
                Err(InjectError::Rejected(why)) => return Err(AttemptError::AuthRejected(why)),
                Err(e) => return Err(DirectError::Inject(e).into()),
            }
        }
        Ok(tcp)
    }
}

/// Copies both ways between the client and a direct backend; a failure resets both. The
/// bytes are counted when the connection ends.
pub(super) async fn splice_tcp(mut client: TcpStream, mut backend: TcpStream, meters: &ConnMeters) {
    let copied = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
    if let Ok((sent, received)) = copied {
        meters.sent.inc_by(sent);
        meters.received.inc_by(received);
    }
    if let Err(e) = copied {
        debug!(error = %e, "direct connection failed; resetting both sides");
        for s in [&client, &backend] {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
    }
}
