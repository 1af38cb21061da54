//! One validated configuration from flags, environment and an optional TOML file. Everything
//! is checked here, before any socket is bound.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;

use crate::balance::Policy;
use crate::cli::{AnnounceArgs, Common, ConnectArgs, LogFormat};
use crate::discovery::DEFAULT_WAIT;
use crate::error::Failure;
use crate::identity::{MeshKey, MeshKeySource, load_or_create_default};
use crate::inject::RedisAuth;
use crate::names::{NodeName, ServiceName};
use crate::spec::{AnnounceSpec, ConnectSpec};
use crate::transport::TransportSettings;

/// A service to reach, with where its instances come from.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    /// The listener and service.
    pub spec: ConnectSpec,
    /// Where its backends come from.
    pub source: Source,
    /// Backends are plain TCP services (no ambassador, no encryption).
    pub direct: bool,
    /// Credentials injected into direct Redis backends.
    pub redis_auth: Option<RedisAuth>,
    /// How long a client connection waits for a first instance.
    pub wait: Duration,
    /// Balancing policy.
    pub policy: Policy,
}

/// Where a consumer's backends come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The mesh's own mDNS announcements (the default).
    Mesh,
    /// A fixed list (reloaded on SIGHUP with `run -c`).
    Static(Vec<SocketAddr>),
    /// DNS SRV records.
    DnsSrv {
        /// The SRV name, e.g. `_redis._tcp.example.lan`.
        name: String,
        /// The DNS server (default: the system's).
        server: Option<SocketAddr>,
    },
    /// A plain DNS-SD service type, e.g. `_redis._tcp.local.`.
    MdnsType(String),
}

/// Builds and checks one consumer's configuration; `what` names it in errors.
#[allow(clippy::too_many_arguments)]
fn connect_config(
    what: &str,
    spec: ConnectSpec,
    backends: &[String],
    discover: Option<&str>,
    dns_server: Option<SocketAddr>,
    direct: bool,
    redis_auth: Option<RedisAuth>,
    wait: Duration,
    policy: Policy,
) -> Result<ConnectConfig, Failure> {
    let err = |m: String| Failure::usage(format!("{what}: {m}"));
    let source = match (discover, backends.is_empty()) {
        (Some(_), false) => {
            return Err(err("give either --backend or --discover, not both".into()));
        }
        (None, false) => Source::Static(parse_backends(backends)?),
        (None, true) => Source::Mesh,
        (Some(d), true) => match d.split_once(':') {
            Some(("dns-srv", name)) if !name.is_empty() => Source::DnsSrv {
                name: name.to_string(),
                server: dns_server,
            },
            Some(("mdns", ty)) if ty.starts_with('_') => {
                let ty = ty.trim_end_matches('.');
                let ty = if ty.ends_with(".local") {
                    format!("{ty}.")
                } else {
                    format!("{ty}.local.")
                };
                Source::MdnsType(ty)
            }
            _ => {
                return Err(err(format!(
                    "bad --discover {d:?}: expected dns-srv:NAME (e.g. dns-srv:_redis._tcp.example.lan) or mdns:TYPE (e.g. mdns:_redis._tcp)"
                )));
            }
        },
    };
    if dns_server.is_some() && !matches!(source, Source::DnsSrv { .. }) {
        return Err(err("--dns-server needs --discover dns-srv:NAME".into()));
    }
    if direct && source == Source::Mesh {
        return Err(err(
            "--direct needs --backend HOST:PORT, --discover dns-srv:NAME or --discover mdns:TYPE (mesh announcements are ambassadors)".into(),
        ));
    }
    if !direct && matches!(source, Source::MdnsType(_)) {
        return Err(err(
            "--discover mdns:TYPE finds plain services: add --direct".into(),
        ));
    }
    if redis_auth.is_some() && !direct {
        return Err(err(
            "Redis credentials are injected by the provider's ambassador: give them to `announce`, or use --direct".into(),
        ));
    }
    if spec.listen_port.is_none() && source != Source::Mesh {
        return Err(err(format!(
            "the listen port is learnt from mesh announcements only: give {}:PORT",
            spec.service
        )));
    }
    Ok(ConnectConfig {
        spec,
        source,
        direct,
        redis_auth,
        wait,
        policy,
    })
}

/// The classic Docker link variables: `NAME_PORT_<port>_TCP=tcp://HOST:PORT`, as (service,
/// local port, target).
pub fn docker_links(
    vars: impl Iterator<Item = (String, String)>,
) -> Result<Vec<(ServiceName, u16, String)>, Failure> {
    let mut out = Vec::new();
    for (key, value) in vars {
        let Some(rest) = key.strip_suffix("_TCP") else {
            continue;
        };
        let Some((name, port)) = rest.rsplit_once("_PORT_") else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        if name.is_empty() || name.contains("_PORT_") {
            continue;
        }
        let bad = |why: &str| {
            Failure::usage(format!("{key}={value:?}: {why} (expected tcp://HOST:PORT)"))
        };
        let target = value
            .strip_prefix("tcp://")
            .ok_or_else(|| bad("not a tcp:// address"))?;
        if port == 0 || !target.contains(':') {
            return Err(bad("no port"));
        }
        let service = ServiceName::parse(&name.to_ascii_lowercase().replace('_', "-"))
            .map_err(|e| bad(&e.to_string()))?;
        out.push((service, port, target.to_string()));
    }
    out.sort_by_key(|(_, p, _)| *p);
    Ok(out)
}

/// One service to announce, with its per-service options.
#[derive(Debug, Clone)]
pub struct AnnounceConfig {
    /// Name, advertised port, target.
    pub spec: AnnounceSpec,
    /// Balancing weight published.
    pub weight: u32,
    /// Nodes admitted (`None`: every mesh member).
    pub allow: Option<Vec<NodeName>>,
    /// Credentials the provider injects (Redis AUTH).
    pub redis_auth: Option<RedisAuth>,
}

/// Where this node's identity comes from.
#[derive(Debug, Clone)]
pub enum IdentitySource {
    /// A shared mesh key; the node certificate is derived at start.
    MeshKey {
        /// The key.
        key: MeshKey,
        /// Where it came from.
        source: MeshKeySource,
    },
    /// A node bundle issued by `ambassador ca issue` (CA mode).
    Bundle(PathBuf),
}

/// Everything a node needs to run.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's name (in CA mode, the certificate's name wins).
    pub node: NodeName,
    /// Whether the name was given explicitly (it must then match a CA-issued certificate).
    pub node_explicit: bool,
    /// Identity source.
    pub identity: IdentitySource,
    /// Revoked certificate fingerprints.
    pub deny_file: Option<PathBuf>,
    /// Accept key files readable by others.
    pub insecure_key_permissions: bool,
    /// UDP address of the QUIC endpoint.
    pub bind: SocketAddr,
    /// mDNS interfaces (empty: all).
    pub interfaces: Vec<String>,
    /// Services to announce.
    pub announce: Vec<AnnounceConfig>,
    /// Interval of the provider's target health checks.
    pub health_interval: Duration,
    /// Services to reach.
    pub connect: Vec<ConnectConfig>,
    /// QUIC tunables.
    pub transport: TransportSettings,
    /// Bound on the graceful drain at stop.
    pub drain_timeout: Duration,
    /// The TOML file (`run -c`), re-read on SIGHUP for backends.
    pub config_file: Option<PathBuf>,
}

/// The TOML file of `ambassador run -c FILE`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Node name.
    pub node: Option<String>,
    /// Mesh key file.
    pub mesh_key_file: Option<PathBuf>,
    /// CA-mode node bundle directory.
    pub identity: Option<PathBuf>,
    /// Deny list of revoked certificate fingerprints.
    pub deny_file: Option<PathBuf>,
    /// QUIC bind address.
    pub bind: Option<SocketAddr>,
    /// mDNS interfaces.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// Peer timeout, e.g. "3s".
    pub peer_timeout: Option<String>,
    /// Bound on the graceful drain at stop, e.g. "30s".
    pub drain_timeout: Option<String>,
    /// Provider health-check interval, e.g. "2s".
    pub health_interval: Option<String>,
    /// `[announce.NAME]` sections.
    #[serde(default)]
    pub announce: BTreeMap<String, FileAnnounce>,
    /// `[connect.NAME]` sections.
    #[serde(default)]
    pub connect: BTreeMap<String, FileConnect>,
}

/// One `[announce.NAME]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAnnounce {
    /// Advertised port (default: the target's port).
    pub port: Option<u16>,
    /// Target address (default: 127.0.0.1:PORT).
    pub target: Option<String>,
    /// Balancing weight.
    pub weight: Option<u32>,
    /// Nodes admitted.
    pub allow: Option<Vec<String>>,
    /// Redis credentials file.
    pub redis_auth_file: Option<PathBuf>,
}

/// One `[connect.NAME]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConnect {
    /// Listen port (default: the advertised port).
    pub port: Option<u16>,
    /// Listen address: an IP, or IP:PORT.
    pub listen: Option<String>,
    /// Wait bound for a first instance, e.g. "5s".
    pub wait: Option<String>,
    /// Fixed backends: ambassador peers (HOST:QUIC_PORT), or TCP services with `direct`.
    #[serde(default)]
    pub backends: Vec<String>,
    /// `dns-srv:NAME` or `mdns:TYPE`.
    pub discover: Option<String>,
    /// DNS server for dns-srv discovery.
    pub dns_server: Option<SocketAddr>,
    /// Backends are plain TCP services.
    #[serde(default)]
    pub direct: bool,
    /// Redis credentials file for direct backends.
    pub redis_auth_file: Option<PathBuf>,
    /// Balancing policy.
    pub policy: Option<Policy>,
}

impl FileConfig {
    /// Reads and parses a file; errors name the file and the problem.
    pub fn load(path: &Path) -> Result<Self, Failure> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Failure::usage(format!("cannot read config file {}: {e}", path.display()))
        })?;
        toml::from_str(&text).map_err(|e| {
            let msg = e.message().to_string();
            let line = e.span().map(|s| text[..s.start].lines().count().max(1));
            match line {
                Some(l) => Failure::usage(format!("{}:{l}: {msg}", path.display())),
                None => Failure::usage(format!("{}: {msg}", path.display())),
            }
        })
    }
}

/// The mesh key from flags/env, or the default file (created on first use).
pub fn mesh_key(common: &Common) -> Result<(MeshKey, MeshKeySource), Failure> {
    match (&common.mesh_key, &common.mesh_key_file) {
        (Some(_), Some(_)) => Err(Failure::usage(
            "give either --mesh-key or --mesh-key-file, not both",
        )),
        (Some(text), None) => Ok((
            MeshKey::parse(text).map_err(Failure::usage)?,
            MeshKeySource::Inline,
        )),
        (None, Some(path)) => Ok((
            MeshKey::read_file(path, common.insecure_key_permissions).map_err(Failure::usage)?,
            MeshKeySource::File(path.clone()),
        )),
        (None, None) => {
            let (key, path, created) =
                load_or_create_default(common.insecure_key_permissions).map_err(Failure::usage)?;
            if created {
                tracing::info!(path = %path.display(), "created a new mesh key; copy it to the other hosts of this mesh (`ambassador mesh show`)");
            }
            Ok((key, MeshKeySource::Default(path)))
        }
    }
}

fn node_name(given: Option<&str>) -> Result<NodeName, Failure> {
    match given {
        Some(n) => NodeName::parse(n).map_err(|e| Failure::usage(format!("{e} (--node)"))),
        None => {
            let mut suffix = [0u8; 3];
            SystemRandom::new()
                .fill(&mut suffix)
                .map_err(|_| Failure::usage("the system random source failed"))?;
            Ok(NodeName::default_for_host(&hex::encode(suffix)))
        }
    }
}

fn parse_backends(list: &[String]) -> Result<Vec<SocketAddr>, Failure> {
    list.iter()
        .map(|b| {
            use std::net::ToSocketAddrs;
            b.to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| {
                    Failure::usage(format!(
                        "bad backend {b:?}: expected HOST:PORT of an ambassador's QUIC endpoint"
                    ))
                })
        })
        .collect()
}

impl NodeConfig {
    fn base(common: &Common, file: &FileConfig) -> Result<Self, Failure> {
        let mut common = common.clone();
        if common.mesh_key.is_none() && common.mesh_key_file.is_none() {
            common.mesh_key_file = file.mesh_key_file.clone();
        }
        let bundle = common.identity.clone().or(file.identity.clone());
        let identity = match bundle {
            Some(dir) => {
                if common.mesh_key.is_some() || common.mesh_key_file.is_some() {
                    return Err(Failure::usage(
                        "give either --identity (CA mode) or a mesh key, not both",
                    ));
                }
                IdentitySource::Bundle(dir)
            }
            None => {
                let (key, source) = mesh_key(&common)?;
                IdentitySource::MeshKey { key, source }
            }
        };
        let peer_timeout = match (common.peer_timeout, &file.peer_timeout) {
            (Some(t), _) => t,
            (None, Some(t)) => crate::cli::parse_duration(t)
                .map_err(|e| Failure::usage(format!("peer_timeout: {e}")))?,
            (None, None) => DEFAULT_PEER_TIMEOUT,
        };
        if peer_timeout < Duration::from_millis(300) {
            return Err(Failure::usage("--peer-timeout must be at least 300ms"));
        }
        let interfaces = if common.interfaces.is_empty() {
            file.interfaces.clone()
        } else {
            common.interfaces.clone()
        };
        let given = common.node.as_deref().or(file.node.as_deref());
        Ok(Self {
            node: node_name(given)?,
            node_explicit: given.is_some(),
            identity,
            deny_file: common.deny_file.clone().or(file.deny_file.clone()),
            insecure_key_permissions: common.insecure_key_permissions,
            bind: common
                .bind
                .or(file.bind)
                .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)),
            interfaces,
            announce: Vec::new(),
            health_interval: Duration::from_secs(2),
            connect: Vec::new(),
            transport: TransportSettings::with_peer_timeout(peer_timeout),
            drain_timeout: match (common.drain_timeout, &file.drain_timeout) {
                (Some(t), _) => t,
                (None, Some(t)) => crate::cli::parse_duration(t)
                    .map_err(|e| Failure::usage(format!("drain_timeout: {e}")))?,
                (None, None) => Duration::from_secs(30),
            },
            config_file: None,
        })
    }

    /// From `ambassador announce`.
    pub fn from_announce(common: &Common, args: &AnnounceArgs) -> Result<Self, Failure> {
        let specs = args
            .specs
            .iter()
            .map(|s| AnnounceSpec::parse(s).map_err(Failure::usage))
            .collect::<Result<Vec<_>, _>>()?;
        check_unique(specs.iter().map(|a| &a.service))?;
        let allow = parse_allow(&args.allow, "--allow")?;
        let redis_auth = redis_auth(
            args.redis_auth_file.as_deref(),
            common.insecure_key_permissions,
        )?;
        let mut cfg = Self::base(common, &FileConfig::default())?;
        cfg.announce = specs
            .into_iter()
            .map(|spec| AnnounceConfig {
                spec,
                weight: args.weight,
                allow: allow.clone(),
                redis_auth: redis_auth.clone(),
            })
            .collect();
        cfg.health_interval = check_interval(args.health_interval)?;
        Ok(cfg)
    }

    /// From `ambassador connect`.
    pub fn from_connect(common: &Common, args: &ConnectArgs) -> Result<Self, Failure> {
        let specs = args
            .specs
            .iter()
            .map(|s| ConnectSpec::parse(s).map_err(Failure::usage))
            .collect::<Result<Vec<_>, _>>()?;
        if (!args.backends.is_empty() || args.discover.is_some()) && specs.len() != 1 {
            return Err(Failure::usage(
                "--backend and --discover apply to exactly one SPEC; use `ambassador run -c FILE` for several",
            ));
        }
        let redis_auth = match (&args.redis_auth_file, args.direct) {
            (Some(f), _) => Some(
                RedisAuth::read_file(f, common.insecure_key_permissions).map_err(Failure::usage)?,
            ),
            // AMBASSADOR_REDIS_AUTH applies to direct backends (else it is the provider's).
            (None, true) => redis_auth(None, common.insecure_key_permissions)?,
            (None, false) => None,
        };
        let mut connect = Vec::new();
        for spec in specs {
            connect.push(connect_config(
                "connect",
                spec,
                &args.backends,
                args.discover.as_deref(),
                args.dns_server,
                args.direct,
                redis_auth.clone(),
                args.wait,
                args.policy,
            )?);
        }
        if args.from_env {
            let links = docker_links(std::env::vars())?;
            if links.is_empty() {
                return Err(Failure::usage(
                    "--from-env found no NAME_PORT_<port>_TCP=tcp://HOST:PORT variable",
                ));
            }
            for (service, port, target) in links {
                let spec = ConnectSpec {
                    service,
                    listen_ip: args.listen_ip,
                    listen_port: Some(port),
                };
                connect.push(connect_config(
                    "--from-env",
                    spec,
                    &[target],
                    None,
                    None,
                    true,
                    None,
                    args.wait,
                    args.policy,
                )?);
            }
        }
        check_unique(connect.iter().map(|c| &c.spec.service))?;
        let mut cfg = Self::base(common, &FileConfig::default())?;
        cfg.connect = connect;
        Ok(cfg)
    }

    /// From `ambassador run -c FILE`; flags given on the command line win over the file.
    pub fn from_file(common: &Common, file: &FileConfig) -> Result<Self, Failure> {
        let mut cfg = Self::base(common, file)?;
        if let Some(h) = &file.health_interval {
            let h = crate::cli::parse_duration(h)
                .map_err(|e| Failure::usage(format!("health_interval: {e}")))?;
            cfg.health_interval = check_interval(h)?;
        }
        let env_auth = redis_auth(None, cfg.insecure_key_permissions)?;
        for (name, a) in &file.announce {
            let section =
                |e: &dyn std::fmt::Display| Failure::usage(format!("[announce.{name}]: {e}"));
            let mut spec = name.clone();
            if let Some(p) = a.port {
                spec.push_str(&format!(":{p}"));
            }
            if let Some(t) = &a.target {
                spec.push_str(&format!("={t}"));
            }
            let spec = AnnounceSpec::parse(&spec).map_err(|e| section(&e))?;
            let weight = a.weight.unwrap_or(1);
            if !(1..=10_000).contains(&weight) {
                return Err(section(&"weight must be 1-10000"));
            }
            let allow = match &a.allow {
                Some(list) => parse_allow(list, &format!("[announce.{name}] allow"))?,
                None => None,
            };
            let redis_auth = match &a.redis_auth_file {
                Some(f) => Some(
                    RedisAuth::read_file(f, cfg.insecure_key_permissions)
                        .map_err(|e| section(&e))?,
                ),
                None => env_auth.clone(),
            };
            cfg.announce.push(AnnounceConfig {
                spec,
                weight,
                allow,
                redis_auth,
            });
        }
        for (name, c) in &file.connect {
            let mut spec = name.clone();
            if let Some(p) = c.port {
                spec.push_str(&format!(":{p}"));
            }
            if let Some(l) = &c.listen {
                spec.push_str(&format!("={l}"));
            }
            let spec = ConnectSpec::parse(&spec)
                .map_err(|e| Failure::usage(format!("[connect.{name}]: {e}")))?;
            let wait = match &c.wait {
                Some(w) => crate::cli::parse_duration(w)
                    .map_err(|e| Failure::usage(format!("[connect.{name}] wait: {e}")))?,
                None => DEFAULT_WAIT,
            };
            let redis_auth = match &c.redis_auth_file {
                Some(f) => Some(
                    RedisAuth::read_file(f, cfg.insecure_key_permissions)
                        .map_err(|e| Failure::usage(format!("[connect.{name}]: {e}")))?,
                ),
                None => None,
            };
            cfg.connect.push(connect_config(
                &format!("[connect.{name}]"),
                spec,
                &c.backends,
                c.discover.as_deref(),
                c.dns_server,
                c.direct,
                redis_auth,
                wait,
                c.policy.unwrap_or_default(),
            )?);
        }
        if cfg.announce.is_empty() && cfg.connect.is_empty() {
            return Err(Failure::usage(
                "the config file has no [announce.NAME] or [connect.NAME] section: nothing to do",
            ));
        }
        Ok(cfg)
    }
}

/// Redis credentials from a file, else from `AMBASSADOR_REDIS_AUTH` (the credentials
/// themselves), else none.
fn redis_auth(file: Option<&Path>, insecure: bool) -> Result<Option<RedisAuth>, Failure> {
    if let Some(f) = file {
        return RedisAuth::read_file(f, insecure)
            .map(Some)
            .map_err(Failure::usage);
    }
    match std::env::var("AMBASSADOR_REDIS_AUTH") {
        Ok(text) if !text.trim().is_empty() => RedisAuth::parse(&text, "in AMBASSADOR_REDIS_AUTH")
            .map(Some)
            .map_err(Failure::usage),
        _ => Ok(None),
    }
}

fn parse_allow(list: &[String], what: &str) -> Result<Option<Vec<NodeName>>, Failure> {
    if list.is_empty() {
        return Ok(None);
    }
    list.iter()
        .map(|n| NodeName::parse(n.trim()).map_err(|e| Failure::usage(format!("{what}: {e}"))))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Default of `--peer-timeout`.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(3);

fn check_interval(d: Duration) -> Result<Duration, Failure> {
    if d < Duration::from_millis(100) {
        return Err(Failure::usage("--health-interval must be at least 100ms"));
    }
    Ok(d)
}

fn check_unique<'a>(names: impl Iterator<Item = &'a ServiceName>) -> Result<(), Failure> {
    let mut seen = std::collections::HashSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err(Failure::usage(format!("service {n} is given twice")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_config_parses_and_rejects_typos() {
        let f: FileConfig = toml::from_str(
            r#"
            node = "node-a"
            [announce.redis]
            port = 6379
            target = "127.0.0.1:12345"
            [connect.web]
            port = 8080
            wait = "2s"
            "#,
        )
        .unwrap();
        assert_eq!(f.announce["redis"].port, Some(6379));
        assert!(toml::from_str::<FileConfig>("nod = \"x\"").is_err());
        assert!(toml::from_str::<FileConfig>("[announce.redis]\nprot = 1").is_err());
    }
}
