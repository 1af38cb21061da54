//! One validated configuration from flags, environment and an optional TOML file. Everything
//! is checked here, before any socket is bound, and checking writes nothing: the default mesh
//! key is created (on first use) by [`CheckedConfig::prepare`], the start-up step after it.
//! A SIGHUP reload goes through the same checks ([`reload_static_backends`]).

mod registry;

pub use registry::{FileRegistry, PASSWORD_ENV};

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;

use crate::addr::{self, AddrKind};
use crate::balance::Policy;
use crate::cli::{AnnounceArgs, Common, ConnectArgs, LogFormat, parse_duration};
use crate::discovery::DEFAULT_WAIT;
use crate::error::Failure;
use crate::identity::{MeshKey, MeshKeySource, default_key_path, load_or_create_default};
use crate::inject::RedisAuth;
use crate::names::{HostName, NodeName, ServiceName};
use crate::spec::{AnnounceSpec, ConnectSpec};
use crate::transport::{Congestion, TransportSettings};
use crate::weight::{WEIGHT_DEFAULT, check_weight};

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
    /// dynamic-ambassador's etcd keys under a prefix (`/services/redis`): plain TCP backends.
    EtcdKeys(String),
}

impl Source {
    /// The source that `--backend`/`backends`, `--discover`/`discover` and
    /// `--dns-server`/`dns_server` give together; `what` names the consumer in errors.
    fn parse(
        what: &str,
        backends: &[String],
        discover: Option<&str>,
        dns_server: Option<SocketAddr>,
    ) -> Result<Self, Failure> {
        let err = |m: &str| Failure::usage(format!("{what}: {m}"));
        let source = match (discover, backends.is_empty()) {
            (Some(_), false) => return Err(err("give either --backend or --discover, not both")),
            (None, false) => Source::Static(parse_backends(backends)?),
            (None, true) => Source::Mesh,
            (Some(d), true) => Self::discover(d, dns_server).ok_or_else(|| err(&format!(
                "bad --discover {d:?}: expected dns-srv:NAME (e.g. dns-srv:_redis._tcp.example.lan), mdns:TYPE (e.g. mdns:_redis._tcp) or etcd-keys:/PREFIX (e.g. etcd-keys:/services/redis)"
            )))?,
        };
        if dns_server.is_some() && !matches!(source, Source::DnsSrv { .. }) {
            return Err(err("--dns-server needs --discover dns-srv:NAME"));
        }
        Ok(source)
    }

    /// `dns-srv:NAME`, `mdns:TYPE` or `etcd-keys:/PREFIX`.
    fn discover(text: &str, dns_server: Option<SocketAddr>) -> Option<Self> {
        match text.split_once(':')? {
            ("etcd-keys", prefix)
                if prefix.starts_with('/')
                    && !prefix.trim_matches('/').is_empty()
                    && !prefix.contains(char::is_whitespace) =>
            {
                Some(Source::EtcdKeys(prefix.trim_end_matches('/').to_string()))
            }
            ("dns-srv", name) if !name.is_empty() => Some(Source::DnsSrv {
                name: name.to_string(),
                server: dns_server,
            }),
            ("mdns", ty) if ty.starts_with('_') => {
                let ty = ty.trim_end_matches('.');
                Some(Source::MdnsType(if ty.ends_with(".local") {
                    format!("{ty}.")
                } else {
                    format!("{ty}.local.")
                }))
            }
            _ => None,
        }
    }
}

impl ConnectConfig {
    /// Checks that the source, `direct`, the credentials and the listen port go together;
    /// `what` names the consumer in errors.
    fn check(mut self, what: &str) -> Result<Self, Failure> {
        let err = |m: String| Err(Failure::usage(format!("{what}: {m}")));
        // dynamic-ambassador's keys name plain TCP services.
        if matches!(self.source, Source::EtcdKeys(_)) {
            self.direct = true;
        }
        if self.direct && self.source == Source::Mesh {
            return err(
                "--direct needs --backend HOST:PORT, --discover dns-srv:NAME, mdns:TYPE or etcd-keys:/PREFIX (mesh announcements are ambassadors)".into(),
            );
        }
        if !self.direct && matches!(self.source, Source::MdnsType(_)) {
            return err("--discover mdns:TYPE finds plain services: add --direct".into());
        }
        if self.redis_auth.is_some() && !self.direct {
            return err(
                "Redis credentials are injected by the provider's ambassador: give them to `announce`, or use --direct".into(),
            );
        }
        let learnt = matches!(self.source, Source::Mesh | Source::EtcdKeys(_));
        if self.spec.listen_port.is_none() && !learnt {
            return err(format!(
                "the listen port is learnt from mesh announcements and etcd-keys only: give {}:PORT",
                self.spec.service
            ));
        }
        Ok(self)
    }
}

/// Fixed backends as `HOST:PORT` (host names are resolved now).
fn parse_backends(list: &[String]) -> Result<Vec<SocketAddr>, Failure> {
    list.iter()
        .map(|b| addr::BACKEND.parse("backend", b).map_err(Failure::usage))
        .collect()
}

/// An address flag's value (`--bind`, `--dns-server`), through the one address parser.
fn flag_addr(
    kind: AddrKind,
    flag: &'static str,
    text: Option<&str>,
) -> Result<Option<SocketAddr>, Failure> {
    text.map(|t| kind.parse(flag, t).map_err(Failure::usage))
        .transpose()
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
    /// The HTTP host names it answers to, when it is an HTTP application.
    pub http_hosts: Vec<HostName>,
    /// Headers the provider adds to every request of the HTTP application (credentials).
    pub http_headers: Option<std::sync::Arc<crate::inject::http::HttpHeaders>>,
}

/// The headers of `--http-header-file` / `http_header_file`, read and checked (an HTTP
/// application only).
fn http_headers(
    file: Option<&Path>,
    hosts: &[HostName],
    what: &str,
    insecure: bool,
) -> Result<Option<std::sync::Arc<crate::inject::http::HttpHeaders>>, Failure> {
    let Some(file) = file else {
        return Ok(None);
    };
    if hosts.is_empty() {
        return Err(Failure::usage(format!(
            "{what} applies to an HTTP application: give it its host names too (--http-host / http_hosts)"
        )));
    }
    let headers =
        crate::inject::http::HttpHeaders::read_file(file, insecure).map_err(Failure::usage)?;
    Ok(Some(std::sync::Arc::new(headers)))
}

/// Checks the HTTP host names of one announced service (`what` names the flag or key): valid
/// names, and all of them within one TXT string.
pub fn parse_http_hosts(given: &[String], what: &str) -> Result<Vec<HostName>, Failure> {
    let mut hosts = Vec::new();
    for h in given {
        let host = HostName::parse(h).map_err(|e| Failure::usage(format!("{e} ({what})")))?;
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    let txt = crate::discovery::http_hosts_txt(&hosts);
    if txt.len() > crate::discovery::MAX_HTTP_HOSTS_TXT {
        return Err(Failure::usage(format!(
            "{what}: the host names take {} bytes, more than the {} one DNS-SD record holds; announce fewer names",
            txt.len(),
            crate::discovery::MAX_HTTP_HOSTS_TXT
        )));
    }
    Ok(hosts)
}

/// Where this node's identity comes from, ready to use (after [`CheckedConfig::prepare`]).
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

/// Where this node's identity will come from, as checking leaves it: nothing is created yet.
#[derive(Debug, Clone)]
pub enum IdentityPlan {
    /// A mesh key given inline or in a named file, already read and checked.
    MeshKey {
        /// The key.
        key: MeshKey,
        /// Where it came from.
        source: MeshKeySource,
    },
    /// The default mesh key file, which may not exist yet: [`CheckedConfig::prepare`] reads
    /// it, or creates it on first use.
    DefaultMeshKey,
    /// A node bundle issued by `ambassador ca issue` (CA mode), loaded when the node starts.
    Bundle(PathBuf),
}

/// Everything a node needs to run. `I` is how far its identity is resolved: a
/// [`CheckedConfig`] (checked, nothing written) becomes a `NodeConfig` by
/// [`CheckedConfig::prepare`].
#[derive(Debug, Clone)]
pub struct NodeConfig<I = IdentitySource> {
    /// This node's name (in CA mode, the certificate's name wins).
    pub node: NodeName,
    /// Whether the name was given explicitly (it must then match a CA-issued certificate).
    pub node_explicit: bool,
    /// Identity source.
    pub identity: I,
    /// Revoked certificate fingerprints.
    pub deny_file: Option<PathBuf>,
    /// Accept key files readable by others.
    pub insecure_key_permissions: bool,
    /// UDP address of the QUIC endpoint.
    pub bind: SocketAddr,
    /// mDNS interfaces (empty: all).
    pub interfaces: Vec<String>,
    /// Whether mDNS runs (`--no-mdns`, `mdns = false`: it does not).
    pub mdns: bool,
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
    /// Log format (the flag, else the file's, else text).
    pub log_format: LogFormat,
    /// The admin endpoint's address, if it is on.
    pub admin: Option<SocketAddr>,
    /// The Docker engine's socket, when running containers are announced (`--docker`).
    pub docker: Option<String>,
    /// Where the HTTP front listens, if there is one (`connect --http`).
    pub http: Option<SocketAddr>,
    /// How long the HTTP front waits for a response head (then 504).
    pub http_timeout: Duration,
    /// How the HTTP front spreads requests over an application's instances.
    pub http_policy: Policy,
    /// The etcd registry the node publishes to and watches, if any.
    pub registry: Option<crate::discovery::etcd::RegistryConfig>,
    /// The TOML file (`run -c`), re-read on SIGHUP for backends.
    pub config_file: Option<PathBuf>,
    /// The flags this configuration was built with, for [`reload_static_backends`].
    pub flags: Flags,
}

/// A configuration that passed every check and wrote nothing; [`CheckedConfig::prepare`]
/// turns it into the [`NodeConfig`] a node runs with.
pub type CheckedConfig = NodeConfig<IdentityPlan>;

/// The flags and environment a configuration was built from, kept so that a SIGHUP reload
/// checks the file exactly as start-up did (flags still win). `Debug` hides them: they may
/// hold the mesh key.
#[derive(Clone, Default)]
pub struct Flags(pub Common);

impl std::fmt::Debug for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Flags(..)")
    }
}

/// The TOML file of `ambassador run -c FILE`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Node name.
    pub node: Option<String>,
    /// Mesh key file.
    pub mesh_key_file: Option<PathBuf>,
    /// CA-mode node bundle directory.
    pub identity: Option<PathBuf>,
    /// Deny list of revoked certificate fingerprints.
    pub deny_file: Option<PathBuf>,
    /// QUIC bind address, IP[:PORT] (a bare IP: an ephemeral port).
    #[serde(deserialize_with = "bind_addr")]
    pub bind: Option<SocketAddr>,
    /// mDNS interfaces.
    pub interfaces: Vec<String>,
    /// `mdns = false` turns mDNS off (as `--no-mdns` does).
    pub mdns: Option<bool>,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// Peer timeout, e.g. "3s".
    #[serde(deserialize_with = "duration")]
    pub peer_timeout: Option<Duration>,
    /// Congestion control, as `--congestion`.
    pub congestion: Option<Congestion>,
    /// Bound on the graceful drain at stop, e.g. "30s".
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Option<Duration>,
    /// Provider health-check interval, e.g. "2s".
    #[serde(deserialize_with = "duration")]
    pub health_interval: Option<Duration>,
    /// The `[admin]` table: the admin endpoint.
    pub admin: Option<FileAdmin>,
    /// The `[http]` table: the HTTP front.
    pub http: Option<FileHttp>,
    /// The `[registry]` table: the etcd registry.
    pub registry: Option<FileRegistry>,
    /// Announce the running containers that ask for it, as `announce --docker`.
    pub docker: bool,
    /// The Docker engine's socket (`unix:///PATH`; default `$DOCKER_HOST`, else
    /// `unix:///var/run/docker.sock`).
    pub docker_host: Option<String>,
    /// `[announce.NAME]` sections.
    pub announce: BTreeMap<String, FileAnnounce>,
    /// `[connect.NAME]` sections.
    pub connect: BTreeMap<String, FileConnect>,
}

/// The `[admin]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    /// Where the admin endpoint listens: PORT (on 127.0.0.1), IP or IP:PORT.
    #[serde(deserialize_with = "admin_addr")]
    pub listen: SocketAddr,
}

/// The `[http]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHttp {
    /// Where the HTTP front listens: PORT (on 127.0.0.1), IP (port 80) or IP:PORT.
    #[serde(deserialize_with = "http_addr")]
    pub listen: SocketAddr,
    /// How long to wait for an application's response head, e.g. "30s" (then 504).
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
}

/// The file's `[http] listen`, parsed as the file is read.
fn http_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    addr::HTTP
        .parse("listen", &text)
        .map_err(serde::de::Error::custom)
}

/// One `[announce.NAME]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileAnnounce {
    /// Advertised port (default: the target's port).
    pub port: Option<u16>,
    /// Target address (default: 127.0.0.1:PORT).
    pub target: Option<String>,
    /// Balancing weight, 1-10000 (checked as the file is read).
    #[serde(deserialize_with = "weight")]
    pub weight: Option<u32>,
    /// Nodes admitted.
    pub allow: Option<Vec<String>>,
    /// Redis credentials file.
    pub redis_auth_file: Option<PathBuf>,
    /// HTTP host names the application answers to (routed by an HTTP front), checked as the
    /// file is read.
    #[serde(deserialize_with = "host_names")]
    pub http_hosts: Vec<String>,
    /// A file of `Name: value` headers the provider adds to the application's requests.
    pub http_header_file: Option<PathBuf>,
}

/// One `[connect.NAME]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConnect {
    /// Listen port (default: the advertised port).
    pub port: Option<u16>,
    /// Listen address: an IP, or IP:PORT.
    pub listen: Option<String>,
    /// Wait bound for a first instance, e.g. "5s".
    #[serde(deserialize_with = "duration")]
    pub wait: Option<Duration>,
    /// Fixed backends: ambassador peers (HOST:QUIC_PORT), or TCP services with `direct`.
    pub backends: Vec<String>,
    /// `dns-srv:NAME`, `mdns:TYPE` or `etcd-keys:/PREFIX`.
    pub discover: Option<String>,
    /// DNS server for dns-srv discovery, IP[:PORT] (a bare IP: port 53).
    #[serde(deserialize_with = "dns_server_addr")]
    pub dns_server: Option<SocketAddr>,
    /// Backends are plain TCP services.
    pub direct: bool,
    /// Redis credentials file for direct backends.
    pub redis_auth_file: Option<PathBuf>,
    /// Balancing policy.
    pub policy: Option<Policy>,
}

/// A duration of the file, written as for the flags (`500ms`, `5s`, `2m`): parsed as the file
/// is read, so an error names its line.
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// The file's `bind`, parsed as the file is read, so an error names its line.
fn bind_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    file_addr(d, addr::BIND, "bind")
}

/// The file's `http_hosts`, each checked as the file is read, so an error names its line.
fn host_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    for n in &names {
        HostName::parse(n).map_err(serde::de::Error::custom)?;
    }
    Ok(names)
}

/// The file's `[admin] listen`, parsed as the file is read.
fn admin_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    addr::ADMIN
        .parse("listen", &text)
        .map_err(serde::de::Error::custom)
}

/// The file's `dns_server`, parsed as the file is read.
fn dns_server_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    file_addr(d, addr::DNS_SERVER, "dns_server")
}

/// An address key of the file, through the one address parser.
fn file_addr<'de, D: serde::Deserializer<'de>>(
    d: D,
    kind: AddrKind,
    key: &'static str,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    kind.parse(key, &text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A balancing weight of the file, checked as the file is read.
fn weight<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    check_weight(u32::deserialize(d)?)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

impl FileConfig {
    /// Reads and parses a file; errors name the file and the problem.
    pub fn load(path: &Path) -> Result<Self, Failure> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Failure::usage(format!("cannot read config file {}: {e}", path.display()))
        })?;
        toml::from_str(&text).map_err(|e| {
            let msg = e.message().to_string();
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
            match line {
                Some(l) => Failure::usage(format!("{}:{l}: {msg}", path.display())),
                None => Failure::usage(format!("{}: {msg}", path.display())),
            }
        })
    }
}

/// The mesh key that `inline` (`--mesh-key`) or `file` (`--mesh-key-file`, or the file's
/// `mesh_key_file`) names, read and checked; `None` when neither is given, for the default
/// file. Giving both is an error. Reads, never writes.
fn given_key(
    inline: Option<&str>,
    file: Option<&Path>,
    insecure: bool,
) -> Result<Option<(MeshKey, MeshKeySource)>, Failure> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(Failure::usage(
            "give either --mesh-key or --mesh-key-file, not both",
        )),
        (Some(text), None) => Ok(Some((
            MeshKey::parse(text).map_err(Failure::usage)?,
            MeshKeySource::Inline,
        ))),
        (None, Some(path)) => Ok(Some((
            MeshKey::read_file(path, insecure).map_err(Failure::usage)?,
            MeshKeySource::File(path.to_path_buf()),
        ))),
        (None, None) => Ok(None),
    }
}

/// Reads the default mesh key file, creating it on first use (and saying so in the log). The
/// one place where a key is created without being asked for.
pub fn ensure_default_key(insecure: bool) -> Result<(MeshKey, MeshKeySource), Failure> {
    let (key, path, created) = load_or_create_default(insecure).map_err(Failure::usage)?;
    if created {
        tracing::info!(path = %path.display(), "created a new mesh key; copy it to the other hosts of this mesh (`ambassador mesh show`)");
    }
    Ok((key, MeshKeySource::Default(path)))
}

/// The mesh key that `--mesh-key` or `--mesh-key-file` (or their variables) give, if any.
fn flag_key(common: &Common) -> Result<Option<(MeshKey, MeshKeySource)>, Failure> {
    given_key(
        common.mesh_key.as_deref(),
        common.mesh_key_file.as_deref(),
        common.insecure_key_permissions,
    )
}

/// The mesh key from flags/env, or the default file (created on first use): `mesh show`.
pub fn mesh_key(common: &Common) -> Result<(MeshKey, MeshKeySource), Failure> {
    match flag_key(common)? {
        Some(given) => Ok(given),
        None => ensure_default_key(common.insecure_key_permissions),
    }
}

/// The etcd registry that `--registry` and its flags give (`ls`), if any.
pub fn registry_flags(
    common: &Common,
) -> Result<Option<crate::discovery::etcd::RegistryConfig>, Failure> {
    registry::registry_config(common, None)
}

/// The mesh key from flags/env, else the default file if it exists and reads; never creates
/// one (`ls`).
pub fn existing_mesh_key(common: &Common) -> Result<Option<MeshKey>, Failure> {
    match flag_key(common)? {
        Some((key, _)) => Ok(Some(key)),
        None => Ok(default_key_path()
            .ok()
            .and_then(|p| MeshKey::read_file(&p, common.insecure_key_permissions).ok())),
    }
}

/// The identity that flags win over the file for: a CA bundle, a given mesh key, or the
/// default key file. A bundle and a mesh key together are an error.
fn identity_plan(common: &Common, file: &FileConfig) -> Result<IdentityPlan, Failure> {
    let key_file = match (&common.mesh_key, &common.mesh_key_file) {
        (None, None) => file.mesh_key_file.as_deref(),
        (_, flag) => flag.as_deref(),
    };
    match common.identity.as_ref().or(file.identity.as_ref()) {
        Some(_) if common.mesh_key.is_some() || key_file.is_some() => Err(Failure::usage(
            "give either --identity (CA mode) or a mesh key, not both",
        )),
        Some(dir) => Ok(IdentityPlan::Bundle(dir.clone())),
        None => Ok(
            match given_key(
                common.mesh_key.as_deref(),
                key_file,
                common.insecure_key_permissions,
            )? {
                Some((key, source)) => IdentityPlan::MeshKey { key, source },
                None => IdentityPlan::DefaultMeshKey,
            },
        ),
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

/// Default of `--peer-timeout`.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(3);

/// Default of `--drain-timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Default of `--http-timeout`.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Default of `--health-interval`.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);

impl CheckedConfig {
    /// What every command shares: identity, name, addresses, timeouts.
    fn base(common: &Common, file: &FileConfig) -> Result<Self, Failure> {
        let identity = identity_plan(common, file)?;
        let peer_timeout = common
            .peer_timeout
            .or(file.peer_timeout)
            .unwrap_or(DEFAULT_PEER_TIMEOUT);
        if peer_timeout < Duration::from_millis(300) {
            return Err(Failure::usage("--peer-timeout must be at least 300ms"));
        }
        let interfaces = if common.interfaces.is_empty() {
            file.interfaces.clone()
        } else {
            common.interfaces.clone()
        };
        if file.mdns == Some(false) && !file.interfaces.is_empty() {
            return Err(Failure::usage(
                "the config file sets both `mdns = false` and `interfaces`: keep one",
            ));
        }
        let given = common.node.as_deref().or(file.node.as_deref());
        Ok(NodeConfig {
            node: node_name(given)?,
            node_explicit: given.is_some(),
            identity,
            deny_file: common.deny_file.clone().or(file.deny_file.clone()),
            insecure_key_permissions: common.insecure_key_permissions,
            bind: flag_addr(addr::BIND, "--bind", common.bind.as_deref())?
                .or(file.bind)
                .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)),
            interfaces,
            mdns: !common.no_mdns && file.mdns.unwrap_or(true),
            announce: Vec::new(),
            health_interval: DEFAULT_HEALTH_INTERVAL,
            connect: Vec::new(),
            transport: TransportSettings {
                congestion: common
                    .congestion
                    .or(file.congestion)
                    .unwrap_or_default()
                    .resolve(),
                ..TransportSettings::with_peer_timeout(peer_timeout)
            },
            drain_timeout: common
                .drain_timeout
                .or(file.drain_timeout)
                .unwrap_or(DEFAULT_DRAIN_TIMEOUT),
            log_format: common.log_format.or(file.log_format).unwrap_or_default(),
            admin: flag_addr(addr::ADMIN, "--admin", common.admin.as_deref())?
                .or(file.admin.as_ref().map(|a| a.listen)),
            docker: None,
            http: file.http.as_ref().map(|h| h.listen),
            http_timeout: file
                .http
                .as_ref()
                .and_then(|h| h.timeout)
                .unwrap_or(DEFAULT_HTTP_TIMEOUT),
            http_policy: Policy::default(),
            registry: registry::registry_config(common, file.registry.as_ref())?,
            config_file: None,
            flags: Flags(common.clone()),
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
        let http_hosts = parse_http_hosts(&args.http_hosts, "--http-host")?;
        if !http_hosts.is_empty() && specs.len() != 1 {
            return Err(Failure::usage(
                "--http-host applies to exactly one SPEC; use `ambassador run -c FILE` for several applications",
            ));
        }
        let injected = http_headers(
            args.http_header_file.as_deref(),
            &http_hosts,
            "--http-header-file",
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
                http_hosts: http_hosts.clone(),
                http_headers: injected.clone(),
            })
            .collect();
        cfg.health_interval = check_interval(args.health_interval)?;
        cfg.docker = args
            .docker
            .then(|| crate::docker::socket_path(args.docker_host.as_deref()));
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
        let dns_server = flag_addr(addr::DNS_SERVER, "--dns-server", args.dns_server.as_deref())?;
        let what = "connect";
        // The same source for every SPEC (backend host names resolved once).
        let source = Source::parse(what, &args.backends, args.discover.as_deref(), dns_server)?;
        let mut connect = Vec::new();
        for spec in specs {
            connect.push(
                ConnectConfig {
                    spec,
                    source: source.clone(),
                    direct: args.direct,
                    redis_auth: redis_auth.clone(),
                    wait: args.wait,
                    policy: args.policy,
                }
                .check(what)?,
            );
        }
        if args.from_env {
            connect.extend(from_env(args)?);
        }
        check_unique(connect.iter().map(|c| &c.spec.service))?;
        let mut cfg = Self::base(common, &FileConfig::default())?;
        cfg.connect = connect;
        cfg.http = flag_addr(addr::HTTP, "--http", args.http.as_deref())?;
        cfg.http_timeout = args.http_timeout;
        cfg.http_policy = args.policy;
        cfg.check_discovery()?;
        Ok(cfg)
    }

    /// With mDNS off, every consumer still has a way to find its instances.
    fn check_discovery(&self) -> Result<(), Failure> {
        if self.mdns {
            return Ok(());
        }
        for c in &self.connect {
            match &c.source {
                Source::MdnsType(ty) => {
                    return Err(Failure::usage(format!(
                        "connect {}: --discover mdns:{ty} browses mDNS, which --no-mdns (mdns = false) turns off",
                        c.spec.service
                    )));
                }
                Source::Mesh if self.registry.is_none() => {
                    return Err(Failure::usage(format!(
                        "connect {}: with mDNS off (--no-mdns, mdns = false) the mesh is found only through a registry: add --registry etcd://HOST:PORT ([registry] in a file), or give --backend/--discover",
                        c.spec.service
                    )));
                }
                _ => {}
            }
        }
        if self.http.is_some() && self.registry.is_none() {
            return Err(Failure::usage(
                "--http finds applications in the mesh, and with mDNS off (--no-mdns, mdns = false) only a registry can: add --registry etcd://HOST:PORT ([registry] in a file)",
            ));
        }
        Ok(())
    }

    /// From a `run -c` file; flags given on the command line win over the file.
    pub fn from_file(common: &Common, file: &FileConfig) -> Result<Self, Failure> {
        let mut cfg = Self::base(common, file)?;
        if let Some(h) = file.health_interval {
            cfg.health_interval = check_interval(h)?;
        }
        let insecure = cfg.insecure_key_permissions;
        let env_auth = redis_auth(None, insecure)?;
        for (name, a) in &file.announce {
            cfg.announce
                .push(a.check(name, env_auth.as_ref(), insecure)?);
        }
        for (name, c) in &file.connect {
            cfg.connect.push(c.check(name, insecure)?);
        }
        // Section names differ in case, service names do not.
        check_unique(cfg.announce.iter().map(|a| &a.spec.service))?;
        check_unique(cfg.connect.iter().map(|c| &c.spec.service))?;
        cfg.docker = (file.docker || file.docker_host.is_some())
            .then(|| crate::docker::socket_path(file.docker_host.as_deref()));
        if cfg.announce.is_empty()
            && cfg.connect.is_empty()
            && cfg.docker.is_none()
            && cfg.http.is_none()
        {
            return Err(Failure::usage(
                "the config file has no [announce.NAME] or [connect.NAME] section: nothing to do",
            ));
        }
        cfg.check_discovery()?;
        Ok(cfg)
    }

    /// The start-up step after checking: resolves the identity, reading the default mesh key
    /// file or, the first time, creating it (the only write configuration does).
    pub fn prepare(self) -> Result<NodeConfig, Failure> {
        let insecure = self.insecure_key_permissions;
        self.map_identity(|plan| match plan {
            IdentityPlan::MeshKey { key, source } => Ok(IdentitySource::MeshKey { key, source }),
            IdentityPlan::DefaultMeshKey => {
                let (key, source) = ensure_default_key(insecure)?;
                Ok(IdentitySource::MeshKey { key, source })
            }
            IdentityPlan::Bundle(dir) => Ok(IdentitySource::Bundle(dir)),
        })
    }
}

impl<I> NodeConfig<I> {
    /// The same configuration with its identity mapped by `f`.
    fn map_identity<J>(
        self,
        f: impl FnOnce(I) -> Result<J, Failure>,
    ) -> Result<NodeConfig<J>, Failure> {
        Ok(NodeConfig {
            identity: f(self.identity)?,
            node: self.node,
            node_explicit: self.node_explicit,
            deny_file: self.deny_file,
            insecure_key_permissions: self.insecure_key_permissions,
            bind: self.bind,
            interfaces: self.interfaces,
            mdns: self.mdns,
            announce: self.announce,
            health_interval: self.health_interval,
            connect: self.connect,
            transport: self.transport,
            drain_timeout: self.drain_timeout,
            log_format: self.log_format,
            admin: self.admin,
            docker: self.docker,
            http: self.http,
            http_timeout: self.http_timeout,
            http_policy: self.http_policy,
            registry: self.registry,
            config_file: self.config_file,
            flags: self.flags,
        })
    }
}

/// `ambassador run -c FILE`: loads the file and checks it with `common` winning over it.
/// Writes nothing (`run -c FILE --check` stops here).
pub fn load_file(common: &Common, path: &Path) -> Result<CheckedConfig, Failure> {
    let file = FileConfig::load(path)?;
    let mut cfg = CheckedConfig::from_file(common, &file)?;
    cfg.config_file = Some(path.to_path_buf());
    Ok(cfg)
}

/// For a SIGHUP reload: the fixed backends of every `[connect.NAME]` section that has
/// `backends`, by service. The file goes through exactly the checks of start-up
/// ([`load_file`], with the flags the node was started with) and nothing is written; an error
/// means the whole file is refused, and the running backends should stay.
pub fn reload_static_backends(
    path: &Path,
    flags: &Flags,
) -> Result<BTreeMap<ServiceName, Vec<SocketAddr>>, Failure> {
    Ok(load_file(&flags.0, path)?
        .connect
        .into_iter()
        .filter_map(|c| match c.source {
            Source::Static(addrs) => Some((c.spec.service, addrs)),
            _ => None,
        })
        .collect())
}

/// `connect --from-env`: a direct consumer for each Docker link variable.
fn from_env(args: &ConnectArgs) -> Result<Vec<ConnectConfig>, Failure> {
    let links = docker_links(std::env::vars())?;
    if links.is_empty() {
        return Err(Failure::usage(
            "--from-env found no NAME_PORT_<port>_TCP=tcp://HOST:PORT variable",
        ));
    }
    let what = "--from-env";
    links
        .into_iter()
        .map(|(service, port, target)| {
            let spec = ConnectSpec {
                service,
                listen_ip: args.listen_ip,
                listen_port: Some(port),
            };
            ConnectConfig {
                spec,
                source: Source::parse(what, &[target], None, None)?,
                direct: true,
                redis_auth: None,
                wait: args.wait,
                policy: args.policy,
            }
            .check(what)
        })
        .collect()
}

/// The SPEC a file section stands for: `NAME[:PORT][=TAIL]`.
fn section_spec(name: &str, port: Option<u16>, tail: Option<&str>) -> String {
    let mut spec = name.to_string();
    if let Some(p) = port {
        spec.push(':');
        spec.push_str(&p.to_string());
    }
    if let Some(t) = tail {
        spec.push('=');
        spec.push_str(t);
    }
    spec
}

impl FileAnnounce {
    /// Checks the section `[announce.NAME]`; `env_auth` applies when it names no credentials.
    fn check(
        &self,
        name: &str,
        env_auth: Option<&RedisAuth>,
        insecure: bool,
    ) -> Result<AnnounceConfig, Failure> {
        let section = |e: &dyn std::fmt::Display| Failure::usage(format!("[announce.{name}]: {e}"));
        let spec = AnnounceSpec::parse(&section_spec(name, self.port, self.target.as_deref()))
            .map_err(|e| section(&e))?;
        let allow = match &self.allow {
            Some(list) => parse_allow(list, &format!("[announce.{name}] allow"))?,
            None => None,
        };
        let redis_auth = match &self.redis_auth_file {
            Some(f) => Some(RedisAuth::read_file(f, insecure).map_err(|e| section(&e))?),
            None => env_auth.cloned(),
        };
        let http_hosts =
            parse_http_hosts(&self.http_hosts, &format!("[announce.{name}] http_hosts"))?;
        let what = format!("[announce.{name}] http_header_file");
        let injected = http_headers(
            self.http_header_file.as_deref(),
            &http_hosts,
            &what,
            insecure,
        )?;
        Ok(AnnounceConfig {
            spec,
            weight: self.weight.unwrap_or(WEIGHT_DEFAULT),
            allow,
            redis_auth,
            http_hosts,
            http_headers: injected,
        })
    }
}

impl FileConnect {
    /// Checks the section `[connect.NAME]`.
    fn check(&self, name: &str, insecure: bool) -> Result<ConnectConfig, Failure> {
        let what = format!("[connect.{name}]");
        let section = |e: &dyn std::fmt::Display| Failure::usage(format!("{what}: {e}"));
        let spec = ConnectSpec::parse(&section_spec(name, self.port, self.listen.as_deref()))
            .map_err(|e| section(&e))?;
        let redis_auth = match &self.redis_auth_file {
            Some(f) => Some(RedisAuth::read_file(f, insecure).map_err(|e| section(&e))?),
            None => None,
        };
        let source = Source::parse(
            &what,
            &self.backends,
            self.discover.as_deref(),
            self.dns_server,
        )?;
        ConnectConfig {
            spec,
            source,
            direct: self.direct,
            redis_auth,
            wait: self.wait.unwrap_or(DEFAULT_WAIT),
            policy: self.policy.unwrap_or_default(),
        }
        .check(&what)
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

    fn key_flags() -> Common {
        Common {
            mesh_key: Some(MeshKey::generate().unwrap().to_text()),
            node: Some("node-a".into()),
            ..Common::default()
        }
    }

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn file_config_parses_and_rejects_typos() {
        let f = file(
            r#"
            node = "node-a"
            [announce.redis]
            port = 6379
            target = "127.0.0.1:12345"
            [connect.web]
            port = 8080
            wait = "2s"
            "#,
        );
        assert_eq!(f.announce["redis"].port, Some(6379));
        assert!(toml::from_str::<FileConfig>("nod = \"x\"").is_err());
        assert!(toml::from_str::<FileConfig>("[announce.redis]\nprot = 1").is_err());
    }

    #[test]
    fn checking_leaves_the_default_key_for_prepare() {
        let common = Common {
            node: Some("node-a".into()),
            ..Common::default()
        };
        let cfg =
            CheckedConfig::from_file(&common, &file("[announce.redis]\nport = 6379")).unwrap();
        assert!(matches!(cfg.identity, IdentityPlan::DefaultMeshKey));
        let cfg = CheckedConfig::from_file(&key_flags(), &file("[connect.redis]")).unwrap();
        assert!(matches!(
            cfg.identity,
            IdentityPlan::MeshKey {
                source: MeshKeySource::Inline,
                ..
            }
        ));
        let prepared = cfg.prepare().unwrap();
        assert!(matches!(prepared.identity, IdentitySource::MeshKey { .. }));
    }

    #[test]
    fn identity_precedence() {
        // An inline key wins over the file's key file (which is then not read at all).
        let f = file("mesh_key_file = \"/nonexistent/mesh.key\"\n[connect.redis]");
        assert!(CheckedConfig::from_file(&key_flags(), &f).is_ok());
        let f = file("identity = \"/nonexistent/bundle\"\n[connect.redis]");
        let e = CheckedConfig::from_file(&key_flags(), &f).unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
        let both = Common {
            mesh_key_file: Some("/nonexistent/mesh.key".into()),
            ..key_flags()
        };
        let e = existing_mesh_key(&both).unwrap_err();
        assert_eq!(
            e.to_string(),
            "give either --mesh-key or --mesh-key-file, not both"
        );
    }

    #[test]
    fn address_flags_take_a_bare_ip() {
        use clap::Parser;
        let key = MeshKey::generate().unwrap().to_text();
        let cli = crate::cli::Cli::try_parse_from([
            "ambassador",
            "--mesh-key",
            &key,
            "--bind",
            "127.0.0.1",
            "connect",
            "redis:16379",
            "--discover",
            "dns-srv:_redis._tcp.example.lan",
            "--dns-server",
            "10.0.0.53",
        ])
        .unwrap();
        let crate::cli::Command::Connect(args) = &cli.command else {
            panic!("not connect: {cli:?}");
        };
        let cfg = CheckedConfig::from_connect(&cli.common, args).unwrap();
        assert_eq!(cfg.bind, "127.0.0.1:0".parse().unwrap());
        assert_eq!(
            cfg.connect[0].source,
            Source::DnsSrv {
                name: "_redis._tcp.example.lan".into(),
                server: Some("10.0.0.53:53".parse().unwrap()),
            }
        );
    }

    #[test]
    fn sources() {
        let parse = |b: &[&str], d: Option<&str>| {
            let b: Vec<String> = b.iter().map(|s| s.to_string()).collect();
            Source::parse("x", &b, d, None)
        };
        assert_eq!(parse(&[], None).unwrap(), Source::Mesh);
        assert_eq!(
            parse(&["127.0.0.1:7443"], None).unwrap(),
            Source::Static(vec!["127.0.0.1:7443".parse().unwrap()])
        );
        assert_eq!(
            parse(&[], Some("mdns:_redis._tcp")).unwrap(),
            Source::MdnsType("_redis._tcp.local.".into())
        );
        assert!(matches!(
            parse(&[], Some("dns-srv:_r._tcp.lan")).unwrap(),
            Source::DnsSrv { .. }
        ));
        assert!(parse(&["127.0.0.1:1"], Some("mdns:_r._tcp")).is_err());
        assert!(parse(&[], Some("srv:x")).is_err());
        let e = Source::parse("x", &[], None, Some("127.0.0.1:53".parse().unwrap())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "x: --dns-server needs --discover dns-srv:NAME"
        );
    }

    #[test]
    fn reload_gives_the_static_backends_or_refuses_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(
            &path,
            "[connect.redis]\nport = 6400\nbackends = [\"127.0.0.1:7443\", \"127.0.0.2:7443\"]\n\
             [connect.web]\nport = 8080\n",
        )
        .unwrap();
        let flags = Flags(key_flags());
        let lists = reload_static_backends(&path, &flags).unwrap();
        let redis = ServiceName::parse("redis").unwrap();
        assert_eq!(lists.len(), 1);
        assert_eq!(lists[&redis].len(), 2);
        std::fs::write(
            &path,
            "[connect.redis]\nport = 6400\nbackends = [\"nope\"]\n",
        )
        .unwrap();
        let e = reload_static_backends(&path, &flags).unwrap_err();
        assert!(e.to_string().contains("bad backend \"nope\""), "{e}");
        // The same checks as start-up: a bad weight elsewhere refuses the file too.
        std::fs::write(
            &path,
            "[connect.redis]\nport = 6400\nbackends = [\"127.0.0.1:7443\"]\n\
             [announce.db]\nport = 5432\nweight = 0\n",
        )
        .unwrap();
        let e = reload_static_backends(&path, &flags)
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("run.toml:6: weight must be 1-10000"), "{e}");
        assert_eq!(format!("{flags:?}"), "Flags(..)");
    }

    #[test]
    fn mdns_off_needs_another_way_to_find_the_mesh() {
        use clap::Parser;
        let key = MeshKey::generate().unwrap().to_text();
        let connect = |extra: &[&str]| {
            let mut argv = vec!["ambassador", "--mesh-key", &key, "--no-mdns", "connect"];
            argv.extend_from_slice(extra);
            let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
            let crate::cli::Command::Connect(args) = &cli.command else {
                panic!("not connect: {cli:?}");
            };
            CheckedConfig::from_connect(&cli.common, args)
        };
        let refused = |r: Result<CheckedConfig, Failure>| match r {
            Err(Failure::Usage(msg)) => msg,
            other => panic!("not a usage error: {other:?}"),
        };
        assert!(refused(connect(&["redis"])).contains("--registry"));
        assert!(
            refused(connect(&[
                "redis:6379",
                "--direct",
                "--discover",
                "mdns:_redis._tcp"
            ]))
            .contains("mDNS")
        );
        let cfg = connect(&["redis", "--registry", "etcd://127.0.0.1:2379"]).unwrap();
        assert!(!cfg.mdns && cfg.registry.is_some());
        assert!(connect(&["redis:6379", "--backend", "127.0.0.1:6379", "--direct"]).is_ok());
        // --no-mdns and --interface contradict each other.
        assert!(
            crate::cli::Cli::try_parse_from([
                "ambassador",
                "--no-mdns",
                "--interface",
                "eth0",
                "ls"
            ])
            .is_err()
        );
        // The file's `mdns = false` is the same switch.
        let f = file("mdns = false\n[connect.redis]\nport = 6379\n");
        assert!(refused(CheckedConfig::from_file(&key_flags(), &f)).contains("--registry"));
        let f = file("mdns = false\ninterfaces = [\"eth0\"]\n[connect.redis]\nport = 6379\n");
        assert!(refused(CheckedConfig::from_file(&key_flags(), &f)).contains("keep one"));
        let f = file("[connect.redis]\nport = 6379\n");
        assert!(CheckedConfig::from_file(&key_flags(), &f).unwrap().mdns);
    }
}
