//! The admin endpoint (`--admin ADDR`, off by default): HTTP for operators and their tools.
//!
//! - `/metrics`: every metric, in the Prometheus text format;
//! - `/status`: the node's status, the JSON of `ambassador status --json` (one node);
//! - `/healthz`: 200 while the node serves, 503 while it drains;
//! - `/`: a status page for a person, server-rendered, refreshing itself.
//!
//! hyper serves it (HTTP/1.1); it reads snapshots, so it never holds a lock of the data path.

mod page;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::control::NodeStatus;
use crate::metrics::{self, Metrics};

/// What the admin endpoint serves from.
pub(crate) struct Admin {
    /// The node's status snapshot.
    pub status: Arc<dyn Fn() -> NodeStatus + Send + Sync>,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
}

/// Longest a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let headers = r.headers_mut();
    if let Ok(v) = content_type.parse() {
        headers.insert(CONTENT_TYPE, v);
    }
    headers.insert(
        CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

impl Admin {
    /// Answers one request.
    fn route<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "only GET and HEAD\n",
            );
            r.headers_mut()
                .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match req.uri().path() {
            "/metrics" => reply(StatusCode::OK, metrics::CONTENT_TYPE, self.metrics.encode()),
            "/status" => match serde_json::to_vec_pretty(&(self.status)()) {
                Ok(json) => reply(StatusCode::OK, "application/json", json),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    format!("status: {e}\n"),
                ),
            },
            "/healthz" => {
                if (self.status)().draining {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain; charset=utf-8",
                        "draining\n",
                    )
                } else {
                    reply(StatusCode::OK, "text/plain; charset=utf-8", "ok\n")
                }
            }
            "/" => reply(
                StatusCode::OK,
                "text/html; charset=utf-8",
                page::render(&(self.status)()),
            ),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found: try /, /status, /metrics or /healthz\n",
            ),
        }
    }
}

/// Serves the admin endpoint on `listener` until `cancel` fires.
pub(crate) async fn serve(listener: TcpListener, admin: Admin, cancel: CancellationToken) {
    let admin = Arc::new(admin);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(admin = %addr, "admin endpoint: /metrics /status /healthz /");
        if !addr.ip().is_loopback() {
            warn!(admin = %addr, "the admin endpoint is not on loopback: whoever reaches it reads this node's status and metrics (no secrets, but names and addresses)");
        }
    }
    loop {
        let tcp = tokio::select! {
            () = cancel.cancelled() => return,
            acc = listener.accept() => match acc {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    warn!(error = %e, "admin endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (admin, cancel) = (admin.clone(), cancel.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = admin.route(&req);
                async move { Ok::<_, Infallible>(answer) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                res = conn => if let Err(e) = res { debug!(error = %e, "admin connection") },
                () = cancel.cancelled() => {}
            }
        });
    }
}
