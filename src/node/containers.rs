//! Containers announced automatically (`announce --docker`): the engine watcher's wanted set
//! is applied to the node's announcements, each container its own instance.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{Instrument, info, info_span};

use super::Node;
use super::provide::Announced;
use crate::config::AnnounceConfig;
use crate::docker::{self, Wanted};
use crate::error::Failure;
use crate::proxy::provider::Route;
use crate::spec::{AnnounceSpec, Target};

/// What a container's wanted announcement is, as the node announces it.
fn announce_config(w: &Wanted) -> AnnounceConfig {
    AnnounceConfig {
        spec: AnnounceSpec {
            service: w.service.clone(),
            port: w.port,
            target: Target::Addr(w.target),
        },
        weight: w.weight,
        allow: None,
        redis_auth: None,
        http_hosts: w.http_hosts.clone(),
        http_headers: None,
    }
}

impl Node {
    /// Connects the engine (a missing socket is a usage error) and starts watching it; the
    /// wanted sets arrive on the returned channel, for [`Node::apply_containers`].
    pub(super) fn watch_docker(
        &self,
        socket: &str,
    ) -> Result<mpsc::Receiver<Vec<Wanted>>, Failure> {
        let client = docker::connect(socket).map_err(Failure::usage)?;
        let (tx, rx) = mpsc::channel(4);
        let span = info_span!("docker", socket);
        info!(
            socket,
            "announcing the containers that ask for it (label {} or SERVICE_PORT)",
            docker::SERVICE_LABEL
        );
        let cancel = self.cancel.clone();
        self.tracker
            .spawn(docker::watch(client, tx, cancel).instrument(span));
        Ok(rx)
    }

    /// Makes the containers' announcements what `wanted` says: new ones announced, gone ones
    /// withdrawn (goodbye, and new streams refused), changed ones announced again, health
    /// holds updated.
    pub(super) async fn apply_containers(&self, wanted: Vec<Wanted>) {
        let current: HashMap<Route, Arc<Announced>> = self
            .announced()
            .into_iter()
            .filter(|a| a.tag.is_some())
            .map(|a| (a.route(), a))
            .collect();
        let mut keep = Vec::new();
        for w in &wanted {
            let route = (w.service.clone(), Some(w.tag.clone()));
            let cfg = announce_config(w);
            match current.get(&route) {
                Some(a) if a.cfg.spec == cfg.spec && a.cfg.weight == cfg.weight => {
                    a.hold_down(!w.healthy)
                }
                _ => {
                    info!(container = %w.container, service = %w.service, target = %w.target, healthy = w.healthy, "container announced");
                    if let Err(e) = self.announce_one(cfg, Some(w.tag.clone()), w.healthy).await {
                        tracing::warn!(container = %w.container, error = %e, "cannot announce the container");
                    }
                }
            }
            keep.push(route);
        }
        for route in current.keys().filter(|r| !keep.contains(r)) {
            info!(service = %route.0, "container gone: withdrawing its instance");
            self.withdraw_one(route).await;
        }
    }
}
