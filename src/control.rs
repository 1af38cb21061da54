//! The local status socket: each running node answers `ambassador status` on a Unix socket in
//! a per-user directory with a JSON snapshot of what it announces and reaches.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// What a node reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node name.
    pub node: String,
    /// Mesh id.
    pub mesh: String,
    /// QUIC socket address.
    pub quic: String,
    /// Process id.
    pub pid: u32,
    /// Announced services.
    pub announce: Vec<AnnounceStatus>,
    /// Reached services.
    pub connect: Vec<ConnectStatus>,
    /// Other nodes of this mesh announcing under this node's name (each: who, where, what).
    #[serde(default)]
    pub name_conflicts: Vec<String>,
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
}

/// One reached service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectStatus {
    /// Service name.
    pub service: String,
    /// Listen address, once bound.
    pub listen: Option<String>,
    /// Balancing policy.
    pub policy: String,
    /// Health and load per instance.
    pub instances: Vec<InstanceStatus>,
}

/// One instance of a reached service, as `status` reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceStatus {
    /// Instance key (the DNS-SD full name, or the backend address).
    pub instance: String,
    /// `healthy` or `ejected`.
    pub health: String,
    /// Open connections now.
    pub open: u64,
    /// Connections carried since start.
    pub total: u64,
    /// Consecutive failures.
    pub failures: u32,
    /// The last failure, if any.
    pub last_failure: Option<String>,
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
        let text = serde_json::to_string_pretty(&all)
            .map_err(|e| crate::error::Failure::Runtime(e.into()))?;
        println!("{text}");
        return Ok(());
    }
    if all.is_empty() {
        eprintln!(
            "no running ambassador node of this user on this host ({})",
            status_dir().display()
        );
    }
    for st in &all {
        println!(
            "node {} (pid {}, mesh {}, quic {})",
            st.node, st.pid, st.mesh, st.quic
        );
        for c in &st.name_conflicts {
            println!("  NAME CONFLICT: {c}");
        }
        for a in &st.announce {
            let health = if a.target_up { "up" } else { "DOWN" };
            println!(
                "  announce {}:{} -> {} target {health}",
                a.service, a.port, a.target
            );
        }
        for c in &st.connect {
            let listen = c.listen.as_deref().unwrap_or("(waiting for the port)");
            println!("  connect {} on {listen} policy {}", c.service, c.policy);
            for i in &c.instances {
                println!(
                    "    {:<48} {:<8} open {:>5} total {:>8} failures {}",
                    i.instance, i.health, i.open, i.total, i.failures
                );
            }
        }
    }
    Ok(())
}
