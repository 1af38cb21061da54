//! Reaching services: one consumer per `connect` service, with its backends from the
//! configured source (mesh announcements, a static list, DNS SRV, a plain DNS-SD type; Docker
//! link variables arrive as static direct backends), and its local listener.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use super::Node;
use crate::balance::Policy;
use crate::config::{ConnectConfig, NodeConfig, Source};
use crate::discovery::etcd::{self, mesh::MeshSink};
use crate::discovery::mdns::{BrowseFilter, run_browser, run_plain_browser};
use crate::discovery::{BackendKind, Confirmed, Endpoint, EndpointSet, Registry, dns_srv};
use crate::error::Failure;
use crate::names::ServiceName;
use crate::proxy::consumer::{self, Backends, Consumer, ConsumerSettings, serve_listener};

/// The listen address of a consumer, once bound (for status).
pub(super) type ListenAddr = Arc<Mutex<Option<SocketAddr>>>;

/// One running consumer, as the node keeps it.
pub(super) struct ConsumerEntry {
    /// The consumer.
    pub(super) consumer: Arc<Consumer>,
    /// Its listen address, once bound.
    pub(super) listen: ListenAddr,
    /// Its balancing policy, for status.
    pub(super) policy: Policy,
    /// Its static backends, replaced on SIGHUP (`run -c`); `None` for other sources.
    pub(super) static_set: Option<Arc<EndpointSet>>,
}

/// Where a consumer without a listen port learns it.
pub(super) enum PortFrom {
    /// The advertised port of the first record of its service.
    Registry(Arc<Registry>),
    /// The service port of the first of dynamic-ambassador's keys.
    Keys(watch::Receiver<Option<u16>>),
}

/// What a consumer's source gives: its backends, its static set (for reloads) and where its
/// listen port is learnt.
struct Sourced {
    backends: Backends,
    static_set: Option<Arc<EndpointSet>>,
    port_from: PortFrom,
}

/// A consumer's listener: bound at start when its port is known, else once the first record
/// tells the advertised port.
pub(super) struct PendingListener {
    cfg: ConnectConfig,
    bound: Option<TcpListener>,
}

/// Binds every listener whose port is known, before anything is announced.
pub(super) async fn bind_known_listeners(
    cfg: &NodeConfig,
) -> Result<Vec<PendingListener>, Failure> {
    let mut out = Vec::new();
    for c in &cfg.connect {
        let bound = match c.spec.listen_port {
            Some(port) => Some(bind_listener(SocketAddr::new(c.spec.listen_ip, port), c).await?),
            None => None,
        };
        out.push(PendingListener {
            cfg: c.clone(),
            bound,
        });
    }
    Ok(out)
}

async fn bind_listener(addr: SocketAddr, c: &ConnectConfig) -> Result<TcpListener, Failure> {
    TcpListener::bind(addr).await.map_err(|e| {
        let service = &c.spec.service;
        let mend = if e.kind() == std::io::ErrorKind::AddrInUse {
            format!("stop what uses it or pick another port: {service}:PORT")
        } else {
            "pick another listen address (SPEC NAME:PORT=IP:PORT)".to_string()
        };
        Failure::usage(format!(
            "cannot listen on {addr} for {service}: {e}; {mend}"
        ))
    })
}

/// Endpoints of a static list.
pub(super) fn static_endpoints(addrs: &[SocketAddr], kind: BackendKind) -> Vec<Endpoint> {
    addrs
        .iter()
        .map(|a| Endpoint {
            addr: kind.addr(*a),
            weight: 1,
        })
        .collect()
}

impl Node {
    /// Starts one consumer per `connect` service (mesh ones share one registry and browser).
    pub(super) fn start_consumers(
        &mut self,
        listeners: Vec<PendingListener>,
    ) -> Result<(), Failure> {
        if listeners.is_empty() {
            return Ok(());
        }
        let registry = self.registry.clone();
        self.follow_views();
        for pending in listeners {
            let c = &pending.cfg;
            let Sourced {
                backends,
                static_set,
                port_from,
            } = self.backends_for(c, &registry)?;
            if c.direct {
                warn!(service = %c.spec.service, "direct backends: traffic to them is plain TCP, not encrypted");
            }
            let settings = ConsumerSettings {
                service: c.spec.service.clone(),
                wait: c.wait,
                policy: c.policy,
                redis_auth: c.redis_auth.clone(),
                metrics: self.metrics.clone(),
            };
            let consumer = Arc::new(Consumer::new(
                settings,
                backends,
                self.pool.clone(),
                self.quic_addr,
                self.cancel.clone(),
                self.tracker.clone(),
            ));
            self.tracker.spawn(consumer::upkeep(consumer.clone()));
            let entry = ConsumerEntry {
                consumer,
                listen: Arc::new(Mutex::new(None)),
                policy: c.policy,
                static_set,
            };
            self.spawn_listener(&entry, pending, port_from);
            self.consumers.push(entry);
        }
        Ok(())
    }

    /// Serves the HTTP front, when there is one: every HTTP application of the mesh, routed
    /// by host.
    pub(super) fn start_http(&mut self) {
        let Some(listener) = self.http.take() else {
            return;
        };
        if self.consumers.is_empty() {
            // The consumers did not start it: what verified nodes serve reaches the registry.
            self.follow_views();
        }
        let front = Arc::new(crate::http::HttpFront::new(
            self.registry.clone(),
            self.pool.clone(),
            self.quic_addr,
            self.metrics.clone(),
            (self.cfg.http_policy, self.cfg.http_timeout),
            self.cancel.clone(),
            self.tracker.clone(),
        ));
        if let Ok(addr) = listener.local_addr() {
            info!(listen = %addr, "HTTP front: routing requests by host to the mesh's HTTP applications");
        }
        let stop = self.stop_accepting.clone();
        self.http_requests = Some(front.activity.clone());
        self.tracker
            .spawn(crate::http::serve(listener, front, stop));
    }

    /// Feeds the registry from the mesh's mDNS announcements (and notes records of this
    /// node's name by another node).
    pub(super) fn browse_mesh(&self) -> Result<(), Failure> {
        let Some(mdns) = &self.mdns else {
            return Ok(()); // --no-mdns: the registry alone feeds it
        };
        let rx = mdns.browse().context("browsing mDNS")?;
        let filter = BrowseFilter {
            mesh_id: self.mesh_id.clone(),
            own_node: self.node.clone(),
            own_fingerprint: self.fingerprint.clone(),
        };
        let (reg, cancel, conflicts) = (
            self.registry.clone(),
            self.cancel.clone(),
            self.conflicts.clone(),
        );
        let interfaces = mdns.interfaces().to_vec();
        self.tracker.spawn(async move {
            run_browser(rx, &interfaces, &reg, filter, conflicts, cancel).await
        });
        Ok(())
    }

    /// With `--registry`: feeds the registry from the mesh's keys in etcd too (one watch of
    /// `/ambassador/<mesh>/`), beside mDNS.
    pub(super) fn watch_registry(&self) {
        let Some(cfg) = self.cfg.registry.clone() else {
            return;
        };
        let filter = BrowseFilter {
            mesh_id: self.mesh_id.clone(),
            own_node: self.node.clone(),
            own_fingerprint: self.fingerprint.clone(),
        };
        let sink = MeshSink::new(
            self.registry.clone(),
            filter,
            self.metrics.discovery("etcd"),
        );
        let prefix = etcd::value::mesh_prefix(&self.mesh_id);
        let span = info_span!("etcd", prefix = %prefix);
        let follow = etcd::follow(cfg, prefix, sink, self.cancel.clone());
        self.tracker.spawn(follow.instrument(span));
    }

    /// Hands what verified nodes say they serve (their control streams) to the registry,
    /// where it outranks their records.
    fn follow_views(&self) {
        let views = self.pool.views().clone();
        let mut changes = views.subscribe();
        let (registry, cancel) = (self.registry.clone(), self.cancel.clone());
        self.tracker.spawn(async move {
            loop {
                let confirmed = views
                    .snapshot()
                    .into_iter()
                    .map(|(peer, v)| {
                        let c = Confirmed {
                            remote: v.remote,
                            set: v.set,
                        };
                        ((peer.node, peer.fingerprint), c)
                    })
                    .collect();
                for (key, why) in registry.set_confirmed(confirmed) {
                    info!(instance = %key, "{why}");
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
            }
        });
    }

    /// The backends of one consumer, from its source (with a static set, for reloads, and
    /// where its listen port is learnt).
    fn backends_for(
        &self,
        c: &ConnectConfig,
        registry: &Arc<Registry>,
    ) -> Result<Sourced, Failure> {
        let kind = if c.direct {
            BackendKind::Direct
        } else {
            BackendKind::Peer
        };
        let learnt = PortFrom::Registry(registry.clone());
        let endpoints = |set: Arc<EndpointSet>| Sourced {
            backends: Backends::Endpoints(set),
            static_set: None,
            port_from: PortFrom::Registry(registry.clone()),
        };
        Ok(match &c.source {
            Source::Mesh => Sourced {
                backends: Backends::Discovered(registry.clone()),
                static_set: None,
                port_from: learnt,
            },
            Source::Static(addrs) => {
                let list = static_endpoints(addrs, kind);
                let set = Arc::new(EndpointSet::new(list, self.metrics.discovery("static")));
                Sourced {
                    static_set: Some(set.clone()),
                    ..endpoints(set)
                }
            }
            Source::DnsSrv { name, server } => endpoints(self.follow_srv(c, name, *server, kind)?),
            Source::MdnsType(ty) => {
                // Refused at configuration time with --no-mdns.
                let Some(mdns) = &self.mdns else {
                    return Err(Failure::usage(format!(
                        "--discover mdns:{ty} needs mDNS, which --no-mdns turns off"
                    )));
                };
                let rx = mdns.browse_type(ty).context("browsing mDNS")?;
                let set = Arc::new(EndpointSet::new(
                    Vec::new(),
                    self.metrics.discovery("dns-sd"),
                ));
                self.tracker
                    .spawn(run_plain_browser(rx, set.clone(), self.cancel.clone()));
                endpoints(set)
            }
            Source::EtcdKeys(prefix) => {
                let (set, port) = self.follow_seed_keys(c, prefix);
                Sourced {
                    port_from: PortFrom::Keys(port),
                    ..endpoints(set)
                }
            }
        })
    }

    /// Backends from the SRV records of `name`, re-resolved at their TTL.
    fn follow_srv(
        &self,
        c: &ConnectConfig,
        name: &str,
        server: Option<SocketAddr>,
        kind: BackendKind,
    ) -> Result<Arc<EndpointSet>, Failure> {
        let resolver = dns_srv::resolver(server)
            .map_err(|e| Failure::usage(format!("DNS resolver for {name}: {e}")))?;
        let set = Arc::new(EndpointSet::new(
            Vec::new(),
            self.metrics.discovery("dns-srv"),
        ));
        let span = info_span!("dns-srv", service = %c.spec.service);
        let run = dns_srv::run(
            resolver,
            name.to_string(),
            kind,
            set.clone(),
            self.cancel.clone(),
        );
        self.tracker.spawn(run.instrument(span));
        Ok(set)
    }

    /// Direct backends from dynamic-ambassador's keys under `prefix`, watched in the
    /// `--registry` etcd (or [`etcd::DEFAULT_ENDPOINT`]).
    fn follow_seed_keys(
        &self,
        c: &ConnectConfig,
        prefix: &str,
    ) -> (Arc<EndpointSet>, watch::Receiver<Option<u16>>) {
        let cfg = self.cfg.registry.clone().unwrap_or_else(|| {
            etcd::RegistryConfig::plain(vec![etcd::DEFAULT_ENDPOINT.to_string()])
        });
        let set = Arc::new(EndpointSet::new(Vec::new(), self.metrics.discovery("etcd")));
        let prefix = etcd::seed::watch_prefix(prefix);
        info!(service = %c.spec.service, %prefix, endpoints = %cfg.endpoints.join(","), "backends from etcd keys (dynamic-ambassador's layout)");
        let (port, learnt) = watch::channel(None);
        let sink = etcd::seed::SeedSink::new(prefix.clone(), set.clone(), port);
        let span = info_span!("etcd-keys", service = %c.spec.service);
        let follow = etcd::follow(cfg, prefix, sink, self.cancel.clone());
        self.tracker.spawn(follow.instrument(span));
        (set, learnt)
    }

    /// Serves the consumer's listener; without a known port, first waits for a record to
    /// learn the advertised one (a port in use then is fatal for the node).
    fn spawn_listener(&self, entry: &ConsumerEntry, pending: PendingListener, port_from: PortFrom) {
        let (cancel, fatal, stop) = (
            self.cancel.clone(),
            self.fatal.clone(),
            self.stop_accepting.clone(),
        );
        let (consumer, listen_addr) = (entry.consumer.clone(), entry.listen.clone());
        let span = info_span!("listener", service = %pending.cfg.spec.service);
        let task = async move {
            let listener = match pending.bound {
                Some(l) => l,
                None => {
                    let learnt = tokio::select! {
                        () = cancel.cancelled() => return,
                        learnt = learn_port(&pending.cfg, port_from) => learnt,
                    };
                    match learnt {
                        Ok(l) => l,
                        Err(e) => return drop(fatal.send(e).await),
                    }
                }
            };
            match listener.local_addr() {
                Ok(addr) => {
                    *listen_addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
                    info!(listen = %addr, "listening");
                }
                Err(e) => warn!(error = %e, "listening (address unknown)"),
            }
            serve_listener(listener, consumer, stop).await;
        };
        self.tracker.spawn(task.instrument(span));
    }
}

/// Waits for the first record of the service (or, for dynamic-ambassador's keys, the first
/// key), and binds the port it names.
async fn learn_port(c: &ConnectConfig, from: PortFrom) -> Result<TcpListener, Failure> {
    let service: &ServiceName = &c.spec.service;
    info!("waiting for an announcement to learn the port (give {service}:PORT to listen at once)");
    let port = match from {
        PortFrom::Registry(registry) => {
            let far = tokio::time::Instant::now() + Duration::from_secs(365 * 86_400);
            let found = registry.wait_for(service, far, |i| !i.is_empty()).await;
            found.first().map(|i| i.port)
        }
        PortFrom::Keys(mut rx) => rx.wait_for(Option::is_some).await.ok().and_then(|p| *p),
    };
    let port = port.ok_or_else(|| {
        Failure::usage(format!(
            "no announcement of {service} to learn its port from"
        ))
    })?;
    bind_listener(SocketAddr::new(c.spec.listen_ip, port), c).await
}

/// The static sets of the node's consumers, by service (for SIGHUP reloads).
pub(super) fn static_sets(consumers: &[ConsumerEntry]) -> HashMap<&ServiceName, &Arc<EndpointSet>> {
    consumers
        .iter()
        .filter_map(|c| c.static_set.as_ref().map(|s| (&c.consumer.service, s)))
        .collect()
}
