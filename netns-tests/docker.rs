//! Docker, for real (issue 13): a private `dockerd`, images made here from the host's own
//! binaries, and the seed's container layouts run with the release binary.
//!
//! [`Docker::start`] runs a dockerd of the test's own: data root, exec root, pid file, socket,
//! trust key and client configuration all live in one temporary directory, and it takes none of
//! the host's networking (no iptables rules, no forwarding, no masquerading, no default bridge,
//! no userland proxy). Its networks are user-defined bridges with explicit subnets in
//! 10.213.0.0/16 and bridge names `adk<pid>x<daemon>y<k>`, so a leak is easy to see and to sweep.
//! [`Docker::stop`] removes every container and network, stops the daemon, unmounts and deletes
//! what it left, and returns how the host looks then ([`HostState`]) with the list of what it had
//! to sweep after the daemon (processes, mounts, bridges: empty when the daemon cleaned up after
//! itself), so a test asserts that the host is as it found it; `Drop` does the same cleanup when
//! a test fails, after printing the logs of every container. One daemon per test (about 0.1 s to
//! start), so tests stay independent; the subnets differ, so they may run at once.
//!
//! Images: no registry is reachable, so [`Rootfs`] assembles a root filesystem from
//! busybox-static and host binaries with the libraries `ldd` names, and [`Docker::import`]
//! makes it an image; the ambassador image itself is the repository's `Dockerfile`, built with
//! those images as its bases and the release binary as `PREBUILT`.
//!
//! The scenarios (the `#[test]`s at the end) need root and dockerd; without them they print
//! `SKIPPED: docker tests need root and dockerd` and return.
//!
//! Found by trying dockerd 20.10 here: the pool flag is `--default-address-pool` (singular); the
//! trust key goes to `/etc/docker/key.json` unless `deprecated-key-path` (a daemon.json key, not
//! a flag) says otherwise; `/run/docker/plugins` and containerd's `/run/containerd/s` are made
//! whatever the roots; `--bridge=none` needs `docker build --network none`; the embedded DNS
//! (127.0.0.11) and multicast inside one network work with `--iptables=false`.

#![allow(dead_code)] // not every test uses every helper

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{AMBASSADOR, MS, Out, SEC, have_tools, now_epoch, report, wait_until};

/// Debian's client, the same version as the daemon (`/usr/local/bin/docker` may be another).
const DOCKER: &str = "/usr/bin/docker";

/// The daemon.
const DOCKERD: &str = "/usr/sbin/dockerd";

/// Prefix of the temporary directory of every daemon (followed by the test process id).
const DIR_PREFIX: &str = "ambd-";

/// Prefix of the bridges of the networks the harness makes: `adk<pid>x<daemon>y<network>`,
/// numbers in base 36 so that the name fits Linux's 15 bytes.
const BRIDGE_PREFIX: &str = "adk";

/// The address pool: every network is a /24 of it, with an explicit subnet.
const POOL: &str = "10.213.0.0/16";

/// Host-wide directories dockerd and its containerd make whatever their roots; removed at the
/// end when they were absent before and are empty then (children first: another daemon may
/// use them, and its containerd makes them again when it needs them).
const HOST_DIRS: &[&str] = &[
    "/run/docker/plugins",
    "/run/docker",
    "/run/containerd/s",
    "/run/containerd",
];

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Networks made by this process (their subnets and bridge names).
static NETWORKS: AtomicU32 = AtomicU32::new(0);

/// `n` in base 36 (short names for bridges).
fn b36(mut n: u32) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The host's own state, which the daemon must leave as it found it.

/// What dockerd changes on a host when it is let: the firewall, forwarding, bridge netfilter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    /// `iptables -S` (the filter table: policies and chains).
    pub iptables: String,
    /// `iptables -t nat -S` (where Docker's masquerading and DNAT would go).
    pub iptables_nat: String,
    /// `ip6tables -S`.
    pub ip6tables: String,
    /// `net.ipv4.ip_forward`.
    pub ip_forward: String,
    /// Whether `br_netfilter` is loaded (`/proc/sys/net/bridge` exists).
    pub br_netfilter: bool,
    /// `net.bridge.bridge-nf-call-iptables`, when br_netfilter is loaded.
    pub bridge_nf_call_iptables: Option<String>,
}

impl HostState {
    /// The state now.
    pub fn now() -> HostState {
        let text = |args: &[&str]| {
            Command::new(args[0])
                .args(&args[1..])
                .output()
                .map(|o| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_else(|e| format!("cannot run {}: {e}", args[0]))
        };
        let sysctl = |path: &str| fs::read_to_string(path).ok().map(|v| v.trim().to_string());
        HostState {
            iptables: text(&["iptables", "-S"]),
            iptables_nat: text(&["iptables", "-t", "nat", "-S"]),
            ip6tables: text(&["ip6tables", "-S"]),
            ip_forward: sysctl("/proc/sys/net/ipv4/ip_forward").unwrap_or_default(),
            br_netfilter: Path::new("/proc/sys/net/bridge").exists(),
            bridge_nf_call_iptables: sysctl("/proc/sys/net/bridge/bridge-nf-call-iptables"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running commands.

/// Runs `cmd` to completion (in a process group of its own), killing it after `timeout`.
fn run_cmd(mut cmd: Command, timeout: Duration) -> Out {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let base = std::env::temp_dir().join(format!(".ambd-run-{}-{n}", std::process::id()));
    cmd.stdin(Stdio::null()).process_group(0);
    crate::harness::run_to_end(cmd, &base, timeout)
}

/// Runs a setup or teardown step; `false` (and a line on stderr) when it fails.
fn sys(args: &[&str]) -> bool {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    let out = run_cmd(cmd, 30 * SEC);
    if !out.ok() {
        eprintln!(
            "docker harness: `{}` failed: {}",
            args.join(" "),
            out.stderr.trim()
        );
    }
    out.ok()
}

/// Whether `pid` runs (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// The processes whose command line mentions `needle` (a daemon's directory: its dockerd,
/// containerd and shims).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// The mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().to_string();
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    points
}

/// The links in the root namespace whose names start with `prefix`.
fn links_named(prefix: &str) -> Vec<String> {
    let out = run_cmd(
        {
            let mut c = Command::new("ip");
            c.args(["-o", "link", "show"]);
            c
        },
        10 * SEC,
    );
    out.stdout
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// The children of `pid` (from each process's `stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// `docker ARGS...` against the daemon at `host`, with the client configuration in `config`.
fn docker_cli(host: &str, config: &Path, args: &[&str], timeout: Duration) -> Out {
    let mut cmd = Command::new(DOCKER);
    cmd.env("DOCKER_HOST", host)
        .env("DOCKER_CONFIG", config)
        .args(args);
    run_cmd(cmd, timeout)
}

/// Removes every container (with its volumes) and every network through the daemon at `host`;
/// the daemon deletes their veths, bridges and mounts itself. A loaded daemon may still be
/// releasing a removed container's endpoint when the prune runs, which then keeps that network
/// (seen in a full suite run: one bridge left): both steps repeat until the daemon lists
/// neither containers nor networks of its own, for at most a minute.
fn remove_all(host: &str, config: &Path) {
    let list = |args: &[&str]| -> Vec<String> {
        let out = docker_cli(host, config, args, 30 * SEC).stdout;
        out.split_whitespace().map(str::to_string).collect()
    };
    wait_until(60 * SEC, 200 * MS, || {
        let ids = list(&["ps", "-aq"]);
        if !ids.is_empty() {
            let mut all = vec!["rm", "-f", "-v"];
            all.extend(ids.iter().map(String::as_str));
            docker_cli(host, config, &all, 60 * SEC);
        }
        docker_cli(host, config, &["network", "prune", "-f"], 60 * SEC);
        list(&["ps", "-aq"]).is_empty()
            && list(&["network", "ls", "-q", "--filter", "type=custom"]).is_empty()
    });
}

/// Sweeps what a daemon rooted at `dir` left once it is gone: its processes (the shims, and the
/// containers they ran, by pid), mounts, bridges named `bridge_prefix*`. Returns one line per
/// thing swept.
fn sweep(dir: &Path, bridge_prefix: &str) -> Vec<String> {
    let mut swept = Vec::new();
    let needle = dir.to_string_lossy().to_string();
    let mut procs = Vec::new();
    for pid in processes_mentioning(&needle) {
        // A shim's children are the containers' first processes: they go first, taking their
        // pid namespaces along.
        procs.extend(children_of(pid));
        procs.push(pid);
    }
    for &pid in &procs {
        swept.push(format!("process {pid} ({})", crate::harness::cmdline(pid)));
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    wait_until(5 * SEC, 10 * MS, || procs.iter().all(|&p| !alive(p)));
    for m in mounts_under(dir) {
        swept.push(format!("mount {m}"));
        if !sys(&["umount", &m]) {
            sys(&["umount", "-l", &m]);
        }
    }
    for b in links_named(bridge_prefix) {
        swept.push(format!("bridge {b}"));
        sys(&["ip", "link", "del", &b]);
    }
    swept
}

/// Stops the daemons of earlier test processes that died without cleaning up (SIGKILL): through
/// their sockets when they still run, then [`sweep`] and their directories.
fn sweep_stale() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = e.path();
        let daemon = fs::read_to_string(dir.join("docker.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|&d| alive(d) && crate::harness::cmdline(d).contains(&*dir.to_string_lossy()));
        if let Some(daemon) = daemon {
            let host = format!("unix://{}/docker.sock", dir.display());
            remove_all(&host, &dir.join("client"));
            let _ = Command::new("kill")
                .args(["-TERM", &daemon.to_string()])
                .status();
            wait_until(20 * SEC, 20 * MS, || !alive(daemon));
        }
        let swept = sweep(&dir, &format!("{BRIDGE_PREFIX}{}x", b36(pid)));
        let _ = fs::remove_dir_all(&dir);
        report(&format!(
            "docker harness: stopped the daemon of dead test process {pid} (running: {}), then swept {} item(s)",
            daemon.is_some(),
            swept.len()
        ));
    }
}

/// Whether the Docker tests can run here; prints the SKIPPED line when not.
fn docker_usable() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let why = if !root {
        Some("not running as root".to_string())
    } else if !Path::new(DOCKERD).exists() || !Path::new(DOCKER).exists() {
        Some(format!(
            "{DOCKERD} or {DOCKER} is missing (apt-get install docker.io)"
        ))
    } else {
        None
    };
    if let Some(why) = why {
        report(&format!(
            "SKIPPED: docker tests need root and dockerd — {why}"
        ));
        return false;
    }
    have_tools(
        &[
            "busybox",
            "ldd",
            "tar",
            "useradd",
            "redis-server",
            "redis-cli",
            "redis-benchmark",
        ],
        "docker tests (the images are made from host binaries)",
    )
}

// ---------------------------------------------------------------------------------------------
// The daemon.

/// A network made by [`Docker::network`]: its name and its /24.
#[derive(Debug, Clone)]
pub struct Network {
    pub name: String,
    /// The third octet of its subnet `10.213.X.0/24`.
    pub x: u8,
}

impl Network {
    /// The address `10.213.X.host` of this network (for `--ip`).
    pub fn ip(&self, host: u8) -> String {
        format!("10.213.{}.{host}", self.x)
    }
}

/// A private dockerd; see the module documentation.
pub struct Docker {
    /// `<pid>-<n>`: names the directory.
    pub id: String,
    dir: Option<tempfile::TempDir>,
    /// The directory's path (kept after `dir` is gone, for messages).
    root: PathBuf,
    /// `unix://.../docker.sock`, for `DOCKER_HOST`.
    host: String,
    daemon: Option<Child>,
    /// The host before the daemon started.
    pub before: HostState,
    /// Which of [`HOST_DIRS`] were absent before.
    absent: Vec<PathBuf>,
    /// Prefix of this daemon's bridges: `adk<pid>x<n>y`.
    bridge_prefix: String,
    stopped: bool,
}

impl Docker {
    /// Starts a private daemon, or returns `None` after the SKIPPED line.
    pub fn start() -> Option<Docker> {
        if !docker_usable() {
            return None;
        }
        sweep_stale();
        let mut docker = Docker::prepare();
        docker.daemon = Some(docker.spawn_daemon());
        // From here on, Drop undoes whatever was made, even if a step below panics.
        docker.wait_ready();
        Some(docker)
    }

    /// The host's state and the daemon's directory, with its configuration file.
    fn prepare() -> Docker {
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{pid}-{n}");
        let before = HostState::now();
        let absent = HOST_DIRS
            .iter()
            .map(PathBuf::from)
            .filter(|p| !p.exists())
            .collect();
        // Short: the socket paths of containerd and the shims grow from it.
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{id}-"))
            .tempdir()
            .expect("temp dir");
        let root = dir.path().to_path_buf();
        // Its own configuration file (not /etc/docker/daemon.json), which also keeps its trust
        // key out of /etc/docker.
        let config = serde_json::json!({ "deprecated-key-path": root.join("key.json") });
        fs::write(root.join("daemon.json"), config.to_string()).expect("write daemon.json");
        fs::create_dir(root.join("client")).expect("client config dir");
        Docker {
            id,
            dir: Some(dir),
            host: format!("unix://{}/docker.sock", root.display()),
            root,
            daemon: None,
            before,
            absent,
            bridge_prefix: format!("{BRIDGE_PREFIX}{}x{}y", b36(pid), b36(n)),
            stopped: false,
        }
    }

    /// Spawns dockerd: everything under its directory, none of the host's networking.
    fn spawn_daemon(&self) -> Child {
        let p = |name: &str| self.path(name).display().to_string();
        let log = fs::File::create(self.path("dockerd.log")).expect("dockerd log");
        Command::new(DOCKERD)
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--userland-proxy=false",
                "--bridge=none",
            ])
            .args(["--data-root", &p("data")])
            .args(["--exec-root", &p("exec")])
            .args(["--pidfile", &p("docker.pid")])
            .args(["--config-file", &p("daemon.json")])
            .args(["-H", &self.host])
            .args(["--default-address-pool", &format!("base={POOL},size=24")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn dockerd")
    }

    /// Waits until the daemon answers; fails the test if it exits or stays silent for 30 s.
    fn wait_ready(&mut self) {
        let t0 = Instant::now();
        let mut exited = None;
        let up = wait_until(30 * SEC, 20 * MS, || {
            exited = self
                .daemon
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            exited.is_some()
                || self
                    .cli(&["version", "--format", "{{.Server.Version}}"], 5 * SEC)
                    .ok()
        });
        if let Some(status) = exited {
            self.daemon = None;
            panic!("dockerd exited at start ({status}): see its log below");
        }
        assert!(up, "dockerd did not answer within 30 s");
        report(&format!(
            "docker harness: dockerd {} up in {:?} ({})",
            self.id,
            t0.elapsed(),
            self.root.display()
        ));
    }

    /// The daemon's directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// A path in the daemon's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The environment every client gets: this daemon, and a configuration of the test's own.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DOCKER_HOST".into(), self.host.clone()),
            (
                "DOCKER_CONFIG".into(),
                self.path("client").display().to_string(),
            ),
        ]
    }

    /// A command with the client environment ([`Docker::env`]).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(self.env());
        cmd
    }

    /// `docker ARGS...`, killed after `timeout`.
    pub fn cli(&self, args: &[&str], timeout: Duration) -> Out {
        docker_cli(&self.host, &self.path("client"), args, timeout)
    }

    /// `docker ARGS...`, which must succeed within 60 s; its stdout, trimmed.
    pub fn must(&self, args: &[&str]) -> String {
        let out = self.cli(args, 60 * SEC);
        assert!(out.ok(), "`docker {}` failed: {out:?}", args.join(" "));
        out.stdout.trim().to_string()
    }

    /// Makes an image `name` of a root filesystem (`docker import`).
    pub fn import(&self, rootfs: &Rootfs, name: &str) {
        let mut cmd = self.command("sh");
        cmd.args([
            "-c",
            &format!(
                "tar -C '{}' -c . | {DOCKER} import - '{name}'",
                rootfs.root.display()
            ),
        ]);
        let out = run_cmd(cmd, 60 * SEC);
        assert!(out.ok(), "docker import {name}: {out:?}");
    }

    /// `docker build --network none -t TAG [--build-arg K=V]... CONTEXT`, with BuildKit or the
    /// legacy builder; its output.
    pub fn build(&self, tag: &str, context: &Path, args: &[(&str, &str)], buildkit: bool) -> Out {
        let mut cmd = self.command(DOCKER);
        cmd.env("DOCKER_BUILDKIT", if buildkit { "1" } else { "0" })
            .args(["build", "--network", "none", "-t", tag]);
        for (k, v) in args {
            cmd.args(["--build-arg", &format!("{k}={v}")]);
        }
        cmd.arg(context);
        run_cmd(cmd, 120 * SEC)
    }

    /// A user-defined bridge network `name` with a /24 of its own and a bridge named
    /// `adk<pid>x<daemon>y<k>`.
    pub fn network(&self, name: &str) -> Network {
        let k = NETWORKS.fetch_add(1, Ordering::SeqCst);
        let x = ((std::process::id() * 7 + k) % 250 + 3) as u8;
        let net = Network {
            name: name.to_string(),
            x,
        };
        self.must(&[
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            &format!("10.213.{x}.0/24"),
            "-o",
            &format!(
                "com.docker.network.bridge.name={}{}",
                self.bridge_prefix,
                b36(k)
            ),
            name,
        ]);
        net
    }

    /// A container to be started with [`Container::start`].
    pub fn container(&self, name: &str, image: &str) -> Container<'_> {
        Container {
            docker: self,
            name: name.to_string(),
            image: image.to_string(),
            nets: Vec::new(),
            opts: Vec::new(),
            args: Vec::new(),
        }
    }

    /// `docker exec NAME ARGS...`, killed after 60 s.
    pub fn exec(&self, name: &str, args: &[&str]) -> Out {
        let mut all = vec!["exec", name];
        all.extend_from_slice(args);
        self.cli(&all, 60 * SEC)
    }

    /// What a container has logged (stdout and stderr).
    pub fn logs(&self, name: &str) -> String {
        let out = self.cli(&["logs", name], 30 * SEC);
        format!("{}{}", out.stdout, out.stderr)
    }

    /// Waits until the log of container `name` contains `needle`.
    pub fn wait_log(&self, name: &str, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, 50 * MS, || self.logs(name).contains(needle))
    }

    /// The first line of container `name`'s log with all of `needles`, polled until `timeout`.
    pub fn wait_log_line(&self, name: &str, needles: &[&str], timeout: Duration) -> Option<String> {
        let mut found = None;
        wait_until(timeout, 20 * MS, || {
            found = self
                .logs(name)
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .map(str::to_string);
            found.is_some()
        });
        found
    }

    /// `docker inspect -f FORMAT NAME`.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        self.must(&["inspect", "-f", format, name])
    }

    /// The address of container `name` on network `net`.
    pub fn ip(&self, name: &str, net: &Network) -> String {
        self.inspect(
            name,
            &format!(
                "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                net.name
            ),
        )
    }

    /// The daemon's socket.
    pub fn socket(&self) -> PathBuf {
        PathBuf::from(self.host.trim_start_matches("unix://"))
    }

    /// `docker rm -f NAME`.
    pub fn remove(&self, name: &str) {
        self.must(&["rm", "-f", name]);
    }

    /// Removes every container and network, stops the daemon, sweeps what it left and removes
    /// its directory; returns the host state then and the lines of what had to be swept (a
    /// clean daemon leaves nothing: the list is empty).
    pub fn stop(mut self) -> (HostState, Vec<String>) {
        let swept = self.teardown();
        (HostState::now(), swept)
    }

    fn teardown(&mut self) -> Vec<String> {
        if self.stopped {
            return Vec::new();
        }
        self.stopped = true;
        let mut swept = Vec::new();
        // 1. Containers and networks, through the daemon (it removes their veths and bridges).
        if self.daemon.is_some() {
            remove_all(&self.host, &self.path("client"));
        }
        // 2. The daemon: SIGTERM (it stops its containerd), SIGKILL after a grace.
        if let Some(mut child) = self.daemon.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let gone = wait_until(20 * SEC, 20 * MS, || {
                child.try_wait().ok().flatten().is_some()
            });
            if !gone {
                swept.push(format!("dockerd {pid} ignored SIGTERM for 20 s"));
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // 3. What it left: processes, mounts, bridges; then the directory and the host-wide
        //    directories it made.
        swept.extend(sweep(&self.root, &self.bridge_prefix));
        if let Some(dir) = self.dir.take() {
            if let Err(e) = dir.close() {
                swept.push(format!("directory {}: {e}", self.root.display()));
                let _ = fs::remove_dir_all(&self.root);
            }
        }
        for p in &self.absent {
            let _ = fs::remove_dir(p); // only when empty
        }
        swept
    }

    /// Prints the daemon's log tail and every container's log (a test failed).
    fn dump_logs(&self) {
        eprintln!("===== docker {}: logs =====", self.id);
        if self.daemon.is_some() {
            let names = self
                .cli(
                    &["ps", "-a", "--format", "{{.Names}} {{.Status}}"],
                    30 * SEC,
                )
                .stdout;
            for line in names.lines() {
                let name = line.split_whitespace().next().unwrap_or_default();
                let out = self.cli(&["logs", "--tail", "200", name], 30 * SEC);
                eprintln!("----- container {line} -----\n{}{}", out.stdout, out.stderr);
            }
        }
        let log = fs::read_to_string(self.path("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!("----- dockerd (last 40 lines) -----");
        for l in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("{l}");
        }
        eprintln!("===== end of docker logs =====");
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        if std::thread::panicking() {
            self.dump_logs();
        }
        let swept = self.teardown();
        if !swept.is_empty() {
            eprintln!("docker harness: swept after the daemon: {swept:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Containers.

/// How a container joins one network.
#[derive(Debug, Clone, Default)]
struct Attach {
    net: String,
    ip: Option<String>,
    alias: Option<String>,
}

/// A container about to be started: made by [`Docker::container`], joined to its networks
/// (the first at `docker create`, the others with `docker network connect` before it starts,
/// so its program sees all of them from the first instant), then started.
#[must_use = "a container is started by `start`"]
pub struct Container<'a> {
    docker: &'a Docker,
    name: String,
    image: String,
    nets: Vec<Attach>,
    opts: Vec<String>,
    args: Vec<String>,
}

impl Container<'_> {
    /// Joins `net`.
    pub fn on(mut self, net: &Network) -> Self {
        self.nets.push(Attach {
            net: net.name.clone(),
            ..Attach::default()
        });
        self
    }

    /// Joins `net` with the address `ip`.
    pub fn on_at(mut self, net: &Network, ip: &str) -> Self {
        self.nets.push(Attach {
            net: net.name.clone(),
            ip: Some(ip.to_string()),
            alias: None,
        });
        self
    }

    /// Joins `net`, where it is also called `alias` (what `--link NAME:alias` did).
    pub fn on_as(mut self, net: &Network, alias: &str) -> Self {
        self.nets.push(Attach {
            net: net.name.clone(),
            ip: None,
            alias: Some(alias.to_string()),
        });
        self
    }

    /// `-e KEY=VALUE`.
    pub fn env(self, key: &str, value: &str) -> Self {
        self.opts(&["-e", &format!("{key}={value}")])
    }

    /// `-v HOST:CONTAINER:ro`.
    pub fn read_only(self, host: &Path, inside: &str) -> Self {
        self.opts(&["-v", &format!("{}:{inside}:ro", host.display())])
    }

    /// Further `docker create` options (`--link`, `--entrypoint`...).
    pub fn opts(mut self, opts: &[&str]) -> Self {
        self.opts.extend(opts.iter().map(|s| s.to_string()));
        self
    }

    /// The command (after the image's entrypoint, if any).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Creates, connects and starts the container; returns its name.
    pub fn start(self) -> String {
        let d = self.docker;
        let mut create: Vec<String> = vec!["create".into(), "--name".into(), self.name.clone()];
        let (first, rest) = match self.nets.split_first() {
            Some((f, r)) => (Some(f), r),
            None => (None, &[][..]),
        };
        match first {
            Some(a) => {
                create.extend(["--network".into(), a.net.clone()]);
                if let Some(ip) = &a.ip {
                    create.extend(["--ip".into(), ip.clone()]);
                }
                if let Some(alias) = &a.alias {
                    create.extend(["--network-alias".into(), alias.clone()]);
                }
            }
            None => create.extend(["--network".into(), "none".into()]),
        }
        create.extend(self.opts.iter().cloned());
        create.push(self.image.clone());
        create.extend(self.args.iter().cloned());
        let create: Vec<&str> = create.iter().map(String::as_str).collect();
        d.must(&create);
        for a in rest {
            let mut connect = vec!["network", "connect"];
            if let Some(ip) = &a.ip {
                connect.extend(["--ip", ip]);
            }
            if let Some(alias) = &a.alias {
                connect.extend(["--alias", alias]);
            }
            connect.extend([a.net.as_str(), self.name.as_str()]);
            d.must(&connect);
        }
        d.must(&["start", &self.name]);
        self.name
    }
}

// ---------------------------------------------------------------------------------------------
// Images made here.

/// A root filesystem being assembled from host files: busybox-static for a shell and the
/// usual commands, host binaries with the libraries `ldd` names, a few files of `/etc`.
pub struct Rootfs {
    pub root: PathBuf,
}

impl Rootfs {
    /// A root with busybox (every applet as a link in `/bin`), `/tmp`, and an `/etc` with root
    /// in `passwd`, `group`, `shadow` and `gshadow`.
    pub fn new(root: PathBuf) -> Rootfs {
        for d in ["bin", "etc", "tmp", "root", "home", "usr/bin", "usr/sbin"] {
            fs::create_dir_all(root.join(d)).expect("mkdir in rootfs");
        }
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod");
        let busybox = which("busybox");
        fs::copy(&busybox, root.join("bin/busybox")).expect("copy busybox");
        let list = Command::new(&busybox)
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
            let link = root.join("bin").join(applet);
            if applet != "busybox" && !link.exists() {
                std::os::unix::fs::symlink("busybox", link).expect("applet link");
            }
        }
        let etc = [
            ("passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
            ("group", "root:x:0:\n", 0o644),
            ("shadow", "root:*:19000:0:99999:7:::\n", 0o600),
            ("gshadow", "root:*::\n", 0o600),
        ];
        for (name, text, mode) in etc {
            let p = root.join("etc").join(name);
            fs::write(&p, text).expect("write /etc file");
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
        }
        Rootfs { root }
    }

    /// Adds the host program `program` (a path, or a name on `PATH`; at the same path inside)
    /// and every library `ldd` names for it.
    pub fn with(self, program: &str) -> Self {
        let path = if program.starts_with('/') {
            PathBuf::from(program)
        } else {
            which(program)
        };
        self.copy_in(&path);
        self.libraries_of(&path)
    }

    /// Adds every library `ldd` names for the host binary `path` (not the binary).
    pub fn libraries_of(self, path: &Path) -> Self {
        let ldd = Command::new("ldd").arg(path).output().expect("ldd");
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
            // `/lib64/ld-linux-x86-64.so.2 (0x...)`; vdso has no path.
            if let Some(lib) = line.split_whitespace().find(|w| w.starts_with('/')) {
                self.copy_in(Path::new(lib));
            }
        }
        self
    }

    /// Adds the host file `path` (same path inside, symbolic links followed).
    pub fn file(self, path: &str) -> Self {
        self.copy_in(Path::new(path));
        self
    }

    fn copy_in(&self, path: &Path) {
        let dest = self.root.join(path.strip_prefix("/").unwrap_or(path));
        if dest.exists() {
            return;
        }
        fs::create_dir_all(dest.parent().unwrap()).expect("mkdir in rootfs");
        fs::copy(path, &dest)
            .unwrap_or_else(|e| panic!("copy {} into rootfs: {e}", path.display()));
    }
}

/// The full path of a program on `PATH`.
fn which(program: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!path.is_empty(), "{program} is not installed");
    PathBuf::from(path)
}

// ---------------------------------------------------------------------------------------------
// The scenarios.

/// Where the ambassador containers find the mesh key (mounted read-only).
const KEY_INSIDE: &str = "/run/secrets/mesh.key";

/// The command of every Redis container: no persistence, reachable from other containers.
const REDIS_SERVER: &[&str] = &[
    "redis-server",
    "--protected-mode",
    "no",
    "--save",
    "",
    "--appendonly",
    "no",
];

/// A client container's program: nothing, until the test `docker exec`s into it.
const IDLE: &[&str] = &["sleep", "1000000"];

/// The images the scenarios run, all made here.
struct Images {
    /// busybox, `useradd` and the libraries of the release binary: the Dockerfile's bases.
    base: String,
    /// busybox with the host's redis-server, redis-cli and redis-benchmark.
    redis: String,
    /// The repository's Dockerfile, built by the legacy builder from the release binary.
    ambassador: String,
}

impl Images {
    /// Imports the base and Redis images, and builds the ambassador image with both builders
    /// (checking what each made: see [`check_image`]).
    fn make(d: &Docker) -> Images {
        let t0 = Instant::now();
        let base = "amb-base:test".to_string();
        let rootfs = Rootfs::new(d.path("rootfs-base"))
            .with("useradd")
            .file("/etc/login.defs")
            // The binary itself comes with the Dockerfile.
            .libraries_of(Path::new(AMBASSADOR));
        d.import(&rootfs, &base);
        let redis = "amb-redis:test".to_string();
        let rootfs = Rootfs::new(d.path("rootfs-redis"))
            .with("redis-server")
            .with("redis-cli")
            .with("redis-benchmark");
        d.import(&rootfs, &redis);

        // The build context: the Dockerfile and the release binary, nothing to compile.
        let ctx = d.path("context");
        fs::create_dir(&ctx).expect("mkdir context");
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        fs::copy(manifest.join("Dockerfile"), ctx.join("Dockerfile")).expect("copy Dockerfile");
        if fs::hard_link(AMBASSADOR, ctx.join("ambassador")).is_err() {
            fs::copy(AMBASSADOR, ctx.join("ambassador")).expect("copy the binary");
        }
        let args = [
            ("BUILD_BASE", base.as_str()),
            ("RUNTIME_BASE", base.as_str()),
            ("PREBUILT", "ambassador"),
        ];
        let mut ambassador = String::new();
        for (tag, buildkit) in [("ambassador:test", false), ("ambassador:buildkit", true)] {
            let t = Instant::now();
            let out = d.build(tag, &ctx, &args, buildkit);
            assert!(
                out.ok(),
                "docker build ({}) of the Dockerfile from the release binary failed: {out:?}",
                if buildkit {
                    "BuildKit"
                } else {
                    "legacy builder"
                }
            );
            check_image(d, tag);
            report(&format!(
                "docker: built {tag} ({}) in {:?}",
                if buildkit {
                    "BuildKit"
                } else {
                    "legacy builder"
                },
                t.elapsed()
            ));
            if ambassador.is_empty() {
                ambassador = tag.to_string();
            }
        }
        report(&format!("FIGURE docker images made in {:?}", t0.elapsed()));
        Images {
            base,
            redis,
            ambassador,
        }
    }

    /// An ambassador container named `name` (also its node name) with the mesh key `key`
    /// mounted read-only.
    fn ambassador<'a>(&self, d: &'a Docker, name: &str, key: &Path) -> Container<'a> {
        d.container(name, &self.ambassador)
            .read_only(key, KEY_INSIDE)
            .env("AMBASSADOR_MESH_KEY_FILE", KEY_INSIDE)
            .env("AMBASSADOR_NODE", name)
    }
}

/// What a user of the image sees: `docker run IMAGE --version` is the release binary's version,
/// its entrypoint is `ambassador`, and it does not run as root.
fn check_image(d: &Docker, tag: &str) {
    let host = Command::new(AMBASSADOR)
        .arg("--version")
        .output()
        .expect("ambassador --version");
    let want = String::from_utf8_lossy(&host.stdout).trim().to_string();
    let got = d.must(&["run", "--rm", "--network", "none", tag, "--version"]);
    assert_eq!(got, want, "`docker run {tag} --version`");
    let entrypoint = d.inspect(tag, "{{json .Config.Entrypoint}} {{.Config.User}}");
    assert_eq!(
        entrypoint, r#"["/usr/local/bin/ambassador"] ambassador"#,
        "{tag}'s entrypoint and user"
    );
    let uid = d.must(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "id",
        tag,
        "-u",
    ]);
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "{tag} runs as uid {uid:?}, not as a user of its own"
    );
}

/// A mesh key file readable by the image's user (uid 10001) and no one else.
fn mesh_key(d: &Docker) -> PathBuf {
    let path = d.path("mesh.key");
    let out = Command::new(AMBASSADOR)
        .args(["mesh", "new", "--out", path.to_str().unwrap()])
        .env("XDG_CONFIG_HOME", d.dir())
        .output()
        .expect("ambassador mesh new");
    assert!(out.status.success(), "mesh new: {out:?}");
    std::os::unix::fs::chown(&path, Some(10001), Some(10001)).expect("chown the key");
    path
}

/// `redis-cli -h redis ARGS...` in client container `client`.
fn redis_cli(d: &Docker, client: &str, args: &[&str]) -> Out {
    let mut all = vec!["redis-cli", "-h", "redis"];
    all.extend_from_slice(args);
    d.exec(client, &all)
}

/// Polls `redis-cli -h redis PING` in `client` until PONG; how long it took, `None` at the
/// deadline.
fn wait_pong(d: &Docker, client: &str, timeout: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    wait_until(timeout, 20 * MS, || {
        redis_cli(d, client, &["PING"]).stdout.trim() == "PONG"
    })
    .then(|| t0.elapsed())
}

/// `SET key value` and `GET key` from `client` as `redis:6379`; then the value is in the Redis
/// container `redis` itself.
fn set_get(d: &Docker, client: &str, redis: &str, key: &str, value: &str) {
    let set = redis_cli(d, client, &["SET", key, value]);
    assert_eq!(set.stdout.trim(), "OK", "SET {key} from {client}: {set:?}");
    let get = redis_cli(d, client, &["GET", key]);
    assert_eq!(get.stdout.trim(), value, "GET {key} from {client}: {get:?}");
    let there = d.exec(redis, &["redis-cli", "GET", key]);
    assert_eq!(there.stdout.trim(), value, "{key} in the Redis container");
}

/// The seed's two-host layout (svendowideit/ambassador), one container a "host": `lan` joins the
/// two ambassadors; `back` the provider and Redis; `app` the consumer (there called `redis`) and
/// the client.
struct TwoHosts {
    lan: Network,
    back: Network,
    app: Network,
}

impl TwoHosts {
    /// Starts Redis (at `back`'s .10), the provider (`announce redis:6379=redis:6379`), the
    /// consumer (`connect redis=0.0.0.0:6379`) and an idle client container.
    fn start(d: &Docker, img: &Images, key: &Path) -> TwoHosts {
        let (lan, back, app) = (d.network("lan"), d.network("back"), d.network("app"));
        d.container("redis", &img.redis)
            .on_at(&back, &back.ip(10))
            .args(REDIS_SERVER)
            .start();
        img.ambassador(d, "provider", key)
            .on(&lan)
            .on(&back)
            .args(&["announce", "redis:6379=redis:6379"])
            .start();
        img.ambassador(d, "consumer", key)
            .on(&lan)
            .on_as(&app, "redis")
            .args(&["connect", "redis=0.0.0.0:6379"])
            .start();
        d.container("client", &img.redis)
            .on(&app)
            .args(IDLE)
            .start();
        TwoHosts { lan, back, app }
    }
}

/// `docker exec`'s stderr without the engine's own log lines (`time="..." level=warning
/// msg="cleanup warnings ..."`, which a loaded host makes runc print): what is left is the
/// command's.
fn without_engine_log(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !(l.starts_with("time=\"") && l.contains(" level=")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Point 3: PING, SET, GET and redis-benchmark from a client that only knows `redis:6379`,
/// through two ambassador containers that found each other by mDNS on `lan`.
fn two_hosts_redis(d: &Docker, img: &Images, key: &Path) -> TwoHosts {
    let t = TwoHosts::start(d, img, key);
    let took = wait_pong(d, "client", 20 * SEC)
        .expect("no PONG from the client through the ambassador containers within 20 s");
    report(&format!(
        "FIGURE docker two-host layout: first PONG {took:?} after the containers started"
    ));
    // On `app`, `redis` is the consumer ambassador, not the Redis container.
    let consumer_app = d.ip("consumer", &t.app);
    let lookup = d.exec("client", &["nslookup", "redis"]);
    assert!(
        lookup.stdout.contains(&consumer_app),
        "`redis` on the client's network is not the consumer ({consumer_app}): {lookup:?}"
    );
    // The consumer learnt the provider from an mDNS record carrying its address on `lan`.
    let provider_lan = d.ip("provider", &t.lan);
    let found = d
        .wait_log_line("consumer", &["discovered", "redis@provider"], 5 * SEC)
        .expect("the consumer logged no mDNS discovery of the provider");
    assert!(
        found.contains(&provider_lan),
        "the provider's record does not carry its `lan` address {provider_lan}: {found}"
    );
    set_get(
        d,
        "client",
        "redis",
        "greeting",
        &format!("hello from {}", d.id),
    );
    let bench = d.exec(
        "client",
        &[
            "redis-benchmark",
            "-h",
            "redis",
            "-q",
            "-n",
            "2000",
            "-t",
            "get,set",
        ],
    );
    assert!(bench.ok(), "redis-benchmark failed: {bench:?}");
    let results = crate::nodes::assert_benchmark(
        &format!("{}{}", bench.stdout, without_engine_log(&bench.stderr)),
        &["SET", "GET"],
    );
    report(&format!(
        "FIGURE docker redis-benchmark through the containers: {}",
        results.join("; ")
    ));
    t
}

/// Point 3, the seed's environment form: a consumer started with
/// `-e REDIS_PORT_6379_TCP=tcp://ADDR:6379` and `connect --from-env --listen-ip 0.0.0.0`
/// (plain TCP to Redis's address on `back`), reached by a client that `--link`s it as `redis`.
fn env_form(d: &Docker, img: &Images, key: &Path, t: &TwoHosts) {
    let app2 = d.network("app2");
    let redis_ip = d.ip("redis", &t.back);
    img.ambassador(d, "envcon", key)
        .on(&t.back)
        .on(&app2)
        .env("REDIS_PORT_6379_TCP", &format!("tcp://{redis_ip}:6379"))
        .args(&["connect", "--from-env", "--listen-ip", "0.0.0.0"])
        .start();
    d.container("client2", &img.redis)
        .on(&app2)
        .opts(&["--link", "envcon:redis"])
        .args(IDLE)
        .start();
    wait_pong(d, "client2", 15 * SEC).expect("no PONG through the --from-env consumer within 15 s");
    set_get(d, "client2", "redis", "env-form", "linked");
}

/// Point 5: `examples/compose.yaml` with Debian's docker-compose (v1) against this daemon and
/// the images made here: the client's benchmark runs clean, and `run client redis-cli` answers.
fn compose_demo(d: &Docker, img: &Images, key: &Path) {
    if !have_tools(
        &["docker-compose"],
        "the compose demo (examples/compose.yaml)",
    ) {
        return;
    }
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/compose.yaml");
    let project = format!("ambd{}", d.id.replace('-', "x"));
    let compose = |args: &[&str], timeout: Duration| {
        let mut cmd = d.command("docker-compose");
        cmd.env("AMBASSADOR_IMAGE", &img.ambassador)
            .env("REDIS_IMAGE", &img.redis)
            .env("MESH_KEY", key)
            .env("COMPOSE_INTERACTIVE_NO_CLI", "1")
            .args(["--ansi", "never"])
            .args(["-f", file.to_str().unwrap(), "-p", &project])
            .args(args);
        run_cmd(cmd, timeout)
    };
    let t0 = Instant::now();
    let up = compose(&["up", "-d"], 120 * SEC);
    assert!(up.ok(), "docker-compose up: {up:?}");
    let ps = compose(&["ps", "-q", "client"], 30 * SEC);
    let client = ps.stdout.trim().to_string();
    assert!(ps.ok() && !client.is_empty(), "no client container: {ps:?}");
    let code = d.cli(&["wait", &client], 60 * SEC);
    let logs = d.logs(&client);
    assert_eq!(
        code.stdout.trim(),
        "0",
        "the compose client exited {code:?}: {logs}"
    );
    assert!(
        logs.contains("PONG"),
        "the compose client saw no PONG: {logs}"
    );
    let results = crate::nodes::assert_benchmark(&logs, &["SET", "GET"]);
    report(&format!(
        "FIGURE docker-compose demo: up to a clean benchmark in {:?}: {}",
        t0.elapsed(),
        results.join("; ")
    ));
    // `run` detached, then `docker wait` and `logs`: compose v1's attached `run` may miss the
    // output of a container that exits at once.
    let name = format!("{project}_ping");
    let run = compose(
        &[
            "run",
            "-d",
            "--name",
            &name,
            "client",
            "redis-cli",
            "-h",
            "redis",
            "ping",
        ],
        60 * SEC,
    );
    assert!(run.ok(), "docker-compose run client: {run:?}");
    let code = d.cli(&["wait", &name], 60 * SEC);
    let ping = d.logs(&name);
    assert_eq!(
        (code.stdout.trim(), ping.trim()),
        ("0", "PONG"),
        "docker-compose run client redis-cli -h redis ping"
    );
    d.remove(&name);
    let down = compose(&["down", "-v", "--timeout", "5"], 120 * SEC);
    assert!(down.ok(), "docker-compose down: {down:?}");
    let left = d.must(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
    ]);
    assert!(
        left.is_empty(),
        "docker-compose down left containers: {left}"
    );
}

/// Point 4: after the daemon is gone, two namespaces on the netns harness's bridge still
/// exchange datagrams (what a FORWARD policy of DROP with br_netfilter would break).
fn netns_bridge_still_carries_traffic() {
    let (lan, [a, b]) = lan!("a", "b");
    let rx = lan.spawn(&b, "udp-rx", &["socat", "-u", "UDP4-RECV:7001", "STDOUT"]);
    assert!(lan.wait_udp_listen(&b, 7001, 5 * SEC), "socat did not bind");
    let msg = format!("after docker {}", lan.id);
    let send = format!("echo '{msg}' | socat -u STDIN UDP4-SENDTO:{}:7001", b.ip);
    // A datagram may be lost: send again until one arrives.
    let arrived = wait_until(5 * SEC, 50 * MS, || {
        lan.sh(&a, 5 * SEC, &send);
        lan.log(&rx).contains(&msg)
    });
    assert!(
        arrived,
        "after the Docker tests, namespace A's datagrams no longer reach B over the bridge"
    );
}

/// Issue 13, points 1-5: a private engine, the image from the release binary, the seed's
/// two-host layout and its environment form in containers, the compose demo; then the host is
/// as it was (firewall, forwarding, bridge netfilter; no bridge, mount, process or directory
/// left) and the netns tests' bridges still carry traffic.
#[test]
fn docker_seed_layouts_leave_the_host_as_found() {
    let t0 = Instant::now();
    let Some(d) = Docker::start() else {
        return;
    };
    let img = Images::make(&d);
    let key = mesh_key(&d);
    let t = two_hosts_redis(&d, &img, &key);
    env_form(&d, &img, &key, &t);
    compose_demo(&d, &img, &key);
    let before = d.before.clone();
    let (after, swept) = d.stop();
    assert!(swept.is_empty(), "the Docker daemon left behind: {swept:?}");
    assert_eq!(after, before, "the Docker daemon changed the host");
    netns_bridge_still_carries_traffic();
    report(&format!(
        "FIGURE docker tests (images, layouts, compose, host check): {:?}",
        t0.elapsed()
    ));
}

/// Point 3's first product change: a target given by name is resolved at each connection, so
/// a Redis container recreated with a new address (same name, same network) is followed
/// without restarting the provider.
#[test]
fn docker_recreated_redis_is_followed() {
    let Some(d) = Docker::start() else {
        return;
    };
    let img = Images::make(&d);
    let key = mesh_key(&d);
    let t = TwoHosts::start(&d, &img, &key);
    wait_pong(&d, "client", 20 * SEC).expect("no first PONG within 20 s");
    set_get(&d, "client", "redis", "before", "the first Redis");
    let provider_started = d.inspect("provider", "{{.State.StartedAt}} {{.RestartCount}}");
    let old_ip = d.ip("redis", &t.back);
    d.remove("redis");
    d.container("redis", &img.redis)
        .on_at(&t.back, &t.back.ip(20))
        .args(REDIS_SERVER)
        .start();
    let new_ip = d.ip("redis", &t.back);
    assert_ne!(
        old_ip, new_ip,
        "the new Redis container has the old address"
    );
    let took = wait_pong(&d, "client", 15 * SEC).unwrap_or_else(|| {
        panic!("the provider did not follow Redis from {old_ip} to {new_ip} within 15 s")
    });
    report(&format!(
        "FIGURE docker recreated Redis ({old_ip} -> {new_ip}): PONG again {took:?} after its start"
    ));
    set_get(&d, "client", "redis", "after", "the second Redis");
    assert_eq!(
        d.inspect("provider", "{{.State.StartedAt}} {{.RestartCount}}"),
        provider_started,
        "the provider container was restarted"
    );
    let before = d.before.clone();
    let (after, swept) = d.stop();
    assert!(swept.is_empty(), "the Docker daemon left behind: {swept:?}");
    assert_eq!(after, before, "the Docker daemon changed the host");
}

/// Point 3's second product change: a network attached to a running consumer container
/// (`docker network connect`) is used for mDNS within a second: a provider that only that
/// network reaches is discovered within 1.5 s.
#[test]
fn docker_network_connected_later_is_used_for_mdns() {
    let Some(d) = Docker::start() else {
        return;
    };
    let img = Images::make(&d);
    let key = mesh_key(&d);
    let t = TwoHosts::start(&d, &img, &key);
    wait_pong(&d, "client", 20 * SEC).expect("no first PONG within 20 s");
    let lan2 = d.network("lan2");
    img.ambassador(&d, "provider2", &key)
        .on(&lan2)
        .on(&t.back)
        .args(&["announce", "redis:6379=redis:6379"])
        .start();
    assert!(
        d.wait_log("provider2", "announcing", 10 * SEC),
        "provider2 did not announce"
    );
    let provider2_ip = d.ip("provider2", &lan2);
    let t0 = now_epoch();
    d.must(&["network", "connect", &lan2.name, "consumer"]);
    let line = d
        .wait_log_line("consumer", &["discovered", "redis@provider2"], 10 * SEC)
        .expect("the consumer never discovered provider2 on the network attached to it");
    let at = crate::harness::log_epoch(&line).expect("a time stamp on the consumer's log line");
    report(&format!(
        "FIGURE docker network connect -> provider discovered on it: {:.3} s",
        at - t0
    ));
    assert!(
        line.contains(&provider2_ip),
        "provider2's record does not carry its lan2 address {provider2_ip}: {line}"
    );
    assert!(
        at - t0 <= 1.5,
        "provider2 was discovered {:.2} s after `docker network connect` (want within 1.5 s)",
        at - t0
    );
    let before = d.before.clone();
    let (after, swept) = d.stop();
    assert!(swept.is_empty(), "the Docker daemon left behind: {swept:?}");
    assert_eq!(after, before, "the Docker daemon changed the host");
}

// ---------------------------------------------------------------------------------------------
// Point 4: automatic registration (`announce --docker`).

/// A client loop on the host against `addr` (a container network's address): one connection
/// per PING, each recorded as `{"start", "end", "ok"}`, until the file `stop` appears.
const PING_LOOP: &str = r#"
import json, os, socket, sys, time
host, port, out, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
with open(out, "w") as f:
    while not os.path.exists(stop):
        t0, ok = time.time(), False
        try:
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(b"PING\r\n")
            ok = s.recv(64) == b"+PONG\r\n"
            s.close()
        except Exception:
            pass
        f.write(json.dumps({"start": t0, "end": time.time(), "ok": ok}) + "\n")
        f.flush()
        time.sleep(0.002)
"#;

/// The loop's records: (start, ok).
fn loop_results(path: &Path) -> Vec<(f64, bool)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| (v["start"].as_f64().unwrap_or(0.0), v["ok"] == true))
        .collect()
}

/// The tags of `service`'s instances that `ambassador ls` (run in container `from`) sees.
fn ls_tags(d: &Docker, from: &str, service: &str) -> Vec<String> {
    let out = d.exec(from, &["ambassador", "ls", "--json", "--timeout", "400ms"]);
    let all: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap_or_default();
    let mut tags: Vec<String> = all
        .iter()
        .filter(|i| i["service"] == service)
        .filter_map(|i| i["tag"].as_str().map(str::to_string))
        .collect();
    tags.sort();
    tags
}

/// A container's short id: the tag of its instance.
fn short_id(d: &Docker, name: &str) -> String {
    d.inspect(name, "{{.Id}}")[..12].to_string()
}

/// Stops (or kills) `name` while the loop runs: the consumer drops it within 2 s (its log
/// says it was withdrawn), it leaves `ls`, and no command started after the engine said it
/// stopped fails.
fn stop_is_seamless(d: &Docker, name: &str, how: &[&str], results: &Path, left: usize) {
    let tag = short_id(d, name);
    let mut args = how.to_vec();
    args.push(name);
    d.must(&args);
    let stopped = now_epoch();
    // The withdrawal itself is the event: each `ls` browses for 400 ms in a `docker exec`, so
    // polling `ls` against a 2 s deadline measures the machine's load, not the mesh.
    let instance = format!("redis-{tag}@");
    let dropped = d.wait_log_line("consumer", &["withdrawn", &instance], 2 * SEC);
    let took = now_epoch() - stopped;
    assert!(
        dropped.is_some(),
        "`docker {}` of {name}: the consumer has not dropped it after 2 s; consumer log:\n{}",
        how[0],
        d.logs("consumer")
    );
    report(&format!(
        "FIGURE docker {} {name}: withdrawn at the consumer {took:.2} s after the engine returned",
        how[0]
    ));
    let gone = wait_until(10 * SEC, 20 * MS, || {
        let tags = ls_tags(d, "consumer", "redis");
        !tags.contains(&tag) && tags.len() == left
    });
    assert!(
        gone,
        "`docker {}` of {name}: withdrawn, yet still in `ls`: {:?}",
        how[0],
        ls_tags(d, "consumer", "redis")
    );
    // Let the loop run on a little past the change.
    std::thread::sleep(300 * MS);
    let after: Vec<(f64, bool)> = loop_results(results)
        .into_iter()
        .filter(|(t, _)| *t > stopped)
        .collect();
    let failed = after.iter().filter(|(_, ok)| !ok).count();
    assert!(after.len() > 20, "the client loop barely ran: {after:?}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} commands started after `docker {}` {name} failed",
        after.len(),
        how[0]
    );
}

/// Point 4: `announce --docker` announces the three labelled Redis containers (each its own
/// instance) and the one that follows the seed's `SERVICE_PORT` convention, never the
/// unlabelled one; a consumer on another "host" spreads 300 connections over all three; a
/// stopped and a killed container are dropped by the consumer within 2 s and leave `ls`, with
/// no failed command.
#[test]
fn docker_containers_are_announced_and_withdrawn() {
    let Some(d) = Docker::start() else {
        return;
    };
    let img = Images::make(&d);
    let key = mesh_key(&d);
    let (lan, back, app) = (d.network("lan"), d.network("back"), d.network("app"));
    for n in 1..=3 {
        d.container(&format!("cache{n}"), &img.redis)
            .on(&back)
            .opts(&["--label", "ambassador.service=redis:6379"])
            .args(REDIS_SERVER)
            .start();
    }
    d.container("legacy", &img.redis)
        .on(&back)
        .env("SERVICE_PORT", "6379")
        .args(REDIS_SERVER)
        .start();
    d.container("plain", &img.redis)
        .on(&back)
        .args(REDIS_SERVER)
        .start();
    // Containers with a healthcheck: one passes it, one never does.
    for (name, check) in [("checked-ok", "redis-cli ping"), ("checked-bad", "false")] {
        d.container(name, &img.redis)
            .on(&back)
            .opts(&["--label", "ambassador.service=checked:6379"])
            .opts(&["--health-cmd", check, "--health-interval", "300ms"])
            .opts(&["--health-retries", "1"])
            .args(REDIS_SERVER)
            .start();
    }
    let socket = format!("{}:/var/run/docker.sock", d.socket().display());
    img.ambassador(&d, "registrar", &key)
        .on(&lan)
        .on(&back)
        .opts(&["--user", "0", "-v", &socket])
        .args(&["announce", "--docker"])
        .start();
    img.ambassador(&d, "consumer", &key)
        .on(&lan)
        .on_as(&app, "redis")
        .args(&["connect", "redis=0.0.0.0:6379", "legacy=0.0.0.0:6380"])
        .start();
    let caches: Vec<String> = (1..=3)
        .map(|n| short_id(&d, &format!("cache{n}")))
        .collect();
    let mut want = caches.clone();
    want.sort();
    let all_seen = wait_until(20 * SEC, 100 * MS, || {
        ls_tags(&d, "consumer", "redis") == want
    });
    assert!(
        all_seen,
        "ls does not show the three labelled containers: {:?}; registrar log:\n{}",
        ls_tags(&d, "consumer", "redis"),
        d.logs("registrar")
    );
    assert_eq!(
        ls_tags(&d, "consumer", "legacy"),
        vec![short_id(&d, "legacy")],
        "SERVICE_PORT=6379 announces the container under its name"
    );
    let plain = short_id(&d, "plain");
    let announced = d.exec(
        "consumer",
        &["ambassador", "ls", "--json", "--timeout", "400ms"],
    );
    assert!(
        !announced.stdout.contains(&plain),
        "the unlabelled container is announced: {}",
        announced.stdout
    );
    d.container("consumer-client", &img.redis)
        .on(&app)
        .args(IDLE)
        .start();
    healthchecks_are_the_records_health(&d);
    spread_over_three(&d);
    // A client loop through the consumer while containers stop and die.
    let consumer_ip = d.ip("consumer", &app);
    let (results, stop) = (d.path("loop.jsonl"), d.path("loop.stop"));
    let mut client = Command::new("python3")
        .args(["-c", PING_LOOP, &consumer_ip, "6379"])
        .arg(&results)
        .arg(&stop)
        .spawn()
        .expect("python3");
    let warm = wait_until(5 * SEC, 20 * MS, || {
        loop_results(&results).iter().any(|r| r.1)
    });
    assert!(warm, "the client loop gets no PONG");
    stop_is_seamless(&d, "cache2", &["stop", "-t", "1"], &results, 2);
    stop_is_seamless(&d, "cache3", &["kill"], &results, 1);
    fs::write(&stop, b"").expect("stop the loop");
    let _ = client.wait();
    let before = d.before.clone();
    let (after, swept) = d.stop();
    assert!(swept.is_empty(), "the Docker daemon left behind: {swept:?}");
    assert_eq!(after, before, "the Docker daemon changed the host");
}

/// A container's healthcheck is its record's health: a healthy one is up, an unhealthy one down.
fn healthchecks_are_the_records_health(d: &Docker) {
    let (ok, bad) = (short_id(d, "checked-ok"), short_id(d, "checked-bad"));
    let health = |tag: &str| -> Option<bool> {
        let out = d.exec(
            "consumer",
            &["ambassador", "ls", "--json", "--timeout", "400ms"],
        );
        let all: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap_or_default();
        all.iter()
            .find(|i| i["tag"] == tag)
            .and_then(|i| i["up"].as_bool())
    };
    let settled = wait_until(10 * SEC, 100 * MS, || {
        health(&ok) == Some(true) && health(&bad) == Some(false)
    });
    assert!(
        settled,
        "healthchecks not mapped: checked-ok up={:?}, checked-bad up={:?}",
        health(&ok),
        health(&bad)
    );
}

/// 300 connections through the consumer (from a client container on `app`) reach every one of
/// the three containers.
fn spread_over_three(d: &Docker) {
    let count = |name: &str| -> u64 {
        let info = d.exec(name, &["redis-cli", "INFO", "stats"]).stdout;
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let before: Vec<u64> = (1..=3).map(|n| count(&format!("cache{n}"))).collect();
    let script = "n=0; for i in $(seq 300); do redis-cli -h redis PING | grep -q PONG && n=$((n+1)); done; echo $n";
    let out = d.exec("consumer-client", &["sh", "-c", script]);
    assert_eq!(
        out.stdout.trim(),
        "300",
        "300 PINGs through the consumer: {out:?}"
    );
    let spread: Vec<u64> = (1..=3)
        .map(|n| count(&format!("cache{n}")) - before[n - 1])
        .collect();
    report(&format!(
        "FIGURE docker 300 connections over three containers: {spread:?}"
    ));
    assert!(
        spread.iter().all(|c| *c >= 30),
        "300 connections are not spread over the three containers: {spread:?}"
    );
}
