//! A LAN of hosts made of Linux network namespaces, for multi-host tests of the real binary.
//!
//! Layout of one [`Lan`]: a "switch" namespace holding a bridge `br0`, and one namespace per host.
//! Each host has `lo` up and one veth (`eth0`, address `10.77.X.Y/24`, a `224.0.0.0/4` route for
//! mDNS) whose peer (`pY`) is a port of the bridge. Nothing is created in the root namespace, so
//! tests can run in parallel and leave the machine's own networking alone.
//!
//! A routed one ([`Lan::routed`]) has a bridge per subnet (`brK`, `10.77.(X+K).0/24`) and a
//! router namespace with a leg on each (`.1`, the hosts' default gateway; IPv4 forwarding on in
//! that namespace only, no multicast routing: mDNS stays inside a subnet).
//!
//! Everything a `Lan` makes is undone in `Drop` (so also when a test panics): the processes it
//! started (SIGTERM to their process group, SIGKILL after a grace), then every link and namespace,
//! then its temporary directory. When the test is panicking, the logs of every process are
//! printed first.

#![allow(dead_code)] // not every test uses every helper

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::os::unix::process::CommandExt;

/// The binary under test (the release build when run with `cargo test --release`).
pub const AMBASSADOR: &str = env!("CARGO_BIN_EXE_ambassador");

/// One second, the unit of the tests' deadlines.
pub const SEC: Duration = Duration::from_secs(1);

/// One millisecond, the unit of their poll intervals.
pub const MS: Duration = Duration::from_millis(1);

/// Prefix of every namespace this harness creates (followed by the test process id).
const NS_PREFIX: &str = "ambt-";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `let (lan, [a, b]) = lan!("a", "b");`: a [`Lan`] with one host per name, and those hosts in
/// that order; returns from the test (after the SKIPPED line) when network namespaces cannot
/// be made here.
macro_rules! lan {
    ($($name:literal),+ $(,)?) => {
        match $crate::harness::Lan::new(&[$($name),+]) {
            Some(lan) => {
                let hosts = [$(lan.host($name)),+];
                (lan, hosts)
            }
            None => return,
        }
    };
}

/// Writes one line to the real stderr, past the test harness's output capture, so that it shows
/// in CI logs (a SKIPPED notice, a benchmark figure).
pub fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Polls `cond` every `every` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Seconds since the Unix epoch: the clock of the client scripts' time stamps, and of
/// [`log_epoch`].
pub fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// The time stamp that starts a plain log line (`2026-11-22T05:50:04.490514Z  INFO ...`), as
/// seconds since the Unix epoch.
pub fn log_epoch(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let h: i64 = t.next()?.parse().ok()?;
    let mi: i64 = t.next()?.parse().ok()?;
    let s: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3_600 + mi * 60) as f64 + s)
}

/// Resident memory of a running process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// The command line of a running process, NULs shown as spaces.
pub fn cmdline(pid: u32) -> String {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).expect("read /proc cmdline");
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

/// Whether every program in `progs` is installed; prints a SKIPPED line for `what` if not.
pub fn have_tools(progs: &[&str], what: &str) -> bool {
    let missing: Vec<&str> = progs
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {p}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .collect();
    if !missing.is_empty() {
        report(&format!(
            "SKIPPED: {what} — not installed: {}",
            missing.join(", ")
        ));
    }
    missing.is_empty()
}

/// `ip -n NS WORDS...` in the root namespace (WORDS split at spaces), failing the test if it
/// fails: one topology step on one of the test's namespaces.
pub fn ip_in(ns: &str, words: &str) {
    let mut all = vec!["ip", "-n", ns];
    all.extend(words.split_whitespace());
    must(&all);
}

/// Runs a command in the root namespace (setup and teardown); returns whether it succeeded.
fn sys(args: &[&str]) -> bool {
    match Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "netns harness: `{}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("netns harness: cannot run `{}`: {e}", args.join(" "));
            false
        }
    }
}

/// Like [`sys`], but panics on failure (setup steps that must work).
fn must(args: &[&str]) {
    assert!(sys(args), "setup step failed: {}", args.join(" "));
}

/// Whether this process may create network namespaces. Prints the SKIPPED line when not.
fn netns_usable() -> bool {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let root = uid.as_deref() == Some("0");
    let ip_ok = root
        && Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    if !root || !ip_ok {
        let why = if root {
            "`ip netns` is not usable here"
        } else {
            "not running as root"
        };
        report(&format!(
            "SKIPPED: netns tests need root (run as root, as CI does) — {why}"
        ));
        return false;
    }
    true
}

/// Deletes namespaces left by earlier test processes that died without cleaning up (e.g. SIGKILL).
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// One host of the LAN.
#[derive(Debug, Clone)]
pub struct Host {
    /// Short name given by the test ("a", "b", ...).
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    /// Its address on the LAN.
    pub ip: Ipv4Addr,
    /// Its LAN interface (inside its namespace).
    pub ifname: String,
    /// The bridge port (in the switch namespace) its veth is plugged into.
    pub port: String,
}

/// A process started in a host, owned by the [`Lan`].
#[derive(Debug, Clone)]
pub struct Proc {
    idx: usize,
    /// Its process id (also its process group id).
    pub pid: u32,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// A label for messages.
    pub label: String,
}

/// The result of a command run to completion (or killed at its deadline).
#[derive(Debug)]
pub struct Out {
    /// Exit status; `None` when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Exited with code 0.
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Asserts a usage error: exit code 2, and stderr saying each of `needles` (why).
    pub fn assert_refused(&self, needles: &[&str], what: &str) {
        assert_eq!(
            self.status.and_then(|s| s.code()),
            Some(2),
            "{what}: not refused: {self:?}"
        );
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "{what}: the refusal does not say {n:?}: {self:?}"
            );
        }
    }
}

struct Tracked {
    child: std::process::Child,
    label: String,
    log: PathBuf,
    reaped: bool,
}

/// The router of a [`Lan::routed`]: one namespace, one leg per subnet.
#[derive(Debug, Clone)]
pub struct Router {
    /// Its network namespace.
    pub ns: String,
    /// Its leg on each subnet, in subnet order: the address there (`.1`, the hosts' gateway),
    /// the interface in its namespace, the bridge port.
    pub legs: Vec<Host>,
}

/// Plugs `host`'s interface into `bridge` (a veth pair: `host.port` in the switch namespace
/// `sw`, `host.ifname` in the host's), its address on it (/24), up.
fn plug(sw: &str, bridge: &str, host: &Host) {
    must(&[
        "ip",
        "-n",
        sw,
        "link",
        "add",
        &host.port,
        "type",
        "veth",
        "peer",
        "name",
        &host.ifname,
        "netns",
        &host.ns,
    ]);
    must(&["ip", "-n", sw, "link", "set", &host.port, "master", bridge]);
    must(&["ip", "-n", sw, "link", "set", &host.port, "up"]);
    ip_in(
        &host.ns,
        &format!("addr add {}/24 dev {}", host.ip, host.ifname),
    );
    ip_in(&host.ns, &format!("link set {} up", host.ifname));
}

/// A LAN of network-namespace hosts on one bridge (or several subnets joined by a router, see
/// [`Lan::routed`]). See the module documentation.
pub struct Lan {
    pub id: String,
    switch_ns: String,
    hosts: Vec<Host>,
    /// The bridges in the switch namespace, one per subnet.
    bridges: Vec<String>,
    /// The router between the subnets, when there are several.
    router: Option<Router>,
    procs: Mutex<Vec<Tracked>>,
    dir: tempfile::TempDir,
}

impl Lan {
    /// Builds a LAN with one host per name, or returns `None` (after printing the SKIPPED line)
    /// when network namespaces cannot be made here.
    pub fn new(names: &[&str]) -> Option<Lan> {
        Lan::routed(&[names])
    }

    /// Builds a LAN of several subnets, one bridge each (`br0`, `br1`, ...: subnet K is
    /// `10.77.(X+K).0/24`, its hosts from `.10` on), with the hosts named in `subnets[K]`. With
    /// more than one subnet, a router namespace has a leg on each bridge (`.1` of each subnet,
    /// IPv4 forwarding on in that namespace only) and every host's default route goes through
    /// it; it routes no multicast, so mDNS stays inside each subnet. `None` (after the SKIPPED
    /// line) when network namespaces cannot be made here.
    pub fn routed(subnets: &[&[&str]]) -> Option<Lan> {
        if !netns_usable() {
            return None;
        }
        remove_stale_namespaces();
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{pid}-{n}");
        // Each LAN is its own bridges in its own namespace, so equal subnets in two LANs could
        // not even meet; X differs anyway, to keep captures and logs unambiguous.
        let x = ((pid as u64 * 7 + n as u64) % 200 + 20) as u8;
        let dir = tempfile::Builder::new()
            .prefix(&format!("netns-{id}-"))
            .tempdir()
            .expect("temp dir");
        let mut lan = Lan {
            switch_ns: format!("{NS_PREFIX}{id}-sw"),
            id,
            hosts: Vec::new(),
            bridges: Vec::new(),
            router: None,
            procs: Mutex::new(Vec::new()),
            dir,
        };
        // From here on, Drop undoes whatever was made, even if a step below panics.
        let sw = lan.switch_ns.clone();
        must(&["ip", "netns", "add", &sw]);
        must(&["ip", "-n", &sw, "link", "set", "lo", "up"]);
        let routed = subnets.len() > 1;
        if routed {
            let ns = format!("{NS_PREFIX}{}-router", lan.id);
            must(&["ip", "netns", "add", &ns]);
            lan.router = Some(Router {
                ns: ns.clone(),
                legs: Vec::new(),
            });
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            must(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
            ]);
        }
        for (k, names) in subnets.iter().enumerate() {
            let bridge = format!("br{k}");
            must(&["ip", "-n", &sw, "link", "add", &bridge, "type", "bridge"]);
            lan.bridges.push(bridge.clone());
            must(&["ip", "-n", &sw, "link", "set", &bridge, "up"]);
            let net = x.wrapping_add(k as u8);
            if let Some(router) = &lan.router {
                let leg = Host {
                    name: format!("router-{k}"),
                    ns: router.ns.clone(),
                    ip: Ipv4Addr::new(10, 77, net, 1),
                    ifname: format!("eth{k}"),
                    port: format!("r{k}"),
                };
                plug(&sw, &bridge, &leg);
                lan.router.as_mut().unwrap().legs.push(leg);
            }
            for (i, name) in names.iter().enumerate() {
                let host = Host {
                    name: name.to_string(),
                    ns: format!("{NS_PREFIX}{}-{name}", lan.id),
                    ip: Ipv4Addr::new(10, 77, net, 10 + i as u8),
                    ifname: "eth0".to_string(),
                    port: format!("p{}", lan.hosts.len()),
                };
                must(&["ip", "netns", "add", &host.ns]);
                lan.hosts.push(host.clone());
                must(&["ip", "-n", &host.ns, "link", "set", "lo", "up"]);
                plug(&sw, &bridge, &host);
                ip_in(
                    &host.ns,
                    &format!("route add 224.0.0.0/4 dev {}", host.ifname),
                );
                if routed {
                    ip_in(&host.ns, &format!("route add default via 10.77.{net}.1"));
                }
            }
        }
        Some(lan)
    }

    /// The router between the subnets of a [`Lan::routed`] one (`None` with one subnet).
    pub fn router(&self) -> Option<&Router> {
        self.router.as_ref()
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// The switch namespace (holding the bridge `br0` and the hosts' bridge ports).
    pub fn switch_ns(&self) -> &str {
        &self.switch_ns
    }

    /// The per-test temporary directory (key files, logs, data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path in the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `ambassador ARGS...` to completion in the root namespace, with the test's config
    /// dir: the commands that only make files (mesh keys, a CA and its certificates).
    pub fn offline(&self, args: &[&str]) -> std::process::Output {
        Command::new(AMBASSADOR)
            .args(args)
            .env("XDG_CONFIG_HOME", self.dir())
            .output()
            .unwrap_or_else(|e| panic!("run ambassador {}: {e}", args.join(" ")))
    }

    /// Makes a fresh mesh key file (`ambassador mesh new --out`) and returns its path.
    pub fn mesh_key(&self, name: &str) -> PathBuf {
        let path = self.path(&format!("{name}.key"));
        let out = self.offline(&["mesh", "new", "--out", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "ambassador mesh new failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    fn command_in(&self, ns: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        // A throw-away config dir, so that no default mesh key is ever made outside the test;
        // and a runtime dir of its own, so that `ambassador status` in one test lists the nodes
        // of that test only (status sockets live in $XDG_RUNTIME_DIR/ambassador, and
        // namespaces share the filesystem).
        cmd.env("XDG_CONFIG_HOME", self.dir())
            .env("XDG_RUNTIME_DIR", self.dir())
            .stdin(Stdio::null())
            .process_group(0);
        // Log filters are the test's, not the caller's; `NETNS_RUST_LOG` sets one to debug with
        // (e.g. `NETNS_RUST_LOG=info,mdns_sd=debug`).
        match std::env::var("NETNS_RUST_LOG") {
            Ok(filter) if !filter.is_empty() => cmd.env("RUST_LOG", filter),
            _ => cmd.env_remove("RUST_LOG"),
        };
        cmd
    }

    /// Starts `args` in `host` (its own process group); stdout and stderr go to `<label>.log`.
    /// The process is killed when the LAN is dropped, if it still runs.
    pub fn spawn(&self, host: &Host, label: &str, args: &[&str]) -> Proc {
        self.spawn_in(&host.ns, label, args)
    }

    /// Like [`Lan::spawn`], in the switch namespace (e.g. tcpdump on a bridge port).
    pub fn spawn_in_switch(&self, label: &str, args: &[&str]) -> Proc {
        let ns = self.switch_ns.clone();
        self.spawn_in(&ns, label, args)
    }

    fn spawn_in(&self, ns: &str, label: &str, args: &[&str]) -> Proc {
        self.spawn_with(ns, label, args, (false, false)).0
    }

    /// Like [`Lan::spawn`], with stdin and/or stdout as pipes to this process (stderr goes to the
    /// log): data can stream into and out of a namespace without touching the disk.
    pub fn spawn_piped(
        &self,
        host: &Host,
        label: &str,
        args: &[&str],
        stdin: bool,
        stdout: bool,
    ) -> (Proc, Option<ChildStdin>, Option<ChildStdout>) {
        self.spawn_with(&host.ns, label, args, (stdin, stdout))
    }

    /// Starts `args` in `ns`; `piped`: whether (stdin, stdout) are pipes to this process.
    fn spawn_with(
        &self,
        ns: &str,
        label: &str,
        args: &[&str],
        (stdin, stdout): (bool, bool),
    ) -> (Proc, Option<ChildStdin>, Option<ChildStdout>) {
        let log = self.path(&format!("{label}.log"));
        let file = File::create(&log).expect("create log file");
        let mut cmd = self.command_in(ns, args);
        if stdin {
            cmd.stdin(Stdio::piped());
        }
        if stdout {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(file.try_clone().expect("dup log file"));
        }
        cmd.stderr(file);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {label}: {e}"));
        let (child_in, child_out) = (child.stdin.take(), child.stdout.take());
        let pid = child.id();
        let mut procs = self.procs.lock().unwrap();
        procs.push(Tracked {
            child,
            label: label.to_string(),
            log: log.clone(),
            reaped: false,
        });
        (
            Proc {
                idx: procs.len() - 1,
                pid,
                log,
                label: label.to_string(),
            },
            child_in,
            child_out,
        )
    }

    /// Starts `ambassador ARGS...` in `host`, logging to `<label>.log`.
    pub fn ambassador(&self, host: &Host, label: &str, args: &[&str]) -> Proc {
        let mut all = vec![AMBASSADOR];
        all.extend_from_slice(args);
        self.spawn(host, label, &all)
    }

    /// Runs `args` in `host` to completion, killing it after `timeout`.
    pub fn run(&self, host: &Host, timeout: Duration, args: &[&str]) -> Out {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let cmd = self.command_in(&host.ns, args);
        run_to_end(cmd, &self.path(&format!(".run-{n}")), timeout)
    }

    /// Runs a `sh -c SCRIPT` in `host` to completion, killing it after `timeout`.
    pub fn sh(&self, host: &Host, timeout: Duration, script: &str) -> Out {
        self.run(host, timeout, &["sh", "-c", script])
    }

    /// What a process has logged so far.
    pub fn log(&self, p: &Proc) -> String {
        fs::read_to_string(&p.log).unwrap_or_default()
    }

    /// Waits until the log of `p` contains `needle`; returns whether it did within `timeout`.
    pub fn wait_log(&self, p: &Proc, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, Duration::from_millis(20), || {
            self.log(p).contains(needle)
        })
    }

    /// Sends a signal ("TERM", "INT", "KILL") to `p`'s process group, unless it was reaped already.
    pub fn signal(&self, p: &Proc, sig: &str) {
        let procs = self.procs.lock().unwrap();
        if !procs[p.idx].reaped {
            signal_group(p.pid, sig);
        }
    }

    /// Whether `p` is still running (it is not reaped by this).
    pub fn running(&self, p: &Proc) -> bool {
        let procs = self.procs.lock().unwrap();
        !procs[p.idx].reaped && !exited(p.pid)
    }

    /// Waits up to `timeout` for `p` to exit and asserts that it exited with code 0.
    pub fn wait_clean_exit(&self, p: &Proc, timeout: Duration, what: &str) {
        let status = self
            .wait_exit(p, timeout)
            .unwrap_or_else(|| panic!("{what}: {} did not exit within {timeout:?}", p.label));
        assert_eq!(
            status.code(),
            Some(0),
            "{what}: {} exited {status}",
            p.label
        );
    }

    /// Waits up to `timeout` for `p` to exit; returns its status (`None`: still running).
    pub fn wait_exit(&self, p: &Proc, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, Duration::from_millis(10), || {
            let mut procs = self.procs.lock().unwrap();
            let t = &mut procs[p.idx];
            if let Some(s) = t.child.try_wait().expect("try_wait") {
                t.reaped = true;
                status = Some(s);
            }
            status.is_some()
        });
        status
    }

    /// Waits for a plain TCP listener on `port` in `host` (checks `ss`, makes no connection).
    pub fn wait_tcp_listen(&self, host: &Host, port: u16, timeout: Duration) -> bool {
        self.wait_listen(host, "-Hltn", port, timeout)
    }

    /// Waits for a UDP socket bound to `port` in `host` (checks `ss`).
    pub fn wait_udp_listen(&self, host: &Host, port: u16, timeout: Duration) -> bool {
        self.wait_listen(host, "-Hlun", port, timeout)
    }

    fn wait_listen(&self, host: &Host, ss_flags: &str, port: u16, timeout: Duration) -> bool {
        wait_until(timeout, 20 * MS, || {
            let out = self.run(
                host,
                5 * SEC,
                &["ss", ss_flags, &format!("sport = :{port}")],
            );
            out.ok() && !out.stdout.trim().is_empty()
        })
    }

    /// Runs `args` in `host` and fails the test if it fails (topology steps).
    pub fn must_run(&self, host: &Host, args: &[&str]) {
        let out = self.run(host, 10 * SEC, args);
        assert!(out.ok(), "`{}` on {}: {out:?}", args.join(" "), host.name);
    }

    /// UDP counters of `host`'s network namespace (`InDatagrams`, `RcvbufErrors`,
    /// `SndbufErrors`...: the `Udp:` lines of `/proc/net/snmp`), all from one reading.
    pub fn udp_counters<const N: usize>(&self, host: &Host, names: [&str; N]) -> [u64; N] {
        let snmp = self.run(host, 10 * SEC, &["cat", "/proc/net/snmp"]).stdout;
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let (header, values) = (udp.next().unwrap_or(""), udp.next().unwrap_or(""));
        names.map(|name| {
            header
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or_else(|| panic!("no Udp {name} in /proc/net/snmp: {snmp}"))
        })
    }

    /// Occurrences of `needle` in the log of `p`.
    pub fn log_count(&self, p: &Proc, needle: &str) -> usize {
        self.log(p).matches(needle).count()
    }

    /// The lines of `p`'s log that contain every one of `needles`.
    pub fn count_lines(&self, p: &Proc, needles: &[&str]) -> usize {
        self.log(p)
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// The first line of `p`'s log that contains `needle` (empty if none).
    pub fn log_line(&self, p: &Proc, needle: &str) -> String {
        self.log(p)
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until `p` logs a line containing `needle`; returns that line, `None` at the
    /// deadline.
    pub fn wait_log_line(&self, p: &Proc, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_log(p, needle, timeout)
            .then(|| self.log_line(p, needle))
    }

    /// Like [`Lan::wait_log_line`], failing the test with `missing` without the line, or with
    /// `wrong` when it does not contain `detail` too.
    pub fn expect_log_line(
        &self,
        p: &Proc,
        (needle, timeout): (&str, Duration),
        detail: &str,
        (missing, wrong): (&str, &str),
    ) -> String {
        let line = self.wait_log_line(p, needle, timeout).expect(missing);
        assert!(line.contains(detail), "{wrong}: {line}");
        line
    }

    /// The first `max` lines of `p`'s log that contain any of `needles`, joined by `sep` (what
    /// a test shows of a process's view).
    pub fn log_excerpt(&self, p: &Proc, needles: &[&str], max: usize, sep: &str) -> String {
        self.log(p)
            .lines()
            .filter(|l| needles.iter().any(|n| l.contains(n)))
            .take(max)
            .collect::<Vec<_>>()
            .join(sep)
    }

    /// When `p` first logged a line containing `needle` (its time stamp, epoch seconds).
    pub fn first_log_time(&self, p: &Proc, needle: &str) -> Option<f64> {
        self.log(p)
            .lines()
            .find(|l| l.contains(needle))
            .and_then(log_epoch)
    }

    /// Waits until `needle` occurs in the log of `p` more often than `before` times; returns
    /// when (epoch seconds), `None` at the deadline.
    pub fn wait_log_more(
        &self,
        p: &Proc,
        needle: &str,
        before: usize,
        timeout: Duration,
    ) -> Option<f64> {
        wait_until(timeout, 5 * MS, || self.log_count(p, needle) > before).then(now_epoch)
    }

    /// Runs `action`, then waits until `needle` occurs in the log of `p` more often than before
    /// it; its result, `None` when the line did not come within `timeout`.
    pub fn logs_after<T>(
        &self,
        p: &Proc,
        needle: &str,
        timeout: Duration,
        action: impl FnOnce() -> T,
    ) -> Option<T> {
        let before = self.log_count(p, needle);
        let result = action();
        self.wait_log_more(p, needle, before, timeout)
            .map(|_| result)
    }

    /// Starts tcpdump on `host`'s port of the bridge (switch namespace): every frame to or
    /// from `host`, until [`Capture::stop`].
    pub fn capture(&self, host: &Host) -> Capture {
        let path = self.path(&format!("{}-port.pcap", host.name));
        // `-Z root`: Debian's tcpdump otherwise drops to the tcpdump user, which cannot write
        // into the test directory.
        let proc = self.spawn_in_switch(
            "tcpdump",
            &[
                "tcpdump",
                "-i",
                &host.port,
                "-n",
                "--immediate-mode",
                "-U",
                "-s",
                "0",
                "-Z",
                "root",
                "-w",
                path.to_str().unwrap(),
            ],
        );
        assert!(
            self.wait_log(&proc, "listening on", 10 * SEC),
            "tcpdump did not start"
        );
        Capture { proc, path }
    }

    /// Prints every process log (used when a test fails).
    fn dump_logs(&self) {
        let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        eprintln!(
            "===== netns LAN {}: logs of {} processes (dir {}) =====",
            self.id,
            procs.len(),
            self.dir().display()
        );
        let legs = self.router.iter().flat_map(|r| r.legs.iter());
        for h in self.hosts.iter().chain(legs) {
            eprintln!(
                "  host {} = {} in namespace {} ({})",
                h.name, h.ip, h.ns, h.ifname
            );
        }
        for t in procs.iter() {
            let text = fs::read_to_string(&t.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let skip = lines.len().saturating_sub(300);
            eprintln!(
                "----- {} ({} lines{}) -----",
                t.label,
                lines.len(),
                if skip > 0 { ", last 300" } else { "" }
            );
            for l in &lines[skip..] {
                eprintln!("{l}");
            }
        }
        eprintln!("===== end of logs =====");
    }
}

/// Whether `pid` (a child of ours) has exited (zombie or gone), without reaping it.
fn exited(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the ")" that closes the command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|s| s == "Z" || s == "X"),
        Err(_) => true,
    }
}

/// Signals a whole process group (the pid of a process started with `process_group(0)`).
/// Runs `cmd` (the leader of its own process group) to completion, its output kept in
/// `<base>.out` and `<base>.err` meanwhile; its group is killed after `timeout`.
pub fn run_to_end(mut cmd: Command, base: &Path, timeout: Duration) -> Out {
    let (op, ep) = (base.with_extension("out"), base.with_extension("err"));
    cmd.stdout(File::create(&op).expect("create"))
        .stderr(File::create(&ep).expect("create"));
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run {what}: {e}"));
    let mut status = None;
    wait_until(timeout, Duration::from_millis(5), || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    if status.is_none() {
        signal_group(child.id(), "KILL");
        let _ = child.wait();
    }
    let out = Out {
        status,
        stdout: fs::read_to_string(&op).unwrap_or_default(),
        stderr: fs::read_to_string(&ep).unwrap_or_default(),
    };
    let _ = fs::remove_file(op);
    let _ = fs::remove_file(ep);
    out
}

fn signal_group(pgid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

impl Drop for Lan {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        // 1. Processes: SIGTERM to every group not reaped yet (a zombie still holds its pid, so the
        //    group id cannot have been reused), a grace period, SIGKILL, then reap.
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        for t in procs.iter().filter(|t| !t.reaped) {
            signal_group(t.child.id(), "TERM");
        }
        wait_until(Duration::from_secs(3), Duration::from_millis(20), || {
            procs
                .iter()
                .filter(|t| !t.reaped)
                .all(|t| exited(t.child.id()))
        });
        for t in procs.iter_mut().filter(|t| !t.reaped) {
            signal_group(t.child.id(), "KILL");
            let _ = t.child.wait();
            t.reaped = true;
        }
        drop(procs);
        // 2. Links, bridge, namespaces (deleting a namespace would take its veth ends along; the
        //    explicit deletes make a leak visible in the output).
        let legs = self.router.iter().flat_map(|r| r.legs.iter());
        for h in self.hosts.iter().chain(legs) {
            sys(&["ip", "-n", &self.switch_ns, "link", "del", &h.port]);
        }
        for b in &self.bridges {
            sys(&["ip", "-n", &self.switch_ns, "link", "del", b]);
        }
        for h in &self.hosts {
            sys(&["ip", "netns", "del", &h.ns]);
        }
        if let Some(r) = &self.router {
            sys(&["ip", "netns", "del", &r.ns]);
        }
        sys(&["ip", "netns", "del", &self.switch_ns]);
        // 3. The temporary directory goes with `self.dir`.
    }
}

/// A running capture of one host's bridge port (see [`Lan::capture`]).
pub struct Capture {
    proc: Proc,
    path: PathBuf,
}

impl Capture {
    /// Stops tcpdump and returns the capture file's bytes.
    pub fn stop(self, lan: &Lan) -> Vec<u8> {
        lan.signal(&self.proc, "INT");
        assert!(
            lan.wait_exit(&self.proc, 10 * SEC).is_some(),
            "tcpdump did not stop"
        );
        fs::read(&self.path).expect("read capture")
    }
}

/// The UDP datagrams of a capture between `a` and `b` other than mDNS: the tunnel's QUIC.
pub fn udp_between(bytes: &[u8], a: &Host, b: &Host) -> Vec<(Ipv4Addr, u16, Ipv4Addr, u16, usize)> {
    pcap_udp(bytes)
        .into_iter()
        .filter(|(s, sp, d, dp, _)| {
            *sp != 5353 && *dp != 5353 && [*s, *d].contains(&a.ip) && [*s, *d].contains(&b.ip)
        })
        .collect()
}

/// Minimal pcap reader: the UDP datagrams of an Ethernet capture (`tcpdump -w`), as
/// (source, source port, destination, destination port, payload length).
pub fn pcap_udp(bytes: &[u8]) -> Vec<(Ipv4Addr, u16, Ipv4Addr, u16, usize)> {
    let mut out = Vec::new();
    if bytes.len() < 24 {
        return out;
    }
    let magic = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
    let le = match magic {
        0xa1b2c3d4 | 0xa1b23c4d => true,
        0xd4c3b2a1 | 0x4d3cb2a1 => false,
        _ => panic!("not a pcap file (magic {magic:#x})"),
    };
    let u32_at = |b: &[u8], i: usize| {
        let a: [u8; 4] = b[i..i + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    assert_eq!(u32_at(bytes, 20), 1, "expected an Ethernet capture");
    let mut i = 24;
    while i + 16 <= bytes.len() {
        let incl = u32_at(bytes, i + 8) as usize;
        let start = i + 16;
        let end = (start + incl).min(bytes.len());
        let f = &bytes[start..end];
        i = start + incl;
        // Ethernet II, IPv4, UDP.
        if f.len() < 14 + 20 || f[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &f[14..];
        let ihl = ((ip[0] & 0x0f) as usize) * 4;
        if ip[0] >> 4 != 4 || ip[9] != 17 || ip.len() < ihl + 8 {
            continue;
        }
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let udp = &ip[ihl..];
        let sport = u16::from_be_bytes([udp[0], udp[1]]);
        let dport = u16::from_be_bytes([udp[2], udp[3]]);
        let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        // With GSO a captured frame can hold several datagrams; count what the frame holds.
        let payload = total.max(ip.len()).saturating_sub(ihl + 8);
        out.push((src, sport, dst, dport, payload));
    }
    out
}
