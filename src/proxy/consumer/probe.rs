//! Lost peers: their instances are ejected until a background probe reaches them again (or
//! discovery forgets them).

use std::sync::Arc;
use std::time::Duration;

use tracing::{Instrument, debug, info, info_span};

use super::attempt::AttemptError;
use super::{Candidate, Consumer};
use crate::names::InstanceTag;
use crate::transport::protocol::FLAG_PROBE;
use crate::transport::{PeerFailure, PeerKey, PeerTarget};

/// Bound on the answer to a probe stream.
const PROBE_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between two probes of a lost peer.
const PROBE_MAX: Duration = Duration::from_secs(5);
/// Pause between probes of a peer that refuses this node's certificate.
const PROBE_REFUSED: Duration = Duration::from_secs(30);

impl Consumer {
    /// This consumer's candidates behind the peer `key`.
    fn candidates_of(&self, key: &PeerKey) -> Vec<Candidate> {
        self.all_candidates()
            .into_iter()
            .filter(|c| c.peer_key().as_ref() == Some(key))
            .collect()
    }

    /// A peer is lost: eject its instances of this service until a probe reaches it again.
    pub(crate) fn peer_lost(self: &Arc<Self>, key: &PeerKey, why: &PeerFailure) {
        let mine = self.candidates_of(key);
        if mine.is_empty() {
            return;
        }
        let reason = why.to_string();
        for c in &mine {
            self.balancer.lost(&c.key, &reason);
        }
        if !self.probing().insert(key.clone()) {
            return;
        }
        let (consumer, key) = (self.clone(), key.clone());
        let span = info_span!("probe", service = %self.service, peer = %key);
        self.tracker
            .spawn(async move { consumer.probe(key).await }.instrument(span));
    }

    /// One liveness check: a probe stream must get an answer (the handshake alone proves
    /// little: with TLS 1.3 a peer that refuses our certificate says so only afterwards).
    pub(super) async fn probe_once(
        &self,
        target: &PeerTarget,
        tag: Option<&InstanceTag>,
    ) -> Result<(), AttemptError> {
        let conn = self.pool.get(target).await?;
        self.ask(&conn, tag, FLAG_PROBE, PROBE_REPLY_TIMEOUT)
            .await?;
        Ok(())
    }

    /// Re-dials a lost peer with a growing pause until it answers (its instances are then
    /// re-admitted) or discovery forgets it.
    async fn probe(self: Arc<Self>, key: PeerKey) {
        let mut pause = Duration::from_millis(250);
        let mut told = false;
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(PROBE_MAX);
            let mine = self.candidates_of(&key);
            let Some((super::Target::Peer(target), tag)) =
                mine.first().map(|c| (&c.target, c.tag.as_ref()))
            else {
                debug!("peer forgotten by discovery; probe ends");
                break;
            };
            match self.probe_once(target, tag).await {
                Ok(()) => {
                    info!("peer reachable again: its instances are re-admitted");
                    for c in &mine {
                        self.balancer.readmit(&c.key);
                    }
                    break;
                }
                Err(AttemptError::Peer(e @ PeerFailure::RefusesOurCertificate(_))) => {
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
        self.probing().remove(&key);
    }
}
