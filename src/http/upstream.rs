//! Connections to the applications: HTTP/1.1 (hyper's client) over tunnel streams, kept per
//! instance and reused by later requests; how a failed request counts and what the client is
//! told.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;

/// A request body sent upstream: the client's, or none (a request sent again).
pub(crate) type ReqBody = http_body_util::Either<Incoming, http_body_util::Empty<bytes::Bytes>>;
use hyper::client::conn::http1::SendRequest;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::{Body, answer};
use crate::proxy::consumer::{Candidate, Consumer};
use crate::proxy::stream_io::StreamIo;
use crate::transport::Tunnel;

/// An upgraded connection's other side.
pub(crate) type Upgrade = OnUpgrade;

/// Most idle connections kept per instance.
const MAX_IDLE: usize = 32;

/// Idle upstream connections, by instance.
#[derive(Default)]
pub(crate) struct Upstreams(Mutex<HashMap<String, Vec<SendRequest<ReqBody>>>>);

/// Why a request did not get a response from the application.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// No stream to the instance: nothing of the request left this node.
    #[error("{0}")]
    Open(String),
    /// The HTTP exchange failed.
    #[error("the application's connection failed: {0}")]
    Http(hyper::Error),
    /// No response head in time.
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

/// A request that got no response: why, and the request itself when none of it was sent.
pub(crate) struct Failed {
    /// Why.
    pub error: UpstreamError,
    /// The request, when it can be sent elsewhere (not a byte of it was written).
    pub request: Option<Request<ReqBody>>,
}

impl UpstreamError {
    /// Records a failure of the exchange against the instance (a failure to open its stream
    /// was recorded where it happened, with its typed cause).
    pub(crate) fn count_against(&self, consumer: &Consumer, cand: &Candidate) {
        if let Self::Http(_) | Self::Timeout(_) = self {
            consumer.http_record_failure(cand, &self.to_string());
        }
    }

    /// What the client is told.
    pub(crate) fn answer(&self) -> Response<Body> {
        let status = match self {
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Open(_) | Self::Http(_) => StatusCode::BAD_GATEWAY,
        };
        answer(status, format!("the application did not answer: {self}"))
    }
}

impl Upstreams {
    /// An idle connection to `key` that is ready for a request.
    fn take(&self, key: &str) -> Option<SendRequest<ReqBody>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.get_mut(key)?;
        list.retain(|s| !s.is_closed());
        let at = list.iter().position(SendRequest::is_ready)?;
        Some(list.swap_remove(at))
    }

    /// Keeps `sender` for later requests to `key`.
    fn keep(&self, key: &str, sender: SendRequest<ReqBody>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(key.to_string()).or_default();
        list.retain(|s| !s.is_closed());
        if list.len() < MAX_IDLE {
            list.push(sender);
        }
    }

    /// A new connection to `cand`: a tunnel stream, with HTTP/1.1 over it.
    async fn open(
        consumer: &Arc<Consumer>,
        cand: &Candidate,
    ) -> Result<SendRequest<ReqBody>, UpstreamError> {
        let Tunnel { send, recv, ticket } = match consumer.open_for_http(cand).await {
            Ok(s) => s,
            Err(e) => {
                let why = e.to_string();
                consumer.http_failed(cand, e).await;
                return Err(UpstreamError::Open(why));
            }
        };
        let io = TokioIo::new(StreamIo { send, recv });
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(UpstreamError::Http)?;
        tokio::spawn(async move {
            let _counted = ticket;
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends `req` to `cand` on an idle connection, else a new one, and waits up to `bound`
    /// for the response head; a 101 comes with the application's side of the upgrade.
    pub(crate) async fn send(
        &self,
        consumer: &Arc<Consumer>,
        cand: &Candidate,
        req: Request<ReqBody>,
        bound: Duration,
    ) -> Result<(Response<Incoming>, Option<Upgrade>), Failed> {
        let mut sender = match self.take(&cand.key) {
            Some(s) => s,
            None => match Self::open(consumer, cand).await {
                Ok(s) => s,
                Err(error) => {
                    return Err(Failed {
                        error,
                        request: Some(req),
                    });
                }
            },
        };
        let sent = tokio::time::timeout(bound, sender.try_send_request(req)).await;
        let mut resp = match sent {
            Ok(Ok(resp)) => resp,
            Ok(Err(mut e)) => {
                let request = e.take_message();
                let error = UpstreamError::Http(e.into_error());
                return Err(Failed { error, request });
            }
            Err(_) => {
                let error = UpstreamError::Timeout(bound);
                return Err(Failed {
                    error,
                    request: None,
                });
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upgrade = hyper::upgrade::on(&mut resp);
            return Ok((resp, Some(upgrade)));
        }
        self.keep(&cand.key, sender);
        Ok((resp, None))
    }
}

/// Splices an upgraded client connection and the application's, once both sides switched.
pub(crate) async fn splice_upgrade(client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (c, u) => {
            debug!(client = ?c.err(), upstream = ?u.err(), "upgrade failed");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        debug!(error = %e, "upgraded connection ended");
    }
}
