//! What the HTTP front (`crate::http`) uses of a consumer: the same choice of instance,
//! passive health and failure handling as TCP connections, request by request.

use std::collections::HashSet;
use std::sync::Arc;

use crate::transport::Tunnel;
use tokio::time::Instant;

use super::attempt::{AttemptError, Client, conclude};
use super::{Candidate, Consumer, Target, Tried};

impl Consumer {
    /// An instance not yet tried for this request, known now (an HTTP client waits for no
    /// announcement: it gets 503).
    pub(crate) async fn choose_now(&self, tried: &HashSet<Tried>) -> Option<Candidate> {
        self.choose(tried, Instant::now()).await
    }

    /// Opens a tunnel stream to `cand` (the provider said ok: its target is connected).
    pub(crate) async fn open_for_http(&self, cand: &Candidate) -> Result<Tunnel, AttemptError> {
        let Target::Peer(peer) = &cand.target else {
            return Err(AttemptError::Stream(
                crate::transport::protocol::HeaderError::Io(
                    "HTTP applications are reached over the mesh only".into(),
                ),
            ));
        };
        let conn = self.pool.get(peer).await?;
        self.check_announcer(&conn)?;
        self.ask(&conn, cand.tag.as_ref(), 0, self.reply_timeout)
            .await
    }

    /// Records a failed attempt on `cand` as a TCP connection's would be (ejection, lost
    /// peer, refuted record).
    pub(crate) async fn http_failed(self: &Arc<Self>, cand: &Candidate, e: AttemptError) {
        let mut none = Client {
            tcp: None,
            accepted: Instant::now(),
        };
        conclude(self, &mut none, cand, Err(e)).await;
    }

    /// Records a request that failed on `cand` after its stream was open (the application's
    /// connection failed, or it did not answer in time): the instance rests a moment.
    pub(crate) fn http_record_failure(&self, cand: &Candidate, why: &str) {
        self.balancer.failed(&cand.key, why);
    }

    /// Records a request carried by `cand` (re-admits it if it was ejected).
    pub(crate) fn http_succeeded(&self, cand: &Candidate) {
        self.balancer.succeeded(&cand.key);
    }

    /// Counts a request open on `cand` until the guard drops (least-conn sees it).
    pub(crate) fn http_open(&self, cand: &Candidate) -> crate::balance::OpenGuard<'_> {
        self.balancer.opened(&cand.key)
    }
}
