//! The local status socket: each running node answers `ambassador status` on a Unix socket in
//! a per-user directory with a JSON snapshot of what it announces and reaches; `ambassador
//! status` prints those snapshots as JSON or as a table (`table.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

mod table;

pub use table::{WIDTH, render_table};

/// What a node reports: `ambassador status --json` prints a list of these, and the admin
/// endpoint's `/status` serves one. A stable format (README, "Status JSON"): fields are only
/// ever added.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node name.
    pub node: String,
    /// Mesh id.
    pub mesh: String,
    /// QUIC socket address.
    pub quic: String,
    /// Congestion control of the QUIC connections (`--congestion`, resolved: never `auto`).
    #[serde(default)]
    pub congestion: String,
    /// Process id.
    pub pid: u32,
    /// The ambassador version.
    #[serde(default)]
    pub version: String,
    /// When the node started (Unix seconds).
    #[serde(default)]
    pub started_unix: u64,
    /// Seconds since it started.
    #[serde(default)]
    pub uptime_seconds: u64,
    /// Whether it drains (stops): new streams are refused, announcements withdrawn.
    #[serde(default)]
    pub draining: bool,
    /// This node's certificate.
    #[serde(default)]
    pub certificate: CertificateStatus,
    /// Announced services.
    pub announce: Vec<AnnounceStatus>,
    /// Reached services.
    pub connect: Vec<ConnectStatus>,
    /// QUIC connections to and from peers.
    #[serde(default)]
    pub peers: Vec<PeerStatus>,
    /// Other nodes of this mesh announcing under this node's name (each: who, where, what).
    #[serde(default)]
    pub name_conflicts: Vec<String>,
}

/// This node's certificate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// SHA-256 fingerprint, hex.
    pub fingerprint: String,
    /// When it expires (Unix seconds).
    pub not_after_unix: i64,
    /// Seconds until then (negative once expired).
    pub expires_in_seconds: i64,
}

/// Below this, `status` and the admin page warn that the certificate expires soon.
pub const EXPIRY_WARNING_SECONDS: i64 = 7 * 24 * 3600;

/// Beyond this, an expiry is "never": mesh-key certificates run to the year 4096.
pub const FAR_FUTURE_SECONDS: i64 = 100 * 365 * 24 * 3600;

impl CertificateStatus {
    /// Whether it expires within [`EXPIRY_WARNING_SECONDS`].
    pub fn expires_soon(&self) -> bool {
        self.expires_in_seconds < EXPIRY_WARNING_SECONDS
    }

    /// Whether the expiry is known (a node that could not read it reports 0).
    pub fn known(&self) -> bool {
        self.not_after_unix > 0
    }

    /// Whether `status` and the admin page warn: a known expiry that comes soon, or is past.
    pub fn warns(&self) -> bool {
        self.known() && self.expires_soon()
    }

    /// The expiry for a person: `2026-05-01 12:00 UTC (3 days left)`, `... (expired 2 days
    /// ago)`, `never (mesh key, year 4096)` beyond [`FAR_FUTURE_SECONDS`], or `unknown`.
    pub fn expiry_text(&self) -> String {
        let Some((date, year)) = crate::human::utc(self.not_after_unix).filter(|_| self.known())
        else {
            return "unknown".to_string();
        };
        let left = self.expires_in_seconds;
        if left > FAR_FUTURE_SECONDS {
            format!("never (mesh key, year {year})")
        } else if left <= 0 {
            format!(
                "{date} (expired {} ago)",
                crate::human::days(left.unsigned_abs())
            )
        } else {
            format!("{date} ({} left)", crate::human::days(left.unsigned_abs()))
        }
    }

    /// The warning, when [`Self::warns`]: `certificate expires in 3 days`, or `certificate
    /// expired 2 days ago`.
    pub fn warning(&self) -> Option<String> {
        let left = self.expires_in_seconds;
        let span = crate::human::days(left.unsigned_abs());
        self.warns().then(|| {
            if left <= 0 {
                format!("certificate expired {span} ago")
            } else {
                format!("certificate expires in {span}")
            }
        })
    }
}

/// One announced service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnnounceStatus {
    /// Service name.
    pub service: String,
    /// Advertised port.
    pub port: u16,
    /// Target address.
    pub target: String,
    /// Whether the health check finds the target up.
    pub target_up: bool,
    /// Balancing weight.
    #[serde(default)]
    pub weight: u32,
    /// Streams open now.
    #[serde(default)]
    pub open_streams: i64,
    /// Streams accepted since start.
    #[serde(default)]
    pub accepted_streams: u64,
    /// Streams refused since start (draining, target down, not allowed...).
    #[serde(default)]
    pub refused_streams: u64,
    /// Bytes from the target to consumers.
    #[serde(default)]
    pub bytes_sent: u64,
    /// Bytes from consumers to the target.
    #[serde(default)]
    pub bytes_received: u64,
    /// Which of this node's instances of the service it is (a container's short id), when
    /// it has several; the stream and byte counts are the service's, all instances together.
    #[serde(default)]
    pub tag: Option<String>,
}

/// One reached service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectStatus {
    /// Service name.
    pub service: String,
    /// Listen address, once bound.
    pub listen: Option<String>,
    /// Balancing policy (`least-conn`, `round-robin`, `random`).
    pub policy: String,
    /// Health and load per instance.
    pub instances: Vec<InstanceStatus>,
}

/// One instance of a reached service, as `status` reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceStatus {
    /// Instance key (the DNS-SD full name and certificate prefix, or the backend address).
    pub instance: String,
    /// The node announcing it, when known (mesh discovery).
    #[serde(default)]
    pub node: Option<String>,
    /// Where its connections go (a QUIC address, or a plain TCP backend's).
    #[serde(default)]
    pub address: Option<String>,
    /// `healthy`, `ejected` (after failures, or its peer is lost) or `down` (its node says its
    /// target fails the health check, or it drains).
    pub health: String,
    /// Open connections now.
    pub open: u64,
    /// Connections carried since start.
    pub total: u64,
    /// Consecutive failures.
    pub failures: u32,
    /// Bytes from clients to it.
    #[serde(default)]
    pub bytes_sent: u64,
    /// Bytes from it to clients.
    #[serde(default)]
    pub bytes_received: u64,
    /// The last failure, if any.
    pub last_failure: Option<String>,
    /// When it happened (Unix seconds).
    #[serde(default)]
    pub last_failure_unix: Option<u64>,
    /// Round-trip time of the QUIC connection to its node, when one is open.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    /// Which of its node's instances of the service it is, when the node has several.
    #[serde(default)]
    pub tag: Option<String>,
}

/// Which side opened a QUIC connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerDirection {
    /// This node dialled it (a consumer's pooled connection).
    Out,
    /// The peer dialled this node (its provider serves it).
    In,
}

impl std::fmt::Display for PeerDirection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Out => "out",
            Self::In => "in",
        })
    }
}

/// One QUIC connection to or from a peer, from quinn's statistics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    /// The peer's node name (from its verified certificate, when it names one).
    pub node: Option<String>,
    /// Its UDP address.
    pub address: String,
    /// Who dialled.
    pub direction: PeerDirection,
    /// Round-trip time estimate.
    pub rtt_ms: f64,
    /// Congestion window.
    pub cwnd_bytes: u64,
    /// UDP packets sent.
    pub sent_packets: u64,
    /// Packets lost.
    pub lost_packets: u64,
    /// Largest UDP payload the path carries now.
    pub mtu: u16,
}

/// The per-user directory of status sockets: `$XDG_RUNTIME_DIR/ambassador`, else
/// `/tmp/ambassador-<uid>`.
pub fn status_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("ambassador"),
        None => PathBuf::from(format!("/tmp/ambassador-{}", my_uid())),
    }
}

/// This process's user id (the owner of /proc/self).
fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.uid() != my_uid() || meta.permissions().mode() & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "{} must be a 0700 directory of this user",
            dir.display()
        )));
    }
    Ok(())
}

/// Serves status snapshots on `<status_dir>/<node>.sock` until `cancel` fires; removes the
/// socket afterwards. Failing to set it up only costs the status command (logged).
pub async fn serve(
    node: &str,
    snapshot: Arc<dyn Fn() -> NodeStatus + Send + Sync>,
    cancel: CancellationToken,
) {
    let dir = status_dir();
    if let Err(e) = prepare_dir(&dir) {
        warn!(dir = %dir.display(), error = %e, "no status socket");
        return;
    }
    let path = dir.join(format!("{node}.sock"));
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "no status socket");
            return;
        }
    };
    debug!(path = %path.display(), "status socket");
    loop {
        let mut stream = tokio::select! {
            () = cancel.cancelled() => break,
            acc = listener.accept() => match acc {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let status = snapshot();
        tokio::spawn(async move {
            if let Ok(mut json) = serde_json::to_vec(&status) {
                json.push(b'\n');
                let _ = stream.write_all(&json).await;
                let _ = stream.shutdown().await;
            }
        });
    }
    let _ = std::fs::remove_file(&path);
}

/// Asks every node of this user on this host for its status.
pub async fn query_all() -> Vec<NodeStatus> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(status_dir()) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    paths.sort();
    for path in paths {
        let ask = async {
            let mut s = UnixStream::connect(&path).await.ok()?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.ok()?;
            serde_json::from_slice::<NodeStatus>(&buf).ok()
        };
        if let Ok(Some(st)) = tokio::time::timeout(std::time::Duration::from_secs(2), ask).await {
            out.push(st);
        }
    }
    out
}

/// Runs `ambassador status`.
pub async fn print_status(json: bool) -> Result<(), crate::error::Failure> {
    let all = query_all().await;
    if json {
        return crate::commands::write_json(&all);
    }
    if all.is_empty() {
        eprintln!(
            "no running ambassador node of this user on this host ({})",
            status_dir().display()
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::commands::write_stdout(render_table(&all, now).as_bytes())
}
