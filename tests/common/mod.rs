//! Shared helpers of the black-box tests: run the built `ambassador` binary on the loopback
//! interface, capture its log, and always kill what was spawned (also when a test fails).
//!
//! Each test gets its own temporary directory (used as `XDG_CONFIG_HOME` and `HOME`), its own
//! mesh key and unique node names, so tests running in parallel threads (and other test
//! binaries sharing mDNS on `lo`) never see each other's services.

#![allow(dead_code)] // each test binary uses a different subset

pub mod redis;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ambassador");

/// A generous bound for things that normally take milliseconds (process start, discovery on
/// `lo`), so a loaded CI machine does not make the tests flaky.
pub const READY: Duration = Duration::from_secs(15);

/// A name unique in this machine's mDNS for the life of this process: `prefix-PID-N`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A TCP port that was free a moment ago on 127.0.0.1 (the caller retries on a collision).
pub fn free_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A UDP port that was free a moment ago on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1:0");
    s.local_addr().expect("local_addr").port()
}

/// A base command: the binary, with a clean environment (no `AMBASSADOR_*`, no `RUST_LOG`),
/// `HOME` and `XDG_CONFIG_HOME` set to the test's own directory, and `XDG_RUNTIME_DIR` to its
/// `run/` (so that `ambassador status` there lists the nodes of that test only).
pub fn command(home: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AMBASSADOR_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG");
    // To debug a failing test: TEST_AMBASSADOR_LOG=debug (a RUST_LOG filter for the binary).
    if let Some(filter) = std::env::var_os("TEST_AMBASSADOR_LOG") {
        cmd.env("RUST_LOG", filter);
    }
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .stdin(Stdio::null());
    cmd
}

/// What a short-lived command printed.
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Output {
    /// The exit code (panics on a signal death).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {self:?}"))
    }
}

fn drain<R: Read + Send + 'static>(r: R) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(r).read_to_string(&mut s);
        s
    })
}

/// Runs a command to completion, killing it (and failing) if it outlives `timeout`.
pub fn run(mut cmd: Command, timeout: Duration) -> Output {
    let start = Instant::now();
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = ChildGuard(cmd.spawn().expect("spawn ambassador"));
    let out = drain(child.0.stdout.take().expect("stdout"));
    let err = drain(child.0.stderr.take().expect("stderr"));
    let status = loop {
        if let Some(st) = child.0.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > timeout {
            drop(child); // kills it
            panic!(
                "{cmd:?} did not exit within {timeout:?}; stderr: {}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed,
    }
}

/// Kills and reaps a child on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Log lines of a running process, shared with the thread that reads its stderr.
#[derive(Default)]
struct LogBuf {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

/// A long-running `ambassador` process: its stderr is captured line by line; it is killed on
/// drop (and its log printed if the test is failing).
pub struct Proc {
    name: String,
    child: Child,
    log: Arc<LogBuf>,
    reader: Option<JoinHandle<()>>,
}

impl Proc {
    /// Spawns `cmd` (stdout discarded, stderr captured). `name` labels its log in failures.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ambassador");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(LogBuf::default());
        let log2 = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lines.lock().unwrap().push(line);
                log2.grew.notify_all();
            }
        });
        Proc {
            name: name.to_string(),
            child,
            log,
            reader: Some(reader),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lines.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains every one of `needles`; returns that line, or `None`
    /// at the deadline.
    pub fn find_log(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.lines.lock().unwrap();
        let mut from = 0;
        loop {
            if let Some(l) = lines[from..]
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return Some(l.clone());
            }
            from = lines.len();
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self.log.grew.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Like [`Proc::find_log`], but a miss fails the test with the log attached.
    pub fn expect_log(&self, needles: &[&str], timeout: Duration) -> String {
        match self.find_log(needles, timeout) {
            Some(l) => l,
            None => panic!(
                "{}: no log line with {needles:?} within {timeout:?}; log:\n{}",
                self.name,
                self.log()
            ),
        }
    }

    /// The exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Polls for the exit until `timeout`; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                // Let the reader take the last lines.
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal with `kill(1)` (e.g. "TERM", "INT").
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill(1)");
        assert!(st.success(), "kill -{sig} {} failed", self.pid());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} (pid {}) -----\n{}\n-----",
                self.name,
                self.child.id(),
                self.log()
            );
        }
    }
}

/// A test's own place: a temporary directory (its `XDG_CONFIG_HOME`) and a mesh key file.
pub struct Mesh {
    /// The directory; removed on drop.
    pub dir: tempfile::TempDir,
    /// A key file made with `mesh new --out`.
    pub key_file: PathBuf,
}

impl Mesh {
    /// A new directory and a fresh mesh key in it.
    pub fn new() -> Mesh {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("mesh.key");
        let mut cmd = command(dir.path());
        cmd.args(["mesh", "new", "--out"]).arg(&key_file);
        let out = run(cmd, Duration::from_secs(10));
        assert_eq!(out.code(), 0, "mesh new --out failed: {out:?}");
        Mesh { dir, key_file }
    }

    /// The key text (to check it never leaks).
    pub fn key_text(&self) -> String {
        std::fs::read_to_string(&self.key_file)
            .expect("read key")
            .trim()
            .to_string()
    }

    /// `ambassador <sub> --interface lo --node NODE --mesh-key-file KEY`.
    pub fn node_command(&self, sub: &str, node: &str) -> Command {
        let mut cmd = command(self.dir.path());
        cmd.arg(sub)
            .args(["--interface", "lo", "--node", node, "--mesh-key-file"])
            .arg(&self.key_file);
        cmd
    }

    /// The listen addresses of node `node`'s consumers, as its status shows them (a listener
    /// appears there once it is bound).
    pub fn listening(&self, node: &str) -> Vec<String> {
        status(self.dir.path())
            .iter()
            .filter(|n| n["node"] == node)
            .flat_map(|n| n["connect"].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c["listen"].as_str().map(str::to_string))
            .collect()
    }

    /// Starts `announce SPECS... EXTRA...` as node `node`, and waits until every service is
    /// announced.
    pub fn announce(&self, node: &str, specs: &[String], extra: &[&str]) -> Proc {
        let mut cmd = self.node_command("announce", node);
        cmd.args(specs).args(extra);
        let p = Proc::spawn(&format!("announce {node}"), cmd);
        for spec in specs {
            let service = spec.split([':', '=']).next().unwrap_or(spec);
            p.expect_log(&["announcing", &format!("service={service} ")], READY);
        }
        p
    }

    /// Starts `connect` as node `node` for one service, listening on a free port of
    /// 127.0.0.1 (retrying on the rare port collision), and waits until it listens.
    pub fn connect(&self, node: &str, service: &str, extra: &[&str]) -> (Proc, SocketAddr) {
        let (p, addrs) = self.connect_many(node, &[service], extra);
        (p, addrs[0])
    }

    /// Starts a provider of `echo` in front of `target` (same port); returns it and its node.
    pub fn announce_echo(&self, target: &Target) -> (Proc, String) {
        let node = unique("prov");
        let spec = format!("echo:{0}=127.0.0.1:{0}", target.port());
        (self.announce(&node, &[spec], &[]), node)
    }

    /// Like [`Mesh::connect`] for several services in one process.
    pub fn connect_many(
        &self,
        node: &str,
        services: &[&str],
        extra: &[&str],
    ) -> (Proc, Vec<SocketAddr>) {
        for _ in 0..5 {
            let addrs: Vec<SocketAddr> = services
                .iter()
                .map(|_| SocketAddr::from(([127, 0, 0, 1], free_tcp_port())))
                .collect();
            let mut cmd = self.node_command("connect", node);
            for (s, a) in services.iter().zip(&addrs) {
                cmd.arg(format!("{s}:{}", a.port()));
            }
            cmd.args(extra);
            let mut p = Proc::spawn(&format!("connect {node}"), cmd);
            let want: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
            let deadline = Instant::now() + READY;
            let listening = loop {
                let bound = self.listening(node);
                if want.iter().all(|a| bound.contains(a)) {
                    break true;
                }
                if p.try_wait().is_some() || Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if listening {
                return (p, addrs);
            }
            if let Some(st) = p.wait_exit(Duration::from_secs(1)) {
                if p.log().contains("Address already in use") {
                    continue; // someone took a port between our probe and the bind
                }
                panic!("connect exited early ({st}); log:\n{}", p.log());
            }
            panic!("connect did not listen within {READY:?}; log:\n{}", p.log());
        }
        panic!("no free port after several attempts");
    }
}

/// A provider and a consumer of `echo` in one fresh mesh, in front of `target`, once the
/// consumer has discovered the provider.
pub struct Tunnel {
    /// The consumer (`connect`).
    pub consumer: Proc,
    /// The provider (`announce`).
    pub provider: Proc,
    /// The provider's node name.
    pub provider_node: String,
    /// What the provider forwards to.
    pub target: Target,
    /// Where clients connect (the consumer's listener).
    pub addr: SocketAddr,
    /// The mesh (its directory lives as long as the tunnel).
    pub mesh: Mesh,
}

impl Tunnel {
    /// Starts both nodes and waits until the consumer listens and knows the provider.
    pub fn new(target: Target) -> Tunnel {
        let mesh = Mesh::new();
        let (provider, provider_node) = mesh.announce_echo(&target);
        let (consumer, addr) = mesh.connect(&unique("cons"), "echo", &[]);
        await_discovered(&consumer, "echo", &provider_node);
        Tunnel {
            consumer,
            provider,
            provider_node,
            target,
            addr,
            mesh,
        }
    }
}

/// Waits until the consumer has discovered `service` announced by `node`.
pub fn await_discovered(consumer: &Proc, service: &str, node: &str) {
    consumer.expect_log(
        &["discovered", &format!("instance={service}@{node}_")],
        READY,
    );
}

/// `ambassador status --json` with `home` as the test's directory (see [`command`]): every node
/// started there that runs.
pub fn status(home: &Path) -> Vec<serde_json::Value> {
    let mut cmd = command(home);
    cmd.args(["status", "--json"]);
    let out = run(cmd, Duration::from_secs(10));
    assert_eq!(out.code(), 0, "status --json failed: {out:?}");
    let nodes: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json printed no JSON ({e}): {out:?}"));
    nodes
        .as_array()
        .expect("status --json prints an array")
        .clone()
}

/// The QUIC port of node `node` started in `home`, from its status (`quic`), once it runs.
pub fn quic_port(home: &Path, node: &str) -> u16 {
    let deadline = Instant::now() + READY;
    loop {
        let quic = status(home)
            .iter()
            .find(|n| n["node"] == node)
            .and_then(|n| n["quic"].as_str().map(str::to_string));
        if let Some(addr) = quic {
            return addr
                .rsplit(':')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no port in the quic address {addr:?} of {node}"));
        }
        assert!(
            Instant::now() < deadline,
            "status lists no node {node} within {READY:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP target in the test process: a listener on 127.0.0.1:0 whose connections are each
/// handled by `handler` in a thread. Stops accepting on drop.
pub struct Target {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Target {
    /// Starts a target.
    pub fn start<F>(handler: F) -> Target
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind target");
        let addr = listener.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                accepted2.fetch_add(1, Ordering::SeqCst);
                let h = handler.clone();
                std::thread::spawn(move || h(conn));
            }
        });
        Target {
            addr,
            stop,
            accepted,
            received: Arc::default(),
            thread: Some(thread),
        }
    }

    /// An echo server: every byte read is written back; EOF is passed on as a half-close.
    pub fn echo() -> Target {
        let received = Arc::new(AtomicUsize::new(0));
        let counter = received.clone();
        let mut t = Target::start(move |mut s| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        counter.fetch_add(n, Ordering::SeqCst);
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = s.shutdown(Shutdown::Write);
        });
        t.received = received;
        t
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many connections it accepted (health checks of the provider count too).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// How many bytes the echo server received (always 0 for other targets).
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)); // wake the accept
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits until the peer sends its first byte; `false` if it closes without sending any. A
/// provider may probe its target with bare connections (a health check): those send nothing,
/// and targets that expect a request skip them this way.
pub fn has_request(s: &TcpStream) -> bool {
    matches!(s.peek(&mut [0u8; 1]), Ok(n) if n > 0)
}

/// Resident set size of a running process, in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Connects a client with generous read/write timeouts, so a hang fails instead of hanging.
pub fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Reads until EOF or an error; returns the bytes and the error, if any.
pub fn read_to_end(s: &mut TcpStream) -> (Vec<u8>, Option<std::io::Error>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (data, None),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (data, Some(e)),
        }
    }
}
