//! The command line (clap). Every common option also reads an `AMBASSADOR_*` variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::transport::Congestion;
use crate::weight::{WEIGHT_DEFAULT, WEIGHT_MAX, WEIGHT_MIN};

/// A master-less service mesh for ad-hoc LANs: the Docker ambassador pattern over mDNS
/// discovery and mutually authenticated QUIC.
#[derive(Debug, Parser)]
#[command(name = "ambassador", version, about, long_about = None)]
#[command(
    after_help = "Quick start:\n  host B:  ambassador announce redis:6379\n  host A:  ambassador connect redis    # then: redis-cli -p 6379\nCopy the mesh key between hosts first: `ambassador mesh show` on one, a key file on the other."
)]
pub struct Cli {
    /// Options shared by every command.
    #[command(flatten)]
    pub common: Common,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command.
#[derive(Debug, Args, Clone, Default)]
pub struct Common {
    /// This node's name [default: host name plus a random suffix]
    #[arg(long, global = true, env = "AMBASSADOR_NODE", value_name = "NAME")]
    pub node: Option<String>,
    /// The mesh key (prefer --mesh-key-file or the variable: argv is visible in `ps`)
    #[arg(
        long,
        global = true,
        env = "AMBASSADOR_MESH_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub mesh_key: Option<String>,
    /// File holding the mesh key [default: $XDG_CONFIG_HOME/ambassador/mesh.key, created on first use]
    #[arg(
        long,
        global = true,
        env = "AMBASSADOR_MESH_KEY_FILE",
        value_name = "FILE"
    )]
    pub mesh_key_file: Option<PathBuf>,
    /// Accept key files that group or others can read
    #[arg(long, global = true, env = "AMBASSADOR_INSECURE_KEY_PERMISSIONS")]
    pub insecure_key_permissions: bool,
    /// UDP address of the QUIC endpoint, IP[:PORT]; a bare IP means an ephemeral port
    /// [default: 0.0.0.0:0, an ephemeral port on all addresses]
    #[arg(long, global = true, env = "AMBASSADOR_BIND", value_name = "ADDR")]
    pub bind: Option<String>,
    /// Network interface(s) for mDNS, comma-separated or repeated [default: all]
    #[arg(
        long = "interface",
        global = true,
        env = "AMBASSADOR_INTERFACE",
        value_delimiter = ',',
        value_name = "IF"
    )]
    pub interfaces: Vec<String>,
    /// Turn mDNS off: announce and discover only through --registry (or --discover/--backend)
    #[arg(
        long,
        global = true,
        env = "AMBASSADOR_NO_MDNS",
        conflicts_with = "interfaces"
    )]
    pub no_mdns: bool,
    /// CA mode: the node bundle made by `ambassador ca issue` (node.key, node.crt, ca.crt)
    #[arg(long, global = true, env = "AMBASSADOR_IDENTITY", value_name = "DIR")]
    pub identity: Option<PathBuf>,
    /// File of revoked certificate fingerprints (SHA-256 hex, one a line); reloaded on SIGHUP
    #[arg(long, global = true, env = "AMBASSADOR_DENY_FILE", value_name = "FILE")]
    pub deny_file: Option<PathBuf>,
    /// A peer silent this long is taken as dead: its instances are ejected and connections
    /// move elsewhere (QUIC keep-alive runs at a third of it) [default: 3s]
    #[arg(long, global = true, env = "AMBASSADOR_PEER_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub peer_timeout: Option<Duration>,
    /// Congestion control of the QUIC connections: loss-tolerant keeps its rate through random
    /// loss (as BBR does) and answers loss above 2 % of packets, ECN and blackouts as CUBIC;
    /// auto picks it where this host's TCP runs BBR (net.ipv4.tcp_congestion_control), cubic
    /// otherwise [default: auto]
    #[arg(long, global = true, env = "AMBASSADOR_CONGESTION", value_name = "CC")]
    pub congestion: Option<Congestion>,
    /// On SIGTERM/SIGINT: withdraw, refuse new streams, and wait this long at most for open
    /// connections to end (a second signal stops at once) [default: 30s]
    #[arg(long, global = true, env = "AMBASSADOR_DRAIN_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub drain_timeout: Option<Duration>,
    /// Serve the admin endpoint over HTTP: /metrics (Prometheus), /status (JSON), /healthz
    /// (503 while draining) and / (a status page). PORT, IP or IP:PORT; a bare port is on
    /// 127.0.0.1 [default: off]
    #[arg(long, global = true, env = "AMBASSADOR_ADMIN", value_name = "ADDR")]
    pub admin: Option<String>,
    /// Also publish to and watch a shared etcd registry, beyond one LAN (mDNS goes on):
    /// etcd://HOST:PORT[,HOST:PORT...]; also the endpoints of `--discover etcd-keys:...`
    /// [default: none; etcd-keys: 127.0.0.1:2379]
    #[arg(long, global = true, env = "AMBASSADOR_REGISTRY", value_name = "URL")]
    pub registry: Option<String>,
    /// With --registry: CA certificate (PEM) of etcd's TLS (the endpoints are then https)
    #[arg(
        long,
        global = true,
        env = "AMBASSADOR_REGISTRY_CA_FILE",
        value_name = "FILE"
    )]
    pub registry_ca_file: Option<PathBuf>,
    /// With --registry: client certificate (PEM) for etcd's TLS
    #[arg(
        long,
        global = true,
        env = "AMBASSADOR_REGISTRY_CERT_FILE",
        value_name = "FILE"
    )]
    pub registry_cert_file: Option<PathBuf>,
    /// With --registry-cert-file: its private key (PEM, mode 0600)
    #[arg(
        long,
        global = true,
        env = "AMBASSADOR_REGISTRY_KEY_FILE",
        value_name = "FILE"
    )]
    pub registry_key_file: Option<PathBuf>,
    /// With --registry: etcd user name (its password from --registry-password-file or
    /// AMBASSADOR_REGISTRY_PASSWORD)
    #[arg(
        long,
        global = true,
        env = "AMBASSADOR_REGISTRY_USER",
        value_name = "NAME"
    )]
    pub registry_user: Option<String>,
    /// File holding the etcd user's password (mode 0600)
    #[arg(
        long,
        global = true,
        env = "AMBASSADOR_REGISTRY_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub registry_password_file: Option<PathBuf>,
    /// Log format
    #[arg(
        long,
        global = true,
        env = "AMBASSADOR_LOG_FORMAT",
        value_enum,
        value_name = "FORMAT"
    )]
    pub log_format: Option<LogFormat>,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Announce local services and serve tunnel streams for them
    Announce(AnnounceArgs),
    /// Listen locally for announced services and carry connections to them
    Connect(ConnectArgs),
    /// Announce and connect from a TOML file
    Run(RunArgs),
    /// Browse the mesh: services, nodes, addresses, health
    Ls(LsArgs),
    /// Ask the running node(s) of this user on this host what they do
    Status(StatusArgs),
    /// Make or print the shared mesh key
    #[command(subcommand)]
    Mesh(MeshCommand),
    /// Stricter identity: an offline CA that issues node certificates
    #[command(subcommand)]
    Ca(CaCommand),
    /// Print a shell completion script to stdout, e.g. `ambassador completions bash >
    /// /etc/bash_completion.d/ambassador`
    Completions {
        /// The shell to complete for
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout, e.g. `ambassador man | man -l -`; with --out,
    /// write ambassador.1 and a page per subcommand into a directory instead
    Man {
        /// Write the pages into this (existing) directory
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// `announce` options.
#[derive(Debug, Args)]
pub struct AnnounceArgs {
    /// NAME[:PORT][=TARGET], e.g. redis:6379, redis:6379=127.0.0.1:12345 or
    /// redis:6379=redis:6379 (a host name is resolved at each connection)
    #[arg(required_unless_present = "docker", value_name = "SPEC")]
    pub specs: Vec<String>,
    /// An HTTP application: the host name(s) it answers to (repeat for several); an HTTP
    /// front (`connect --http`) routes requests for them here
    #[arg(long = "http-host", value_name = "NAME")]
    pub http_hosts: Vec<String>,
    /// With --http-host: a file of `Name: value` lines (mode 0600) the provider adds to every
    /// request of the application, e.g. `Authorization: Bearer ...`; clients never see them
    #[arg(long, value_name = "FILE", requires = "http_hosts")]
    pub http_header_file: Option<PathBuf>,
    /// Also announce every running container that asks for it (label
    /// ambassador.service=NAME[:PORT], or SERVICE_PORT=PORT in its environment), each its own
    /// instance, withdrawn when it stops
    #[arg(long)]
    pub docker: bool,
    /// The Docker engine's socket, unix:///PATH [default: $DOCKER_HOST, else
    /// unix:///var/run/docker.sock]
    #[arg(long, value_name = "URL", requires = "docker")]
    pub docker_host: Option<String>,
    /// Balancing weight published with each service (1-10000)
    #[arg(long, default_value_t = WEIGHT_DEFAULT, value_parser = clap::value_parser!(u32).range(i64::from(WEIGHT_MIN)..=i64::from(WEIGHT_MAX)))]
    pub weight: u32,
    /// How often each target is checked (TCP connect); a target that fails is marked down
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub health_interval: Duration,
    /// Admit streams only from these nodes (names from verified certificates; CA mode)
    #[arg(long, value_delimiter = ',', value_name = "NODES")]
    pub allow: Vec<String>,
    /// File with Redis credentials (`password` or `user password`): the ambassador sends AUTH
    /// to the target on each new connection. The variable holds the credentials themselves.
    #[arg(long, env = "AMBASSADOR_REDIS_AUTH_FILE", value_name = "FILE")]
    pub redis_auth_file: Option<PathBuf>,
}

/// `connect` options.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// NAME[:PORT][=LISTEN], e.g. redis, redis:16379 or redis=0.0.0.0:6379
    #[arg(required_unless_present_any = ["from_env", "http"], value_name = "SPEC")]
    pub specs: Vec<String>,
    /// How long a client connection waits for a first instance to appear
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub wait: Duration,
    /// Fixed backends instead of discovery (one SPEC only): ambassador peers (HOST:QUIC_PORT),
    /// or plain TCP services with --direct
    #[arg(long = "backend", value_name = "HOST:PORT")]
    pub backends: Vec<String>,
    /// Where backends come from: `dns-srv:NAME` (SRV records, re-resolved at their TTL),
    /// `mdns:TYPE` (a plain DNS-SD type such as _redis._tcp, with --direct) or
    /// `etcd-keys:/PREFIX` (dynamic-ambassador's etcd keys PREFIX/<port>/<id>/<ip>:<port>,
    /// watched; plain TCP, as --direct; listening on the first key's <port> unless the SPEC
    /// gives one; etcd at --registry) [default: the mesh's announcements, mDNS and
    /// --registry]
    #[arg(long, value_name = "SOURCE")]
    pub discover: Option<String>,
    /// DNS server for dns-srv discovery, IP[:PORT] (port 53 if none is given)
    /// [default: the system's resolver]
    #[arg(long, value_name = "ADDR")]
    pub dns_server: Option<String>,
    /// Backends are plain TCP services, not ambassadors: no QUIC, NO ENCRYPTION between hosts
    /// (the one-ambassador layout)
    #[arg(long)]
    pub direct: bool,
    /// With --direct: Redis credentials file (`password` or `user password`) sent as AUTH to
    /// each new backend connection
    #[arg(long, env = "AMBASSADOR_REDIS_AUTH_FILE", value_name = "FILE")]
    pub redis_auth_file: Option<PathBuf>,
    /// One HTTP front for every HTTP application of the mesh: requests are routed by their
    /// host to the application announced for it (`announce --http-host`). PORT, IP or
    /// IP:PORT; a bare port is on 127.0.0.1, a bare IP takes port 80
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// With --http: how long the front waits for an application's response head before it
    /// answers 504
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION", requires = "http")]
    pub http_timeout: Duration,
    /// Also listen for every Docker link variable NAME_PORT_<port>_TCP=tcp://HOST:PORT in the
    /// environment, forwarding port <port> directly (plain TCP) to HOST:PORT
    #[arg(long)]
    pub from_env: bool,
    /// Listen address of the --from-env listeners (0.0.0.0 inside a container)
    #[arg(long, default_value = "127.0.0.1", value_name = "IP")]
    pub listen_ip: std::net::IpAddr,
    /// How new connections (and, with --http, requests) are spread over healthy instances
    #[arg(long, value_enum, default_value_t = crate::balance::Policy::LeastConn)]
    pub policy: crate::balance::Policy,
}

/// `run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The TOML configuration file
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: PathBuf,
    /// Only check the file (and the flags): exit 0 if it is valid, 2 with the error if not;
    /// nothing is written (not even the default mesh key)
    #[arg(long)]
    pub check: bool,
}

/// `ls` options.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// How long to browse
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

/// `status` options.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// `ca` subcommands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Make a new CA (ca.key, mode 0600, and ca.crt) in a new directory; keep it offline
    Init {
        /// Directory to create the CA in
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Issue a node bundle (node.key, node.crt, ca.crt) for `--identity`
    Issue(IssueArgs),
}

/// `ca issue` options.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The node name the certificate carries
    #[arg(value_name = "NODE")]
    pub node: String,
    /// The CA directory made by `ca init`
    #[arg(long, value_name = "DIR")]
    pub ca: PathBuf,
    /// Services the node may announce, comma-separated [default: any]
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub services: Vec<String>,
    /// Days of validity
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub days: u32,
    /// Start of validity as YYYY-MM-DD (UTC) [default: now]
    #[arg(long, value_name = "DATE")]
    pub start: Option<String>,
    /// Directory to write the bundle to
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// `mesh` subcommands.
#[derive(Debug, Subcommand)]
pub enum MeshCommand {
    /// Print a fresh random mesh key (with --out, write it to a new 0600 file instead)
    New {
        /// Write the key to this new file (mode 0600) instead of printing it
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print the mesh key in use and its public mesh id
    Show,
}

/// Parses `500ms`, `5s`, `2m`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 500ms, 5s or 2m: {e}"))
}
