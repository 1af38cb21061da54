//! SIGHUP: re-read the deny list, a CA-mode identity (a new certificate for new connections;
//! open ones are kept) and the config file's static backends.

use tracing::{info, warn};

use super::Node;
use super::consume::{static_endpoints, static_sets};
use crate::config::{IdentitySource, reload_static_backends};
use crate::discovery::BackendKind;
use crate::transport;

impl Node {
    /// Applies a reload; anything that fails to load keeps its old value (and says so).
    pub(super) fn reload(&mut self) {
        info!("reload requested");
        self.reload_backends();
        match self.deny.reload() {
            Ok(n) if self.cfg.deny_file.is_some() => info!(entries = n, "deny list reloaded"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "deny list not reloaded; the old one stays"),
        }
        self.pool.close_denied(&self.deny);
        // A mesh-key node's certificate is made at start; nothing to re-read.
        if let IdentitySource::Bundle(_) = self.cfg.identity {
            self.reload_identity();
        }
    }

    /// Re-reads a CA bundle: new connections use the new certificate, records publish it.
    fn reload_identity(&mut self) {
        let identity = match super::load_identity(&self.cfg) {
            Ok(id) if id.node == self.node => id,
            Ok(id) => {
                return warn!(new = %id.node, "the reloaded certificate names another node; keeping the old identity");
            }
            Err(e) => return warn!(error = %e, "identity not reloaded; the old one stays"),
        };
        let settings = &self.cfg.transport;
        if self.provider.is_some() {
            match transport::server_config(&identity, &self.deny, settings) {
                Ok(sc) => self.endpoint.set_server_config(Some(sc)),
                Err(e) => return warn!(error = %e, "identity not reloaded"),
            }
        }
        match transport::client_config(&identity, &self.deny, settings) {
            Ok(cc) => self.pool.set_client_config(cc),
            Err(e) => return warn!(error = %e, "identity not reloaded"),
        }
        *self.fingerprint.write().unwrap_or_else(|e| e.into_inner()) = identity.fingerprint.clone();
        if let Some(t) = identity.not_after_unix() {
            self.not_after
                .store(t, std::sync::atomic::Ordering::Relaxed);
        }
        let record = (&self.node, self.quic_addr.port());
        for a in &self.announced() {
            // The registry key names the certificate: the old one goes.
            if let Some(etcd) = &self.etcd {
                etcd.remove(&a.record());
            }
            a.republish(self.mdns.as_deref(), self.etcd.as_deref(), record, |txt| {
                txt.fingerprint = identity.fingerprint.clone();
            });
        }
        info!(fingerprint = %identity.fingerprint, "identity reloaded; open connections are kept");
    }

    /// Re-reads the config file's `[connect.NAME]` backends, through the same checks as
    /// start-up (a bad file is refused whole and the backends stay), and applies them to the
    /// running static consumers (new connections only; open ones are kept).
    fn reload_backends(&self) {
        let Some(path) = &self.cfg.config_file else {
            return;
        };
        let lists = match reload_static_backends(path, &self.cfg.flags) {
            Ok(lists) => lists,
            Err(e) => return warn!(error = %e, "config not reloaded"),
        };
        let sets = static_sets(&self.consumers);
        for (service, addrs) in &lists {
            let Some(set) = sets.get(service) else {
                warn!(%service, "a new or non-static [connect] section needs a restart");
                continue;
            };
            let direct = self
                .cfg
                .connect
                .iter()
                .any(|c| c.spec.service == *service && c.direct);
            let kind = if direct {
                BackendKind::Direct
            } else {
                BackendKind::Peer
            };
            if set.replace(static_endpoints(addrs, kind)) {
                info!(%service, backends = ?addrs, "backends reloaded");
            }
        }
    }
}
