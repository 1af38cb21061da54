//! What verified peers say they serve: the consumer side of the control stream. For every
//! connection the pool dials to a node known by its record, one task follows that node's
//! control stream and keeps its [`PeerView`] here until the connection ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use quinn::Connection;
use tokio::sync::watch;
use tracing::{debug, info};

use super::ClaimedIdentity;
use super::control::ServiceSet;
use super::protocol::{FLAG_CONTROL, Reply, Request};
use crate::names::ServiceName;

/// Bound on the provider's first answer on a control stream.
const FIRST_FRAME: Duration = Duration::from_secs(5);

/// What one verified peer serves, and where its verified connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    /// The address the verified connection reached.
    pub remote: SocketAddr,
    /// What the peer says it serves.
    pub set: ServiceSet,
    /// The connection it came over (a newer connection to the same identity replaces it).
    stable_id: usize,
}

/// The views of every verified peer; readers wait on its changes.
#[derive(Clone)]
pub struct PeerViews(watch::Sender<HashMap<ClaimedIdentity, PeerView>>);

impl Default for PeerViews {
    fn default() -> Self {
        Self(watch::channel(HashMap::new()).0)
    }
}

impl PeerViews {
    /// Every view now.
    pub fn snapshot(&self) -> HashMap<ClaimedIdentity, PeerView> {
        self.0.borrow().clone()
    }

    /// A receiver notified on every change.
    pub fn subscribe(&self) -> watch::Receiver<HashMap<ClaimedIdentity, PeerView>> {
        self.0.subscribe()
    }

    fn set(&self, peer: &ClaimedIdentity, view: PeerView) {
        self.0
            .send_if_modified(|map| map.insert(peer.clone(), view.clone()) != Some(view));
    }

    fn drop_view(&self, peer: &ClaimedIdentity, stable_id: usize) {
        self.0.send_if_modified(|map| {
            let ours = map.get(peer).is_some_and(|v| v.stable_id == stable_id);
            if ours {
                map.remove(peer);
            }
            ours
        });
    }

    /// Follows the control stream of a new verified connection to `peer` until it ends.
    pub(super) fn follow(&self, peer: ClaimedIdentity, conn: Connection) {
        let views = self.clone();
        tokio::spawn(async move {
            let stable_id = conn.stable_id();
            match views.read_control(&peer, &conn).await {
                Ok(()) => {}
                Err(e) => debug!(node = %peer.node, error = %e, "control stream ended"),
            }
            views.drop_view(&peer, stable_id);
        });
    }

    async fn read_control(
        &self,
        peer: &ClaimedIdentity,
        conn: &Connection,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let (mut send, mut recv) = conn.open_bi().await?;
        let req = Request {
            // Not used on a control stream; any valid name.
            service: ServiceName::parse("control")?,
            flags: FLAG_CONTROL,
            tag: None,
        };
        send.write_all(&req.encode()).await?;
        match Reply::read_from(&mut recv, FIRST_FRAME).await? {
            Reply::Ok => {}
            Reply::Refused(r) => return Err(format!("control stream refused: {r}").into()),
        }
        let mut set = ServiceSet::read_first(&mut recv, FIRST_FRAME).await?;
        info!(node = %peer.node, services = set.services.len(), draining = set.draining, "verified node: its services come over QUIC");
        loop {
            let draining = set.draining;
            let view = PeerView {
                remote: conn.remote_address(),
                set,
                stable_id: conn.stable_id(),
            };
            self.set(peer, view);
            set = match ServiceSet::read_from(&mut recv).await {
                Ok(set) => set,
                // A draining node's last word stands until its connection goes.
                Err(_) if draining => {
                    conn.closed().await;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
        }
    }
}
