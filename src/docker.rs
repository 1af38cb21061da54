//! Automatic registration (`announce --docker`), as registrator and the dynamic ambassador did,
//! without a central store: the engine's event stream (through bollard) says when containers
//! start, stop, die or change health, and every running container that asks for it is
//! announced:
//!
//! - a label `ambassador.service=NAME[:PORT][,NAME[:PORT]...]` (the port defaults to the
//!   container's only exposed port);
//! - the seed's convention: `SERVICE_PORT=PORT` in its environment, the service named after
//!   `SERVICE_NAME` if set, else the container.
//!
//! The target is the container's address on a network this node reaches (one of its own
//! interfaces is on that network's subnet), else its port published on the host. Its
//! healthcheck maps to the record's health: `unhealthy` and `starting` are down. Each
//! container is its own instance (tagged with its short id), so a consumer balances over the
//! containers of one image. The whole wanted set is read again on every event and every few
//! seconds, so a missed event or a restarted engine leaves no stale or missing record.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerInspectResponse, HealthStatusEnum};
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::names::{HostName, InstanceTag, ServiceName};

/// The label a container asks to be announced with.
pub const SERVICE_LABEL: &str = "ambassador.service";
/// The label of the HTTP host names it answers to (comma-separated); the seed's `DOMAIN_NAME`
/// in its environment does the same.
pub const HTTP_HOST_LABEL: &str = "ambassador.http-host";
/// The label of its balancing weight.
pub const WEIGHT_LABEL: &str = "ambassador.weight";
/// The API version spoken: Docker 20.10's, which every later engine also speaks.
const API: bollard::ClientVersion = bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};
/// How often the wanted set is read again without an event.
const RESYNC: Duration = Duration::from_secs(3);
/// Events that arrive together are answered with one read.
const SETTLE: Duration = Duration::from_millis(30);

/// One announcement a container asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The service.
    pub service: ServiceName,
    /// The advertised port (the container's port).
    pub port: u16,
    /// Where its streams go.
    pub target: SocketAddr,
    /// The container's short id: which instance of the service it is.
    pub tag: InstanceTag,
    /// The container's name, for logs.
    pub container: String,
    /// Its balancing weight.
    pub weight: u32,
    /// Whether its healthcheck (if it has one) says healthy.
    pub healthy: bool,
    /// The HTTP host names it answers to (label `ambassador.http-host`, or `DOMAIN_NAME`).
    pub http_hosts: Vec<HostName>,
}

/// Why `--docker` cannot start.
#[derive(Debug, thiserror::Error)]
#[error("no Docker engine at {socket}: {why}; start it, or give --docker-host unix:///PATH")]
pub struct DockerError {
    socket: String,
    why: String,
}

/// The engine's socket: `host` (`unix:///PATH` or a path), else `DOCKER_HOST`, else the
/// default socket.
pub fn socket_path(host: Option<&str>) -> String {
    let given = host
        .map(str::to_string)
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()));
    let host = given.unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
    host.strip_prefix("unix://").unwrap_or(&host).to_string()
}

/// A client of the engine at `socket`.
pub fn connect(socket: &str) -> Result<Docker, DockerError> {
    Docker::connect_with_unix(socket, 30, &API).map_err(|e| DockerError {
        socket: socket.to_string(),
        why: e.to_string(),
    })
}

/// Local IPv4 subnets (address and mask of every non-loopback interface), read now.
fn local_subnets() -> Vec<(Ipv4Addr, Ipv4Addr)> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| match i.addr {
            if_addrs::IfAddr::V4(v4) if !v4.ip.is_loopback() => Some((v4.ip, v4.netmask)),
            _ => None,
        })
        .collect()
}

/// Whether `ip` is on one of `subnets`.
fn reachable(ip: Ipv4Addr, subnets: &[(Ipv4Addr, Ipv4Addr)]) -> bool {
    let (ip, on) = (u32::from(ip), |net: u32, mask: u32| net & mask);
    subnets
        .iter()
        .any(|(a, m)| on(ip, u32::from(*m)) == on(u32::from(*a), u32::from(*m)))
}

/// Where a container's `port` is reached from this node: its address on a network this node
/// is on, else the port published on the host.
fn target_of(
    c: &ContainerInspectResponse,
    port: u16,
    subnets: &[(Ipv4Addr, Ipv4Addr)],
) -> Option<SocketAddr> {
    let settings = c.network_settings.as_ref()?;
    let mut ips: Vec<Ipv4Addr> = settings
        .networks
        .iter()
        .flatten()
        .filter_map(|(_, ep)| ep.ip_address.as_deref()?.parse().ok())
        .collect();
    ips.sort();
    if let Some(ip) = ips.iter().find(|ip| reachable(**ip, subnets)) {
        return Some(SocketAddr::new(IpAddr::V4(*ip), port));
    }
    let published = settings
        .ports
        .as_ref()?
        .get(&format!("{port}/tcp"))?
        .as_ref()?;
    let binding = published.first()?;
    let host_port = binding.host_port.as_deref()?.parse().ok()?;
    let host_ip = match binding.host_ip.as_deref() {
        None | Some("") | Some("0.0.0.0") | Some("::") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(ip) => ip.parse().ok()?,
    };
    Some(SocketAddr::new(host_ip, host_port))
}

/// The container's only exposed TCP port, if it has exactly one.
fn only_exposed_port(c: &ContainerInspectResponse) -> Option<u16> {
    let exposed = c.config.as_ref()?.exposed_ports.as_ref()?;
    let tcp: Vec<u16> = exposed
        .iter()
        .filter_map(|p| p.strip_suffix("/tcp")?.parse().ok())
        .collect();
    (tcp.len() == 1).then(|| tcp[0])
}

/// The services a container asks for, as (name, port) texts.
fn asked(c: &ContainerInspectResponse, name: &str) -> Vec<(String, Option<u16>)> {
    let config = c.config.as_ref();
    let mut out = Vec::new();
    if let Some(label) = config.and_then(|c| c.labels.as_ref()?.get(SERVICE_LABEL)) {
        for item in label.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.split_once(':') {
                Some((n, p)) => out.push((n.to_string(), p.parse().ok())),
                None => out.push((item.to_string(), None)),
            }
        }
    }
    let env: HashMap<&str, &str> = config
        .and_then(|c| c.env.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    if let Some(port) = env.get("SERVICE_PORT") {
        let service = env.get("SERVICE_NAME").copied().unwrap_or(name);
        out.push((service.to_string(), port.parse().ok()));
    }
    out
}

/// The HTTP host names a container answers to: its label, else `DOMAIN_NAME`.
fn http_hosts_of(c: &ContainerInspectResponse, name: &str) -> Vec<HostName> {
    let config = c.config.as_ref();
    let label = config.and_then(|c| c.labels.as_ref()?.get(HTTP_HOST_LABEL).cloned());
    let env = config.and_then(|c| {
        c.env
            .as_ref()?
            .iter()
            .find_map(|kv| kv.strip_prefix("DOMAIN_NAME=").map(str::to_string))
    });
    let Some(list) = label.or(env) else {
        return Vec::new();
    };
    let hosts: Vec<String> = list.split(',').map(|h| h.trim().to_string()).collect();
    match crate::config::parse_http_hosts(&hosts, HTTP_HOST_LABEL) {
        Ok(hosts) => hosts,
        Err(e) => {
            warn!(container = name, error = %e, "HTTP host names ignored");
            Vec::new()
        }
    }
}

/// What one running container asks to be announced, with its target and health; a request
/// that cannot be served is logged and skipped (it costs only itself).
pub fn wanted_of(c: &ContainerInspectResponse, subnets: &[(Ipv4Addr, Ipv4Addr)]) -> Vec<Wanted> {
    let name = c.name.as_deref().unwrap_or("").trim_start_matches('/');
    let Some(tag) =
        c.id.as_deref()
            .and_then(|id| InstanceTag::parse(id.get(..12)?).ok())
    else {
        return Vec::new();
    };
    let health = c.state.as_ref().and_then(|s| s.health.as_ref()?.status);
    let healthy = !matches!(
        health,
        Some(HealthStatusEnum::UNHEALTHY | HealthStatusEnum::STARTING)
    );
    let weight = c
        .config
        .as_ref()
        .and_then(|c| c.labels.as_ref()?.get(WEIGHT_LABEL)?.parse().ok())
        .and_then(|w| crate::weight::check_weight(w).ok())
        .unwrap_or(crate::weight::WEIGHT_DEFAULT);
    let http_hosts = http_hosts_of(c, name);
    let mut out = Vec::new();
    for (service, port) in asked(c, name) {
        let Ok(service) = ServiceName::parse(&service) else {
            warn!(
                container = name,
                service, "not a service name; not announced"
            );
            continue;
        };
        let Some(port) = port.or_else(|| only_exposed_port(c)).filter(|p| *p != 0) else {
            warn!(container = name, %service, "no port: give {SERVICE_LABEL}=NAME:PORT; not announced");
            continue;
        };
        let Some(target) = target_of(c, port, subnets) else {
            warn!(container = name, %service, port, "no address of it that this node reaches, and the port is not published; not announced");
            continue;
        };
        out.push(Wanted {
            service,
            port,
            target,
            tag: tag.clone(),
            container: name.to_string(),
            weight,
            healthy,
            http_hosts: http_hosts.clone(),
        });
    }
    out
}

/// Everything the running containers ask for now.
async fn read_wanted(docker: &Docker) -> Result<Vec<Wanted>, bollard::errors::Error> {
    let running = docker
        .list_containers(Some(ListContainersOptionsBuilder::default().build()))
        .await?;
    let subnets = local_subnets();
    let mut out = Vec::new();
    for summary in running {
        let Some(id) = summary.id else { continue };
        match docker.inspect_container(&id, None).await {
            Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(true) => {
                out.extend(wanted_of(&c, &subnets));
            }
            Ok(_) => {}
            // Gone between the list and the inspection: it asks for nothing.
            Err(e) => debug!(container = %id, error = %e, "not inspected"),
        }
    }
    out.sort_by(|a, b| (&a.service, &a.tag).cmp(&(&b.service, &b.tag)));
    Ok(out)
}

/// Sends the wanted set on start, on every container event and every [`RESYNC`], until
/// `cancel`; an unreachable engine is retried (its containers stay announced meanwhile).
pub async fn watch(docker: Docker, tx: mpsc::Sender<Vec<Wanted>>, cancel: CancellationToken) {
    let mut last: Option<Vec<Wanted>> = None;
    loop {
        let filters = HashMap::from([("type", vec!["container"])]);
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        let mut events = docker.events(Some(options));
        loop {
            match read_wanted(&docker).await {
                Ok(wanted) if last.as_ref() != Some(&wanted) => {
                    if tx.send(wanted.clone()).await.is_err() {
                        return;
                    }
                    last = Some(wanted);
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "cannot read the containers; trying again");
                    break;
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(RESYNC) => {}
                ev = events.next() => match ev {
                    Some(Ok(_)) => tokio::time::sleep(SETTLE).await,
                    Some(Err(e)) => {
                        warn!(error = %e, "the engine's event stream failed; reconnecting");
                        break;
                    }
                    None => break,
                },
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{
        ContainerConfig, ContainerState, EndpointSettings, Health, NetworkSettings, PortBinding,
    };

    fn container(labels: &[(&str, &str)], env: &[&str], ip: &str) -> ContainerInspectResponse {
        let networks = HashMap::from([(
            "lan".to_string(),
            EndpointSettings {
                ip_address: Some(ip.to_string()),
                ..Default::default()
            },
        )]);
        let ports = HashMap::from([(
            "6379/tcp".to_string(),
            Some(vec![PortBinding {
                host_ip: Some("0.0.0.0".into()),
                host_port: Some("32768".into()),
            }]),
        )]);
        ContainerInspectResponse {
            id: Some("0123456789abcdef0123".into()),
            name: Some("/cache-1".into()),
            config: Some(ContainerConfig {
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                env: Some(env.iter().map(|e| e.to_string()).collect()),
                exposed_ports: Some(vec!["6379/tcp".into()]),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                networks: Some(networks),
                ports: Some(ports),
                ..Default::default()
            }),
            state: Some(ContainerState {
                running: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const LAN: [(Ipv4Addr, Ipv4Addr); 1] =
        [(Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(255, 255, 255, 0))];

    #[test]
    fn labels_and_the_seed_convention_ask_for_services() {
        let c = container(
            &[(SERVICE_LABEL, "redis:6379, metrics:9121")],
            &[],
            "10.9.0.7",
        );
        let w = wanted_of(&c, &LAN);
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].service.as_str(), w[0].port), ("redis", 6379));
        assert_eq!(w[0].target, "10.9.0.7:6379".parse().unwrap());
        assert_eq!(w[0].tag.as_str(), "0123456789ab");
        assert_eq!(w[1].target, "10.9.0.7:9121".parse().unwrap());
        // SERVICE_PORT: the service is named after the container (or SERVICE_NAME).
        let c = container(&[], &["SERVICE_PORT=6379"], "10.9.0.7");
        assert_eq!(wanted_of(&c, &LAN)[0].service.as_str(), "cache-1");
        let c = container(
            &[],
            &["SERVICE_PORT=6379", "SERVICE_NAME=redis"],
            "10.9.0.7",
        );
        assert_eq!(wanted_of(&c, &LAN)[0].service.as_str(), "redis");
        // A label without a port takes the only exposed one.
        let c = container(&[(SERVICE_LABEL, "redis")], &[], "10.9.0.7");
        assert_eq!(wanted_of(&c, &LAN)[0].port, 6379);
        // DOMAIN_NAME (or the label) makes it an HTTP application.
        let c = container(
            &[],
            &["SERVICE_PORT=80", "DOMAIN_NAME=Blog.Example.com"],
            "10.9.0.7",
        );
        assert_eq!(
            wanted_of(&c, &LAN)[0].http_hosts[0].as_str(),
            "blog.example.com"
        );
        // Nothing asked: nothing announced.
        assert!(wanted_of(&container(&[], &["PATH=/bin"], "10.9.0.7"), &LAN).is_empty());
    }

    #[test]
    fn the_target_is_a_reachable_address_else_the_published_port() {
        let c = container(&[(SERVICE_LABEL, "redis:6379")], &[], "172.30.0.5");
        let w = wanted_of(&c, &LAN);
        assert_eq!(w[0].target, "127.0.0.1:32768".parse().unwrap());
        let c = container(&[(SERVICE_LABEL, "other:7000")], &[], "172.30.0.5");
        assert!(
            wanted_of(&c, &LAN).is_empty(),
            "no way to reach it: skipped"
        );
    }

    #[test]
    fn an_unhealthy_or_starting_container_is_down() {
        for (status, healthy) in [
            (HealthStatusEnum::HEALTHY, true),
            (HealthStatusEnum::UNHEALTHY, false),
            (HealthStatusEnum::STARTING, false),
        ] {
            let mut c = container(&[(SERVICE_LABEL, "redis:6379")], &[], "10.9.0.7");
            c.state = Some(ContainerState {
                running: Some(true),
                health: Some(Health {
                    status: Some(status),
                    ..Default::default()
                }),
                ..Default::default()
            });
            assert_eq!(wanted_of(&c, &LAN)[0].healthy, healthy, "{status:?}");
        }
    }
}
