//! Serving announced services: the provider's stream handler, each service's record and the
//! health check of its target.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::Node;
use crate::config::AnnounceConfig;
use crate::discovery::TxtRecord;
use crate::discovery::mdns::Mdns;
use crate::error::Failure;
use crate::names::NodeName;
use crate::proxy::provider::{self, ProviderConfig, ServiceTarget};
use crate::spec::Target;
use crate::transport::control::ServiceSet;

/// One announced service: its record and the health flag the provider reads.
pub(super) struct Announced {
    /// What is announced.
    pub(super) cfg: AnnounceConfig,
    /// The record as last published.
    txt: Mutex<TxtRecord>,
    /// Whether the target answers its health check.
    pub(super) up: Arc<AtomicBool>,
}

impl Announced {
    fn record(&self) -> TxtRecord {
        self.txt.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes the record with `edit` and publishes it again.
    pub(super) fn republish(
        &self,
        mdns: &Mdns,
        node: &NodeName,
        quic_port: u16,
        edit: impl FnOnce(&mut TxtRecord),
    ) {
        let txt = {
            let mut txt = self.txt.lock().unwrap_or_else(|e| e.into_inner());
            edit(&mut txt);
            txt.clone()
        };
        if let Err(e) = mdns.announce(node, quic_port, &txt) {
            warn!(error = %e, "cannot update the record");
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
    /// Checks each target once, then serves tunnel streams for the announced services.
    pub(super) async fn start_provider(&mut self) {
        let mut services = HashMap::new();
        for a in &self.cfg.announce {
            // The first health check runs before the first announcement.
            let up = target_up(&a.spec.target, Duration::from_secs(1)).await;
            let txt = TxtRecord {
                service: a.spec.service.clone(),
                port: a.spec.port,
                node: self.node.clone(),
                mesh: self.mesh_id.clone(),
                fingerprint: self.fingerprint(),
                weight: a.weight,
                up,
            };
            let entry = Arc::new(Announced {
                cfg: a.clone(),
                txt: Mutex::new(txt),
                up: Arc::new(AtomicBool::new(up)),
            });
            let target = ServiceTarget {
                target: a.spec.target.clone(),
                port: a.spec.port,
                weight: a.weight,
                up: entry.up.clone(),
                allow: a.allow.clone(),
                redis_auth: a.redis_auth.clone(),
            };
            services.insert(a.spec.service.clone(), target);
            self.announced.push(entry);
        }
        let pcfg = Arc::new(ProviderConfig {
            services,
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

    /// Publishes every announced service over mDNS and starts its health check.
    pub(super) fn announce(&self) -> Result<(), Failure> {
        let quic_port = self.quic_addr.port();
        for a in &self.announced {
            let spec = &a.cfg.spec;
            let fullname = self
                .mdns
                .announce(&self.node, quic_port, &a.record())
                .context("announcing over mDNS")?;
            let up = a.up.load(Ordering::Relaxed);
            info!(service = %spec.service, port = spec.port, target = %spec.target, instance = %fullname, target_up = up, "announcing");
            if !up {
                warn!(service = %spec.service, target = %spec.target, "target is down: announced as down until it answers");
            }
            let check = HealthCheck {
                announced: a.clone(),
                provider: self.provider.clone(),
                mdns: self.mdns.clone(),
                node: self.node.clone(),
                quic_port,
                interval: self.cfg.health_interval,
            };
            let span = info_span!("health", service = %spec.service);
            self.tracker
                .spawn(check.run(self.cancel.clone()).instrument(span));
        }
        self.spawn_conflict_announcer();
        Ok(())
    }

    /// While another node announces under this node's name, browsers that start later may
    /// hear only one of the two (they share the instance and host names, and mDNS suppresses
    /// an answer another responder already gave): announce again every few seconds, so every
    /// browser learns both.
    fn spawn_conflict_announcer(&self) {
        const EVERY: Duration = Duration::from_secs(2);
        let (announced, conflicts) = (self.announced.clone(), self.conflicts.clone());
        let (mdns, node, port) = (self.mdns.clone(), self.node.clone(), self.quic_addr.port());
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
                    for a in &announced {
                        a.republish(&mdns, &node, port, |_| {});
                    }
                }
            }
        });
    }
}

/// The health check of one announced target.
struct HealthCheck {
    announced: Arc<Announced>,
    /// Told of every change, for the control streams.
    provider: Option<Arc<ProviderConfig>>,
    mdns: Arc<Mdns>,
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
            }
            let up = target_up(target, self.interval.min(Duration::from_secs(2))).await;
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
            a.republish(&self.mdns, &self.node, self.quic_port, |txt| txt.up = up);
        }
    }
}
