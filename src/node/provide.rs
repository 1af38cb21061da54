//! Serving announced services: the provider's stream handler, each service's record and the
//! health check of its target.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::Node;
use super::registry_publish::RegistryPublisher;
use crate::config::AnnounceConfig;
use crate::discovery::TxtRecord;
use crate::discovery::mdns::Mdns;
use crate::error::Failure;
use crate::metrics::Metrics;
use crate::names::{InstanceTag, NodeName};
use crate::proxy::provider::{self, ProviderConfig, Route, ServiceMeters, ServiceTarget};
use crate::spec::Target;
use crate::transport::control::ServiceSet;

/// The announced services now (static ones, and containers that come and go), shared with
/// the status snapshot.
pub(super) type Announcements = Arc<RwLock<Vec<Arc<Announced>>>>;

/// One announced service: its record and the health flag the provider reads.
pub(super) struct Announced {
    /// What is announced.
    pub(super) cfg: AnnounceConfig,
    /// Which of this node's instances of the service it is (a container's), if it has several.
    pub(super) tag: Option<InstanceTag>,
    /// The record as last published.
    txt: Mutex<TxtRecord>,
    /// Whether the target answers its health check.
    pub(super) up: Arc<AtomicBool>,
    /// Its DNS-SD full name, once announced.
    fullname: Mutex<Option<String>>,
    /// Stops its health check when it is withdrawn.
    stop: CancellationToken,
    /// Held down whatever the target answers (its container's healthcheck says unhealthy).
    held_down: AtomicBool,
    /// Wakes its health check at once (the hold changed).
    recheck: tokio::sync::Notify,
}

impl Announced {
    /// The record as last published.
    pub(super) fn record(&self) -> TxtRecord {
        self.txt.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Holds it down (or lets it up) whatever its target answers; the health check looks
    /// again at once.
    pub(super) fn hold_down(&self, down: bool) {
        if self.held_down.swap(down, Ordering::Relaxed) != down {
            self.recheck.notify_one();
        }
    }

    /// The provider's route of this announcement.
    pub(super) fn route(&self) -> Route {
        (self.cfg.spec.service.clone(), self.tag.clone())
    }

    /// Changes the record with `edit` and publishes it again (over mDNS, and to the etcd
    /// registry when there is one).
    pub(super) fn republish(
        &self,
        mdns: Option<&Mdns>,
        etcd: Option<&RegistryPublisher>,
        (node, quic_port): (&NodeName, u16),
        edit: impl FnOnce(&mut TxtRecord),
    ) {
        let txt = {
            let mut txt = self.txt.lock().unwrap_or_else(|e| e.into_inner());
            edit(&mut txt);
            txt.clone()
        };
        if let Some(Err(e)) = mdns.map(|m| m.announce(node, quic_port, &txt)) {
            warn!(error = %e, "cannot update the record");
        }
        if let Some(etcd) = etcd {
            etcd.put(&txt);
        }
    }
}

/// Whether a target accepts a TCP connection within `bound`.
async fn target_up(target: &Target, bound: Duration) -> bool {
    matches!(
        tokio::time::timeout(bound, target.connect()).await,
        Ok(Ok(_))
    )
}

impl Node {
    /// Serves tunnel streams (for the announced services, added as they are announced).
    pub(super) fn start_provider(&mut self) {
        let pcfg = Arc::new(ProviderConfig {
            services: RwLock::default(),
            header_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            draining: AtomicBool::new(false),
            deny: self.deny.clone(),
            activity: Default::default(),
            published: watch::channel(ServiceSet::default()).0,
            controls: Default::default(),
            incoming: Default::default(),
            metrics: self.metrics.clone(),
        });
        pcfg.publish();
        self.provider = Some(pcfg.clone());
        let serving = provider::serve(
            self.endpoint.clone(),
            pcfg,
            self.cancel.clone(),
            self.tracker.clone(),
        );
        self.tracker.spawn(serving);
    }

    /// The announcements now.
    pub(super) fn announced(&self) -> Vec<Arc<Announced>> {
        self.announced
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Announces every service of the configuration, each after a first health check.
    pub(super) async fn announce(&self) -> Result<(), Failure> {
        for a in &self.cfg.announce {
            self.announce_one(a.clone(), None, true).await?;
        }
        self.spawn_conflict_announcer();
        Ok(())
    }

    /// Serves and announces one service (instance `tag` of it, for a container): checks its
    /// target once, adds its route to the provider, publishes its record over mDNS and starts
    /// its health check. An announcement of the same route is replaced. Not `healthy`: held
    /// down (a container's healthcheck says so).
    pub(super) async fn announce_one(
        &self,
        a: AnnounceConfig,
        tag: Option<InstanceTag>,
        healthy: bool,
    ) -> Result<(), Failure> {
        let Some(provider) = self.provider.clone() else {
            return Ok(());
        };
        let up = healthy && target_up(&a.spec.target, Duration::from_secs(1)).await;
        let txt = TxtRecord {
            service: a.spec.service.clone(),
            port: a.spec.port,
            node: self.node.clone(),
            mesh: self.mesh_id.clone(),
            fingerprint: self.fingerprint(),
            weight: a.weight,
            up,
            tag: tag.clone(),
            http_hosts: a.http_hosts.clone(),
        };
        let entry = Arc::new(Announced {
            cfg: a,
            tag,
            txt: Mutex::new(txt),
            up: Arc::new(AtomicBool::new(up)),
            fullname: Mutex::new(None),
            stop: self.cancel.child_token(),
            held_down: AtomicBool::new(!healthy),
            recheck: tokio::sync::Notify::new(),
        });
        self.withdraw_one(&entry.route()).await;
        provider.insert(entry.route(), service_target(&entry, &self.metrics));
        self.publish(&entry)?;
        self.announced
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry.clone());
        self.spawn_health_check(entry, provider);
        Ok(())
    }

    /// Publishes an announcement's record over mDNS and logs it.
    fn publish(&self, a: &Announced) -> Result<(), Failure> {
        let spec = &a.cfg.spec;
        let record = a.record();
        let fullname = match &self.mdns {
            Some(mdns) => Some(
                mdns.announce(&self.node, self.quic_addr.port(), &record)
                    .context("announcing over mDNS")?,
            ),
            None => None,
        };
        let instance = fullname.clone().unwrap_or_else(|| record.instance_name());
        let up = a.up.load(Ordering::Relaxed);
        info!(service = %spec.service, port = spec.port, target = %spec.target, %instance, target_up = up, "announcing");
        if !up {
            warn!(service = %spec.service, target = %spec.target, "target is down: announced as down until it answers");
        }
        *a.fullname.lock().unwrap_or_else(|e| e.into_inner()) = fullname;
        if let Some(etcd) = &self.etcd {
            etcd.put(&record);
        }
        Ok(())
    }

    /// Withdraws one announcement, if it is there: its record (an mDNS goodbye), its route
    /// (new streams are refused; open ones go on) and its health check.
    pub(super) async fn withdraw_one(&self, route: &Route) {
        let gone = {
            let mut list = self.announced.write().unwrap_or_else(|e| e.into_inner());
            let at = list.iter().position(|a| a.route() == *route);
            at.map(|i| list.remove(i))
        };
        let Some(a) = gone else { return };
        a.stop.cancel();
        if let Some(etcd) = &self.etcd {
            etcd.remove(&a.record());
        }
        if let Some(p) = &self.provider {
            p.remove(route);
        }
        let fullname: Option<String> = a.fullname.lock().unwrap_or_else(|e| e.into_inner()).take();
        let instance = fullname
            .clone()
            .unwrap_or_else(|| a.record().instance_name());
        info!(service = %route.0, %instance, "withdrawn");
        if let (Some(fullname), Some(mdns)) = (fullname, &self.mdns) {
            mdns.withdraw(&fullname).await;
        }
    }

    /// Starts the health check of one announcement.
    fn spawn_health_check(&self, a: Arc<Announced>, provider: Arc<ProviderConfig>) {
        let span = info_span!("health", service = %a.cfg.spec.service);
        let stop = a.stop.clone();
        let check = HealthCheck {
            announced: a,
            provider: Some(provider),
            mdns: self.mdns.clone(),
            etcd: self.etcd.clone(),
            node: self.node.clone(),
            quic_port: self.quic_addr.port(),
            interval: self.cfg.health_interval,
        };
        self.tracker.spawn(check.run(stop).instrument(span));
    }

    /// While another node announces under this node's name, browsers that start later may
    /// hear only one of the two (they share the instance and host names, and mDNS suppresses
    /// an answer another responder already gave): announce again every few seconds, so every
    /// browser learns both.
    fn spawn_conflict_announcer(&self) {
        const EVERY: Duration = Duration::from_secs(2);
        let (announced, conflicts) = (self.announced.clone(), self.conflicts.clone());
        let Some(mdns) = self.mdns.clone() else {
            return; // names are shared over mDNS only
        };
        let (node, port) = (self.node.clone(), self.quic_addr.port());
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(EVERY) => {}
                }
                let shared = !conflicts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty();
                if shared {
                    let now = announced.read().unwrap_or_else(|e| e.into_inner()).clone();
                    for a in &now {
                        a.republish(Some(&mdns), None, (&node, port), |_| {});
                    }
                }
            }
        });
    }
}

/// What the provider serves for an announcement, counted in `metrics`.
fn service_target(a: &Announced, metrics: &Metrics) -> ServiceTarget {
    ServiceTarget {
        target: a.cfg.spec.target.clone(),
        port: a.cfg.spec.port,
        weight: a.cfg.weight,
        up: a.up.clone(),
        allow: a.cfg.allow.clone(),
        redis_auth: a.cfg.redis_auth.clone(),
        http_headers: a.cfg.http_headers.clone(),
        meters: ServiceMeters::of(metrics, &a.cfg.spec.service),
    }
}

/// The health check of one announced target.
struct HealthCheck {
    announced: Arc<Announced>,
    /// Told of every change, for the control streams.
    provider: Option<Arc<ProviderConfig>>,
    mdns: Option<Arc<Mdns>>,
    /// The etcd registry publisher, if any.
    etcd: Option<Arc<RegistryPublisher>>,
    node: NodeName,
    quic_port: u16,
    interval: Duration,
}

impl HealthCheck {
    /// Checks the target every interval; on a change, marks the record (TXT `h`) and the flag.
    async fn run(self, cancel: CancellationToken) {
        let a = &self.announced;
        let target = &a.cfg.spec.target;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
                () = a.recheck.notified() => {}
            }
            let up = !a.held_down.load(Ordering::Relaxed)
                && target_up(target, self.interval.min(Duration::from_secs(2))).await;
            if up == a.up.load(Ordering::Relaxed) {
                continue;
            }
            a.up.store(up, Ordering::Relaxed);
            if up {
                info!(%target, "target is up again: announcing it as healthy");
            } else {
                warn!(%target, "target is down: marking the record down and refusing streams");
            }
            if let Some(p) = &self.provider {
                p.publish();
            }
            let record = (&self.node, self.quic_port);
            a.republish(self.mdns.as_deref(), self.etcd.as_deref(), record, |txt| {
                txt.up = up
            });
        }
    }
}
