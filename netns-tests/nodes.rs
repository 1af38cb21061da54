//! What the scenarios run on a [`Lan`]: ambassador nodes (builders for `announce` and
//! `connect`), their `status --json` and `ls --json`, CA identities, Redis servers and the
//! apps that use them (`redis-cli` one-shots, held socat sessions, client loops' results).
//!
//! A scenario reads like its use case:
//!
//! ```ignore
//! let key = lan.mesh_key("mesh");
//! lan.redis(&b, 6379).who("b").start();
//! lan.announce(&b, &key).spec("redis:6379").start();
//! lan.connect(&a, &key).spec("redis").start();
//! wait_who(&lan, &a, 6379, "b", 15 * SEC);
//! ```

#![allow(dead_code)] // not every test uses every helper

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ChildStdin;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::{AMBASSADOR, Host, Lan, MS, Out, Proc, SEC, wait_until};

// ---------------------------------------------------------------------------------------------
// Ambassador nodes.

/// How a node proves that it belongs to the mesh: the flags it is started with.
pub trait Credentials {
    /// The flags (`--mesh-key-file KEY` or `--identity DIR`).
    fn flags(&self) -> Vec<String>;
    /// Whether the node names itself with `--node` (a mesh key); with a CA identity the name is
    /// the certificate's.
    fn names_itself(&self) -> bool;
}

/// A mesh key file (`ambassador mesh new --out`).
impl Credentials for Path {
    fn flags(&self) -> Vec<String> {
        vec!["--mesh-key-file".into(), self.display().to_string()]
    }
    fn names_itself(&self) -> bool {
        true
    }
}

/// A mesh key file (`ambassador mesh new --out`).
impl Credentials for PathBuf {
    fn flags(&self) -> Vec<String> {
        self.as_path().flags()
    }
    fn names_itself(&self) -> bool {
        true
    }
}

/// A node's certificate bundle issued by `ambassador ca issue` (see [`ca_issue`]).
#[derive(Debug, Clone)]
pub struct Identity(pub PathBuf);

impl Identity {
    /// The bundle directory as a flag value.
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Credentials for Identity {
    fn flags(&self) -> Vec<String> {
        vec!["--identity".into(), self.as_str().into()]
    }
    fn names_itself(&self) -> bool {
        false
    }
}

/// An `ambassador announce` or `connect` about to be started on a host: built with
/// [`Lan::announce`] or [`Lan::connect`], finished with [`Node::start`] (or [`Node::run`] for
/// one that is expected to exit). The command line is
/// `[UNDER...] ambassador SUB SPECS... [--node NODE] CREDENTIALS ARGS...`.
#[must_use = "a node is started by `start` or `run`"]
pub struct Node<'a> {
    lan: &'a Lan,
    host: Host,
    sub: &'static str,
    node: Option<String>,
    label: Option<String>,
    specs: Vec<String>,
    credentials: Vec<String>,
    args: Vec<String>,
    under: Vec<String>,
}

impl Lan {
    /// `ambassador announce` on `host` with `credentials`; with a mesh key the node is named
    /// after the host. Its log is `announce-<node>.log`.
    pub fn announce<C: Credentials + ?Sized>(&self, host: &Host, credentials: &C) -> Node<'_> {
        Node::new(self, host, "announce", credentials)
    }

    /// `ambassador connect` on `host` with `credentials`; with a mesh key the node is named
    /// after the host. Its log is `connect-<node>.log`.
    pub fn connect<C: Credentials + ?Sized>(&self, host: &Host, credentials: &C) -> Node<'_> {
        Node::new(self, host, "connect", credentials)
    }
}

impl<'a> Node<'a> {
    fn new<C: Credentials + ?Sized>(
        lan: &'a Lan,
        host: &Host,
        sub: &'static str,
        credentials: &C,
    ) -> Self {
        Node {
            lan,
            host: host.clone(),
            sub,
            node: credentials.names_itself().then(|| host.name.clone()),
            label: None,
            specs: Vec::new(),
            credentials: credentials.flags(),
            args: Vec::new(),
            under: Vec::new(),
        }
    }

    /// One service spec (`redis:6379`, `redis:6379=127.0.0.1:12345`, or a bare name to connect).
    pub fn spec(mut self, spec: &str) -> Self {
        self.specs.push(spec.to_string());
        self
    }

    /// Several service specs.
    pub fn specs(mut self, specs: &[&str]) -> Self {
        self.specs.extend(specs.iter().map(|s| s.to_string()));
        self
    }

    /// `--node NAME` (instead of the host's name); also names the log.
    pub fn node(mut self, name: &str) -> Self {
        self.node = Some(name.to_string());
        self
    }

    /// The log's name (`<label>.log`), when it is not `<sub>-<node>`.
    pub fn label(mut self, label: &str) -> Self {
        self.label = Some(label.to_string());
        self
    }

    /// `--bind 0.0.0.0:PORT`: a fixed QUIC port, for static backends and hostile peers to aim at.
    pub fn bind(self, port: u16) -> Self {
        self.args(&["--bind", &format!("0.0.0.0:{port}")])
    }

    /// `--backend ADDR` (a static backend instead of discovery).
    pub fn backend(self, addr: &str) -> Self {
        self.args(&["--backend", addr])
    }

    /// `--allow NODES` (the nodes allowed to connect to the announced services).
    pub fn allow(self, nodes: &str) -> Self {
        self.args(&["--allow", nodes])
    }

    /// `--policy POLICY`.
    pub fn policy(self, policy: &str) -> Self {
        self.args(&["--policy", policy])
    }

    /// `--http-host NAME` (announce): the one spec is an HTTP application answering to `name`.
    pub fn http_host(self, name: &str) -> Self {
        self.args(&["--http-host", name])
    }

    /// `--http ADDR` (connect): the HTTP front's listen address.
    pub fn http(self, addr: &str) -> Self {
        self.args(&["--http", addr])
    }

    /// `--wait DURATION` (how long a client connection may wait for an instance).
    pub fn wait(self, bound: &str) -> Self {
        self.args(&["--wait", bound])
    }

    /// Further options, after the credentials.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// A command the ambassador runs under (`env VAR=...`, `faketime ...`).
    pub fn under(mut self, wrapper: &[&str]) -> Self {
        self.under.extend(wrapper.iter().map(|s| s.to_string()));
        self
    }

    fn argv(&self) -> Vec<String> {
        let mut all = self.under.clone();
        all.push(AMBASSADOR.to_string());
        all.push(self.sub.to_string());
        all.extend(self.specs.iter().cloned());
        if let Some(node) = &self.node {
            all.extend(["--node".to_string(), node.clone()]);
        }
        all.extend(self.credentials.iter().cloned());
        all.extend(self.args.iter().cloned());
        all
    }

    /// Starts the node (owned by the LAN, like every process it starts).
    pub fn start(self) -> Proc {
        let label = self.label.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                self.sub,
                self.node.as_deref().unwrap_or(&self.host.name)
            )
        });
        let argv = self.argv();
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.lan.spawn(&self.host, &label, &argv)
    }

    /// Runs the node to its exit (one that must refuse to start), killing it after 10 s.
    pub fn run(self) -> Out {
        let argv = self.argv();
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.lan.run(&self.host, 10 * SEC, &argv)
    }
}

// ---------------------------------------------------------------------------------------------
// What the nodes report.

/// `ambassador status --json` on `host`: every node of this test (they share its runtime dir).
pub fn status(lan: &Lan, host: &Host) -> serde_json::Value {
    let out = lan.run(host, 10 * SEC, &[AMBASSADOR, "status", "--json"]);
    assert!(out.ok(), "ambassador status failed: {out:?}");
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json printed no JSON ({e}): {out:?}"))
}

/// The `status --json` entry of node `node`, if it is running.
pub fn node_status(lan: &Lan, host: &Host, node: &str) -> Option<serde_json::Value> {
    status(lan, host)
        .as_array()
        .expect("status --json prints an array")
        .iter()
        .find(|n| n["node"] == node)
        .cloned()
}

/// One instance of a service as a consumer's `status --json` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    /// `healthy` or `ejected`.
    pub health: String,
    /// Connections carried since the consumer started.
    pub total: u64,
}

/// Per provider node, how consumer node `node` sees the instances of `service` that it has
/// used so far.
pub fn consumer_view(
    lan: &Lan,
    host: &Host,
    node: &str,
    service: &str,
) -> BTreeMap<String, InstanceView> {
    let status =
        node_status(lan, host, node).unwrap_or_else(|| panic!("status does not list node {node}"));
    let conn = status["connect"]
        .as_array()
        .expect("connect[]")
        .iter()
        .find(|c| c["service"] == service)
        .unwrap_or_else(|| panic!("node {node} does not connect {service}: {status}"));
    conn["instances"]
        .as_array()
        .expect("instances[]")
        .iter()
        .map(|i| {
            // Instance keys are DNS-SD full names:
            // `<service>@<node>_<mesh8>._ambassador._udp.local.`.
            let key = i["instance"].as_str().unwrap_or_default();
            let provider = key
                .split_once('@')
                .and_then(|(_, rest)| rest.split('.').next())
                .map(|n| n.rsplit_once('_').map_or(n, |(node, _)| node))
                .unwrap_or(key)
                .to_string();
            let view = InstanceView {
                health: i["health"].as_str().unwrap_or_default().to_string(),
                total: i["total"].as_u64().unwrap_or(0),
            };
            (provider, view)
        })
        .collect()
}

/// Polls consumer node `node`'s status until the instance of `service` on `provider` has
/// `health`; returns the epoch time when it was seen, `None` at the deadline.
pub fn wait_health(
    lan: &Lan,
    host: &Host,
    node: &str,
    (service, provider): (&str, &str),
    health: &str,
    timeout: Duration,
) -> Option<f64> {
    wait_until(timeout, 5 * MS, || {
        consumer_view(lan, host, node, service)
            .get(provider)
            .is_some_and(|v| v.health == health)
    })
    .then(crate::harness::now_epoch)
}

/// Whether provider node `node` finds the target of `service` up (`target_up` in its status);
/// `None` while the node is not running or does not announce it.
pub fn target_up(lan: &Lan, host: &Host, node: &str, service: &str) -> Option<bool> {
    let status = node_status(lan, host, node)?;
    status["announce"]
        .as_array()?
        .iter()
        .find(|a| a["service"] == service)?["target_up"]
        .as_bool()
}

/// Polls provider node `node`'s status until the target of `service` is `up`; returns the
/// epoch time when it was seen, `None` at the deadline.
pub fn wait_target_up(
    lan: &Lan,
    host: &Host,
    (node, service): (&str, &str),
    up: bool,
    timeout: Duration,
) -> Option<f64> {
    wait_until(timeout, 5 * MS, || {
        target_up(lan, host, node, service) == Some(up)
    })
    .then(crate::harness::now_epoch)
}

/// `ambassador ls --json ARGS...` on `host`: the rows it prints.
pub fn ls_json(lan: &Lan, host: &Host, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec![AMBASSADOR, "ls", "--json"];
    all.extend_from_slice(args);
    let out = lan.run(host, 20 * SEC, &all);
    assert!(out.ok(), "ambassador ls failed: {out:?}");
    let rows: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("ls --json printed no JSON ({e}): {out:?}"));
    rows.as_array().expect("ls --json prints an array").clone()
}

/// `ls --json --interface <LAN interface> EXTRA...` on `host`: the records seen on the LAN.
pub fn ls_rows(lan: &Lan, host: &Host, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["--interface", &host.ifname];
    args.extend_from_slice(extra);
    ls_json(lan, host, &args)
}

/// The rows of `service` that `ls` on `host`'s LAN lists with mesh key `key`.
pub fn ls_service(lan: &Lan, host: &Host, key: &Path, service: &str) -> Vec<serde_json::Value> {
    ls_rows(lan, host, &["--mesh-key-file", key.to_str().unwrap()])
        .into_iter()
        .filter(|r| r["service"] == service)
        .collect()
}

/// Polls `ls` on `host`'s LAN until a row satisfies `pred`; returns it.
pub fn wait_ls_row(
    lan: &Lan,
    host: &Host,
    extra: &[&str],
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    let mut found = None;
    wait_until(timeout, 200 * MS, || {
        found = ls_rows(lan, host, extra).into_iter().find(|r| pred(r));
        found.is_some()
    });
    found
}

// ---------------------------------------------------------------------------------------------
// CA mode.

/// A CA made by `ambassador ca init` in the test directory (`ca/`); it issues node bundles into
/// `id-<node>/`.
pub struct Ca<'a> {
    lan: &'a Lan,
    /// The CA directory (`ca.crt`, `ca.key`).
    pub dir: PathBuf,
}

impl<'a> Ca<'a> {
    /// `ambassador ca init --out DIR`.
    pub fn init(lan: &'a Lan) -> Ca<'a> {
        let dir = lan.path("ca");
        let out = lan.offline(&["ca", "init", "--out", dir.to_str().unwrap()]);
        assert!(out.status.success(), "ca init failed: {out:?}");
        Ca { lan, dir }
    }

    /// `ambassador ca issue NODE --ca CA --out id-NODE EXTRA...`; the bundle and the new
    /// certificate's fingerprint.
    pub fn issue(&self, node: &str, extra: &[&str]) -> (Identity, String) {
        let out_dir = self.lan.path(&format!("id-{node}"));
        let (ca, out) = (self.dir.to_str().unwrap(), out_dir.to_str().unwrap());
        let args = [&["ca", "issue", node, "--ca", ca, "--out", out][..], extra].concat();
        let out = self.lan.offline(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "ca issue {node} failed: {text}");
        let fp = text
            .split("certificate fingerprint ")
            .nth(1)
            .map(|s| {
                s.chars()
                    .take_while(|c| c.is_ascii_hexdigit())
                    .collect::<String>()
            })
            .filter(|f| f.len() == 64)
            .unwrap_or_else(|| panic!("ca issue printed no fingerprint: {text}"));
        (Identity(out_dir), fp)
    }

    /// [`Ca::issue`] for each of `nodes`, without extra options.
    pub fn issue_each<const N: usize>(&self, nodes: [&str; N]) -> [(Identity, String); N] {
        nodes.map(|n| self.issue(n, &[]))
    }
}

// ---------------------------------------------------------------------------------------------
// Redis servers.

/// A `redis-server` about to be started on a host (see [`Lan::redis`]): no persistence, its
/// data file in the test directory, its log `redis-<host>-<port>.log`.
#[must_use = "a Redis server is started by `start`"]
pub struct Redis<'a> {
    lan: &'a Lan,
    host: Host,
    port: u16,
    bind: String,
    lan_too: bool,
    auth: Vec<String>,
    who: Option<String>,
}

impl Lan {
    /// `redis-server` on `host`:`port`, bound to 127.0.0.1 unless told otherwise.
    pub fn redis(&self, host: &Host, port: u16) -> Redis<'_> {
        Redis {
            lan: self,
            host: host.clone(),
            port,
            bind: "127.0.0.1".into(),
            lan_too: false,
            auth: Vec::new(),
            who: None,
        }
    }
}

impl Redis<'_> {
    /// Stores `who` = `name` once it runs (so that `GET who` says which server answered).
    pub fn who(mut self, name: &str) -> Self {
        self.who = Some(name.to_string());
        self
    }

    /// Options that make it refuse clients without credentials (`--requirepass`, ACL users):
    /// it is then ready once it listens, not once it answers PING.
    pub fn auth(mut self, options: &[&str]) -> Self {
        self.auth.extend(options.iter().map(|s| s.to_string()));
        self
    }

    /// Binds to `addr` instead of 127.0.0.1.
    pub fn bind(mut self, addr: &str) -> Self {
        self.bind = addr.to_string();
        self
    }

    /// Binds to the host's LAN address too, protected mode off: a plain TCP backend that other
    /// hosts reach directly.
    pub fn lan_too(mut self) -> Self {
        self.lan_too = true;
        self
    }

    /// Starts it and waits until it is ready (10 s at most).
    pub fn start(self) -> Proc {
        let (lan, host, port) = (self.lan, &self.host, self.port);
        let port_s = port.to_string();
        let dir = lan.dir().to_str().unwrap().to_string();
        let label = format!("redis-{}-{port}", host.name);
        let host_ip = host.ip.to_string();
        let rdb = format!("{label}.rdb");
        let mut args = vec!["redis-server", "--port", &port_s, "--bind", &self.bind];
        if self.lan_too {
            args.extend_from_slice(&[&host_ip, "--protected-mode", "no"]);
        }
        args.extend_from_slice(&[
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir,
            "--dbfilename",
            &rdb,
        ]);
        args.extend(self.auth.iter().map(String::as_str));
        let p = lan.spawn(host, &label, &args);
        let ready = if self.auth.is_empty() {
            wait_until(10 * SEC, 20 * MS, || pong(lan, host, port))
        } else {
            lan.wait_tcp_listen(host, port, 10 * SEC)
        };
        assert!(
            ready,
            "redis-server on {}:{port} did not come up",
            host.name
        );
        if let Some(who) = &self.who {
            set(lan, host, port, "who", who);
        }
        p
    }
}

// ---------------------------------------------------------------------------------------------
// The apps: redis-cli on a host.

/// `redis-cli -p PORT ARGS...` on `host` (127.0.0.1 of that host), a new connection.
pub fn redis(lan: &Lan, host: &Host, port: u16, args: &[&str]) -> Out {
    let port_s = port.to_string();
    let mut all = vec!["redis-cli", "-p", &port_s];
    all.extend_from_slice(args);
    lan.run(host, 10 * SEC, &all)
}

/// `redis-cli -h IP -p PORT ARGS...` on `host`: a client on one host reaching a server of
/// another directly (not through a local ambassador).
pub fn redis_remote(lan: &Lan, host: &Host, ip: &str, port: u16, args: &[&str]) -> Out {
    let port_s = port.to_string();
    let mut all = vec!["redis-cli", "-h", ip, "-p", &port_s];
    all.extend_from_slice(args);
    lan.run(host, 10 * SEC, &all)
}

/// Whether `redis-cli -p PORT PING` on `host` answers PONG.
pub fn pong(lan: &Lan, host: &Host, port: u16) -> bool {
    redis(lan, host, port, &["PING"]).stdout.trim() == "PONG"
}

/// Polls `redis-cli -p PORT PING` on `host` until PONG; returns how long it took.
pub fn wait_pong(lan: &Lan, host: &Host, port: u16, timeout: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    wait_until(timeout, 20 * MS, || pong(lan, host, port)).then(|| t0.elapsed())
}

/// Like [`wait_pong`] with 15 s, failing the test without a PONG through `what`.
pub fn assert_pong(lan: &Lan, host: &Host, port: u16, what: &str) -> Duration {
    wait_pong(lan, host, port, 15 * SEC)
        .unwrap_or_else(|| panic!("no PONG through {what} on {}:{port} within 15 s", host.name))
}

/// Asserts that the output of `redis-benchmark -q` (stdout and stderr together) reports no
/// error and a result for each of `tests` (e.g. `["SET", "GET"]`); returns the result lines.
pub fn assert_benchmark(text: &str, tests: &[&str]) -> Vec<String> {
    let lines: Vec<&str> = text
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    for l in &lines {
        let lower = l.to_lowercase();
        assert!(
            !lower.contains("error") && !lower.contains("could not") && !lower.contains("closed"),
            "redis-benchmark reported: {l}"
        );
    }
    let results: Vec<String> = lines
        .iter()
        .filter(|l| l.contains("requests per second"))
        .map(|l| l.to_string())
        .collect();
    for t in tests {
        assert!(
            results.iter().any(|l| l.starts_with(&format!("{t}:"))),
            "no {t} result in {text:?}"
        );
    }
    results
}

/// `SET key value` through `port` on `host`, which must answer OK.
pub fn set(lan: &Lan, host: &Host, port: u16, key: &str, value: &str) {
    let out = redis(lan, host, port, &["SET", key, value]);
    assert_eq!(
        out.stdout.trim(),
        "OK",
        "SET {key} through {}:{port}: {out:?}",
        host.name
    );
}

/// `GET key` through `port` on `host`: the value (trimmed), empty when it failed.
pub fn get(lan: &Lan, host: &Host, port: u16, key: &str) -> String {
    redis(lan, host, port, &["GET", key])
        .stdout
        .trim()
        .to_string()
}

/// `SET key value`, then `GET key` gives `value` back, through `port` on `host`.
pub fn set_get(lan: &Lan, host: &Host, port: u16, key: &str, value: &str) {
    set(lan, host, port, key, value);
    let got = redis(lan, host, port, &["GET", key]);
    assert_eq!(
        got.stdout.trim_end_matches('\n'),
        value,
        "GET {key} through the mesh: {got:?}"
    );
}

/// `GET who` through `port` on `host` (a new connection): which server answered; empty when
/// it failed.
pub fn who(lan: &Lan, host: &Host, port: u16) -> String {
    get(lan, host, port, "who")
}

/// Polls `GET who` through `port` on `host` until it answers `want`; how long it took, `None`
/// at the deadline.
pub fn who_within(
    lan: &Lan,
    host: &Host,
    port: u16,
    want: &str,
    timeout: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    wait_until(timeout, 20 * MS, || who(lan, host, port) == want).then(|| t0.elapsed())
}

/// Like [`who_within`], failing the test at the deadline.
pub fn wait_who(lan: &Lan, host: &Host, port: u16, want: &str, timeout: Duration) -> Duration {
    who_within(lan, host, port, want, timeout).unwrap_or_else(|| {
        panic!(
            "through port {port} on {} no answer {want:?} within {timeout:?} (last: {:?})",
            host.name,
            who(lan, host, port)
        )
    })
}

/// `n` sequential new connections through `port` on `host`, each `GET key`: the answers,
/// which must be `n`.
pub fn get_n(lan: &Lan, host: &Host, port: u16, key: &str, n: usize) -> Vec<String> {
    let script = format!("for i in $(seq {n}); do redis-cli -p {port} GET {key}; done");
    let out = lan.sh(host, 180 * SEC, &script);
    assert!(
        out.ok(),
        "the {n} connections through {port} failed: {out:?}"
    );
    let answers: Vec<String> = out.stdout.lines().map(|l| l.trim().to_string()).collect();
    assert_eq!(answers.len(), n, "expected {n} answers: {out:?}");
    answers
}

/// `n` new connections through `port` on `host`, each `GET who`: the answers.
pub fn get_who_n(lan: &Lan, host: &Host, port: u16, n: usize) -> Vec<String> {
    get_n(lan, host, port, "who", n)
}

/// `n` new connections through `port` on `host`, each `GET who`: how many each server answered.
pub fn spread(lan: &Lan, host: &Host, port: u16, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for a in get_who_n(lan, host, port, n) {
        *counts.entry(a).or_insert(0) += 1;
    }
    counts
}

/// Runs `GET who` through `port` on `host` until every name of `want` has answered (each new
/// connection is balanced anew), so the consumer knows every provider before measuring.
pub fn wait_all_answer(lan: &Lan, host: &Host, port: u16, want: &[&str], timeout: Duration) {
    let mut seen: Vec<String> = Vec::new();
    let all = wait_until(timeout, 10 * MS, || {
        let who = who(lan, host, port);
        if !who.is_empty() && !seen.contains(&who) {
            seen.push(who);
        }
        want.iter().all(|w| seen.iter().any(|s| s == w))
    });
    assert!(
        all,
        "through port {port} on {} only {seen:?} answered within {timeout:?}, expected {want:?}",
        host.name
    );
}

/// A field of `INFO SECTION` of the Redis on `host`:`port`.
fn info_field(lan: &Lan, host: &Host, port: u16, section: &str, field: &str) -> Option<String> {
    let info = redis(lan, host, port, &["INFO", section]);
    assert!(info.ok(), "INFO {section}: {info:?}");
    let prefix = format!("{field}:");
    info.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()).map(str::to_string))
}

/// `total_connections_received` of the Redis on `host`:`port` (the query's own connection
/// included).
pub fn connections_received(lan: &Lan, host: &Host, port: u16) -> u64 {
    info_field(lan, host, port, "stats", "total_connections_received")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no total_connections_received from {}:{port}", host.name))
}

/// How many GET commands the Redis on `host`:`port` has run.
pub fn get_calls(lan: &Lan, host: &Host, port: u16) -> u64 {
    info_field(lan, host, port, "commandstats", "cmdstat_get")
        .map(|v| {
            let calls = v.strip_prefix("calls=").expect("calls=N,...");
            calls.split(',').next().unwrap().parse().unwrap()
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Held client connections.

/// One client connection held open by `socat` on a host and driven from this process: commands
/// go in as RESP, replies come back through a reader thread. Tests use it to check that an open
/// connection outlives a reload, a drain or a change of records.
pub struct Session {
    /// The socat process.
    pub proc: Proc,
    stdin: Option<ChildStdin>,
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
}

impl Session {
    /// Connects to 127.0.0.1:`port` on `host`; socat's log is `<label>.log`.
    pub fn open(lan: &Lan, host: &Host, label: &str, port: u16) -> Session {
        let (proc, stdin, stdout) = lan.spawn_piped(
            host,
            label,
            &["socat", "STDIO", &format!("TCP:127.0.0.1:{port}")],
            true,
            true,
        );
        let mut out = stdout.expect("socat stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = out.read(&mut b) {
                if n == 0 || tx.send(b[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        Session {
            proc,
            stdin,
            rx,
            buf: Vec::new(),
        }
    }

    /// Sends one command and waits for its reply: a status line without its `+` (`OK`, `PONG`),
    /// an error line, an integer, a bulk string (`(nil)` for a null); `Err` when the connection
    /// closed or nothing came in 10 s.
    pub fn cmd(&mut self, args: &[&str]) -> Result<String, String> {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        let stdin = self.stdin.as_mut().ok_or("closed by the test")?;
        stdin
            .write_all(req.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("write: {e}"))?;
        let deadline = Instant::now() + 10 * SEC;
        loop {
            if let Some(reply) = take_reply(&mut self.buf) {
                return Ok(reply);
            }
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(b) => self.buf.extend_from_slice(&b),
                Err(mpsc::RecvTimeoutError::Timeout) => return Err("no reply in 10 s".into()),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("connection closed".into());
                }
            }
        }
    }

    /// Its `GET who`, which must answer `want`.
    pub fn expect_who(&mut self, want: &str, what: &str) {
        assert_eq!(
            self.cmd(&["GET", "who"]).as_deref(),
            Ok(want),
            "{what}: the held connection ({})",
            self.proc.label
        );
    }

    /// Its `PING`, which must answer `PONG`.
    pub fn expect_pong(&mut self, what: &str) {
        assert_eq!(
            self.cmd(&["PING"]).as_deref(),
            Ok("PONG"),
            "{what}: the held connection ({})",
            self.proc.label
        );
    }

    /// Whether the connection was closed by the other side within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(b) => self.buf.extend_from_slice(&b),
                Err(mpsc::RecvTimeoutError::Timeout) => return false,
                Err(mpsc::RecvTimeoutError::Disconnected) => return true,
            }
        }
    }

    /// Closes the client's side (socat half-closes, then exits).
    pub fn close(&mut self) {
        self.stdin.take();
    }
}

/// Takes one complete RESP reply off the front of `buf`.
fn take_reply(buf: &mut Vec<u8>) -> Option<String> {
    let eol = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[..eol]).to_string();
    if let Some(n) = line.strip_prefix('$') {
        let n: i64 = n.parse().ok()?;
        if n < 0 {
            buf.drain(..eol + 2);
            return Some("(nil)".into());
        }
        let end = eol + 2 + n as usize;
        if buf.len() < end + 2 {
            return None;
        }
        let s = String::from_utf8_lossy(&buf[eol + 2..end]).to_string();
        buf.drain(..end + 2);
        return Some(s);
    }
    buf.drain(..eol + 2);
    // A status reply without its `+` (`OK`); errors (`-ERR ...`) and integers as they come.
    Some(line.strip_prefix('+').map_or(line.clone(), str::to_string))
}

// ---------------------------------------------------------------------------------------------
// Client loops' results.

/// One connection of a client loop (a Python script on a host writing one JSON line per
/// connection: `start`, `end` in epoch seconds, `who` answered, or `err`).
#[derive(Debug, Clone)]
pub struct Conn {
    /// When it started (epoch seconds).
    pub start: f64,
    /// When it ended (epoch seconds).
    pub end: f64,
    /// The server that answered (its `who`), if it got an answer.
    pub who: Option<String>,
    /// Why it failed, if it did.
    pub err: Option<String>,
}

impl Conn {
    /// How long it took.
    pub fn latency(&self) -> Duration {
        Duration::from_secs_f64((self.end - self.start).max(0.0))
    }
}

/// Every connection finished so far in the results file at `path`.
pub fn read_conns(path: &Path) -> Vec<Conn> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        // A line being written has no newline yet, and does not parse.
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| Conn {
            start: v["start"].as_f64().unwrap_or(0.0),
            end: v["end"].as_f64().unwrap_or(0.0),
            who: v["who"].as_str().map(str::to_string),
            err: v["err"].as_str().map(str::to_string),
        })
        .collect()
}

/// How many of `conns` each server answered (`(failed)` for the failures).
pub fn count_who<'a>(conns: impl IntoIterator<Item = &'a Conn>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for c in conns {
        *counts
            .entry(c.who.clone().unwrap_or_else(|| "(failed)".into()))
            .or_insert(0) += 1;
    }
    counts
}

/// Asserts that none of `conns` failed; shows a few failures otherwise.
pub fn assert_no_failure(conns: &[Conn], what: &str) {
    let failed: Vec<&Conn> = conns.iter().filter(|c| c.err.is_some()).collect();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} connections failed, e.g. {:?}",
        failed.len(),
        conns.len(),
        &failed[..failed.len().min(5)]
    );
}

/// The slowest connection of a client loop's results.
pub fn worst(conns: &[Conn]) -> Duration {
    conns.iter().map(Conn::latency).max().unwrap_or_default()
}

/// The connections of a client loop that started after `t` (epoch seconds).
pub fn started_after(conns: &[Conn], t: f64) -> Vec<Conn> {
    conns.iter().filter(|c| c.start > t).cloned().collect()
}

/// Every one of `conns` was answered by `who`'s Redis.
pub fn assert_all_from(conns: &[Conn], who: &str, what: &str) {
    assert!(
        conns.iter().all(|c| c.who.as_deref() == Some(who)),
        "{what}: not all from {who}: {:?}",
        count_who(conns)
    );
}

/// The Python function of the client-loop scripts that makes one connection to the local
/// listener on `port`, sends `GET who`, and returns the answer (raising on anything else).
/// Scripts hold a `{GET_WHO}` line where it goes: see [`client_script`].
const PY_GET_WHO: &str = r#"def one():
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall(b"GET who\r\n")
        r = s.makefile("rb")
        h = r.readline()
        if not h.startswith(b"$") or not h.endswith(b"\r\n"):
            raise IOError("unexpected reply %r" % h)
        n = int(h[1:-2])
        if n < 0:
            raise IOError("who is not set")
        v = r.read(n + 2)
        if len(v) != n + 2:
            raise IOError("short reply %r" % v)
        return v[:-2].decode()
    finally:
        s.close()
"#;

/// The body of a client loop's iteration: one `one()` call, timed, written as one JSON line
/// (`start`, `end`, `who`, `err`) to `results` under `lock`. A `{RECORD_ONE}` line holds it.
const PY_RECORD_ONE: &str = r#"        t0, who, err = time.time(), None, None
        try:
            who = one()
        except Exception as e:
            err = repr(e)
        with lock:
            results.write(json.dumps({"start": t0, "end": time.time(), "who": who, "err": err}) + "\n")
"#;

/// Starts `nthreads` loops of `worker(tid)` and waits for them. A `{RUN_WORKERS}` line holds it.
const PY_RUN_WORKERS: &str = r#"threads = [threading.Thread(target=worker, args=(t,)) for t in range(nthreads)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"#;

/// The end of a gated client-loop script (see [`ClientLoop`]): `nthreads` loops of
/// `one(tid, i)` (defined by the script, returning who answered), each call one JSON line
/// (`tid`, `start`, `end`, `who`, `err`), pausing at the gate and stopping at its stop file. A
/// `{GATED_LOOPS}` line holds it; the script's own arguments start at `sys.argv[4]`.
const PY_GATED_LOOPS: &str = r#"out, gate, nthreads = sys.argv[1], sys.argv[2], int(sys.argv[3])
results = open(out, "a", buffering=1)
lock = threading.Lock()

def worker(tid):
    i = 0
    held = os.path.join(gate, "held-%d" % tid)
    while not os.path.exists(os.path.join(gate, "stop")):
        if os.path.exists(os.path.join(gate, "hold")):
            open(held, "w").close()
            while os.path.exists(os.path.join(gate, "hold")):
                time.sleep(0.001)
            os.remove(held)
            continue
        i += 1
        t0, who, err = time.time(), None, None
        try:
            who = one(tid, i)
        except Exception as e:
            err = repr(e)
        t1 = time.time()
        with lock:
            results.write(json.dumps({"tid": tid, "start": t0, "end": t1, "who": who, "err": err}) + "\n")

threads = [threading.Thread(target=worker, args=(t,)) for t in range(nthreads)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"#;

/// A client-loop script with the shared pieces (`{GET_WHO}`, `{RECORD_ONE}`,
/// `{RUN_WORKERS}`, `{GATED_LOOPS}` lines) put in their places.
pub fn client_script(template: &str) -> String {
    template
        .replace("{GET_WHO}\n", PY_GET_WHO)
        .replace("{RECORD_ONE}\n", PY_RECORD_ONE)
        .replace("{RUN_WORKERS}\n", PY_RUN_WORKERS)
        .replace("{GATED_LOOPS}\n", PY_GATED_LOOPS)
}

/// Client loops running on a host, with a gate: a script ending in `{GATED_LOOPS}`, started as
/// `python3 SCRIPT RESULTS GATE THREADS ARGS...`. The loops pause between two calls while
/// `GATE/hold` exists (each shows it with `GATE/held-N`) and stop when `GATE/stop` exists, so
/// a fault can be injected while no call is in flight.
pub struct ClientLoop {
    /// The Python process.
    pub proc: Proc,
    results: PathBuf,
    gate: PathBuf,
    threads: usize,
}

impl ClientLoop {
    /// Starts `threads` loops of `template` (pieces put in) on `host`, with `args` after the
    /// gate's; the script, its results and its gate are named after `label`.
    pub fn start(
        lan: &Lan,
        host: &Host,
        label: &str,
        template: &str,
        threads: usize,
        args: &[&str],
    ) -> ClientLoop {
        let script = lan.path(&format!("{label}.py"));
        fs::write(&script, client_script(template)).expect("write the client script");
        let gate = lan.path(&format!("{label}-gate"));
        fs::create_dir_all(&gate).expect("gate dir");
        let results = lan.path(&format!("{label}.jsonl"));
        let threads_arg = threads.to_string();
        let mut argv = vec![
            "python3",
            script.to_str().unwrap(),
            results.to_str().unwrap(),
            gate.to_str().unwrap(),
            &threads_arg,
        ];
        argv.extend_from_slice(args);
        let proc = lan.spawn(host, label, &argv);
        ClientLoop {
            proc,
            results,
            gate,
            threads,
        }
    }

    /// Every call finished so far.
    pub fn conns(&self) -> Vec<Conn> {
        read_conns(&self.results)
    }

    /// Waits until `n` calls have finished.
    pub fn wait_conns(&self, lan: &Lan, n: usize, timeout: Duration) {
        let ok = wait_until(timeout, Duration::from_millis(20), || {
            self.conns().len() >= n
        });
        assert!(
            ok,
            "the client finished only {} connections within {timeout:?}; its log: {}",
            self.conns().len(),
            lan.log(&self.proc)
        );
    }

    /// Runs `fault` while every loop waits between two calls; returns the epoch time right
    /// after it.
    pub fn between_connections(&self, lan: &Lan, fault: impl FnOnce()) -> f64 {
        let hold = self.gate.join("hold");
        fs::write(&hold, "").expect("create the hold file");
        let held = wait_until(10 * SEC, Duration::from_millis(1), || {
            (0..self.threads).all(|t| self.gate.join(format!("held-{t}")).exists())
        });
        assert!(
            held,
            "the client loops did not pause within 10 s; its log: {}",
            lan.log(&self.proc)
        );
        fault();
        let t = crate::harness::now_epoch();
        fs::remove_file(&hold).expect("remove the hold file");
        t
    }

    /// Stops the loops and returns every call.
    pub fn stop(&self, lan: &Lan) -> Vec<Conn> {
        fs::write(self.gate.join("stop"), "").expect("create the stop file");
        let status = lan.wait_exit(&self.proc, 40 * SEC);
        assert!(
            status.is_some_and(|s| s.success()),
            "the client did not stop cleanly ({status:?}); its log: {}",
            lan.log(&self.proc)
        );
        self.conns()
    }
}
