//! What a node serves — its services, their ports, weights and target health, and whether it
//! drains — as its provider tells consumers over the control stream. The shared vocabulary of
//! the transport (which carries it) and discovery (which trusts it over records).

use serde::{Deserialize, Serialize};

use crate::names::{InstanceTag, ServiceName};

/// One service as its provider describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    /// The service.
    pub svc: ServiceName,
    /// Its advertised (consumer-side) port.
    pub port: u16,
    /// Its balancing weight.
    pub w: u32,
    /// Whether its target answers the provider's health check.
    pub up: bool,
    /// Which of the node's instances of the service this is, when it has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<InstanceTag>,
}

/// Everything a provider serves now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSet {
    /// The node is stopping: it accepts no new stream.
    pub draining: bool,
    /// Its services.
    pub services: Vec<ServiceState>,
}

impl ServiceSet {
    /// The state of `service` (its instance `tag`, when it has several), if served.
    pub fn get(&self, service: &ServiceName, tag: Option<&InstanceTag>) -> Option<&ServiceState> {
        self.services
            .iter()
            .find(|s| s.svc == *service && s.tag.as_ref() == tag)
    }
}
