//! The HTTP front (`connect --http ADDR`): one listener for every HTTP application of the mesh,
//! routing each request by its host (`Host`, or HTTP/2's `:authority`; the port ignored,
//! case-insensitive, a trailing dot ignored) to an instance of the application announced for
//! that name (`announce --http-host`), with the balancing and passive health of TCP services.
//!
//! hyper does all HTTP: the front serves HTTP/1.1 and HTTP/2 cleartext (prior knowledge), and
//! speaks HTTP/1.1 to the applications over tunnel streams, kept and reused across requests.
//! Bodies stream both ways; `Upgrade` (WebSocket) is spliced after the 101. An idempotent
//! request that failed before any byte reached the application is tried on another instance;
//! the others never are. Answers of its own: 404 (no application for the host), 503 with
//! `Retry-After` (none healthy), 502 (the application failed), 504 (no answer in time).

mod headers;
mod upstream;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::balance::Policy;
use crate::discovery::Registry;
use crate::metrics::Metrics;
use crate::names::ServiceName;
use crate::proxy::consumer::{Backends, Consumer, ConsumerSettings, upkeep};
use crate::transport::Pool;

pub(crate) use upstream::{Upstreams, splice_upgrade};

/// A response body: the application's, or one of the front's own.
pub(crate) type Body = Either<Incoming, Full<Bytes>>;

/// Most instances tried for one request.
const MAX_ATTEMPTS: usize = 3;

/// The front's state: the applications it has routed to, and their upstream connections.
pub(crate) struct HttpFront {
    registry: Arc<Registry>,
    pool: Pool,
    local: SocketAddr,
    metrics: Arc<Metrics>,
    policy: Policy,
    /// Longest wait for an application's response head (then 504).
    timeout: Duration,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// One consumer per application, made at its first request.
    apps: Mutex<HashMap<ServiceName, Arc<Consumer>>>,
    /// Idle HTTP/1.1 connections (over tunnel streams) per instance.
    upstreams: Upstreams,
    /// Requests in flight, for the drain.
    pub(crate) activity: crate::proxy::Activity,
}

/// A response of the front's own: `status`, a short plain-text body.
fn answer(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(text + "\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Whether a request may be sent twice: it changes nothing, or the same each time.
fn idempotent(method: &hyper::Method) -> bool {
    use hyper::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

impl HttpFront {
    /// A front over the mesh's `registry`, dialling through `pool`.
    pub(crate) fn new(
        registry: Arc<Registry>,
        pool: Pool,
        local: SocketAddr,
        metrics: Arc<Metrics>,
        (policy, timeout): (Policy, Duration),
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            registry,
            pool,
            local,
            metrics,
            policy,
            timeout,
            cancel,
            tracker,
            apps: Mutex::default(),
            upstreams: Upstreams::default(),
            activity: crate::proxy::Activity::default(),
        }
    }

    /// The consumer of `service`, made (and kept up) at its first request.
    fn consumer(&self, service: &ServiceName) -> Arc<Consumer> {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = apps.get(service) {
            return c.clone();
        }
        let settings = ConsumerSettings {
            service: service.clone(),
            wait: Duration::ZERO,
            policy: self.policy,
            redis_auth: None,
            metrics: self.metrics.clone(),
        };
        let consumer = Arc::new(Consumer::new(
            settings,
            Backends::Discovered(self.registry.clone()),
            self.pool.clone(),
            self.local,
            self.cancel.clone(),
            self.tracker.clone(),
        ));
        self.tracker.spawn(upkeep(consumer.clone()));
        apps.insert(service.clone(), consumer.clone());
        consumer
    }

    /// Answers one request from `client`, and counts it.
    async fn handle(self: Arc<Self>, client: SocketAddr, req: Request<Incoming>) -> Response<Body> {
        let _in_flight = self.activity.enter();
        let t0 = std::time::Instant::now();
        let (resp, app, instance) = self.clone().route(client, req).await;
        let took = t0.elapsed();
        let status = resp.status().as_u16();
        self.metrics.http.answered(&app, &instance, status, took);
        resp
    }

    /// Routes one request: the response, the application and the instance that answered
    /// (empty when the front answered itself).
    async fn route(
        self: Arc<Self>,
        client: SocketAddr,
        mut req: Request<Incoming>,
    ) -> (Response<Body>, String, String) {
        let none = String::new;
        let Some(host) = headers::request_host(&req) else {
            let r = answer(StatusCode::BAD_REQUEST, "no host in the request".into());
            return (r, none(), none());
        };
        let Some(service) = self.registry.http_service(&host) else {
            info!(%host, "no application for this host: 404");
            let r = answer(
                StatusCode::NOT_FOUND,
                format!("no application is announced for {host}"),
            );
            return (r, none(), none());
        };
        let consumer = self.consumer(&service);
        let version = req.version();
        let upgrade = headers::wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        headers::prepare(&mut req, client, &host, upgrade.is_some());
        let app = service.to_string();
        match self.forward(&consumer, req).await {
            Ok((mut resp, upstream_side, instance)) => {
                headers::prepare_response(&mut resp, version);
                if let (Some(client_side), Some(upstream_side)) = (upgrade, upstream_side) {
                    let splice = upstream::splice_upgrade(client_side, upstream_side);
                    self.tracker.spawn(splice.in_current_span());
                }
                (resp.map(Either::Left), app, instance)
            }
            Err(own) => (own, app, none()),
        }
    }

    /// Sends the request to an instance of the application (another one, when it failed
    /// before any byte reached the first and may be repeated); the response, with its upgrade
    /// when it switches protocols, or the front's own error answer.
    async fn forward(
        &self,
        consumer: &Arc<Consumer>,
        req: Request<Incoming>,
    ) -> Result<(Response<Incoming>, Option<upstream::Upgrade>, String), Response<Body>> {
        let mut tried = HashSet::new();
        let repeatable = idempotent(req.method());
        // A request without a body that may be repeated can be sent again even after hyper
        // wrote it (its connection died before any response byte: a peer lost, an idle
        // connection the application closed): its head is kept for that.
        let replay =
            (repeatable && hyper::body::Body::is_end_stream(req.body())).then(|| head_of(&req));
        let mut req = req.map(http_body_util::Either::Left);
        let service = consumer.service.clone();
        while tried.len() < MAX_ATTEMPTS {
            let Some(cand) = consumer.choose_now(&tried).await else {
                break;
            };
            tried.insert((cand.key.clone(), cand.target.clone()));
            let _open = consumer.http_open(&cand);
            match self
                .upstreams
                .send(consumer, &cand, req, self.timeout)
                .await
            {
                Ok((resp, upgrade)) => {
                    consumer.http_succeeded(&cand);
                    debug!(instance = %cand.key, status = %resp.status(), "proxied");
                    return Ok((resp, upgrade, cand.key.clone()));
                }
                Err(upstream::Failed { error, request }) => {
                    warn!(instance = %cand.key, error = %error, "request failed");
                    error.count_against(consumer, &cand);
                    let again = request.or_else(|| match (&error, &replay) {
                        (upstream::UpstreamError::Http(_), Some(head)) => Some(rebuild(head)),
                        _ => None,
                    });
                    match again {
                        Some(r) if repeatable => req = r,
                        _ => return Err(error.answer()),
                    }
                }
            }
        }
        let status = if tried.is_empty() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::BAD_GATEWAY
        };
        warn!(%service, tried = tried.len(), %status, "no instance of the application answered");
        let mut r = answer(status, format!("no healthy instance of {service} answered"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from_static("1"),
            );
        }
        Err(r)
    }
}

/// What a bodiless request is made of, to send it again.
struct Head {
    method: hyper::Method,
    uri: hyper::Uri,
    version: hyper::Version,
    headers: hyper::HeaderMap,
}

fn head_of<B>(req: &Request<B>) -> Head {
    Head {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
    }
}

/// The request again, with no body.
fn rebuild(head: &Head) -> Request<upstream::ReqBody> {
    let mut req = Request::new(http_body_util::Either::Right(http_body_util::Empty::new()));
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req
}

/// Serves the front on `listener` until `stop` (or the node's cancellation) fires.
pub(crate) async fn serve(listener: TcpListener, front: Arc<HttpFront>, stop: CancellationToken) {
    let mut next: u64 = 0;
    loop {
        let (tcp, client) = tokio::select! {
            () = stop.cancelled() => return,
            () = front.cancel.cancelled() => return,
            acc = listener.accept() => match acc {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "HTTP front: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        next += 1;
        let _ = tcp.set_nodelay(true);
        let front2 = front.clone();
        let span = info_span!("http", %client, conn = next);
        let task = async move {
            let service = hyper::service::service_fn(move |req| {
                let front = front2.clone();
                async move { Ok::<_, Infallible>(front.handle(client, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                debug!(error = %e, "HTTP client connection ended");
            }
        };
        front.tracker.spawn(task.instrument(span));
    }
}
